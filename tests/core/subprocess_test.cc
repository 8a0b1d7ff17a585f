// core::Subprocess with real child processes: stdout lines, exit statuses, signals, timeouts and
// a program that does not exist.
#include "core/subprocess.h"

#include <signal.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace v4rl::core {
namespace {

using ::testing::HasSubstr;

TEST(Subprocess, ReadsLinesThenReportsTheExit) {
  auto child = Subprocess::Start({"/bin/sh", "-c", "echo 4242; printf 'two\\nthree'; exit 3"});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ((*child)->ReadLine(10).value_or("?"), "4242");
  EXPECT_EQ((*child)->ReadLine(10).value_or("?"), "two");
  // "three" has no newline: stdout closes first.
  const absl::StatusOr<std::string> last = (*child)->ReadLine(10);
  EXPECT_TRUE(absl::IsUnavailable(last.status())) << last.status();
  EXPECT_THAT(last.status().message(), HasSubstr("exited with status 3"));
  EXPECT_EQ((*child)->Wait(10).value_or("?"), "exited with status 3");
  EXPECT_FALSE((*child)->Running());
}

TEST(Subprocess, TimeoutSignalAndStop) {
  auto child = Subprocess::Start({"/bin/sleep", "30"});
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_TRUE(absl::IsDeadlineExceeded((*child)->ReadLine(0.05).status()));
  EXPECT_TRUE(absl::IsDeadlineExceeded((*child)->Wait(0.05).status()));
  EXPECT_TRUE((*child)->Running());
  (*child)->Signal(SIGKILL);
  EXPECT_THAT((*child)->Wait(10).value_or("?"), HasSubstr("killed by signal 9"));

  auto stopped = Subprocess::Start({"/bin/sleep", "30"});
  ASSERT_TRUE(stopped.ok());
  EXPECT_THAT((*stopped)->Stop(5), HasSubstr("killed by signal 15"));
}

TEST(Subprocess, MissingProgramExits127AndEmptyArgvIsInvalid) {
  auto child = Subprocess::Start({"/nonexistent/program"});
  ASSERT_TRUE(child.ok());
  EXPECT_EQ((*child)->Wait(10).value_or("?"), "exited with status 127");
  EXPECT_TRUE(absl::IsInvalidArgument(Subprocess::Start({}).status()));
}

}  // namespace
}  // namespace v4rl::core
