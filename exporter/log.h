// The exporter's log: one logfmt line per event on stderr, as Prometheus's
// own programs write them:
//
//   ts=2026-11-27T12:00:00.123Z level=info msg="listening" address=127.0.0.1:9464
//
// Values are quoted when they hold a space, '=', '"' or a control
// character, with those escaped; a line is written with one write(2), so
// lines from several threads never interleave.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"

namespace shmetrics::exporter {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// "debug", "info", "warn" or "error"; false for anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);
// Lines below this level are dropped (default info).
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

using LogField = std::pair<absl::string_view, absl::string_view>;
void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields = {});

// The line Log() writes, without the trailing newline (for tests).
std::string FormatLogLine(int64_t unix_ns, LogLevel level, absl::string_view message,
                          std::initializer_list<LogField> fields);

}  // namespace shmetrics::exporter
