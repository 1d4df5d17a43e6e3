// The exporter's response bodies: the exposition with self-metrics, and the
// JSON views (health, stats). Pure functions of a Collector.
#pragma once

#include <cstdint>
#include <string>

#include "shmetrics/collector.h"
#include "shmetrics/version.h"

namespace shmetrics::exporter {

// The exporter's own health, rendered as metrics after the services'.
struct SelfStats {
  double last_scrape_duration_seconds = 0;
  uint64_t scrapes_total = 0;
  uint64_t http_errors_total = 0;
  double start_unix_seconds = 0;
  // ScanScheduler's: requests served the last view rather than waiting.
  uint64_t stale_views_busy_total = 0;
  uint64_t stale_views_scan_wait_total = 0;
  uint64_t stale_views_scan_failed_total = 0;
  int requests_waiting_for_scan = 0;
  bool ready = false;  // a directory scan has completed
  bool last_scan_failed = false;
};

// Appends the exporter's own metrics (README, "The exporter's own
// metrics"): scrapes, segments and problems, build info, each live writer
// process's segment capacity and losses ({service, pid}), and the client
// libraries' process_* metrics of this process (left out when /proc cannot
// be read).
void RenderSelfMetrics(const reader::Collector& collector, const SelfStats& self,
                       reader::ExpositionFormat format, std::string* out);

// GET /api/health: returns the HTTP status (200, or 503 when a segment or
// the archive is corrupt) and fills `out` with JSON: "status" ok or
// degraded, "reasons" (corrupt segment, configuration conflict, invalid
// family, untrusted file, scan stuck, scan failing), and every problem with
// its kind.
int RenderHealth(const reader::Collector& collector, const SelfStats& self, std::string* out);

// GET /api/stats: per family totals and percentiles, per endpoint request
// counts, error rates and latency percentiles, cache hit rate, LLM usage.
void RenderStats(const reader::Collector& collector, std::string* out);

// GET /api/recent and /api/errors: the query string parsed into `query`
// (limit, service, endpoint, status). Returns 200, or 400 with `out`
// holding the JSON error.
int RenderRecent(const reader::Collector& collector, reader::RingKind kind, const std::string& query_string,
                 std::string* out);

inline constexpr const char* kVersion = SHMETRICS_VERSION;  // CMakeLists.txt: project(VERSION)
// A scan running longer than this is reported as stuck in /api/health.
inline constexpr double kScanStuckSeconds = 5.0;

}  // namespace shmetrics::exporter
