// The exporter's own process statistics, read from /proc the way the
// Prometheus client libraries' process collectors do (Python's
// ProcessCollector, Go's process collector), for the standard
// process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and
// process_start_time_seconds.
//
//   absl::StatusOr<ProcessStats> stats = ReadProcessStats();
//   if (stats.ok()) render(stats->resident_memory_bytes);  // else leave them out
//
// Linux only: without a readable /proc the read fails (a status naming the
// file), and the caller omits the metrics.
//
// Thread safety: thread-safe (each call reads /proc afresh and keeps no
// state).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shmetrics::exporter {

struct ProcessStats {
  double cpu_seconds_total = 0;        // user + system time: (utime + stime) / CLK_TCK
  uint64_t resident_memory_bytes = 0;  // rss pages × page size
  uint64_t virtual_memory_bytes = 0;   // vsize
  uint64_t open_fds = 0;               // entries of /proc/self/fd, the one used to list them excluded
  uint64_t max_fds = 0;                // RLIMIT_NOFILE soft limit (UINT64_MAX when unlimited)
  double start_time_seconds = 0;       // Unix time: starttime / CLK_TCK + btime of /proc/stat
};

// Reads this process's statistics. Errors: the status of the first /proc
// file (or limit) that cannot be read or parsed.
absl::StatusOr<ProcessStats> ReadProcessStats();

// The fields of /proc/<pid>/stat that ProcessStats needs, in the kernel's
// units (proc(5): fields 14, 15, 22, 23 and 24).
struct ProcStatFields {
  uint64_t utime_ticks = 0;
  uint64_t stime_ticks = 0;
  uint64_t start_ticks = 0;  // since boot
  uint64_t vsize_bytes = 0;
  uint64_t rss_pages = 0;
};

// Parses the text of /proc/<pid>/stat. The second field, the command name
// in parentheses, may itself contain spaces, parentheses and newlines, so
// the fields are counted from after the last ')'. InvalidArgument when the
// text has no ')' or too few or non-numeric fields.
absl::StatusOr<ProcStatFields> ParseProcStat(absl::string_view text);

// The boot time (Unix seconds) from the text of /proc/stat: its "btime"
// line. InvalidArgument when there is none or it is not a number.
absl::StatusOr<uint64_t> ParseBootTime(absl::string_view proc_stat);

}  // namespace shmetrics::exporter
