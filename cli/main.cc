// shmetrics: inspect live segments.
//
//   shmetrics ls [--json]                 one line per segment
//   shmetrics dump [SEGMENT | shmetrics-archive] [--service S] [--openmetrics]
//   shmetrics top [--service S] [--interval SEC] [--iterations N]
//   shmetrics tail [--errors] [-f] [-n N] [--service S]
//   shmetrics check [SEGMENT...] [--json]
//   shmetrics gc [--yes] [--dry-run]
//   shmetrics archive [--json] [--drop-service NAME [--yes]]
//
// Every subcommand takes --dir (default $SHMETRICS_DIR, else /dev/shm) and
// --trusted-uids / --allow-other-owners (only this user's files are read
// otherwise, root included).
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <ctime>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/escaping.h"
#include "shmetrics/archive.h"
#include "shmetrics/collector.h"
#include "shmetrics/shm/names.h"
#include "shmetrics/version.h"
#include "terminal.h"

namespace shmetrics::cli {
namespace {

enum ExitCode {
  kOk = 0,
  kProblemsFound = 1,   // check found a problem; gc declined
  kUsage = 2,           // bad flag or argument
  kNotFound = 3,        // no such segment or directory
  kPermissionDenied = 4,
  kCorrupt = 5,         // a segment is corrupt (dump, check)
  kBusy = 6,            // gc: an exporter retires segments in this directory
};

constexpr const char* kExitCodes =
    "EXIT STATUS\n"
    "  0 ok, 1 problems found (a conflict, a family skipped) or declined, 2 bad flag or argument,\n"
    "  3 no such segment or directory, 4 permission denied or untrusted file (another owner, a\n"
    "  link, not a regular file), 5 corrupt segment or archive, 6 an exporter already retires\n"
    "  segments in this directory\n"
    "ENVIRONMENT\n"
    "  SHMETRICS_DIR  the segment directory when --dir is not given (default /dev/shm)\n"
    "OUTPUT\n"
    "  Text from segments is escaped for a terminal (control characters as \\xNN); dump on a\n"
    "  pipe is the exposition as is. Every listing has a --json form.\n"
    "SEE ALSO\n"
    "  shmetrics-exporter --help; docs/segment-format.md, docs/archive-format.md";

// Whose files are read: set once from the flags.
shm::ReadOnlyMapping::Options g_trust;

reader::Segment::Options SegmentOptions() {
  reader::Segment::Options options;
  options.mapping = g_trust;
  return options;
}

int ExitCodeFor(reader::ProblemKind kind) {
  switch (kind) {
    case reader::ProblemKind::kCorrupt: return kCorrupt;
    case reader::ProblemKind::kUntrusted: return kPermissionDenied;
    default: return kProblemsFound;
  }
}

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kNotFound: return kNotFound;
    case absl::StatusCode::kPermissionDenied: return kPermissionDenied;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnavailable: return kCorrupt;
    default: return kProblemsFound;
  }
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "shmetrics: %s\n", std::string(status.message()).c_str());
  return ExitCodeFor(status);
}

std::string StateName(const reader::SegmentInfo& info, bool alive) {
  if (alive) return "alive";
  return info.state == shm::SegmentState::kClosed ? "closed" : "dead";
}

// A segment path from an argument: a path as given, or a file name in dir.
std::string ResolveSegment(const std::string& dir, const std::string& argument) {
  return argument.find('/') == std::string::npos ? dir + "/" + argument : argument;
}

// ------------------------------------------------------------------- ls

int Ls(const std::string& dir, bool json, uint32_t pid) {
  auto entries = reader::ListSegments(dir);
  if (!entries.ok()) return Fail(entries.status());
  std::string out = json ? "[" : "";
  if (!json) {
    out = absl::StrFormat("%-20s %8s %-8s %8s %9s %11s %13s %7s %8s\n", "SERVICE", "PID", "STATE", "AGE", "SIZE",
                          "FAMILIES", "SERIES", "LANES", "OVERFLOW");
  }
  bool first = true;
  for (const reader::DirectoryEntry& entry : *entries) {
    if (pid != 0 && entry.id.pid != pid) continue;
    auto segment = reader::Segment::Open(entry.path, SegmentOptions());
    if (json) {
      absl::StrAppend(&out, first ? "" : ",", "\n  {\"file\":");
      reader::AppendJsonString(&out, entry.file_name);
    }
    first = false;
    if (!segment.ok()) {
      const absl::StatusCode code = segment.status().code();
      const std::string state = code == absl::StatusCode::kUnavailable        ? "not-ready"
                                : code == absl::StatusCode::kPermissionDenied ? "untrusted"
                                                                              : "corrupt";
      if (json) {
        absl::StrAppend(&out, ",\"service\":");
        reader::AppendJsonString(&out, entry.id.service);
        absl::StrAppend(&out, ",\"pid\":", entry.id.pid, ",\"state\":\"", state, "\",\"error\":");
        reader::AppendJsonString(&out, segment.status().message());
        out += "}";
      } else {
        absl::StrAppend(&out, absl::StrFormat("%-20s %8u %-9s %s\n", entry.id.service, entry.id.pid, state,
                                              absl::CEscape(segment.status().message())));
      }
      continue;
    }
    const reader::SegmentInfo info = (*segment)->Info();
    const bool alive = reader::WriterRunning(**segment);
    const double age = std::max(0.0, (shm::NowUnixNs() - info.created_unix_ns) * 1e-9);
    if (json) {
      absl::StrAppend(&out, ",\"service\":");
      reader::AppendJsonString(&out, info.service);
      absl::StrAppend(&out, ",\"pid\":", info.pid, ",\"state\":\"", StateName(info, alive),
                      "\",\"age_seconds\":", static_cast<int64_t>(age), ",\"size_bytes\":", info.size_bytes,
                      ",\"families\":", info.family_count, ",\"family_capacity\":", info.family_capacity,
                      ",\"series\":", info.series_count, ",\"series_capacity\":", info.series_capacity,
                      ",\"lanes_in_use\":", info.lanes_in_use, ",\"exclusive_lanes\":", info.exclusive_lanes,
                      ",\"series_overflow\":", info.series_overflow_count, "}");
    } else {
      absl::StrAppend(&out, absl::StrFormat("%-20s %8u %-8s %7ds %8.1fK %5u/%-5u %6u/%-6u %3u/%-3u %8u\n",
                                            info.service, info.pid, StateName(info, alive), static_cast<int>(age),
                                            info.size_bytes / 1024.0, info.family_count, info.family_capacity,
                                            info.series_count, info.series_capacity, info.lanes_in_use,
                                            info.exclusive_lanes, info.series_overflow_count));
    }
  }
  if (json) out += first ? "]\n" : "\n]\n";
  std::fputs(out.c_str(), stdout);
  return kOk;
}

// ----------------------------------------------------------------- dump

// dump --json: {"series":[...]}, one aggregated series per line, sorted as
// the collector's snapshot is; histograms with bounds and non-cumulative
// buckets (+Inf last), count and sum.
std::string SnapshotJson(const std::vector<reader::AggregatedSeries>& snapshot) {
  std::string out = "{\"series\":[";
  bool first = true;
  for (const reader::AggregatedSeries& s : snapshot) {
    absl::StrAppend(&out, first ? "\n  " : ",\n  ", "{\"service\":");
    first = false;
    reader::AppendJsonString(&out, s.service);
    out += ",\"family\":";
    reader::AppendJsonString(&out, s.family);
    absl::StrAppend(&out, ",\"type\":\"", shm::MetricTypeName(s.type), "\",\"labels\":{");
    for (size_t i = 0; i < s.labels.size(); ++i) {
      if (i) out += ",";
      reader::AppendJsonString(&out, s.labels[i].first);
      out += ":";
      reader::AppendJsonString(&out, s.labels[i].second);
    }
    out += "}";
    if (s.type == shm::MetricType::kHistogram) {
      out += ",\"bounds\":[";
      for (size_t i = 0; i < s.bounds.size(); ++i) {
        if (i) out += ",";
        reader::AppendJsonNumber(&out, s.bounds[i]);
      }
      out += "],\"buckets\":[";
      uint64_t count = 0;
      for (size_t i = 0; i < s.buckets.size(); ++i) {
        absl::StrAppend(&out, i ? "," : "", s.buckets[i]);
        count += s.buckets[i];
      }
      absl::StrAppend(&out, "],\"count\":", count, ",\"sum\":");
      reader::AppendJsonNumber(&out, s.sum);
      if (s.native) {
        // The native buckets in use: {"index": count}, indices as in the segment format.
        const shm::NativeShape& n = s.native_shape;
        absl::StrAppend(&out, ",\"native\":{\"schema\":", n.schema, ",\"zero_threshold\":");
        reader::AppendJsonNumber(&out, n.zero_threshold);
        absl::StrAppend(&out, ",\"zero_count\":", s.native_cells[shm::kNativeZeroCell],
                        ",\"out_of_range\":", s.native_cells[shm::kNativeOutOfRangeCell]);
        auto sign = [&](const char* name, uint32_t first_cell) {
          absl::StrAppend(&out, ",\"", name, "\":{");
          bool any = false;
          for (uint32_t j = 0; j < n.buckets_per_sign(); ++j) {
            if (s.native_cells[first_cell + j] == 0) continue;
            absl::StrAppend(&out, any ? "," : "", "\"", n.index_min + static_cast<int32_t>(j), "\":",
                            s.native_cells[first_cell + j]);
            any = true;
          }
          out += "}";
        };
        sign("positive", shm::kNativeFirstBucketCell);
        if (n.negative) sign("negative", n.negative_first_cell());
        out += "}";
      }
    } else {
      out += ",\"value\":";
      reader::AppendJsonNumber(&out, s.value);
    }
    out += "}";
  }
  out += first ? "]}\n" : "\n]}\n";
  return out;
}

// --pid: the file name of that process's one segment (of `service`, if set).
absl::StatusOr<std::string> SegmentOfPid(const std::string& dir, uint32_t pid, const std::string& service) {
  auto entries = reader::ListSegments(dir);
  if (!entries.ok()) return entries.status();
  std::vector<std::string> found;
  for (const reader::DirectoryEntry& entry : *entries) {
    if (entry.id.pid == pid && (service.empty() || entry.id.service == service)) found.push_back(entry.file_name);
  }
  if (found.empty()) return absl::NotFoundError(absl::StrCat("no segment of pid ", pid, " in ", dir));
  if (found.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat("pid ", pid, " has ", found.size(),
                                                      " segments; name one (or use --service): ",
                                                      absl::StrJoin(found, " ")));
  }
  return found.front();
}

int Dump(const std::string& dir, std::string segment, const std::string& service, bool openmetrics, bool json,
         uint32_t pid) {
  if (pid != 0) {
    if (!segment.empty()) {
      std::fprintf(stderr, "shmetrics: dump takes a segment or --pid, not both\n");
      return kUsage;
    }
    auto found = SegmentOfPid(dir, pid, service);
    if (!found.ok()) return Fail(found.status());
    segment = *found;
  }
  reader::CollectorOptions options;
  options.directory = dir;
  options.service_filter = service;
  options.retire_dead = false;  // read-only: dump never changes anything
  options.segment = SegmentOptions();
  if (!segment.empty() && segment.substr(segment.rfind('/') + 1) == reader::kArchiveFileName) {
    // The archive alone: no segment file is named like it.
    const std::string path = ResolveSegment(dir, segment);
    options.directory = path.substr(0, path.rfind('/'));
    options.file_filter = reader::kArchiveFileName;
  } else if (!segment.empty()) {
    const std::string path = ResolveSegment(dir, segment);
    auto opened = reader::Segment::Open(path, options.segment);  // exact errors for one segment
    if (!opened.ok()) return Fail(opened.status());
    options.directory = path.substr(0, path.rfind('/'));
    options.file_filter = path.substr(path.rfind('/') + 1);
    options.use_archive = false;  // that segment, and nothing else
  }
  auto collector = reader::Collector::Create(options);
  if (!collector.ok()) return Fail(collector.status());
  if (absl::Status s = (*collector)->Scan(); !s.ok()) return Fail(s);
  const auto format = openmetrics ? reader::ExpositionFormat::kOpenMetrics : reader::ExpositionFormat::kPrometheusText;
  std::string out;
  if (json) {
    out = SnapshotJson((*collector)->Snapshot());  // JSON escapes control characters itself
  } else {
    (*collector)->Render(format, &out);
    if (openmetrics) out += "# EOF\n";
  }
  // The exposition escapes what it must (\\, \", newline); a terminal also
  // needs the other control characters made visible. A pipe gets it as is.
  if (!json && isatty(STDOUT_FILENO)) out = TerminalSafeLines(out);
  std::fputs(out.c_str(), stdout);
  int worst = kOk;
  for (const reader::Problem& p : (*collector)->Problems()) {
    std::fprintf(stderr, "shmetrics: %s: %s\n", reader::ProblemKindName(p.kind), absl::CEscape(p.error).c_str());
    worst = std::max(worst, ExitCodeFor(p.kind));
  }
  return worst;
}

// ---------------------------------------------------------------- check

// Full validation: open, refresh, read every value, and check invariants.
absl::Status CheckOne(const std::string& path) {
  if (path.substr(path.rfind('/') + 1) == reader::kArchiveFileName) {
    return reader::Archive::Load(path).status();
  }
  auto segment = reader::Segment::Open(path, SegmentOptions());
  if (!segment.ok()) return segment.status();
  reader::Segment& s = **segment;
  if (absl::Status status = s.Refresh(); !status.ok()) return status;
  for (const reader::FamilyView& family : s.families()) {
    if (!family.rejected.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", family.rejected, " (readers skip that family)"));
    }
  }
  for (const reader::SeriesView& series : s.series()) {
    const reader::FamilyView& family = s.families()[series.family];
    if (family.type == shm::MetricType::kHistogram) {
      std::vector<uint64_t> buckets(family.bounds.size() + 1);
      const double sum = s.HistogramValue(series, buckets.data());
      if (std::isnan(sum)) return absl::DataLossError(absl::StrCat(path, ": histogram ", family.name, " has a NaN sum"));
    } else if (family.type == shm::MetricType::kCounter) {
      const double value = s.ScalarValue(series);
      if (!(value >= 0)) {
        return absl::DataLossError(absl::StrCat(path, ": counter ", family.name, " is negative or NaN"));
      }
    }
  }
  return absl::OkStatus();
}

int Check(const std::string& dir, std::vector<std::string> segments, bool json) {
  if (segments.empty()) {
    auto entries = reader::ListSegments(dir);
    if (!entries.ok()) return Fail(entries.status());
    for (const auto& e : *entries) segments.push_back(e.path);
    const std::string archive = dir + "/" + reader::kArchiveFileName;
    struct stat st {};
    if (lstat(archive.c_str(), &st) == 0) segments.push_back(archive);
  }
  int worst = kOk;
  std::string out = json ? "[" : "";
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::string path = ResolveSegment(dir, segments[i]);
    const absl::Status status = CheckOne(path);
    if (!status.ok()) worst = std::max(worst, ExitCodeFor(status));
    if (json) {
      absl::StrAppend(&out, i ? "," : "", "\n  {\"path\":");
      reader::AppendJsonString(&out, path);
      absl::StrAppend(&out, ",\"ok\":", status.ok() ? "true" : "false");
      if (!status.ok()) {
        absl::StrAppend(&out, ",\"error\":");
        reader::AppendJsonString(&out, status.message());
      }
      out += "}";
    } else {
      absl::StrAppend(&out, status.ok() ? "ok       " : "PROBLEM  ",
                      absl::CEscape(status.ok() ? path : std::string(status.message())), "\n");
    }
  }
  if (json) out += segments.empty() ? "]\n" : "\n]\n";
  std::fputs(out.c_str(), stdout);
  return worst;
}

// ------------------------------------------------------------------- gc

// True when the user said yes (or --yes was given). Without a terminal and
// without --yes, says why nothing was done: "not <doing> without --yes".
bool Confirm(bool yes, const std::string& question, const char* doing) {
  if (yes) return true;
  if (!isatty(STDIN_FILENO)) {
    std::fprintf(stderr, "shmetrics: not %s without --yes (standard input is not a terminal)\n", doing);
    return false;
  }
  std::printf("%s [y/N] ", question.c_str());
  std::fflush(stdout);
  std::string answer;
  std::getline(std::cin, answer);
  return answer == "y" || answer == "Y" || answer == "yes";
}

// A collector that holds the directory's retirement lock, or the exit code
// that says why there is none: kBusy (an exporter holds it; `busy_hint`
// says what to do), kPermissionDenied (an untrusted lock or archive).
int OpenRetirer(const std::string& dir, const char* busy_hint, std::unique_ptr<reader::Collector>* out) {
  reader::CollectorOptions options;
  options.directory = dir;
  options.retire_dead = true;
  options.segment = SegmentOptions();
  auto collector = reader::Collector::Create(options);
  if (!collector.ok()) {
    if (collector.status().code() == absl::StatusCode::kFailedPrecondition) {
      std::fprintf(stderr, "shmetrics: %s\nshmetrics: %s\n", std::string(collector.status().message()).c_str(),
                   busy_hint);
      return kBusy;
    }
    return Fail(collector.status());
  }
  if (!(*collector)->Counters().retiring) {
    for (const reader::Problem& p : (*collector)->Problems()) {
      std::fprintf(stderr, "shmetrics: %s\n", absl::CEscape(p.error).c_str());
    }
    return kPermissionDenied;
  }
  *out = *std::move(collector);
  return kOk;
}

int Gc(const std::string& dir, bool yes, bool dry_run) {
  auto entries = reader::ListSegments(dir);
  if (!entries.ok()) return Fail(entries.status());
  std::vector<std::string> dead;
  for (const auto& e : *entries) {
    auto segment = reader::Segment::Open(e.path, SegmentOptions());
    if (segment.ok() && !reader::WriterRunning(**segment)) dead.push_back(e.file_name);
  }
  if (dead.empty()) {
    std::printf("no segments of dead writers in %s\n", dir.c_str());
    return kOk;
  }
  std::printf("segments of dead writers in %s (their final values go to the archive):\n", dir.c_str());
  for (const auto& name : dead) std::printf("  %s\n", name.c_str());
  if (dry_run) return kOk;
  if (!Confirm(yes, absl::StrFormat("remove %zu segment(s)?", dead.size()), "removing")) return kProblemsFound;
  std::unique_ptr<reader::Collector> collector;
  if (const int code = OpenRetirer(dir, "that exporter retires dead segments itself", &collector); code != kOk) {
    return code;
  }
  // Scan re-checks liveness and retires exactly the dead: never a live writer's.
  if (absl::Status s = collector->Scan(); !s.ok()) return Fail(s);
  std::printf("retired %llu segment(s)\n",
              static_cast<unsigned long long>(collector->Counters().segments_retired_total));
  return kOk;
}

// -------------------------------------------------------------- archive

std::string SeriesText(const reader::ArchivedSeries& a) {
  std::string text = a.shape.name + "{";
  for (size_t i = 0; i < a.label_values.size(); ++i) {
    absl::StrAppend(&text, a.shape.label_names[i], "=\"", absl::CEscape(a.label_values[i]), "\",");
  }
  absl::StrAppend(&text, "service=\"", a.service, "\"} ");
  if (a.shape.type == shm::MetricType::kHistogram) {
    uint64_t count = 0;
    for (uint64_t b : a.buckets) count += b;
    absl::StrAppend(&text, "count=", count, " sum=");
    reader::AppendDouble(&text, a.sum);
  } else {
    reader::AppendDouble(&text, a.scalar);
  }
  return text;
}

int ShowArchive(const std::string& dir, bool json) {
  const std::string path = dir + "/" + reader::kArchiveFileName;
  absl::StatusOr<reader::Archive> archive = reader::Archive::Load(path);
  if (!archive.ok()) return Fail(archive.status());
  std::map<std::string, size_t> per_service;
  for (const auto& [key, a] : archive->series()) ++per_service[a.service];
  std::string out;
  if (json) {
    out = "{\"path\":";
    reader::AppendJsonString(&out, path);
    out += ",\"services\":{";
    bool first = true;
    for (const auto& [service, count] : per_service) {
      absl::StrAppend(&out, first ? "" : ",");
      first = false;
      reader::AppendJsonString(&out, service);
      absl::StrAppend(&out, ":", count);
    }
    out += "},\"series\":[";
    first = true;
    for (const auto& [key, a] : archive->series()) {
      absl::StrAppend(&out, first ? "" : ",", "{\"service\":");
      first = false;
      reader::AppendJsonString(&out, a.service);
      out += ",\"family\":";
      reader::AppendJsonString(&out, a.shape.name);
      absl::StrAppend(&out, ",\"type\":\"", shm::MetricTypeName(a.shape.type), "\",\"labels\":{");
      for (size_t i = 0; i < a.label_values.size(); ++i) {
        absl::StrAppend(&out, i ? "," : "");
        reader::AppendJsonString(&out, a.shape.label_names[i]);
        out += ":";
        reader::AppendJsonString(&out, a.label_values[i]);
      }
      out += "},";
      if (a.shape.type == shm::MetricType::kHistogram) {
        out += "\"sum\":";
        reader::AppendJsonNumber(&out, a.sum);
        out += ",\"buckets\":[";
        for (size_t b = 0; b < a.buckets.size(); ++b) absl::StrAppend(&out, b ? "," : "", a.buckets[b]);
        out += "]}";
      } else {
        out += "\"value\":";
        reader::AppendJsonNumber(&out, a.scalar);
        out += "}";
      }
    }
    out += "],\"folded\":[";
    first = true;
    for (const std::string& name : archive->folded()) {
      absl::StrAppend(&out, first ? "" : ",");
      first = false;
      reader::AppendJsonString(&out, name);
    }
    out += "]}\n";
  } else {
    absl::StrAppend(&out, "archive ", path, ": ", archive->series().size(), " series of ", per_service.size(),
                    " service(s), ", archive->folded().size(), " folded segment name(s) kept\n");
    for (const auto& [service, count] : per_service) absl::StrAppend(&out, "service ", service, ": ", count, " series\n");
    for (const auto& [key, a] : archive->series()) absl::StrAppend(&out, "  ", SeriesText(a), "\n");
    for (const std::string& name : archive->folded()) absl::StrAppend(&out, "folded ", absl::CEscape(name), "\n");
  }
  std::fputs(out.c_str(), stdout);
  return kOk;
}

int DropService(const std::string& dir, const std::string& service, bool yes) {
  // Same lock as retirement: no exporter may fold into the archive while
  // it is rewritten here.
  std::unique_ptr<reader::Collector> collector;
  if (const int code = OpenRetirer(dir, "stop it to drop a service's history", &collector); code != kOk) return code;
  const std::string path = dir + "/" + reader::kArchiveFileName;
  absl::StatusOr<reader::Archive> archive = reader::Archive::Load(path);
  if (!archive.ok()) return Fail(archive.status());
  size_t count = 0;
  for (const auto& [key, a] : archive->series()) count += a.service == service;
  if (count == 0) {
    std::fprintf(stderr, "shmetrics: the archive holds no series of service '%s'\n", absl::CEscape(service).c_str());
    return kNotFound;
  }
  std::printf("the archive holds %zu series of service %s: their totals will be forgotten\n", count,
              service.c_str());
  if (!Confirm(yes, "drop them?", "dropping")) return kProblemsFound;
  archive->DropService(service);
  if (absl::Status saved = archive->Save(path); !saved.ok()) return Fail(saved);
  std::printf("dropped %zu series of service %s\n", count, service.c_str());
  return kOk;
}

std::atomic<bool> g_quit{false};
void OnSignal(int) { g_quit.store(true); }

// ----------------------------------------------------------------- tail

// "2026-11-27T10:00:00.123456Z" (UTC, microseconds).
std::string RecordTime(uint64_t timestamp_unix_ns) {
  const time_t seconds = static_cast<time_t>(timestamp_unix_ns / 1000000000);
  tm utc{};
  gmtime_r(&seconds, &utc);
  char when[32];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &utc);
  return absl::StrFormat("%s.%06uZ", when, static_cast<unsigned>(timestamp_unix_ns % 1000000000 / 1000));
}

std::string FormatRecord(const std::string& service, uint32_t pid, const reader::RequestRecordView& r) {
  std::string line = absl::StrFormat("%s %s %u %s %s %u %.3fms %uB", RecordTime(r.timestamp_unix_ns), service, pid,
                                     TerminalSafe(r.method), TerminalSafe(r.endpoint), r.status,
                                     r.duration_ns / 1e6, r.response_bytes);
  if (r.error) absl::StrAppend(&line, " error", r.error_message.empty() ? "" : ": ", TerminalSafe(r.error_message));
  return line + "\n";
}

// tail --json: one object per record, one per line (also with -f).
std::string FormatRecordJson(const std::string& service, uint32_t pid, const reader::RequestRecordView& r) {
  std::string line = absl::StrFormat("{\"time\":\"%s\",\"timestamp_unix_ns\":%u,\"service\":",
                                     RecordTime(r.timestamp_unix_ns), r.timestamp_unix_ns);
  reader::AppendJsonString(&line, service);
  absl::StrAppend(&line, ",\"pid\":", pid, ",\"lane\":", r.lane, ",\"method\":");
  reader::AppendJsonString(&line, r.method);
  line += ",\"endpoint\":";
  reader::AppendJsonString(&line, r.endpoint);
  absl::StrAppend(&line, ",\"status\":", r.status, ",\"duration_seconds\":");
  reader::AppendJsonNumber(&line, r.duration_ns / 1e9);
  absl::StrAppend(&line, ",\"response_bytes\":", r.response_bytes, ",\"error\":", r.error ? "true" : "false");
  if (r.error) {
    line += ",\"error_message\":";
    reader::AppendJsonString(&line, r.error_message);
  }
  return line + "}\n";
}

struct TailSource {
  std::unique_ptr<reader::Segment> segment;
  std::string service;
  uint32_t pid = 0;
  std::vector<uint64_t> cursors;  // per lane
};

int Tail(const std::string& dir, const std::string& service, bool errors, bool follow, int limit, double interval,
         bool json, uint32_t pid) {
  const reader::RingKind kind = errors ? reader::RingKind::kErrors : reader::RingKind::kRequests;
  std::map<std::string, TailSource> sources;
  signal(SIGINT, &OnSignal);
  signal(SIGTERM, &OnSignal);
  signal(SIGPIPE, SIG_IGN);
  bool first = true;
  while (!g_quit.load()) {
    auto entries = reader::ListSegments(dir);
    if (!entries.ok()) return Fail(entries.status());
    std::vector<std::tuple<uint64_t, std::string, uint32_t, uint32_t, uint64_t, std::string>> batch;
    uint64_t lost = 0;
    // Slots read per poll are bounded, whatever the rings claim: a hostile
    // segment's rings can be huge, sparse and full of torn slots.
    uint64_t budget = reader::kRecentScanBudget + 8 * static_cast<uint64_t>(limit);
    for (const auto& entry : *entries) {
      if (!service.empty() && entry.id.service != service) continue;
      if (pid != 0 && entry.id.pid != pid) continue;
      auto it = sources.find(entry.file_name);
      if (it == sources.end()) {
        auto segment = reader::Segment::Open(entry.path, SegmentOptions());
        if (!segment.ok()) continue;
        TailSource source;
        source.service = (*segment)->Info().service;
        source.pid = (*segment)->Info().pid;
        source.cursors.assign((*segment)->ring_count(), 0);
        source.segment = *std::move(segment);
        it = sources.emplace(entry.file_name, std::move(source)).first;
      }
      TailSource& source = it->second;
      for (uint32_t lane = 0; lane < source.segment->ring_count(); ++lane) {
        uint64_t from = source.cursors[lane];
        if (first) {  // only the newest `limit` of each ring can be shown
          const uint64_t written = source.segment->RingExtentOf(lane, kind).written;
          from = written > static_cast<uint64_t>(limit) ? written - limit : 0;
        }
        reader::RingRead read = source.segment->ReadRing(lane, kind, from, budget);
        budget -= std::min<uint64_t>(budget, read.records.size() + read.torn);
        source.cursors[lane] = read.next;
        if (!first) lost += read.overwritten + read.skipped;
        for (const auto& r : read.records) {
          batch.emplace_back(r.timestamp_unix_ns, source.service, source.pid, lane, r.index,
                             json ? FormatRecordJson(source.service, source.pid, r)
                                  : FormatRecord(source.service, source.pid, r));
        }
      }
    }
    std::sort(batch.begin(), batch.end());
    const size_t skip = first && batch.size() > static_cast<size_t>(limit) ? batch.size() - limit : 0;
    std::string out;
    for (size_t i = skip; i < batch.size(); ++i) out += std::get<5>(batch[i]);
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    if (lost > 0) std::fprintf(stderr, "shmetrics: %llu record(s) overwritten before they could be shown\n",
                               static_cast<unsigned long long>(lost));
    first = false;
    if (!follow) break;
    std::this_thread::sleep_for(std::chrono::duration<double>(interval));
  }
  return kOk;
}

// ------------------------------------------------------------------ top

struct TopRow {
  std::string name;
  double rate = 0;      // per second over the last interval
  double total = 0;
  std::string extra;    // percentiles for histograms
};

std::string SeriesName(const reader::AggregatedSeries& s) {
  std::string name = TerminalSafe(s.family) + "{";
  for (size_t i = 0; i < s.labels.size(); ++i) {
    absl::StrAppend(&name, i ? "," : "", s.labels[i].first, "=", TerminalSafe(s.labels[i].second));
  }
  return absl::StrCat(name, s.labels.empty() ? "" : ",", "service=", s.service, "}");
}

std::vector<TopRow> TopRows(const std::vector<reader::AggregatedSeries>& now,
                            const std::map<std::string, reader::AggregatedSeries>& before, double seconds) {
  std::vector<TopRow> rows;
  for (const auto& s : now) {
    TopRow row;
    row.name = SeriesName(s);
    auto it = before.find(row.name);
    if (s.type == shm::MetricType::kHistogram) {
      // A native histogram's percentiles come from its own buckets.
      std::vector<double> bounds, before_bounds;
      std::vector<uint64_t> delta, before_buckets;
      reader::QuantileBuckets(s, &bounds, &delta);
      uint64_t count = 0;
      for (uint64_t b : delta) count += b;
      row.total = static_cast<double>(count);
      uint64_t delta_count = count;
      if (it != before.end()) reader::QuantileBuckets(it->second, &before_bounds, &before_buckets);
      if (it != before.end() && before_bounds == bounds && before_buckets.size() == delta.size()) {
        delta_count = 0;
        for (size_t b = 0; b < delta.size(); ++b) {
          delta[b] -= std::min(delta[b], before_buckets[b]);
          delta_count += delta[b];
        }
      }
      row.rate = it == before.end() ? 0 : delta_count / seconds;
      if (delta_count > 0) {
        row.extra = absl::StrFormat("p50=%.4g p95=%.4g p99=%.4g", reader::EstimateQuantile(bounds, delta, 0.5),
                                    reader::EstimateQuantile(bounds, delta, 0.95),
                                    reader::EstimateQuantile(bounds, delta, 0.99));
      }
    } else {
      row.total = s.value;
      row.rate = it == before.end() || s.type != shm::MetricType::kCounter
                     ? 0
                     : std::max(0.0, s.value - it->second.value) / seconds;
    }
    rows.push_back(std::move(row));
  }
  std::stable_sort(rows.begin(), rows.end(), [](const TopRow& a, const TopRow& b) { return a.rate > b.rate; });
  return rows;
}

// Puts the terminal in non-canonical, no-echo mode while alive.
class RawTerminal {
 public:
  RawTerminal() {
    if (tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

int Top(const std::string& dir, const std::string& service, double interval, int iterations, int rows_shown) {
  reader::CollectorOptions options;
  options.directory = dir;
  options.service_filter = service;
  options.retire_dead = false;
  options.segment = SegmentOptions();
  auto collector = reader::Collector::Create(options);
  if (!collector.ok()) return Fail(collector.status());
  const bool tty = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
  std::unique_ptr<RawTerminal> raw;
  if (tty) {
    raw = std::make_unique<RawTerminal>();
    std::fputs("\x1b[?1049h", stdout);  // alternate screen, restored on exit
  }
  signal(SIGINT, &OnSignal);
  signal(SIGTERM, &OnSignal);
  std::map<std::string, reader::AggregatedSeries> before;
  auto last = std::chrono::steady_clock::now();
  for (int round = 0; !g_quit.load() && (iterations <= 0 || round < iterations); ++round) {
    if (absl::Status s = (*collector)->Scan(); !s.ok()) {
      if (tty) std::fputs("\x1b[?1049l", stdout);
      return Fail(s);
    }
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::max(1e-3, std::chrono::duration<double>(now - last).count());
    last = now;
    const std::vector<reader::AggregatedSeries> snapshot = (*collector)->Snapshot();
    const std::vector<TopRow> rows = TopRows(snapshot, before, seconds);
    before.clear();
    for (const auto& s : snapshot) before[SeriesName(s)] = s;
    const reader::CollectorCounters counters = (*collector)->Counters();
    std::string screen = tty ? "\x1b[H\x1b[2J" : "";
    absl::StrAppend(&screen, absl::StrFormat("shmetrics top: %s, %llu live segment(s), %zu series, every %.1fs%s\n\n",
                                             dir, static_cast<unsigned long long>(counters.segments_alive),
                                             rows.size(), interval, tty ? "  (q quits)" : ""));
    absl::StrAppend(&screen, absl::StrFormat("%12s %14s  %s\n", "RATE/s", "TOTAL", "SERIES"));
    for (size_t i = 0; i < rows.size() && static_cast<int>(i) < rows_shown; ++i) {
      absl::StrAppend(&screen, absl::StrFormat("%12.1f %14.6g  %s  %s\n", rows[i].rate, rows[i].total, rows[i].name,
                                               rows[i].extra));
    }
    if (!tty) screen += "\n";
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    if (iterations > 0 && round + 1 == iterations) break;
    // Sleep for the interval, waking on 'q' when interactive.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(interval);
    while (!g_quit.load() && std::chrono::steady_clock::now() < deadline) {
      if (tty) {
        pollfd in{STDIN_FILENO, POLLIN, 0};
        if (poll(&in, 1, 50) > 0) {
          char key = 0;
          if (read(STDIN_FILENO, &key, 1) == 1 && (key == 'q' || key == 'Q')) g_quit.store(true);
        }
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }
  if (tty) std::fputs("\x1b[?1049l", stdout);
  std::fflush(stdout);
  return kOk;
}

int Run(int argc, char** argv) {
  CLI::App app{"shmetrics: inspect shmetrics segments"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.set_version_flag("--version", "shmetrics " SHMETRICS_VERSION_LINE);
  std::string dir = shm::DirectoryFromEnvironment();
  app.add_option("--dir", dir, "segment directory (default $SHMETRICS_DIR or /dev/shm)");

  bool json = false;
  uint32_t pid = 0;
  auto* ls = app.add_subcommand("ls", "one line per segment: service, pid, state, age, size, use of capacity");
  ls->add_flag("--json", json, "JSON output");
  ls->add_option("--pid", pid, "only this process's segments")->check(CLI::PositiveNumber);
  ls->add_option("--dir", dir, "segment directory");

  std::string segment, service;
  bool openmetrics = false;
  auto* dump = app.add_subcommand("dump", "the exposition of one segment, or of every segment aggregated");
  dump->add_option("segment", segment, "a segment file name or path, or shmetrics-archive (default: all)");
  dump->add_option("--service", service, "only this service");
  dump->add_flag("--openmetrics", openmetrics, "OpenMetrics instead of Prometheus text");
  dump->add_flag("--json", json, "JSON: {\"series\":[...]}, one aggregated series per line");
  dump->add_option("--pid", pid, "only this process's segment (live values, no archive)")->check(CLI::PositiveNumber);
  dump->add_option("--dir", dir, "segment directory");

  double interval = 2;
  int iterations = 0, rows = 40;
  auto* top = app.add_subcommand("top", "live view of series by rate, with percentiles of histograms");
  top->add_option("--service", service, "only this service");
  top->add_option("--interval", interval, "seconds between refreshes")->check(CLI::Range(0.05, 3600.0));
  top->add_option("--iterations", iterations, "stop after N refreshes (0: until q or Ctrl-C)")->check(CLI::NonNegativeNumber);
  top->add_option("--rows", rows, "series shown")->check(CLI::PositiveNumber);
  top->add_option("--dir", dir, "segment directory");

  bool errors = false, follow = false;
  int limit = 100;
  double poll_interval = 0.2;
  auto* tail = app.add_subcommand("tail", "recent requests (or errors) from every segment's rings, oldest first");
  tail->add_flag("--errors", errors, "the error rings instead of the request rings");
  tail->add_flag("-f,--follow", follow, "keep printing new records (Ctrl-C stops)");
  tail->add_option("-n,--limit", limit, "records shown at first")->check(CLI::Range(1, 100000));
  tail->add_option("--service", service, "only this service");
  tail->add_flag("--json", json, "one JSON object per record and line (also with -f)");
  tail->add_option("--pid", pid, "only this process's records")->check(CLI::PositiveNumber);
  tail->add_option("--poll", poll_interval, "seconds between polls with -f")->check(CLI::Range(0.01, 60.0));
  tail->add_option("--dir", dir, "segment directory");

  std::vector<std::string> check_segments;
  auto* check = app.add_subcommand("check", "validate segments fully; exit non-zero on any problem");
  check->add_option("segments", check_segments, "segment file names or paths (default: all)");
  check->add_flag("--json", json, "JSON output");
  check->add_option("--dir", dir, "segment directory");

  bool yes = false, dry_run = false;
  auto* gc = app.add_subcommand("gc", "fold dead writers' segments into the archive and remove them");
  gc->add_flag("--yes,-y", yes, "do not ask");
  gc->add_flag("--dry-run", dry_run, "only list what would be removed");
  gc->add_option("--dir", dir, "segment directory");

  std::string drop_service;
  auto* archive = app.add_subcommand("archive", "the archive of retired writers: services, series, folded names");
  archive->add_flag("--json", json, "JSON output");
  archive->add_option("--drop-service", drop_service, "forget every archived series of this service (asks)");
  archive->add_flag("--yes,-y", yes, "do not ask");
  archive->add_option("--dir", dir, "segment directory");

  for (CLI::App* command : {static_cast<CLI::App*>(&app), ls, dump, top, tail, check, gc, archive}) {
    command->add_flag("--allow-other-owners", g_trust.allow_other_owners, "read files owned by any user");
    command->add_option("--trusted-uids", g_trust.trusted_uids, "uids whose files are read besides this user's")
        ->delimiter(',')
        ->allow_extra_args(false);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kUsage;
  }
  if (ls->parsed()) return Ls(dir, json, pid);
  if (dump->parsed()) return Dump(dir, segment, service, openmetrics, json, pid);
  if (top->parsed()) return Top(dir, service, interval, iterations, rows);
  if (check->parsed()) return Check(dir, check_segments, json);
  if (tail->parsed()) return Tail(dir, service, errors, follow, limit, poll_interval, json, pid);
  if (gc->parsed()) return Gc(dir, yes, dry_run);
  if (archive->parsed()) return drop_service.empty() ? ShowArchive(dir, json) : DropService(dir, drop_service, yes);
  return kUsage;
}

}  // namespace
}  // namespace shmetrics::cli

int main(int argc, char** argv) { return shmetrics::cli::Run(argc, argv); }
