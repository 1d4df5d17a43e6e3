#include "views.h"

#include <cmath>
#include <map>
#include <set>
#include <time.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "process_metrics.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::exporter {
namespace {
using reader::AppendJsonNumber;
using reader::AppendJsonString;

std::string LabelValue(const reader::AggregatedSeries& s, absl::string_view name) {
  for (const auto& [label, value] : s.labels) {
    if (label == name) return value;
  }
  return "";
}

void AppendPercentiles(std::string* out, const std::vector<double>& bounds,
                       const std::vector<uint64_t>& buckets) {
  static constexpr std::pair<const char*, double> kQuantiles[] = {{"p50", 0.5}, {"p95", 0.95}, {"p99", 0.99}};
  for (const auto& [name, q] : kQuantiles) {
    absl::StrAppend(out, ",\"", name, "\":");
    AppendJsonNumber(out, reader::EstimateQuantile(bounds, buckets, q));
  }
}

struct Family {
  explicit Family(shm::MetricType t) : type(t) {}
  shm::MetricType type;
  double total = 0;
  size_t series = 0;
  std::vector<double> bounds;
  std::vector<uint64_t> buckets;
  double sum = 0;
};

void Merge(Family& f, const reader::AggregatedSeries& s) {
  ++f.series;
  if (s.type != shm::MetricType::kHistogram) {
    f.total += s.value;
    return;
  }
  // A native histogram counts at its own resolution.
  std::vector<double> bounds;
  std::vector<uint64_t> buckets;
  reader::QuantileBuckets(s, &bounds, &buckets);
  if (f.buckets.empty()) {
    f.bounds = bounds;
    f.buckets.assign(buckets.size(), 0);
  }
  if (f.bounds != bounds) return;
  for (size_t b = 0; b < buckets.size(); ++b) f.buckets[b] += buckets[b];
  f.sum += s.sum;
}

uint64_t Count(const Family& f) {
  uint64_t count = 0;
  for (uint64_t b : f.buckets) count += b;
  return count;
}

// One process's segments, summed (a process with several writers has a
// segment per writer; the exporter merges per process elsewhere too).
struct ProcessSegments {
  uint64_t families_used = 0, families_capacity = 0;
  uint64_t series_used = 0, series_capacity = 0;
  uint64_t cells_used = 0, cells_capacity = 0;
  uint64_t lanes_used = 0, lanes_capacity = 0;
  uint64_t series_overflows = 0, lane_fallbacks = 0, records_dropped = 0;
  uint64_t exemplars_dropped = 0, native_out_of_range = 0;
};

// Live segments by (service, pid).
std::map<std::pair<std::string, uint32_t>, ProcessSegments> LiveSegmentsByProcess(
    const reader::Collector& collector) {
  std::map<std::pair<std::string, uint32_t>, ProcessSegments> out;
  for (const reader::SegmentReport& r : collector.Segments()) {
    if (!r.alive) continue;
    const reader::SegmentInfo& i = r.info;
    ProcessSegments& p = out[{i.service, i.pid}];
    p.families_used += i.family_count;
    p.families_capacity += i.family_capacity;
    p.series_used += i.series_count;
    p.series_capacity += i.series_capacity;
    p.cells_used += i.cells_used;
    p.cells_capacity += i.cells_per_lane;
    p.lanes_used += i.lanes_in_use;
    p.lanes_capacity += i.exclusive_lanes;
    p.series_overflows += i.series_overflow_count;
    p.lane_fallbacks += i.lane_fallback_count;
    p.records_dropped += i.records_dropped;
    p.exemplars_dropped += i.exemplars_dropped;
    p.native_out_of_range += i.native_out_of_range;
  }
  return out;
}

struct SegmentFamily {
  const char* name;  // a counter's without _total
  bool counter;
  const char* help;
  uint64_t ProcessSegments::*value;
};

// Names begin with shmetrics_exporter_, which writers cannot register
// (shm/names.h), so they never clash with a service's families.
constexpr SegmentFamily kSegmentFamilies[] = {
    {"shmetrics_exporter_segment_families_used", false, "Families registered in the process's live segment.",
     &ProcessSegments::families_used},
    {"shmetrics_exporter_segment_families_capacity", false,
     "Families the process's live segment can hold (shm::Capacities::families).",
     &ProcessSegments::families_capacity},
    {"shmetrics_exporter_segment_series_used", false,
     "Series slots taken in the process's live segment, overflow series included; each family with labels keeps "
     "one slot for its overflow series until it is taken.",
     &ProcessSegments::series_used},
    {"shmetrics_exporter_segment_series_capacity", false,
     "Series slots in the process's live segment (shm::Capacities::series).", &ProcessSegments::series_capacity},
    {"shmetrics_exporter_segment_cells_used", false,
     "8-byte cells taken in each lane of the process's live segment (a series takes its cells in every lane).",
     &ProcessSegments::cells_used},
    {"shmetrics_exporter_segment_cells_capacity", false,
     "8-byte cells per lane in the process's live segment (shm::Capacities::cells_per_lane).",
     &ProcessSegments::cells_capacity},
    {"shmetrics_exporter_segment_lanes_used", false,
     "Exclusive (per-thread) lanes owned by a thread now in the process's live segment.",
     &ProcessSegments::lanes_used},
    {"shmetrics_exporter_segment_lanes_capacity", false,
     "Exclusive (per-thread) lanes in the process's live segment (shm::Capacities::exclusive_lanes); threads "
     "beyond them share one slower lane.",
     &ProcessSegments::lanes_capacity},
    {"shmetrics_exporter_segment_series_overflows", true,
     "Requests for a new label set that found the segment full and got the family's overflow series (label "
     "values shmetrics_overflow) instead, since the process started.",
     &ProcessSegments::series_overflows},
    {"shmetrics_exporter_segment_lane_fallbacks", true,
     "Threads that found no free exclusive lane and write to the shared lane, since the process started.",
     &ProcessSegments::lane_fallbacks},
    {"shmetrics_exporter_segment_records_dropped", true,
     "Request records not kept (no ring: written from a thread on the shared lane), since the process started.",
     &ProcessSegments::records_dropped},
    {"shmetrics_exporter_segment_exemplars_dropped", true,
     "Exemplars not kept (written from a thread on the shared lane, or labels over 128 characters or invalid), "
     "since the process started.",
     &ProcessSegments::exemplars_dropped},
    {"shmetrics_exporter_segment_native_out_of_range", true,
     "Native histogram observations outside their family's [min, max], counted in the outermost bucket, since the "
     "process started.",
     &ProcessSegments::native_out_of_range},
};

}  // namespace

void RenderSelfMetrics(const reader::Collector& collector, const SelfStats& self,
                       reader::ExpositionFormat format, std::string* out) {
  const reader::CollectorCounters c = collector.Counters();
  const std::shared_ptr<const std::vector<reader::Problem>> shared_problems = collector.SharedProblems();
  const std::vector<reader::Problem>& problems = *shared_problems;
  size_t by_kind[4] = {};
  for (const reader::Problem& p : problems) ++by_kind[static_cast<size_t>(p.kind)];
  const bool om = format == reader::ExpositionFormat::kOpenMetrics;
  auto gauge = [&](const char* name, const char* help, absl::string_view labels, double value, bool header) {
    if (header) absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n");
    absl::StrAppend(out, name, labels, " ");
    reader::AppendDouble(out, value);
    out->push_back('\n');
  };
  // `family` is the name without _total: OpenMetrics names the family so,
  // text 0.0.4 names it after its sample, family_total.
  auto counter = [&](const char* family, const char* help, absl::string_view labels, double value, bool header) {
    if (header) {
      absl::StrAppend(out, "# HELP ", family, om ? "" : "_total", " ", help, "\n# TYPE ", family,
                      om ? "" : "_total", " counter\n");
    }
    absl::StrAppend(out, family, "_total", labels, " ");
    reader::AppendDouble(out, value);
    out->push_back('\n');
  };
  gauge("shmetrics_exporter_scrape_duration_seconds", "Time the previous scrape took to render.", "",
        self.last_scrape_duration_seconds, true);
  counter("shmetrics_exporter_scrapes", "Scrapes of /metrics served.", "", double(self.scrapes_total), true);
  gauge("shmetrics_exporter_segments", "Segments seen in the directory, by state.", "{state=\"alive\"}",
        double(c.segments_alive), true);
  gauge("shmetrics_exporter_segments", "", "{state=\"dead\"}", double(c.segments_dead), false);
  gauge("shmetrics_exporter_segments", "", "{state=\"not_ready\"}", double(c.segments_not_ready), false);
  gauge("shmetrics_exporter_segments", "", "{state=\"corrupt\"}",
        double(by_kind[static_cast<size_t>(reader::ProblemKind::kCorrupt)]), false);
  for (size_t kind = 0; kind < 4; ++kind) {
    const std::string labels =
        absl::StrCat("{kind=\"", reader::ProblemKindName(static_cast<reader::ProblemKind>(kind)), "\"}");
    gauge("shmetrics_exporter_problems",
          "Things skipped, by kind: corrupt (a file unreadable), untrusted (another owner, a link, a planted "
          "archive), invalid_family (breaks an exposition rule), conflict (cannot be exported beside another "
          "family).",
          labels, double(by_kind[kind]), kind == 0);
  }
  counter("shmetrics_exporter_segments_retired", "Dead writers' segments folded into the archive and removed.", "",
          double(c.segments_retired_total), true);
  gauge("shmetrics_exporter_series", "Aggregated series exported.", "", double(c.series), true);
  gauge("shmetrics_exporter_archived_series", "Series kept in the archive of retired writers.", "",
        double(c.archived_series), true);
  gauge("shmetrics_exporter_start_time_seconds", "Unix time the exporter started.", "",
        self.start_unix_seconds, true);
  // revision is the Prometheus convention's name for the commit (kept as
  // commit too, for existing queries).
  gauge("shmetrics_exporter_build_info",
        "The exporter's version (CMakeLists.txt), git commit (revision, commit) and compiler; always 1.",
        "{version=\"" SHMETRICS_VERSION "\",revision=\"" SHMETRICS_GIT_COMMIT "\",commit=\"" SHMETRICS_GIT_COMMIT
        "\",compiler=\"" SHMETRICS_COMPILER "\",build_type=\"" SHMETRICS_BUILD_TYPE "\"}",
        1, true);
  gauge("shmetrics_exporter_scan_running_seconds",
        "How long the directory scan in progress has run (0: none runs); past --scan-wait-ms, requests get the "
        "last view.", "",
        collector.ScanRunningSeconds(), true);
  gauge("shmetrics_exporter_requests_waiting_for_scan", "Requests waiting for a directory scan now.", "",
        double(self.requests_waiting_for_scan), true);
  counter("shmetrics_exporter_stale_views",
          "Requests served the last view instead of one from a scan begun after they came: busy (no place left "
          "to wait: two requests, or one JSON view, waiting already), scan_wait (the scan ran past "
          "--scan-wait-ms, or that is 0), scan_failed (the scan failed).",
          "{reason=\"busy\"}", double(self.stale_views_busy_total), true);
  counter("shmetrics_exporter_stale_views", "", "{reason=\"scan_wait\"}", double(self.stale_views_scan_wait_total),
          false);
  counter("shmetrics_exporter_stale_views", "", "{reason=\"scan_failed\"}",
          double(self.stale_views_scan_failed_total), false);

  // Capacity and losses of each live writer process's segment.
  const auto processes = LiveSegmentsByProcess(collector);
  std::vector<std::string> process_labels;
  process_labels.reserve(processes.size());
  for (const auto& [key, unused] : processes) {
    std::string labels = "{service=\"";
    reader::AppendLabelValue(&labels, key.first);
    absl::StrAppend(&labels, "\",pid=\"", key.second, "\"}");
    process_labels.push_back(std::move(labels));
  }
  for (const SegmentFamily& f : kSegmentFamilies) {
    size_t i = 0;
    for (const auto& [key, segments] : processes) {
      const double value = double(segments.*f.value);
      if (f.counter) {
        counter(f.name, f.help, process_labels[i], value, i == 0);
      } else {
        gauge(f.name, f.help, process_labels[i], value, i == 0);
      }
      ++i;
    }
  }

  // The standard process metrics of the client libraries; left out when
  // /proc cannot be read.
  const absl::StatusOr<ProcessStats> process = ReadProcessStats();
  if (process.ok()) {
    counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.", "",
            process->cpu_seconds_total, true);
    gauge("process_open_fds", "Number of open file descriptors.", "", double(process->open_fds), true);
    gauge("process_max_fds", "Maximum number of open file descriptors.", "", double(process->max_fds), true);
    gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", "",
          double(process->virtual_memory_bytes), true);
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.", "",
          double(process->resident_memory_bytes), true);
    gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "",
          process->start_time_seconds, true);
  }
}

constexpr size_t kMaxHealthProblems = 100;

int RenderHealth(const reader::Collector& collector, const SelfStats& self, std::string* out) {
  const std::shared_ptr<const std::vector<reader::Problem>> shared_problems = collector.SharedProblems();
  const std::vector<reader::Problem>& problems = *shared_problems;
  const reader::CollectorCounters c = collector.Counters();
  // 503 only when data is at risk (a trusted file that cannot be read);
  // conflicts, rule breaks and untrusted files degrade without failing a
  // probe: another tenant must not be able to fail this exporter's health.
  bool corrupt = false;
  std::set<std::string> reasons;
  for (const reader::Problem& p : problems) {
    corrupt |= p.kind == reader::ProblemKind::kCorrupt;
    reasons.insert(p.kind == reader::ProblemKind::kCorrupt         ? "corrupt segment"
                   : p.kind == reader::ProblemKind::kConflict      ? "configuration conflict"
                   : p.kind == reader::ProblemKind::kInvalidFamily ? "invalid family"
                                                                   : "untrusted file");
  }
  const double scan_seconds = collector.ScanRunningSeconds();
  if (scan_seconds > kScanStuckSeconds) reasons.insert("scan stuck");
  if (self.last_scan_failed) reasons.insert("scan failing");  // the directory gone or unreadable: see the log
  absl::StrAppend(out, "{\"status\":", reasons.empty() ? "\"ok\"" : "\"degraded\"", ",\"reasons\":[");
  bool first_reason = true;
  for (const std::string& reason : reasons) {
    if (!first_reason) out->push_back(',');
    first_reason = false;
    AppendJsonString(out, reason);
  }
  absl::StrAppend(out, "],\"retiring\":", c.retiring ? "true" : "false", ",\"scan_running_seconds\":");
  AppendJsonNumber(out, std::floor(scan_seconds * 1000) / 1000);
  absl::StrAppend(out, ",\"requests_waiting_for_scan\":", self.requests_waiting_for_scan,
                  ",\"ready\":", self.ready ? "true" : "false", ",\"version\":");
  AppendJsonString(out, kVersion);
  absl::StrAppend(out, ",\"uptime_seconds\":");
  AppendJsonNumber(out, std::floor((shm::NowUnixNs() * 1e-9 - self.start_unix_seconds) * 1000) / 1000);
  absl::StrAppend(out, ",\"segments_alive\":", c.segments_alive, ",\"segments_dead\":", c.segments_dead,
                  ",\"segments_retired_total\":", c.segments_retired_total, ",\"series\":", c.series,
                  ",\"segments\":[");
  bool first = true;
  for (const reader::SegmentReport& r : collector.Segments()) {
    absl::StrAppend(out, first ? "" : ",", "{\"service\":");
    first = false;
    AppendJsonString(out, r.info.service);
    absl::StrAppend(out, ",\"pid\":", r.info.pid, ",\"alive\":", r.alive ? "true" : "false", ",\"path\":");
    AppendJsonString(out, r.info.path);
    absl::StrAppend(out, ",\"families_used\":", r.info.family_count, ",\"families_capacity\":",
                    r.info.family_capacity, ",\"series_used\":", r.info.series_count,
                    ",\"series_capacity\":", r.info.series_capacity, ",\"series_overflow\":",
                    r.info.series_overflow_count, ",\"lanes_in_use\":", r.info.lanes_in_use, "}");
  }
  // The first kMaxHealthProblems, and how many in all: a directory full of
  // another tenant's junk must not make every liveness probe megabytes long
  // (`shmetrics check` lists them all).
  absl::StrAppend(out, "],\"problems_total\":", problems.size(), ",\"problems\":[");
  first = true;
  for (size_t i = 0; i < problems.size() && i < kMaxHealthProblems; ++i) {
    const reader::Problem& p = problems[i];
    absl::StrAppend(out, first ? "" : ",", "{\"path\":");
    first = false;
    AppendJsonString(out, p.path);
    absl::StrAppend(out, ",\"kind\":\"", reader::ProblemKindName(p.kind), "\"");
    if (!p.family.empty()) {
      absl::StrAppend(out, ",\"family\":");
      AppendJsonString(out, p.family);
    }
    absl::StrAppend(out, ",\"error\":");
    AppendJsonString(out, p.error);
    out->push_back('}');
  }
  out->append("]}\n");
  return corrupt ? 503 : 200;
}

void RenderStats(const reader::Collector& collector, std::string* out) {
  const std::vector<reader::AggregatedSeries> all = collector.Snapshot();
  std::map<std::string, Family> families;
  struct Endpoint {
    double requests = 0, errors = 0;
    Family latency = Family(shm::MetricType::kHistogram);
  };
  std::map<std::pair<std::string, std::string>, Endpoint> endpoints;  // (method, endpoint)
  double cache_hits = 0, cache_misses = 0;
  std::map<std::string, double> llm;  // tokens, cost, calls
  for (const reader::AggregatedSeries& s : all) {
    auto [it, inserted] = families.try_emplace(s.family, s.type);
    Merge(it->second, s);
    if (s.family == "http_requests_total") {
      Endpoint& e = endpoints[{LabelValue(s, "method"), LabelValue(s, "endpoint")}];
      e.requests += s.value;
      if (LabelValue(s, "status").substr(0, 1) == "5") e.errors += s.value;
    } else if (s.family == "http_request_duration_seconds") {
      Merge(endpoints[{LabelValue(s, "method"), LabelValue(s, "endpoint")}].latency, s);
    } else if (s.family == "cache_operations_total") {
      (LabelValue(s, "result") == "hit" ? cache_hits : cache_misses) += s.value;
    } else if (s.family.size() > 13 && s.family.substr(s.family.size() - 13) == "_tokens_total") {
      llm["tokens"] += s.value;
    } else if (s.family.find("_api_cost_dollars_total") != std::string::npos) {
      llm["cost_usd"] += s.value;
    } else if (s.family.find("_api_calls_total") != std::string::npos) {
      llm["calls"] += s.value;
    }
  }
  out->append("{\"families\":[");
  bool first = true;
  for (const auto& [name, f] : families) {
    absl::StrAppend(out, first ? "" : ",", "{\"name\":");
    first = false;
    AppendJsonString(out, name);
    absl::StrAppend(out, ",\"type\":\"", shm::MetricTypeName(f.type), "\",\"series\":", f.series);
    if (f.type == shm::MetricType::kHistogram) {
      absl::StrAppend(out, ",\"count\":", Count(f), ",\"sum\":");
      AppendJsonNumber(out, f.sum);
      AppendPercentiles(out, f.bounds, f.buckets);
    } else {
      absl::StrAppend(out, ",\"total\":");
      AppendJsonNumber(out, f.total);
    }
    out->push_back('}');
  }
  out->append("],\"endpoints\":[");
  first = true;
  for (const auto& [key, e] : endpoints) {
    absl::StrAppend(out, first ? "" : ",", "{\"method\":");
    first = false;
    AppendJsonString(out, key.first);
    absl::StrAppend(out, ",\"endpoint\":");
    AppendJsonString(out, key.second);
    absl::StrAppend(out, ",\"requests\":");
    AppendJsonNumber(out, e.requests);
    absl::StrAppend(out, ",\"errors\":");
    AppendJsonNumber(out, e.errors);
    absl::StrAppend(out, ",\"error_rate\":");
    AppendJsonNumber(out, e.requests > 0 ? e.errors / e.requests : NAN);
    if (!e.latency.buckets.empty()) AppendPercentiles(out, e.latency.bounds, e.latency.buckets);
    out->push_back('}');
  }
  absl::StrAppend(out, "],\"cache\":{\"hits\":");
  AppendJsonNumber(out, cache_hits);
  absl::StrAppend(out, ",\"misses\":");
  AppendJsonNumber(out, cache_misses);
  absl::StrAppend(out, ",\"hit_rate\":");
  AppendJsonNumber(out, cache_hits + cache_misses > 0 ? cache_hits / (cache_hits + cache_misses) : NAN);
  absl::StrAppend(out, "},\"llm\":{\"tokens\":");
  AppendJsonNumber(out, llm["tokens"]);
  absl::StrAppend(out, ",\"cost_usd\":");
  AppendJsonNumber(out, llm["cost_usd"]);
  absl::StrAppend(out, ",\"calls\":");
  AppendJsonNumber(out, llm["calls"]);
  out->append("}}\n");
}

namespace {
// Decodes %XX and '+' in a query-string value; false on a bad escape.
bool UrlDecode(absl::string_view text, std::string* out) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out->push_back(' ');
    } else if (text[i] == '%') {
      int value = 0;
      if (i + 2 >= text.size() ||
          !absl::SimpleHexAtoi(text.substr(i + 1, 2), &value)) {
        return false;
      }
      out->push_back(static_cast<char>(value));
      i += 2;
    } else {
      out->push_back(text[i]);
    }
  }
  return true;
}
}  // namespace

int RenderRecent(const reader::Collector& collector, reader::RingKind kind, const std::string& query_string,
                 std::string* out) {
  reader::RecentQuery query;
  query.kind = kind;
  query.limit = kind == reader::RingKind::kErrors ? 50 : 100;
  auto bad = [&](const std::string& message) {
    out->append("{\"error\":");
    AppendJsonString(out, message);
    out->append("}\n");
    return 400;
  };
  for (absl::string_view pair : absl::StrSplit(query_string, '&', absl::SkipEmpty())) {
    const size_t eq = pair.find('=');
    const absl::string_view key = pair.substr(0, eq);
    std::string value;
    if (eq == absl::string_view::npos || !UrlDecode(pair.substr(eq + 1), &value)) {
      return bad(absl::StrCat("bad query parameter '", key, "'"));
    }
    if (key == "limit") {
      int limit = 0;
      if (!absl::SimpleAtoi(value, &limit) || limit < 1 || limit > 10000) {
        return bad("limit must be an integer from 1 to 10000");
      }
      query.limit = static_cast<size_t>(limit);
    } else if (key == "service") {
      query.service = value;
    } else if (key == "endpoint") {
      query.endpoint = value;
    } else if (key == "status") {
      int status = 0;
      if (!absl::SimpleAtoi(value, &status) || status < 0 || status > 65535) {
        return bad("status must be an integer from 0 to 65535");
      }
      query.status = status;
    } else {
      return bad(absl::StrCat("unknown query parameter '", key, "'; use limit, service, endpoint or status"));
    }
  }
  const std::vector<reader::RecentRecord> records = collector.Recent(query);
  out->append("{\"records\":[");
  for (size_t i = 0; i < records.size(); ++i) {
    const reader::RecentRecord& r = records[i];
    absl::StrAppend(out, i ? "," : "", "{\"timestamp_unix_ns\":", r.record.timestamp_unix_ns, ",\"service\":");
    AppendJsonString(out, r.service);
    absl::StrAppend(out, ",\"pid\":", r.pid, ",\"method\":");
    AppendJsonString(out, r.record.method);
    absl::StrAppend(out, ",\"endpoint\":");
    AppendJsonString(out, r.record.endpoint);
    absl::StrAppend(out, ",\"status\":", r.record.status, ",\"duration_seconds\":");
    AppendJsonNumber(out, r.record.duration_ns * 1e-9);
    absl::StrAppend(out, ",\"response_bytes\":", r.record.response_bytes, ",\"error\":",
                    r.record.error ? "true" : "false");
    if (!r.record.error_message.empty()) {
      absl::StrAppend(out, ",\"error_message\":");
      AppendJsonString(out, r.record.error_message);
    }
    out->push_back('}');
  }
  out->append("]}\n");
  return 200;
}

}  // namespace shmetrics::exporter
