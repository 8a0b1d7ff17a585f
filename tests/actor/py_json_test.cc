// Python json compatibility: what json.loads keeps and what json.dumps(ensure_ascii=False) writes.
// Expected strings were produced by CPython 3.11.
#include "actor/py_json.h"

#include <cmath>
#include <iterator>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace v4rl::actor {
namespace {

using ::testing::HasSubstr;
using ::v4rl::testing::StatusIs;

std::string RoundTrip(std::string_view json) {
  absl::StatusOr<PyJson> parsed = ParsePyJson(json, "test");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? PyJsonDumps(*parsed) : "";
}

TEST(PyJson, FloatReprMatchesPython) {
  EXPECT_EQ(PyFloatRepr(1.5), "1.5");
  EXPECT_EQ(PyFloatRepr(1e20), "1e+20");
  EXPECT_EQ(PyFloatRepr(1e16), "1e+16");
  EXPECT_EQ(PyFloatRepr(1e15), "1000000000000000.0");
  EXPECT_EQ(PyFloatRepr(123456789.0), "123456789.0");
  EXPECT_EQ(PyFloatRepr(0.0001), "0.0001");
  EXPECT_EQ(PyFloatRepr(0.00001), "1e-05");
  EXPECT_EQ(PyFloatRepr(0.1), "0.1");
  EXPECT_EQ(PyFloatRepr(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(PyFloatRepr(0.0), "0.0");
  EXPECT_EQ(PyFloatRepr(-0.0), "-0.0");
  EXPECT_EQ(PyFloatRepr(-2.5e-7), "-2.5e-07");
  EXPECT_EQ(PyFloatRepr(5e-324), "5e-324");
  EXPECT_EQ(PyFloatRepr(1.7976931348623157e308), "1.7976931348623157e+308");
  EXPECT_EQ(PyFloatRepr(12345678901234567.0), "1.2345678901234568e+16");
  EXPECT_EQ(PyFloatRepr(std::numeric_limits<double>::infinity()), "Infinity");
  EXPECT_EQ(PyFloatRepr(-std::numeric_limits<double>::infinity()), "-Infinity");
  EXPECT_EQ(PyFloatRepr(std::nan("")), "NaN");
}

TEST(PyJson, DumpsLikePython) {
  EXPECT_EQ(RoundTrip(R"({"a":1,"b":[true,false,null],"c":{},"d":[]})"),
            R"({"a": 1, "b": [true, false, null], "c": {}, "d": []})");
  EXPECT_EQ(RoundTrip(R"(["x\"y\\z", "tab\there\n", "\u0001\u001f\u007f", "é世😀"])"),
            "[\"x\\\"y\\\\z\", \"tab\\there\\n\", \"\\u0001\\u001f\x7f\", \"é世😀\"]");
  EXPECT_EQ(RoundTrip("[1.0, 1E5, -0, -0.0, 2.50, 1e308, 18446744073709551615]"),
            "[1.0, 100000.0, 0, -0.0, 2.5, 1e+308, 18446744073709551615]");
  // Integers beyond 64 bits keep every digit, as Python ints do.
  EXPECT_EQ(RoundTrip("[123456789012345678901234567890, -98765432109876543210987]"),
            "[123456789012345678901234567890, -98765432109876543210987]");
  // Key order is kept; a repeated key keeps its first position and takes the last value.
  EXPECT_EQ(RoundTrip(R"({"z": 1, "a": 2, "z": 3})"), R"({"z": 3, "a": 2})");
  EXPECT_EQ(RoundTrip("  \n\"s\"\t "), "\"s\"");
}

TEST(PyJson, RejectsWhatItCannotRepresent) {
  EXPECT_THAT(ParsePyJson("{\"a\": }", "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args: malformed JSON")));
  EXPECT_THAT(ParsePyJson("[NaN]", "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args")));
  EXPECT_THAT(ParsePyJson("", "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args")));
  EXPECT_THAT(ParsePyJson("[1] x", "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args")));
  // Beyond the double range (json.loads would give inf or a 309-digit int).
  EXPECT_THAT(ParsePyJson("[1e400]", "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args")));
  EXPECT_THAT(ParsePyJson(std::string(400, '1'), "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("args")));
  EXPECT_THAT(ParsePyJson(std::string(200, '[') + std::string(200, ']'), "args"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("deeper than 100")));
  EXPECT_THAT(ParsePyJson("[1, 2]", "args", {.max_bytes = 3}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceed the limit of 3")));
}

TEST(PyJson, ManyKeysStayLinear) {
  std::string json = "{";
  for (int i = 0; i < 200000; ++i) json += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
  json += ",\"k7\":1}";
  absl::StatusOr<PyJson> parsed = ParsePyJson(json, "big");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->size(), 200000u);
  EXPECT_EQ(parsed->begin().key(), "k0");
  EXPECT_EQ(std::next(parsed->begin(), 7).key(), "k7");
  EXPECT_EQ(std::next(parsed->begin(), 7).value(), 1);
}

TEST(PyJson, Truthiness) {
  EXPECT_FALSE(PyTruthy(PyJson()));
  EXPECT_FALSE(PyTruthy(PyJson::object()));
  EXPECT_FALSE(PyTruthy(PyJson::array()));
  EXPECT_FALSE(PyTruthy(""));
  EXPECT_FALSE(PyTruthy(0));
  EXPECT_FALSE(PyTruthy(0.0));
  EXPECT_FALSE(PyTruthy(false));
  EXPECT_TRUE(PyTruthy("x"));
  EXPECT_TRUE(PyTruthy(PyJson{{"type", "json_object"}}));
  EXPECT_TRUE(PyTruthy(PyJson::array({0})));
  EXPECT_TRUE(PyTruthy(-1));
}

}  // namespace
}  // namespace v4rl::actor
