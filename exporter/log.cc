#include "log.h"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "shmetrics/shm/segment_file.h"

namespace shmetrics::exporter {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

void AppendValue(std::string* out, absl::string_view value) {
  bool quote = value.empty();
  for (char ch : value) {
    if (ch == ' ' || ch == '=' || ch == '"' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) quote = true;
  }
  if (!quote) {
    out->append(value.data(), value.size());
    return;
  }
  out->push_back('"');
  for (char ch : value) {
    if (ch == '"' || ch == '\\') {
      out->push_back('\\');
      out->push_back(ch);
    } else if (ch == '\n') {
      out->append("\\n");
    } else if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      absl::StrAppend(out, "\\x", absl::string_view(&kHex[(ch >> 4) & 0xf], 1), absl::string_view(&kHex[ch & 0xf], 1));
    } else {
      out->push_back(ch);
    }
  }
  out->push_back('"');
}

}  // namespace

bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  for (LogLevel candidate : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    if (text == LevelName(candidate)) {
      *level = candidate;
      return true;
    }
  }
  return false;
}

void SetLogLevel(LogLevel level) { g_level.store(level, std::memory_order_relaxed); }
bool LogEnabled(LogLevel level) { return level >= g_level.load(std::memory_order_relaxed); }

std::string FormatLogLine(int64_t unix_ns, LogLevel level, absl::string_view message,
                          std::initializer_list<LogField> fields) {
  const time_t seconds = static_cast<time_t>(unix_ns / 1000000000);
  struct tm utc;
  gmtime_r(&seconds, &utc);
  char stamp[64];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(unix_ns / 1000000 % 1000));
  std::string line = absl::StrCat("ts=", stamp, " level=", LevelName(level), " msg=");
  AppendValue(&line, message);
  for (const auto& [key, value] : fields) {
    absl::StrAppend(&line, " ", key, "=");
    AppendValue(&line, value);
  }
  return line;
}

void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  std::string line = FormatLogLine(static_cast<int64_t>(shm::NowUnixNs()), level, message, fields);
  line.push_back('\n');
  // One write: lines from several threads never interleave. A full or
  // closed stderr loses the line; nothing else to do about it.
  const ssize_t written = write(STDERR_FILENO, line.data(), line.size());
  (void)written;
}

}  // namespace shmetrics::exporter
