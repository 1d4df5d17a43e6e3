#include "shmetrics/collector.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <set>
#include <tuple>
#include <mutex>
#include <shared_mutex>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace shmetrics::reader {
namespace {

constexpr absl::string_view kArchiveName = "shmetrics-archive";
constexpr absl::string_view kArchiveHeader = "shmetrics-archive\t1";
constexpr size_t kFoldedNamesKept = 4096;

// The shape of a family: what must agree for series to be merged.
struct Shape {
  std::string name;
  std::string help;
  shm::MetricType type = shm::MetricType::kCounter;
  shm::GaugeMerge merge = shm::GaugeMerge::kLiveSum;
  std::vector<std::string> label_names;
  std::vector<double> bounds;
  bool SameAs(const Shape& other) const {
    return type == other.type && label_names == other.label_names && bounds == other.bounds &&
           (type != shm::MetricType::kGauge || merge == other.merge);
  }
};

Shape ShapeOf(const FamilyView& f) {
  return {f.name, f.help, f.type, f.gauge_merge, f.label_names, f.bounds};
}

bool Archived(const Shape& shape) {
  return shape.type != shm::MetricType::kGauge ||
         (shape.merge != shm::GaugeMerge::kLiveSum && shape.merge != shm::GaugeMerge::kPerProcess);
}

// Escaping for label values: backslash, double quote and newline.
void AppendLabelValue(std::string* out, absl::string_view value) {
  for (char ch : value) {
    if (ch == '\\') out->append("\\\\");
    else if (ch == '"') out->append("\\\"");
    else if (ch == '\n') out->append("\\n");
    else out->push_back(ch);
  }
}

// HELP text: 0.0.4 escapes backslash and newline; OpenMetrics also quotes.
void AppendHelp(std::string* out, absl::string_view help, ExpositionFormat format) {
  for (char ch : help) {
    if (ch == '\\') out->append("\\\\");
    else if (ch == '\n') out->append("\\n");
    else if (ch == '"' && format == ExpositionFormat::kOpenMetrics) out->append("\\\"");
    else out->push_back(ch);
  }
}

bool EndsWith(absl::string_view text, absl::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

struct Collector::State {
  CollectorOptions options;
  std::string archive_path;
  int archive_lock_fd = -1;
  // std::shared_mutex rather than absl::Mutex: Debian's Abseil is built
  // without ThreadSanitizer annotations, so TSan could not see its
  // synchronization; pthread locks it intercepts. Guards everything below.
  mutable std::shared_mutex mu;

  struct OpenSegment {
    std::unique_ptr<Segment> segment;
    std::string service;
    uint32_t pid = 0;
    bool alive = false;
  };
  std::map<std::string, OpenSegment> segments;  // by file name
  std::map<std::string, std::string> problems;   // path -> error, this scan
  std::map<std::string, std::string> index_problems;  // from the last rebuild
  std::set<std::string> logged;
  CollectorCounters counters;

  struct ArchivedSeries {
    Shape shape;
    std::string service;
    std::vector<std::string> label_values;
    double scalar = 0;
    double sum = 0;
    std::vector<uint64_t> buckets;
  };
  std::map<std::string, ArchivedSeries> archive;  // by ArchiveKey
  std::deque<std::string> folded_names;
  absl::flat_hash_set<std::string> folded_set;

  struct Source {
    const Segment* segment;
    const SeriesView* series;
  };
  // A series while the index is built, and for Snapshot(): cold data.
  struct OutSeries {
    std::string service;
    std::vector<std::string> label_values;
    std::vector<Source> sources;
    const ArchivedSeries* archived = nullptr;
  };
  // What a scrape touches for one series, packed: offsets into the family's
  // contiguous buffers, so rendering walks memory in order.
  struct HotSeries {
    uint32_t text_end;    // end of this series' line starts in text_lines
    uint32_t om_end;      // end in om_lines (counters only)
    uint32_t source_end;  // end of this series' sources in `sources`
    const ArchivedSeries* archived;
  };
  struct OutFamily {
    Shape shape;
    std::string om_name;                // OpenMetrics family name (counters lose _total)
    std::vector<std::string> le_texts;  // `le="0.1"` ... `le="+Inf"`
    std::vector<OutSeries> series;      // cold, same order as `hot`
    std::vector<HotSeries> hot;
    std::vector<Source> sources;
    // Line starts rendered once per index build, so that a scrape only
    // copies them and formats numbers: "name{labels} " per scalar series;
    // per histogram series its bucket lines, "_sum" and "_count", whose
    // ends are in line_ends (bounds + 3 per series).
    std::string text_lines;
    std::string om_lines;
    std::vector<uint32_t> line_ends;
  };
  std::vector<OutFamily> index;
  mutable std::atomic<size_t> last_render_bytes{0};
  bool index_stale = true;

  void Problem(const std::string& path, const std::string& error,
               bool from_index = false) {
    (from_index ? index_problems : problems)[path] = error;
    if (logged.insert(path + "\n" + error).second) {
      std::fprintf(stderr, "shmetrics: skipping %s\n", error.c_str());
    }
  }

  static std::string ArchiveKey(absl::string_view service, absl::string_view family,
                                const std::vector<std::string>& values) {
    return absl::StrCat(service, "\x1f", family, "\x1f", absl::StrJoin(values, "\x1f"));
  }

  absl::Status LoadArchive();
  absl::Status SaveArchive();
  void Fold(const OpenSegment& open, const std::string& file_name);
  void RebuildIndex();
  void RenderFamily(const OutFamily& family, ExpositionFormat format, std::string* out) const;
  static double ScalarOf(const OutFamily& family, const Source* begin, const Source* end,
                         const ArchivedSeries* archived);
  static double HistogramOf(const Source* begin, const Source* end, const ArchivedSeries* archived,
                            uint64_t* buckets, size_t bucket_count);
};

// -------------------------------------------------------------------- archive

absl::Status Collector::State::SaveArchive() {
  std::string text(kArchiveHeader);
  text.push_back('\n');
  for (const std::string& name : folded_names) absl::StrAppend(&text, "F\t", absl::CEscape(name), "\n");
  for (const auto& [key, a] : archive) {
    absl::StrAppend(&text, "S\t", absl::CEscape(a.service), "\t", absl::CEscape(a.shape.name), "\t",
                    static_cast<int>(a.shape.type), "\t", static_cast<int>(a.shape.merge), "\t",
                    absl::CEscape(a.shape.help), "\t", a.shape.label_names.size());
    for (const auto& n : a.shape.label_names) absl::StrAppend(&text, "\t", absl::CEscape(n));
    for (const auto& v : a.label_values) absl::StrAppend(&text, "\t", absl::CEscape(v));
    absl::StrAppend(&text, "\t", a.shape.bounds.size());
    for (double b : a.shape.bounds) {
      text.push_back('\t');
      AppendDouble(&text, b);
    }
    text.push_back('\t');
    AppendDouble(&text, a.scalar);
    text.push_back('\t');
    AppendDouble(&text, a.sum);
    for (uint64_t b : a.buckets) absl::StrAppend(&text, "\t", b);
    text.push_back('\n');
  }
  const std::string temp = archive_path + ".tmp";
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", temp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  const bool ok = done == text.size() && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(temp.c_str(), archive_path.c_str()) != 0) {
    unlink(temp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", archive_path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Collector::State::LoadArchive() {
  std::ifstream in(archive_path);
  if (!in) return absl::OkStatus();  // no archive yet
  std::string line;
  std::getline(in, line);
  auto corrupt = [&](const std::string& why) {
    const std::string aside = absl::StrCat(archive_path, ".corrupt-", shm::NowUnixNs());
    rename(archive_path.c_str(), aside.c_str());
    archive.clear();
    folded_names.clear();
    folded_set.clear();
    Problem(archive_path, absl::StrCat(archive_path, ": unreadable archive (", why,
                                       "); set aside as ", aside, ", counters restart from live values"));
    return absl::OkStatus();
  };
  if (line != kArchiveHeader) return corrupt("bad header");
  int line_number = 1;
  while (std::getline(in, line)) {
    ++line_number;
    std::vector<std::string> fields;
    for (absl::string_view raw : absl::StrSplit(line, '\t')) {
      std::string field;
      if (!absl::CUnescape(raw, &field)) return corrupt(absl::StrCat("line ", line_number));
      fields.push_back(std::move(field));
    }
    const std::string where = absl::StrCat("line ", line_number);
    if (fields.size() == 2 && fields[0] == "F") {
      folded_names.push_back(fields[1]);
      folded_set.insert(fields[1]);
      continue;
    }
    if (fields.size() < 8 || fields[0] != "S") return corrupt(where);
    ArchivedSeries a;
    a.service = fields[1];
    a.shape.name = fields[2];
    int type = 0, merge = 0;
    size_t label_count = 0, bound_count = 0;
    if (!absl::SimpleAtoi(fields[3], &type) || type < 1 || type > 3 ||
        !absl::SimpleAtoi(fields[4], &merge) || merge < 0 || merge > 4 ||
        !absl::SimpleAtoi(fields[6], &label_count) || label_count > shm::kMaxLabels ||
        !shm::IsValidMetricName(a.shape.name)) {
      return corrupt(where);
    }
    a.shape.type = static_cast<shm::MetricType>(type);
    a.shape.merge = static_cast<shm::GaugeMerge>(merge);
    a.shape.help = fields[5];
    size_t next = 7;
    if (fields.size() < next + 2 * label_count + 1) return corrupt(where);
    for (size_t i = 0; i < label_count; ++i) a.shape.label_names.push_back(fields[next++]);
    for (size_t i = 0; i < label_count; ++i) a.label_values.push_back(fields[next++]);
    if (!absl::SimpleAtoi(fields[next++], &bound_count) || bound_count > shm::kMaxBuckets) return corrupt(where);
    const size_t bucket_count = a.shape.type == shm::MetricType::kHistogram ? bound_count + 1 : 0;
    if (fields.size() != next + bound_count + 2 + bucket_count) return corrupt(where);
    for (size_t i = 0; i < bound_count; ++i) {
      double bound;
      if (!absl::SimpleAtod(fields[next++], &bound)) return corrupt(where);
      a.shape.bounds.push_back(bound);
    }
    if (!absl::SimpleAtod(fields[next++], &a.scalar) || !absl::SimpleAtod(fields[next++], &a.sum)) {
      return corrupt(where);
    }
    for (size_t i = 0; i < bucket_count; ++i) {
      uint64_t count;
      if (!absl::SimpleAtoi(fields[next++], &count)) return corrupt(where);
      a.buckets.push_back(count);
    }
    archive[ArchiveKey(a.service, a.shape.name, a.label_values)] = std::move(a);
  }
  return absl::OkStatus();
}

void Collector::State::Fold(const OpenSegment& open, const std::string& file_name) {
  const Segment& segment = *open.segment;
  std::vector<uint64_t> buckets;
  for (const SeriesView& series : segment.series()) {
    const Shape shape = ShapeOf(segment.families()[series.family]);
    if (!Archived(shape)) continue;
    const std::string key = ArchiveKey(open.service, shape.name, series.label_values);
    auto [it, inserted] = archive.try_emplace(key);
    ArchivedSeries& a = it->second;
    if (inserted) {
      a.shape = shape;
      a.service = open.service;
      a.label_values = series.label_values;
      a.buckets.assign(shape.type == shm::MetricType::kHistogram ? shape.bounds.size() + 1 : 0, 0);
    } else if (!a.shape.SameAs(shape)) {
      Problem(segment.path(), absl::StrCat(segment.path(), ": family ", shape.name,
                                           " conflicts with the archived family of that name; its "
                                           "final values are dropped"));
      continue;
    }
    if (shape.type == shm::MetricType::kHistogram) {
      buckets.assign(shape.bounds.size() + 1, 0);
      a.sum += segment.HistogramValue(series, buckets.data());
      for (size_t b = 0; b < buckets.size(); ++b) a.buckets[b] += buckets[b];
      continue;
    }
    const double value = segment.ScalarValue(series);
    if (shape.type == shm::MetricType::kGauge && shape.merge == shm::GaugeMerge::kMax) {
      a.scalar = inserted ? value : std::max(a.scalar, value);
    } else if (shape.type == shm::MetricType::kGauge && shape.merge == shm::GaugeMerge::kMin) {
      a.scalar = inserted ? value : std::min(a.scalar, value);
    } else {
      a.scalar += value;
    }
  }
  folded_names.push_back(file_name);
  folded_set.insert(file_name);
  while (folded_names.size() > kFoldedNamesKept) {
    folded_set.erase(folded_names.front());
    folded_names.pop_front();
  }
}

// ---------------------------------------------------------------- scanning

bool WriterRunning(const Segment& segment) {
  if (segment.WriterAlive()) return true;
  const SegmentInfo info = segment.Info();
  if (info.state != shm::SegmentState::kReady) return false;
  // The lock is free but the same process (pid and start time) still runs:
  // it closed its descriptor (a daemon closing every fd, say). Not dead.
  return info.process_start_ticks != 0 &&
         shm::ProcessStartTicks(static_cast<pid_t>(info.pid)) == info.process_start_ticks;
}

Collector::Collector(std::unique_ptr<State> state) : state_(std::move(state)) {}

Collector::~Collector() {
  if (state_->archive_lock_fd >= 0) close(state_->archive_lock_fd);
}

absl::StatusOr<std::unique_ptr<Collector>> Collector::Create(const CollectorOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  if (state->options.directory.empty()) state->options.directory = shm::DirectoryFromEnvironment();
  const std::string& dir = state->options.directory;
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("segment directory ", dir, " does not exist"));
  }
  state->archive_path = absl::StrCat(dir, "/", kArchiveName);
  if (options.retire_dead) {
    const std::string lock_path = state->archive_path + ".lock";
    const int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot open ", lock_path, ": ", std::strerror(errno)));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      close(fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "another exporter (or shmetrics gc) already retires segments in ", dir,
          "; run this one with retirement off to share the directory"));
    }
    state->archive_lock_fd = fd;
  }
  {
    std::unique_lock lock(state->mu);
    if (absl::Status s = state->LoadArchive(); !s.ok()) return s;
  }
  return std::unique_ptr<Collector>(new Collector(std::move(state)));
}

absl::Status Collector::Scan() {
  State& s = *state_;
  std::unique_lock lock(s.mu);
  absl::StatusOr<std::vector<DirectoryEntry>> entries = ListSegments(s.options.directory);
  if (!entries.ok()) return entries.status();
  ++s.counters.scans;
  s.counters.segments_not_ready = 0;

  bool changed = false;
  std::set<std::string> present;
  std::map<std::string, std::string> old_problems;
  old_problems.swap(s.problems);
  if (auto it = old_problems.find(s.archive_path); it != old_problems.end()) s.problems.insert(*it);
  for (const DirectoryEntry& entry : *entries) {
    if (!s.options.service_filter.empty() && entry.id.service != s.options.service_filter) continue;
    if (!s.options.file_filter.empty() && entry.file_name != s.options.file_filter) continue;
    present.insert(entry.file_name);
    if (s.folded_set.contains(entry.file_name)) {
      // Folded before a crash or failed unlink: its values are archived already.
      if (s.options.retire_dead) unlink(entry.path.c_str());
      continue;
    }
    auto it = s.segments.find(entry.file_name);
    if (it != s.segments.end()) {
      const size_t series_before = it->second.segment->series().size();
      if (absl::Status status = it->second.segment->Refresh(); !status.ok()) {
        s.Problem(entry.path, std::string(status.message()));
        s.segments.erase(it);
        changed = true;
      } else {
        // Refresh may have grown series(): the index points into it.
        changed |= it->second.segment->series().size() != series_before;
      }
      continue;
    }
    absl::StatusOr<std::unique_ptr<Segment>> segment = Segment::Open(entry.path, s.options.segment);
    if (segment.status().code() == absl::StatusCode::kUnavailable) {
      ++s.counters.segments_not_ready;
      continue;
    }
    if (!segment.ok()) {
      s.Problem(entry.path, std::string(segment.status().message()));
      continue;
    }
    const SegmentInfo info = (*segment)->Info();
    s.segments[entry.file_name] = State::OpenSegment{*std::move(segment), info.service, info.pid, true};
    changed = true;
  }
  for (auto it = s.segments.begin(); it != s.segments.end();) {
    if (present.contains(it->first)) {
      ++it;
    } else {
      it = s.segments.erase(it);
      changed = true;
    }
  }

  // Liveness, then retirement of the dead.
  std::vector<std::string> to_retire;
  s.counters.segments_alive = s.counters.segments_dead = 0;
  for (auto& [name, open] : s.segments) {
    const bool was_alive = open.alive;
    open.alive = WriterRunning(*open.segment);
    changed |= open.alive != was_alive;
    if (open.alive) {
      ++s.counters.segments_alive;
    } else if (s.options.retire_dead) {
      to_retire.push_back(name);
    } else {
      ++s.counters.segments_dead;
    }
  }
  if (!to_retire.empty()) {
    changed = true;
    for (const std::string& name : to_retire) s.Fold(s.segments.at(name), name);
    if (absl::Status saved = s.SaveArchive(); saved.ok()) {
      for (const std::string& name : to_retire) {
        const std::string path = s.segments.at(name).segment->path();
        if (unlink(path.c_str()) != 0 && errno != ENOENT) {
          s.Problem(path, absl::StrCat(path, ": folded into the archive but not removed: ",
                                       std::strerror(errno)));
        }
        s.segments.erase(name);
        ++s.counters.segments_retired_total;
      }
    } else {
      // Nothing was removed: reload the archive as it was on disk, so the
      // folded values are not counted twice, and count the segments live.
      s.Problem(s.archive_path, std::string(saved.message()));
      s.archive.clear();
      s.folded_names.clear();
      s.folded_set.clear();
      (void)s.LoadArchive();
      s.counters.segments_dead += to_retire.size();
    }
  }

  // The index points into segments and their series vectors: rebuild it
  // whenever either changed, before the exclusive lock is released.
  if (changed || s.index_stale) {
    s.RebuildIndex();
    s.index_stale = false;
  }
  return absl::OkStatus();
}

void Collector::State::RebuildIndex() {
  struct Builder {
    Shape shape;
    std::map<std::vector<std::string>, OutSeries> series;  // key: service, values..., [pid]
  };
  std::map<std::string, Builder> builders;
  index_problems.clear();
  auto builder_for = [&](const Shape& shape, const std::string& path) -> Builder* {
    auto [it, inserted] = builders.try_emplace(shape.name);
    if (inserted) {
      it->second.shape = shape;
    } else if (!it->second.shape.SameAs(shape)) {
      Problem(path, absl::StrCat(path, ": family ", shape.name,
                                 " has another type, labels or buckets than elsewhere; its series are skipped"),
              /*from_index=*/true);
      return nullptr;
    }
    return &it->second;
  };
  for (const auto& [name, open] : segments) {
    const Segment& segment = *open.segment;
    for (const SeriesView& series : segment.series()) {
      const Shape shape = ShapeOf(segment.families()[series.family]);
      Builder* builder = builder_for(shape, segment.path());
      if (builder == nullptr) continue;
      const bool gauge = shape.type == shm::MetricType::kGauge;
      if (gauge && !open.alive &&
          (shape.merge == shm::GaugeMerge::kLiveSum || shape.merge == shm::GaugeMerge::kPerProcess)) {
        continue;
      }
      std::vector<std::string> key{open.service};
      key.insert(key.end(), series.label_values.begin(), series.label_values.end());
      if (gauge && shape.merge == shm::GaugeMerge::kPerProcess) key.push_back(absl::StrCat(open.pid));
      OutSeries& out = builder->series[key];
      out.service = open.service;
      out.label_values = series.label_values;
      out.sources.push_back({&segment, &series});
    }
  }
  for (const auto& [key, archived] : archive) {
    Builder* builder = builder_for(archived.shape, archive_path);
    if (builder == nullptr) continue;
    std::vector<std::string> series_key{archived.service};
    series_key.insert(series_key.end(), archived.label_values.begin(), archived.label_values.end());
    OutSeries& out = builder->series[series_key];
    out.service = archived.service;
    out.label_values = archived.label_values;
    out.archived = &archived;
  }

  index.clear();
  counters.series = 0;
  counters.archived_series = archive.size();
  for (auto& [name, builder] : builders) {
    OutFamily family;
    family.shape = builder.shape;
    family.om_name = family.shape.type == shm::MetricType::kCounter && EndsWith(name, "_total")
                         ? name.substr(0, name.size() - 6)
                         : name;
    for (double bound : family.shape.bounds) {
      std::string le = "le=\"";
      AppendDouble(&le, bound);
      family.le_texts.push_back(le + "\"");
    }
    family.le_texts.push_back("le=\"+Inf\"");
    const auto& label_names = family.shape.label_names;
    const bool add_service = std::find(label_names.begin(), label_names.end(), "service") == label_names.end();
    const bool per_process = family.shape.type == shm::MetricType::kGauge &&
                             family.shape.merge == shm::GaugeMerge::kPerProcess;
    for (auto& [key, out] : builder.series) {
      std::string labels;  // escaped `k="v",...` without braces
      for (size_t i = 0; i < label_names.size(); ++i) {
        absl::StrAppend(&labels, i ? "," : "", label_names[i], "=\"");
        AppendLabelValue(&labels, out.label_values[i]);
        labels.push_back('"');
      }
      if (add_service) {
        absl::StrAppend(&labels, labels.empty() ? "" : ",", "service=\"");
        AppendLabelValue(&labels, out.service);
        labels.push_back('"');
      }
      if (per_process) absl::StrAppend(&labels, labels.empty() ? "" : ",", "pid=\"", key.back(), "\"");
      const std::string braced = labels.empty() ? "" : "{" + labels + "}";
      if (family.shape.type == shm::MetricType::kHistogram) {
        for (const std::string& le : family.le_texts) {
          absl::StrAppend(&family.text_lines, name, "_bucket{", labels, labels.empty() ? "" : ",", le, "} ");
          family.line_ends.push_back(static_cast<uint32_t>(family.text_lines.size()));
        }
        absl::StrAppend(&family.text_lines, name, "_sum", braced, " ");
        family.line_ends.push_back(static_cast<uint32_t>(family.text_lines.size()));
        absl::StrAppend(&family.text_lines, name, "_count", braced, " ");
        family.line_ends.push_back(static_cast<uint32_t>(family.text_lines.size()));
      } else {
        absl::StrAppend(&family.text_lines, name, braced, " ");
        if (family.shape.type == shm::MetricType::kCounter) {
          absl::StrAppend(&family.om_lines, family.om_name, "_total", braced, " ");
        }
      }
      family.sources.insert(family.sources.end(), out.sources.begin(), out.sources.end());
      family.hot.push_back({static_cast<uint32_t>(family.text_lines.size()),
                            static_cast<uint32_t>(family.om_lines.size()),
                            static_cast<uint32_t>(family.sources.size()), out.archived});
      family.series.push_back(std::move(out));
    }
    counters.series += family.series.size();
    index.push_back(std::move(family));
  }
}

// ---------------------------------------------------------------- rendering

double Collector::State::ScalarOf(const OutFamily& family, const Source* begin, const Source* end,
                                  const ArchivedSeries* archived) {
  const shm::GaugeMerge merge = family.shape.merge;
  const bool extreme = family.shape.type == shm::MetricType::kGauge &&
                       (merge == shm::GaugeMerge::kMax || merge == shm::GaugeMerge::kMin);
  if (!extreme) {
    double total = archived != nullptr ? archived->scalar : 0;
    for (const Source* source = begin; source != end; ++source) total += source->segment->ScalarValue(*source->series);
    return total;
  }
  bool have = archived != nullptr;
  double result = have ? archived->scalar : 0;
  for (const Source* source = begin; source != end; ++source) {
    const double value = source->segment->ScalarValue(*source->series);
    result = !have ? value : merge == shm::GaugeMerge::kMax ? std::max(result, value) : std::min(result, value);
    have = true;
  }
  return result;
}

double Collector::State::HistogramOf(const Source* begin, const Source* end, const ArchivedSeries* archived,
                                     uint64_t* buckets, size_t bucket_count) {
  double sum = 0;
  if (archived != nullptr) {
    std::copy(archived->buckets.begin(), archived->buckets.end(), buckets);
    sum = archived->sum;
  } else {
    std::fill(buckets, buckets + bucket_count, 0);
  }
  uint64_t scratch[shm::kMaxBuckets + 1];
  for (const Source* source = begin; source != end; ++source) {
    sum += source->segment->HistogramValue(*source->series, scratch);
    for (size_t b = 0; b < bucket_count; ++b) buckets[b] += scratch[b];
  }
  return sum;
}

namespace {
void AppendCount(std::string* out, uint64_t value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  out->append(buffer, result.ptr);
}
}  // namespace

void Collector::State::RenderFamily(const OutFamily& family, ExpositionFormat format, std::string* out) const {
  const bool om_counter = format == ExpositionFormat::kOpenMetrics && family.shape.type == shm::MetricType::kCounter;
  const std::string& lines = om_counter ? family.om_lines : family.text_lines;
  const Source* sources = family.sources.data();
  uint32_t line_begin = 0, source_begin = 0;
  if (family.shape.type != shm::MetricType::kHistogram) {
    for (const HotSeries& series : family.hot) {
      const uint32_t line_end = om_counter ? series.om_end : series.text_end;
      out->append(lines.data() + line_begin, line_end - line_begin);
      AppendDouble(out, ScalarOf(family, sources + source_begin, sources + series.source_end, series.archived));
      out->push_back('\n');
      line_begin = line_end;
      source_begin = series.source_end;
    }
    return;
  }
  const size_t bucket_count = family.shape.bounds.size() + 1;
  uint64_t buckets[shm::kMaxBuckets + 1];
  const uint32_t* line_end = family.line_ends.data();
  auto line_start = [&]() {
    out->append(lines.data() + line_begin, *line_end - line_begin);
    line_begin = *line_end++;
  };
  for (const HotSeries& series : family.hot) {
    const double sum =
        HistogramOf(sources + source_begin, sources + series.source_end, series.archived, buckets, bucket_count);
    source_begin = series.source_end;
    // _count is the +Inf bucket: both come from the same bucket counts.
    uint64_t cumulative = 0;
    for (size_t b = 0; b < bucket_count; ++b) {
      cumulative += buckets[b];
      line_start();
      AppendCount(out, cumulative);
      out->push_back('\n');
    }
    line_start();
    AppendDouble(out, sum);
    out->push_back('\n');
    line_start();
    AppendCount(out, cumulative);
    out->push_back('\n');
  }
}

void Collector::Render(ExpositionFormat format, std::string* out) const {
  const State& s = *state_;
  std::shared_lock lock(s.mu);
  out->reserve(out->size() + s.last_render_bytes.load(std::memory_order_relaxed) + 4096);
  const size_t start_size = out->size();
  for (const State::OutFamily& family : s.index) {
    if (family.hot.empty()) continue;
    const std::string& name =
        format == ExpositionFormat::kOpenMetrics ? family.om_name : family.shape.name;
    const char* type = family.shape.type == shm::MetricType::kCounter ? "counter"
                       : family.shape.type == shm::MetricType::kGauge ? "gauge"
                                                                       : "histogram";
    absl::StrAppend(out, "# HELP ", name, " ");
    AppendHelp(out, family.shape.help, format);
    absl::StrAppend(out, "\n# TYPE ", name, " ", type, "\n");
    s.RenderFamily(family, format, out);
  }
  s.last_render_bytes.store(out->size() - start_size, std::memory_order_relaxed);
}

std::vector<RecentRecord> Collector::Recent(const RecentQuery& query) const {
  std::shared_lock lock(state_->mu);
  std::vector<RecentRecord> all;
  for (const auto& [name, open] : state_->segments) {
    if (!query.service.empty() && open.service != query.service) continue;
    for (uint32_t lane = 0; lane < open.segment->ring_count(); ++lane) {
      RingRead read = open.segment->ReadRing(lane, query.kind, 0);
      for (RequestRecordView& record : read.records) {
        if (!query.endpoint.empty() && record.endpoint != query.endpoint) continue;
        if (query.status >= 0 && record.status != query.status) continue;
        all.push_back({open.service, open.pid, std::move(record)});
      }
    }
  }
  auto newer = [](const RecentRecord& a, const RecentRecord& b) {
    if (a.record.timestamp_unix_ns != b.record.timestamp_unix_ns) {
      return a.record.timestamp_unix_ns > b.record.timestamp_unix_ns;
    }
    return std::tie(a.service, a.pid, a.record.lane, a.record.index) >
           std::tie(b.service, b.pid, b.record.lane, b.record.index);
  };
  const size_t keep = std::min(query.limit, all.size());
  std::partial_sort(all.begin(), all.begin() + keep, all.end(), newer);
  all.resize(keep);
  return all;
}

std::vector<SegmentReport> Collector::Segments() const {
  std::shared_lock lock(state_->mu);
  std::vector<SegmentReport> reports;
  for (const auto& [name, open] : state_->segments) reports.push_back({open.segment->Info(), open.alive});
  return reports;
}

std::vector<Problem> Collector::Problems() const {
  std::shared_lock lock(state_->mu);
  std::vector<Problem> problems;
  for (const auto& [path, error] : state_->problems) problems.push_back({path, error});
  for (const auto& [path, error] : state_->index_problems) {
    if (!state_->problems.contains(path)) problems.push_back({path, error});
  }
  return problems;
}

CollectorCounters Collector::Counters() const {
  std::shared_lock lock(state_->mu);
  return state_->counters;
}

std::vector<AggregatedSeries> Collector::Snapshot() const {
  const State& s = *state_;
  std::shared_lock lock(s.mu);
  std::vector<AggregatedSeries> result;
  for (const State::OutFamily& family : s.index) {
    for (const State::OutSeries& series : family.series) {
      AggregatedSeries a;
      a.service = series.service;
      a.family = family.shape.name;
      a.type = family.shape.type;
      for (size_t i = 0; i < family.shape.label_names.size(); ++i) {
        a.labels.emplace_back(family.shape.label_names[i], series.label_values[i]);
      }
      const State::Source* begin = series.sources.data();
      const State::Source* end = begin + series.sources.size();
      if (family.shape.type == shm::MetricType::kHistogram) {
        a.bounds = family.shape.bounds;
        a.buckets.resize(a.bounds.size() + 1);
        a.sum = State::HistogramOf(begin, end, series.archived, a.buckets.data(), a.buckets.size());
      } else {
        a.value = State::ScalarOf(family, begin, end, series.archived);
      }
      result.push_back(std::move(a));
    }
  }
  return result;
}

}  // namespace shmetrics::reader
