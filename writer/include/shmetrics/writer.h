// shmetrics writer: the library a service links to publish metrics.
//
// A Writer owns one shared-memory segment for this process. Registering a
// family or a series is the cold path (validation, a process-wide mutex, a
// hash lookup, then publication to readers). It returns a handle whose
// operations are the hot path (see hot_path.h).
//
//   auto writer = shmetrics::Writer::Create({.service = "api"}).value();
//   auto requests = writer->AddCounter("http_requests_total", "Requests served.",
//                                      {"method", "status"}).value();
//   shmetrics::Counter get_ok = requests.WithLabels({"GET", "200"}).value();
//   get_ok.inc();   // ~1 ns, no lock, no syscall
//
// fork(): a child process gets a segment of its own automatically (via
// pthread_atfork), mapped at the parent's address, so every handle taken
// before the fork keeps working and writes into the child's segment. A
// pre-fork server (register, then fork N workers) needs nothing more. The
// registry lock is held across the whole fork(), so the child's segment
// holds exactly what the parent had registered when it forked, whatever
// other threads register meanwhile. A child whose segment cannot be made
// (a full tmpfs, say) says why on stderr, never touches its parent's file,
// and then drops its metrics: handles write into private memory and every
// registration returns FailedPrecondition with the reason. The child of a
// closed writer gets no segment (see Close()).
//
// Creation is atomic: a segment is laid out under a temporary name that no
// reader takes for a segment and published under its final name only when
// complete (see shm/segment_file.h), so a process killed while creating
// its writer leaves no half-made segment, only a temporary file that
// shm::RemoveAbandonedTempFiles removes.
//
// Threads: a thread gives its lane back when it exits. A metric used from
// a thread_local destructor that runs after that (one constructed before
// the thread's first metric operation) goes to the shared lane, so thread
// exits never leak lanes, whatever the order of destruction.
//
// Thread safety: Writer and the family handles are thread-safe.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shmetrics/hot_path.h"
#include "shmetrics/shm/layout.h"

namespace shmetrics {

using shm::GaugeMerge;

struct WriterOptions {
  std::string service;    // required: [A-Za-z0-9_-]{1,48}
  std::string directory;  // default: $SHMETRICS_DIR, else /dev/shm
  shm::Capacities capacities;
  bool group_readable = false;  // file mode 0640 instead of 0600
  // What WithLabels() does when no series slot or cell is left.
  enum class OnFull {
    kOverflowSeries,  // return the family's overflow series (label values
                      // "shmetrics_overflow"), log once to stderr, count it
    kError,           // return ResourceExhausted
  } on_full = OnFull::kOverflowSeries;
  bool remove_on_close = false;  // unlink the file on Close() (values are then lost)
  // The clock of the timestamps the writer takes itself for request
  // records given no timestamp_unix_ns. (Exemplars given none always read
  // the precise clock: readers pick the newest by timestamp.) With kCoarse,
  // records of several threads within one tick share a timestamp, and
  // /api/recent lists those by process and thread, not in true order.
  enum class Clock {
    kCoarse,   // CLOCK_REALTIME_COARSE: the kernel tick's resolution (1-4 ms,
               // as clock_getres reports), ~5 ns a reading, never ahead of
               // CLOCK_REALTIME; like the cached times of nginx and HAProxy
    kPrecise,  // CLOCK_REALTIME to the nanosecond: ~10-17 ns a reading through a
               // per-thread TSC anchor, the vDSO's 22-28 ns where the TSC is unusable
  } clock = Clock::kCoarse;
};

class Writer;

// Options every family may have.
struct MetricOptions {
  // The OpenMetrics unit ("seconds", "bytes"), shown as `# UNIT`. The name
  // must end in "_" + unit (a counter's before its "_total"), as OpenMetrics
  // requires; checked at registration. Empty: none.
  std::string unit = {};
  // Keep the latest exemplar per series (counters) or per bucket
  // (histograms) and thread: inc(n, exemplar), observe(v, exemplar). Each
  // series then takes 1 (or buckets + 1) of the segment's exemplar slots
  // (Capacities::exemplar_slots_per_lane); without room it keeps none.
  bool exemplars = false;
};

// A native (sparse, exponential) histogram family. Bucket k holds values v
// with 2^((k-1) * 2^-schema) < |v| <= 2^(k * 2^-schema): at schema 3 a
// bucket is 2^(1/8) - 1 = 9% wide. The buckets covering [min, max] are laid
// out in the segment for every series and thread (the cost of one series:
// (3 + buckets) * 8 bytes per thread, 240 buckets for the defaults at
// schema 3); values beyond count in the outermost bucket and in an
// out-of-range counter the exporter shows.
struct NativeHistogramOptions {
  int schema = 3;                     // -4 .. 8
  double min = 1e-6;                  // > zero_threshold, finite
  double max = 1e3;                   // > min, finite; at most 1024 buckets per sign
  double zero_threshold = 0x1p-128;   // |v| <= this goes to the zero bucket (Prometheus' default)
  bool negative = false;              // negative buckets too (else a negative value counts in the
                                      // zero bucket, as out of range)
  std::vector<double> classic_bounds = {};  // classic buckets as well (as in the text formats); empty: none
  std::string unit = {};              // as MetricOptions::unit
  bool exemplars = false;             // as MetricOptions::exemplars (one slot per classic bucket, or one)
};

// Family handles: cheap to copy; WithLabels() registers (or finds) a series.
// Errors: InvalidArgument (wrong number of values, value not UTF-8 or longer
// than 256 bytes), ResourceExhausted (only with OnFull::kError).
class CounterFamily {
 public:
  absl::StatusOr<Counter> WithLabels(std::initializer_list<absl::string_view> values) const;
  absl::StatusOr<Counter> WithLabels(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

class GaugeFamily {
 public:
  absl::StatusOr<Gauge> WithLabels(std::initializer_list<absl::string_view> values) const;
  absl::StatusOr<Gauge> WithLabels(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

class HistogramFamily {
 public:
  absl::StatusOr<Histogram> WithLabels(std::initializer_list<absl::string_view> values) const;
  absl::StatusOr<Histogram> WithLabels(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

class NativeHistogramFamily {
 public:
  absl::StatusOr<NativeHistogram> WithLabels(std::initializer_list<absl::string_view> values) const;
  absl::StatusOr<NativeHistogram> WithLabels(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

// An Info family (OpenMetrics): each series' labels are the information
// (version, commit, ...), its value always 1, shown as <name>_info while
// its process lives. Add() registers a series; adding it again is a no-op.
class InfoFamily {
 public:
  absl::Status Add(std::initializer_list<absl::string_view> values) const;
  absl::Status Add(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

// A StateSet series: one of the family's states is current (or none).
// set() is a single atomic store into the segment, last writer wins across
// threads; the exporter shows <name>{<name>="<state>"} 1 for the current
// state and 0 for the others (across processes of a service: 1 where any
// live process is in that state).
class StateSet {
 public:
  StateSet() = default;
  void set(uint32_t state_index) const;  // an index into the family's states; others are ignored
  void clear() const;                    // no state
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  void Store(uint64_t cell_value) const;  // into the shared lane: index + 1, or 0
  uint32_t slot_ = internal::kUnsetSlot;
  uint32_t cell_ = 0;
  uint32_t state_count_ = 0;
  bool valid_ = false;
};

class StateSetFamily {
 public:
  absl::StatusOr<StateSet> WithLabels(std::initializer_list<absl::string_view> values) const;
  absl::StatusOr<StateSet> WithLabels(const std::vector<std::string>& values) const;

 private:
  friend class Writer;
  Writer* writer_ = nullptr;
  uint32_t family_ = 0;
};

// What a service knows when a request ends. Strings are truncated to the
// record's fields (method 8, endpoint 48, error 32 bytes), at a UTF-8
// character boundary.
struct RequestRecordInput {
  absl::string_view method;
  absl::string_view endpoint;
  uint16_t status = 0;
  uint64_t duration_ns = 0;
  uint64_t response_bytes = 0;
  bool error = false;               // also goes to the error ring
  absl::string_view error_message;
  uint64_t timestamp_unix_ns = 0;   // when it ended; 0: the writer reads its clock
                                    // (WriterOptions::clock: coarse by default)
};

// The recent-requests log: each thread writes its own ring in the segment
// (the last 64 requests and, separately, the last 16 errors per thread by
// default). record() is wait-free: no lock, no allocation, no syscall (the
// timestamp comes from the vDSO, see WriterOptions::clock; the precise
// clock's first reading in a process reads which clocksource the kernel
// uses from /sys, once). A thread that has no lane of its own
// (more threads than lanes) has no ring: its records are counted as dropped.
// Thread-safe; cheap to copy.
class RequestLog {
 public:
  RequestLog() = default;  // records nothing (see "unset handles" in hot_path.h)
  void record(const RequestRecordInput& request) const;

 private:
  friend class Writer;
  uint32_t slot_ = internal::kUnsetSlot;
};

// CLOCK_REALTIME in nanoseconds from the writer's precise clock, the one
// exemplars use: the TSC, anchored per thread (within a few microseconds of
// the kernel's clock; 10 ns on the 2-core EPYC, 17 on the 16-vCPU Xeon,
// against 23-29 for clock_gettime). A handler that reads it once and
// passes it to its record (RequestRecordInput::timestamp_unix_ns) and its
// exemplars (Exemplar's timestamp_unix_ns) pays for one reading, not one
// each. Wait-free; the first reading in a process reads the kernel's
// clocksource name from /sys.
uint64_t PreciseNowUnixNs();

// Default histogram bounds, in seconds: 5 ms .. 10 s (Prometheus' defaults).
std::vector<double> DefaultBuckets();
// `count` bounds start, start*factor, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);

class Writer {
 public:
  // Creates the segment. Errors: InvalidArgument (service name, capacities),
  // ResourceExhausted (no space for the segment, or 16 writers in this
  // process already), AlreadyExists, PermissionDenied, NotFound (directory).
  static absl::StatusOr<std::unique_ptr<Writer>> Create(const WriterOptions& options);
  // Close(), then unmaps. Handles must not be used afterwards (a use that
  // needs a lane aborts with a message).
  ~Writer();

  // Registering the same name again with the same type, labels (bounds,
  // unit, native options) returns the same family; anything else is
  // AlreadyExists. Errors: InvalidArgument (name, label names, help,
  // bounds, unit, native options), AlreadyExists, ResourceExhausted (family
  // table, string arena or bounds area full).
  absl::StatusOr<CounterFamily> AddCounter(absl::string_view name, absl::string_view help,
                                           std::vector<std::string> label_names = {},
                                           const MetricOptions& options = {});
  absl::StatusOr<GaugeFamily> AddGauge(absl::string_view name, absl::string_view help,
                                       std::vector<std::string> label_names = {},
                                       GaugeMerge merge = GaugeMerge::kLiveSum,
                                       const MetricOptions& options = {});
  // Bounds must be finite and strictly increasing (1 .. 64 of them); +Inf is implicit.
  absl::StatusOr<HistogramFamily> AddHistogram(absl::string_view name, absl::string_view help,
                                               std::vector<std::string> label_names,
                                               std::vector<double> bounds, const MetricOptions& options = {});
  absl::StatusOr<NativeHistogramFamily> AddNativeHistogram(absl::string_view name, absl::string_view help,
                                                           std::vector<std::string> label_names,
                                                           const NativeHistogramOptions& options = {});
  // OpenMetrics Info: `name` without the _info suffix (the exposition adds
  // it). Text 0.0.4 shows it as a gauge <name>_info, as the Python client does.
  absl::StatusOr<InfoFamily> AddInfo(absl::string_view name, absl::string_view help,
                                     std::vector<std::string> label_names);
  // OpenMetrics StateSet: 1 to 64 states (UTF-8, at most 256 bytes, no NUL,
  // distinct); `name` is also the state label's name, so it must be a
  // valid label name. Text 0.0.4 shows it as a gauge, as the Python client does.
  absl::StatusOr<StateSetFamily> AddStateSet(absl::string_view name, absl::string_view help,
                                             std::vector<std::string> label_names, std::vector<std::string> states);

  // The recent-requests log of this writer's segment.
  RequestLog requests() const;

  // Marks the segment closed: its values are final, and the exporter folds
  // them into its archive and removes the file (at once with
  // remove_on_close). Close() means exactly that: from the moment it
  // returns, operations on this writer's handles change nothing, in every
  // thread and in fork() children: they write into private memory that
  // nobody reads (Gauge::set does nothing, records are not kept). An
  // operation that races with Close() on another thread may land either
  // side. Destroying the writer closes it. Idempotent.
  void Close();

  const std::string& path() const;
  uint32_t series_count() const;
  uint64_t series_overflow_count() const;

  struct Impl;  // opaque; public only so the lane binding code can reach it
  Impl& impl() const { return *impl_; }

 private:
  friend class CounterFamily;
  friend class GaugeFamily;
  friend class HistogramFamily;
  friend class NativeHistogramFamily;
  friend class InfoFamily;
  friend class StateSetFamily;
  friend struct WriterForkHandlers;
  explicit Writer(std::unique_ptr<Impl> impl);
  struct SeriesCells {
    uint32_t first_cell;
    const double* bounds;
    uint32_t bucket_count;
    uint32_t family;
    uint32_t first_exemplar;  // internal::kNoExemplar: none
  };
  struct FamilySpec {
    shm::MetricType type = shm::MetricType::kCounter;
    std::vector<std::string> label_names;
    GaugeMerge merge = GaugeMerge::kSum;
    std::vector<double> bounds;
    std::string unit;
    bool exemplars = false;
    std::vector<std::string> states;  // StateSet
    bool native = false;
    shm::NativeShape native_shape;  // when native
  };
  absl::StatusOr<uint32_t> AddFamily(absl::string_view name, absl::string_view help, FamilySpec spec);
  absl::StatusOr<SeriesCells> AddSeries(uint32_t family, std::vector<absl::string_view> values);
  template <typename Family>
  absl::StatusOr<Family> MakeFamily(absl::StatusOr<uint32_t> index);
  template <typename Handle>
  absl::StatusOr<Handle> MakeHandle(uint32_t family, std::vector<absl::string_view> values);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmetrics
