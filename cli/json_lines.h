// The JSON-lines loop of the `v4rl` subcommands that take requests on stdin (tokenize,
// chat-encode, chat-parse): each non-blank input line is parsed as one JSON value (Python json
// semantics: key order and big integers kept, bounded size and depth), handed to the handler, and
// its answer written as one line of JSON to stdout. A line that is not JSON, or that the handler
// rejects, gets {"error": "line N: ..."} and processing goes on with the next line.
// Not thread-safe (one loop per process).
#pragma once

#include <istream>
#include <ostream>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "actor/py_json.h"

namespace v4rl::cli {

using JsonLineHandler =
    absl::FunctionRef<absl::StatusOr<actor::PyJson>(const actor::PyJson& request)>;

// Returns the exit code: 0 when every line was answered without error, 1 otherwise.
int RunJsonLines(std::istream& in, std::ostream& out, JsonLineHandler handle);

// The value of `key` in a request object, or nullptr when absent.
const actor::PyJson* RequestField(const actor::PyJson& request, const char* key);

}  // namespace v4rl::cli
