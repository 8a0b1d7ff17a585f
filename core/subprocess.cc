#include "core/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_format.h"

namespace v4rl::core {
namespace {

constexpr size_t kMaxLineBytes = 64 << 10;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(
    const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("subprocess: empty argv");
  // Everything the child touches is prepared before fork: after it, only async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrFormat("subprocess: pipe: %s", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrFormat("subprocess: fork: %s", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(126);  // the parent died before prctl
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    dup2(fds[1], 1);  // dup2 clears O_CLOEXEC on the new descriptor
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  return std::unique_ptr<Subprocess>(new Subprocess(pid, fds[0]));
}

Subprocess::~Subprocess() {
  Stop();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

bool Subprocess::Reap(bool block) {
  if (!exit_.empty()) return true;
  int status = 0;
  pid_t done;
  do {
    done = waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (done < 0 && errno == EINTR);
  if (done != pid_) return false;
  if (WIFEXITED(status)) {
    exit_ = absl::StrFormat("exited with status %d", WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    exit_ = absl::StrFormat("killed by signal %d (%s)", WTERMSIG(status),
                            strsignal(WTERMSIG(status)));
  } else {
    exit_ = "ended";
  }
  return true;
}

bool Subprocess::Running() { return !Reap(false); }

void Subprocess::Signal(int signal) {
  if (Running()) kill(pid_, signal);
}

absl::StatusOr<std::string> Subprocess::Wait(double timeout_s) {
  if (timeout_s < 0) {
    Reap(true);
    return exit_;
  }
  const auto start = std::chrono::steady_clock::now();
  while (!Reap(false)) {
    if (SecondsSince(start) >= timeout_s) {
      return absl::DeadlineExceededError(
          absl::StrFormat("pid %d still running after %.1f s", pid_, timeout_s));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exit_;
}

std::string Subprocess::Stop(double grace_s) {
  if (!Running()) return exit_;
  kill(pid_, SIGTERM);
  if (Wait(grace_s).ok()) return exit_;
  kill(pid_, SIGKILL);
  Reap(true);
  return exit_;
}

absl::StatusOr<std::string> Subprocess::ReadLine(double timeout_s) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    const size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      return line;
    }
    if (buffer_.size() > kMaxLineBytes) {
      return absl::OutOfRangeError(
          absl::StrFormat("pid %d: stdout line longer than %d bytes", pid_, kMaxLineBytes));
    }
    const double left = timeout_s - SecondsSince(start);
    if (left <= 0) {
      return absl::DeadlineExceededError(
          absl::StrFormat("pid %d wrote no line within %.1f s", pid_, timeout_s));
    }
    pollfd poll_fd{.fd = stdout_fd_, .events = POLLIN, .revents = 0};
    const int ready = poll(&poll_fd, 1, static_cast<int>(left * 1000) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;  // timeout: the loop reports it
    char chunk[4096];
    const ssize_t got = read(stdout_fd_, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      const absl::StatusOr<std::string> how = Wait(1.0);
      return absl::UnavailableError(absl::StrFormat(
          "pid %d closed stdout%s", pid_, how.ok() ? " and " + *how : " (still running)"));
    }
    buffer_.append(chunk, static_cast<size_t>(got));
  }
}

}  // namespace v4rl::core
