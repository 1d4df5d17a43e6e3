// shmetrics reader: read-only, validated access to segments.
//
// Segment::Open maps a segment file PROT_READ (the reader can never corrupt
// a writer), checks the header, and copies every published descriptor into
// process memory after validating it: each offset, length, count and string
// is checked against the mapping before use. After that, values are read
// straight from the mapping at validated offsets. A truncated, corrupt,
// foreign-version or hostile file yields an absl::Status naming what is
// wrong; never a crash, a read past the mapping, or a hang.
//
//   auto segment = shmetrics::reader::Segment::Open(path).value();
//   for (const auto& series : segment->series()) {
//     double value = segment->ScalarValue(series);  // counters and gauges
//   }
//
// Opening has three outcomes, kept apart: ready (OK), not ready yet
// (Unavailable: the creator is still laying the file out; retry shortly),
// and broken (DataLoss, FailedPrecondition, NotFound, PermissionDenied...).
//
// Thread safety: Refresh() is called by one thread at a time; meanwhile
// other threads may call the value, ring and Info() readers, and keep
// references to elements of families() and series() (their storage never
// moves). Iterating families() or series() belongs to the refreshing
// thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shmetrics/shm/layout.h"
#include "shmetrics/shm/native_buckets.h"
#include "shmetrics/shm/segment_file.h"

namespace shmetrics::reader {

// A validated copy of a family descriptor.
struct FamilyView {
  std::string name;
  std::string help;
  std::string unit;
  shm::MetricType type = shm::MetricType::kCounter;
  shm::GaugeMerge gauge_merge = shm::GaugeMerge::kLiveSum;
  std::vector<std::string> label_names;
  std::vector<double> bounds;  // finite, strictly increasing; +Inf implicit
  std::vector<std::string> states;  // a StateSet's
  bool native = false;         // a native histogram (bounds: its classic buckets, maybe none)
  shm::NativeShape native_shape;
  uint64_t created_unix_ns = 0;
  // Non-empty when the family breaks an exposition rule (shm/names.h) or
  // repeats an earlier family's name: readers skip it, and only it.
  std::string rejected;
};

// Where a series' values live: what a value read needs, and nothing else
// (a render keeps these packed beside each other).
struct SeriesCells {
  uint32_t first_cell = 0;
  uint32_t cell_count = 0;
  bool is_signed = false;  // a gauge: its integer cells are two's complement
  uint32_t first_exemplar = 0;
  uint32_t exemplar_count = 0;  // 0: no exemplars
};

// One exemplar as a slot held it, checked: labels (name, value pairs,
// encoded as in shm::ExemplarSlot) valid, at most 128 characters.
struct ExemplarView {
  double value = 0;
  uint64_t timestamp_unix_ns = 0;
  uint16_t labels_length = 0;
  uint8_t label_count = 0;
  char labels[shm::kExemplarLabelBytes] = {};
  // Calls f(name, value) for each label, in order.
  template <typename F>
  void ForEachLabel(F&& f) const {
    size_t at = 0;
    for (uint8_t i = 0; i < label_count; ++i) {
      const size_t name_length = static_cast<unsigned char>(labels[at]);
      const absl::string_view name(labels + at + 1, name_length);
      at += 1 + name_length;
      const size_t value_length = static_cast<unsigned char>(labels[at]);
      f(name, absl::string_view(labels + at + 1, value_length));
      at += 1 + value_length;
    }
  }
};

// A validated copy of a series descriptor.
struct SeriesView {
  uint32_t family = 0;  // index into families()
  bool is_signed = false;  // a gauge: its integer cells are two's complement
  std::vector<std::string> label_values;
  uint32_t first_cell = 0;
  uint32_t cell_count = 0;
  bool overflow = false;
  uint64_t created_unix_ns = 0;
  uint32_t first_exemplar = 0;
  uint32_t exemplar_count = 0;
  SeriesCells cells() const { return {first_cell, cell_count, is_signed, first_exemplar, exemplar_count}; }
};

// One request record, copied out of a ring and checked.
struct RequestRecordView {
  uint64_t timestamp_unix_ns = 0;
  uint64_t duration_ns = 0;
  uint64_t response_bytes = 0;
  uint16_t status = 0;
  bool error = false;
  std::string method;
  std::string endpoint;
  std::string error_message;
  uint32_t lane = 0;
  uint64_t index = 0;  // position in its ring's history (0, 1, ...)
};

enum class RingKind { kRequests, kErrors };

// The result of reading one ring from a position.
struct RingRead {
  std::vector<RequestRecordView> records;  // oldest first, each intact
  uint64_t overwritten = 0;  // records at or after `from` lost to newer ones before being read
  uint64_t torn = 0;         // slots being (or left half-) written, or invalid: skipped
  uint64_t skipped = 0;      // older records left unread to stay within max_slots
  uint64_t next = 0;         // where to continue: the ring's write index
};

// Records [oldest, written) of a ring may still be in their slots.
struct RingExtent {
  uint64_t oldest = 0;
  uint64_t written = 0;
};

enum class SlotRead { kOk, kOverwritten, kTorn };

// What the header says about the writer and how full the segment is.
struct SegmentInfo {
  std::string path;
  std::string service;
  uint32_t pid = 0;
  uint32_t parent_pid = 0;
  uint64_t process_start_ticks = 0;
  uint64_t created_unix_ns = 0;
  uint64_t closed_unix_ns = 0;
  shm::SegmentState state = shm::SegmentState::kInitializing;
  uint64_t size_bytes = 0;
  uint32_t family_count = 0, family_capacity = 0;
  uint32_t series_count = 0, series_capacity = 0;
  uint32_t cells_used = 0, cells_per_lane = 0;
  uint32_t lanes_in_use = 0, exclusive_lanes = 0;
  uint64_t series_overflow_count = 0;
  uint64_t lane_fallback_count = 0;
  uint64_t records_written = 0;      // request records, all rings
  uint64_t records_overwritten = 0;  // request records no longer in their ring
  uint64_t records_dropped = 0;      // from threads without a ring
  uint64_t exemplars_dropped = 0;    // exemplars not kept (no own lane, broken labels)
  uint64_t native_out_of_range = 0;  // native histogram observations outside their range
};

class Segment {
 public:
  struct Options {
    shm::ReadOnlyMapping::Options mapping;
    // A file still initializing after this long is reported broken
    // (its creator probably died mid-setup) instead of "not ready yet".
    double initializing_grace_seconds = 5.0;
  };
  static absl::StatusOr<std::unique_ptr<Segment>> Open(const std::string& path,
                                                       const Options& options);
  static absl::StatusOr<std::unique_ptr<Segment>> Open(const std::string& path) {
    return Open(path, Options{});
  }

  // Picks up families and series published since the last call, and checks
  // that the file has not shrunk. Once it fails, it keeps failing.
  absl::Status Refresh();

  const std::deque<FamilyView>& families() const { return families_; }
  const std::deque<SeriesView>& series() const { return series_; }
  // True once a read found the file shrunk under the mapping (fault_guard.h).
  bool Faulted() const { return mapping_->Faulted(); }
  SegmentInfo Info() const;

  // True while the writer process holds its lock and has not closed.
  bool WriterAlive() const;

  // Counter or gauge value: the sum of the series' cell over the lanes in use.
  double ScalarValue(const SeriesView& series) const { return ScalarValue(series.cells()); }
  double ScalarValue(SeriesCells cells) const;
  // Histogram: fills `buckets` (bounds.size() + 1 non-cumulative counts, the
  // last is +Inf) and returns the sum. _count is the sum of `buckets`. A
  // native histogram gives its classic buckets (ClassicBucketsOfNative).
  double HistogramValue(const SeriesView& series, uint64_t* buckets) const;
  // A classic histogram's cells only.
  double HistogramValue(SeriesCells cells, uint64_t* buckets) const;
  // Native histogram of `shape`: adds its cells, summed over lanes, to
  // `cells_out` (shape.cell_count() entries: sum as f64 bits is NOT
  // included there; it is returned), so several segments' series of one
  // shape accumulate into one array. Cell order as in shm/native_buckets.h.
  double AddNativeCells(SeriesCells cells, const shm::NativeShape& shape, uint64_t* cells_out) const;
  // The newest intact exemplar of a series' exemplar `index` (0 ..
  // exemplar_count-1) over the exclusive lanes in use; false when none.
  // Copies each slot under its seqlock; a slot being written, or that
  // breaks a rule, is skipped.
  bool NewestExemplar(SeriesCells cells, uint32_t index, ExemplarView* out) const;
  // The shared lane's integer cell of a series: where a StateSet keeps its state.
  uint64_t SharedLaneCell(SeriesCells cells) const;

  // Number of rings (one per exclusive lane; 0 without rings).
  uint32_t ring_count() const;
  // Reads one ring from record index `from` (use 0 for everything still
  // there). Never returns a torn record: each slot is copied under its
  // seqlock and kept only if its sequence says it is record k, complete.
  // Reads at most `max_slots` slots: the newest ones from `from` (so a
  // request touches what it asks for, never a whole hostile ring).
  RingRead ReadRing(uint32_t lane, RingKind kind, uint64_t from, uint64_t max_slots = UINT64_MAX) const;
  RingExtent RingExtentOf(uint32_t lane, RingKind kind) const;
  // Reads record k (oldest <= k < written) under its seqlock.
  SlotRead ReadRecord(uint32_t lane, RingKind kind, uint64_t k, RequestRecordView* out) const;

  const std::string& path() const { return mapping_->path(); }
  const shm::ReadOnlyMapping& mapping() const { return *mapping_; }

 private:
  Segment() = default;
  absl::Status ValidateHeader(const Options& options);
  absl::Status RefreshUnchecked();
  absl::StatusOr<std::string> ReadString(shm::StringRef ref, size_t max_bytes, absl::string_view what);
  static constexpr uint64_t kMaxStringBytesCopied = uint64_t{64} << 20;
  uint64_t string_bytes_copied_ = 0;
  std::vector<bool> exemplar_slot_owned_;  // by Refresh(): slots some series claims
  uint64_t LoadCell(uint32_t lane, uint32_t cell) const;
  const std::byte* RingSlots(uint32_t lane, RingKind kind, uint64_t* slot_count, uint64_t* written) const;

  std::unique_ptr<shm::ReadOnlyMapping> mapping_;
  shm::SegmentHeader header_{};  // copy of the immutable part, validated
  uint64_t lane_stride_bytes_ = 0;
  uint64_t ring_stride_bytes_ = 0;  // one lane's ring region; 0 without rings
  std::atomic<uint32_t> lanes_to_sum_{0};  // exclusive lanes in use; Refresh() stores, readers load
  // Deques: Refresh() appends while other threads read earlier elements.
  std::deque<FamilyView> families_;
  std::deque<SeriesView> series_;
  std::atomic<uint32_t> family_count_{0}, series_count_{0};  // sizes for Info() on other threads
  absl::Status broken_;
};

// A native histogram's classic buckets (classic_bounds + 1, non-cumulative,
// +Inf last) from its cells: the classic cells, or one bucket (the count)
// without classic bounds. The count is always the native buckets' total:
// classic cells read a moment apart from the native ones (an observation
// in between) or forged are clamped so that they add up to it.
void ClassicBucketsOfNative(const shm::NativeShape& shape, const uint64_t* cells, uint64_t* buckets);
// The native buckets' total: zero, positive and negative buckets.
uint64_t NativeCount(const shm::NativeShape& shape, const uint64_t* cells);

struct DirectoryEntry {
  std::string path;
  std::string file_name;
  shm::SegmentFileId id;
};
// Segment files in `directory` (by name only; nothing is opened), sorted by
// file name. Errors: NotFound, PermissionDenied for the directory itself.
absl::StatusOr<std::vector<DirectoryEntry>> ListSegments(const std::string& directory);

}  // namespace shmetrics::reader
