// Collector: every segment of a directory, aggregated per service, rendered
// as Prometheus text 0.0.4 or OpenMetrics 1.0, plus the retirement of dead
// writers' segments.
//
// Aggregation. A family's series are merged across the processes of one
// service only, by label values: counters and histograms are summed; gauges
// follow their family's GaugeMerge (live sum by default). Every series
// carries a `service` label. Services never hide each other: a family may
// have other label names or buckets in each service. What cannot be
// exported together is resolved deterministically and reported as a
// conflict (ProblemKind::kConflict), skipping one family of one service:
// families claim their names in order of precedence (held by a segment
// before archive-only, then registered first, then name and service), and
// one whose names meet a family taken before (another type under the same
// name, a counter `foo_total` beside a gauge `foo`, a histogram `x` beside
// a family `x_count`) is skipped; within one service, a segment whose family has
// another type, labels or buckets than the service's first (the archive's,
// then the segment whose file name sorts first) is skipped for that family.
// A family that breaks an exposition rule (shm/names.h) is skipped alone
// (kInvalidFamily). docs/naming-rules.md lists the rules.
//
// Retirement. A segment whose writer is gone (closed, or its flock free and
// its process gone) is folded into the archive (archive.h) and removed. One
// collector at a time may retire in a directory: it holds an flock on
// `shmetrics-archive.lock`. A collector that does not retire (retire_dead
// false: a second exporter, `shmetrics top` and `dump`) reloads the archive
// whenever it changed on disk, after listing the directory, so a segment
// retired meanwhile is always in one of the two places it looks.
//
// Trust. Segments, the archive and its lock are opened O_NOFOLLOW and must
// be regular files owned by this user (or a trusted uid): root included.
// Anything else is reported as kUntrusted and never read.
//
// Cost. Scan() rebuilds the sorted series index only when segments or
// series come or go. Render() walks that index and reads values straight
// from the mappings into the output buffer: cost per live series, not per
// writer that ever ran.
//
// Thread safety: thread-safe. Scan() builds the next view aside and swaps
// it in: Render() and the read accessors never wait for a scan (a scan
// stuck on a slow file system leaves the last view served), and scans run
// one at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shmetrics/archive.h"
#include "shmetrics/reader.h"

namespace shmetrics::reader {

// Prometheus text 0.0.4, OpenMetrics 1.0, and the protobuf format
// (io.prometheus.client.MetricFamily, delimited: docs/metrics.proto), the
// one that carries native histograms.
enum class ExpositionFormat { kPrometheusText, kOpenMetrics, kProtobuf };

// Content-Type header value for each format.
const char* ContentType(ExpositionFormat format);

struct CollectorOptions {
  std::string directory;        // default: $SHMETRICS_DIR, else /dev/shm
  std::string service_filter;   // only this service; empty = all
  std::string file_filter;      // only this segment file name; empty = all
  bool retire_dead = true;      // fold dead segments into the archive and remove them
  bool use_archive = true;      // false: live segments only (dump of one segment)
  // A retiring collector removes a writer's temporary file (".shmetrics-tmp.*",
  // its flock free: the writer died creating it) once it is this old.
  double abandoned_temp_grace_seconds = 10;
  // Segments are refused (and reported) once the mapped ones add up to this.
  uint64_t max_mapped_bytes = uint64_t{64} << 30;
  Segment::Options segment;     // segment.mapping also says whose archive is trusted
  // Where skipped files and removed temporaries are told, one sentence per
  // call (hostile bytes already escaped). Default: "shmetrics: " + the
  // sentence on stderr. Called from Scan(), so it must not call back.
  std::function<void(absl::string_view sentence)> log;
};

// One segment as last seen by Scan().
struct SegmentReport {
  SegmentInfo info;
  bool alive = false;
};

enum class ProblemKind {
  kCorrupt,        // a segment or the archive cannot be read: skipped whole
  kUntrusted,      // another owner, a symlink or FIFO, a planted archive, no permission
  kInvalidFamily,  // a family breaks an exposition rule: that family skipped
  kConflict,       // families that cannot be exported together: one family of one service skipped
};
// "corrupt", "untrusted", "invalid_family", "conflict".
const char* ProblemKindName(ProblemKind kind);

// Something skipped; the rest is served.
struct Problem {
  std::string path;
  ProblemKind kind = ProblemKind::kCorrupt;
  std::string family;  // for kInvalidFamily and kConflict
  std::string error;   // a sentence naming the file, the family and why
  bool operator==(const Problem&) const = default;
};

struct CollectorCounters {
  uint64_t scans = 0;
  uint64_t segments_alive = 0;
  uint64_t segments_dead = 0;         // dead, not (yet) retired
  uint64_t segments_not_ready = 0;
  uint64_t segments_retired_total = 0;
  uint64_t series = 0;                // aggregated series in the index
  uint64_t archived_series = 0;
  bool retiring = false;              // this collector holds the archive lock
  uint64_t abandoned_removed_total = 0;  // temporary files of writers that died creating them
};

// A scalar sample of the aggregated view, for JSON views and tests.
struct AggregatedSeries {
  std::string service;
  std::string family;
  shm::MetricType type;
  std::vector<std::pair<std::string, std::string>> labels;  // family labels only
  double value = 0;                   // counter / gauge
  std::vector<double> bounds;         // histogram
  std::vector<uint64_t> buckets;      // histogram, non-cumulative, +Inf last (a native one's
                                      // classic buckets, or one bucket: its count)
  double sum = 0;                     // histogram
  bool native = false;                // a native histogram:
  shm::NativeShape native_shape;
  std::vector<uint64_t> native_cells; // its cells (shm/native_buckets.h), cell 0 unused
  uint64_t created_unix_ns = 0;       // earliest creation among its sources; 0: unknown
};

// A request record with the process it came from.
struct RecentRecord {
  std::string service;
  uint32_t pid = 0;
  RequestRecordView record;
};

inline constexpr size_t kRecentScanBudget = 65536;

struct RecentQuery {
  RingKind kind = RingKind::kRequests;
  size_t limit = 100;
  std::string service;   // filters; empty = any
  std::string endpoint;
  int status = -1;       // -1 = any
};

class Collector;

// One exposition rendered in pieces, for a server that streams it: the
// memory it needs is one piece, whatever the number of series. It pins the
// view current when it began (the segments stay mapped until it is
// destroyed) and reads each value when it renders it. Not thread-safe; one
// stream per response.
//
//   ExpositionStream stream = collector.StreamExposition(format);
//   std::string piece;
//   bool more = true;
//   while (more) { piece.clear(); more = stream.Next(&piece, 32 << 10); Send(piece); }
class ExpositionStream {
 public:
  // Appends at least `min_bytes` (whole series at a time) unless the
  // exposition ends first. Returns whether anything is left; what it
  // appended is valid either way. Like Render(), without "# EOF".
  bool Next(std::string* out, size_t min_bytes);

  ExpositionStream(ExpositionStream&&) noexcept;
  ExpositionStream& operator=(ExpositionStream&&) noexcept;
  ~ExpositionStream();
  struct Impl;  // opaque

 private:
  friend class Collector;
  explicit ExpositionStream(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Collector {
 public:
  // Errors: NotFound (directory), FailedPrecondition (another collector
  // holds the archive lock: pass retire_dead = false to share the
  // directory read-only), PermissionDenied (retire_dead, but the directory
  // is not writable: retire_dead = false would work). Never for the
  // archive itself: a corrupt one is set aside (renamed *.corrupt-<ns>), an
  // untrusted one (or lock file) is left alone, retirement is switched off,
  // and either is reported as a Problem.
  static absl::StatusOr<std::unique_ptr<Collector>> Create(const CollectorOptions& options);
  ~Collector();

  // Finds new and vanished segments, refreshes the rest, retires the dead.
  // Fails only when the directory itself cannot be listed.
  absl::Status Scan();
  // Seconds the scan in progress has been running; 0 when none runs.
  double ScanRunningSeconds() const;

  // Appends the exposition of every service (without the OpenMetrics
  // "# EOF" line, so that callers can add their own metrics first).
  void Render(ExpositionFormat format, std::string* out) const;
  // The same exposition, in pieces (see ExpositionStream).
  ExpositionStream StreamExposition(ExpositionFormat format) const;

  std::vector<SegmentReport> Segments() const;
  std::vector<Problem> Problems() const;
  // The same list, shared with the published view: no copy (it is rebuilt
  // only when a problem changes, so a directory full of junk costs a
  // scrape or a health probe nothing per file but reading it).
  std::shared_ptr<const std::vector<Problem>> SharedProblems() const;
  CollectorCounters Counters() const;
  // Every aggregated series, in exposition order.
  std::vector<AggregatedSeries> Snapshot() const;

  // The newest records across every ring of every segment seen by the last
  // Scan(), newest first (ties broken by service, pid, lane, index), each
  // exactly once, filtered. Each ring is read newest first, so a ring whose
  // writer was given timestamps out of order merges in index order. Cost:
  // at most kRecentScanBudget + 8 * limit slots read, whatever the rings'
  // size (a filter that matches little may then return fewer records).
  std::vector<RecentRecord> Recent(const RecentQuery& query) const;

  struct State;  // opaque

 private:
  explicit Collector(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// Whether a segment's writer still runs: its flock is held, or (the lock
// free) the same process, pid and start time, is still there. A closed
// segment is never alive. Retirement takes exactly the segments for which
// this is false.
bool WriterRunning(const Segment& segment);

// Quantile estimate from histogram buckets, the way PromQL's
// histogram_quantile() does it: linear interpolation inside the bucket
// where the rank falls; the lowest bucket starts at 0 (if its bound is
// positive); a rank in the +Inf bucket returns the highest finite bound.
// NaN when the histogram is empty.
double EstimateQuantile(const std::vector<double>& bounds, const std::vector<uint64_t>& buckets,
                        double quantile);

// A histogram's buckets for EstimateQuantile: its classic ones, or a native
// histogram's own at their resolution (negative, zero and positive buckets
// in ascending order, each bound its upper end, +Inf last and empty).
void QuantileBuckets(const AggregatedSeries& series, std::vector<double>* bounds, std::vector<uint64_t>* buckets);

// Text helpers shared by the exporter and the CLI.
void AppendDouble(std::string* out, double value);       // Prometheus number syntax
void AppendJsonString(std::string* out, absl::string_view text);  // invalid UTF-8 becomes U+FFFD
void AppendJsonNumber(std::string* out, double value);   // null for NaN and infinities
// A label value for the exposition: backslash, double quote and newline escaped.
void AppendLabelValue(std::string* out, absl::string_view value);
// Appends, as delimited protobuf MetricFamily messages, the counters and
// gauges of a Prometheus text 0.0.4 document that this program wrote (the
// exporter's own metrics: HELP and TYPE before each family's samples,
// `name{k="v",...} value` lines). Lines it cannot read are skipped.
void AppendTextAsProtobuf(absl::string_view text, std::string* out);

}  // namespace shmetrics::reader
