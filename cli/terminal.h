// Text from a segment, made safe for a terminal.
//
// Everything a segment holds (names, label values, ring strings) is input
// from another process: an endpoint with "\n" and ANSI or OSC escape
// sequences would forge lines, move the cursor or retitle the operator's
// terminal. TerminalSafe() writes control characters (C0, DEL, and the C1
// range U+0080..U+009F) as visible escapes, the way `ls -b` does.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace shmetrics::cli {

// One field: control characters as \n, \t, \xNN (C1 as \u0080..\u009f),
// and a backslash as \\, so the result reads back unambiguously.
std::string TerminalSafe(absl::string_view text);
// Lines of a text that escapes its own backslashes and newlines (the
// exposition formats): every other control character as above.
std::string TerminalSafeLines(absl::string_view text);

}  // namespace shmetrics::cli
