// A child process started with fork + exec, for the workers a job starts (`v4rl serve ...`) and
// the tests that drive `v4rl` binaries: its stdout is a pipe the parent reads line by line
// (ReadLine, with a timeout), stdin is /dev/null, stderr is inherited.
//
// The child gets PR_SET_PDEATHSIG(SIGTERM): it is told to stop when the thread that started it
// exits, so a crashed parent leaves no workers behind. A child that keeps writing to stdout must
// be read: the pipe holds 64 KiB.
//
// Ownership: the object owns the child; the destructor stops it (SIGTERM, then SIGKILL after a
// grace period) and reaps it. Thread-safety: one thread at a time per object.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace v4rl::core {

class Subprocess {
 public:
  // Starts argv[0] (a path; PATH is not searched) with arguments argv[1..]. InvalidArgument for an
  // empty argv; Internal when pipe/fork fails. A failed exec makes the child exit with status 127.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv);

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }

  // The next stdout line without its '\n' (at most 64 KiB). DeadlineExceeded when none arrives
  // within `timeout_s`; Unavailable when stdout closes first (the child exited: the message says
  // how, when it has).
  absl::StatusOr<std::string> ReadLine(double timeout_s);

  // Whether the child is still running (reaps it when it has exited).
  bool Running();
  // Sends `signal` if the child is running.
  void Signal(int signal);
  // Waits up to `timeout_s` (< 0: forever) for the child to exit and describes how ("exited with
  // status 0", "killed by signal 9"); DeadlineExceeded when it is still running.
  absl::StatusOr<std::string> Wait(double timeout_s);
  // SIGTERM, up to `grace_s` to exit, then SIGKILL; returns how it ended.
  std::string Stop(double grace_s = 5);

 private:
  Subprocess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}
  // Non-blocking waitpid; fills exit_ when the child has ended.
  bool Reap(bool block);

  pid_t pid_;
  int stdout_fd_;
  std::string buffer_;  // stdout bytes read past the last returned line
  std::string exit_;    // how the child ended; empty while running
};

}  // namespace v4rl::core
