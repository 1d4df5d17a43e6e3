#include "terminal.h"

#include "absl/strings/str_format.h"

namespace shmetrics::cli {
namespace {

std::string Escape(absl::string_view text, bool field) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char ch = static_cast<unsigned char>(text[i]);
    if (ch == '\\' && field) {
      out += "\\\\";
    } else if (ch == '\n' && !field) {
      out.push_back('\n');
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (ch < 0x20 || ch == 0x7f) {
      out += absl::StrFormat("\\x%02x", ch);
    } else if (ch == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(text[i + 1]));  // C1 control
      ++i;
    } else {
      out.push_back(static_cast<char>(ch));
    }
  }
  return out;
}

}  // namespace

std::string TerminalSafe(absl::string_view text) { return Escape(text, /*field=*/true); }
std::string TerminalSafeLines(absl::string_view text) { return Escape(text, /*field=*/false); }

}  // namespace shmetrics::cli
