// The writer's hot path: metric handles and the per-thread lane binding.
//
// Every operation here is a handful of instructions: find this thread's lane
// (a thread_local load and one compare), then update a cell that no other
// thread writes. No lock, no allocation, no syscall. The first operation of
// a thread on a writer claims a lane (a cold path behind a mutex); a thread
// that finds every exclusive lane taken uses the shared lane, whose cells
// take atomic read-modify-write instead of a plain store.
//
// Unset handles: a default-constructed Counter, Gauge, Histogram or
// RequestLog (valid() is false) changes nothing anywhere. Its operations
// cost what a real handle's do and write into a static block of cells that
// no reader sees (slot 0, below).
//
// Thread safety: handles are small values, thread-safe to use from any
// number of threads at once. A handle must not outlive its Writer.
//
// Memory ordering: cell updates are relaxed atomic loads and stores (via
// std::atomic_ref), so a concurrent reader never sees a torn value and each
// cell's history is seen in order (coherence), which is all a reader needs:
// a counter read twice never goes down. Lane ownership changes hands under
// the writer's registry mutex, which orders one owner's stores before the
// next owner's loads.
#pragma once

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "shmetrics/shm/native_buckets.h"

namespace shmetrics {
class Writer;

namespace internal {

inline constexpr uint32_t kMaxWritersPerProcess = 16;
// Slot 0 belongs to default-constructed handles; writers use slots 1 ..
// kMaxWritersPerProcess. Slot 0's lane is a static block of cells that
// belongs to no segment and that nobody reads, and every thread is bound to
// it from its start, so an unset handle's inc() is the same load and store
// as any other's and changes nothing anywhere: no branch on the hot path,
// and never a write through cell 0 of a real lane.
inline constexpr uint32_t kUnsetSlot = 0;
inline constexpr uint32_t kSlotCount = kMaxWritersPerProcess + 1;
// Cells an unset handle touches: 0 and 1 (a counter's or gauge's two
// cells; an unset histogram has no bounds, so bucket 0 and its sum at 1).
inline constexpr uint32_t kUnsetCells = 8;
extern std::byte g_unset_cells[kUnsetCells * 8];

// One entry per live Writer in this process, written under the registry
// mutex. A multiple of 64 bytes, so that indexing is a shift.
struct alignas(64) WriterSlot {
  std::byte* lanes_base = nullptr;
  uint64_t lane_stride_bytes = 0;
  const uint32_t* lanes_high_water = nullptr;  // in the segment header
  uint32_t shared_lane = 0;
  uint32_t request_slots = 0;                  // per lane ring; powers of two
  uint32_t error_slots = 0;
  uint32_t closed = 0;                         // 1 after Writer::Close(); atomic (Gauge::set reads it)
  std::byte* rings_base = nullptr;
  uint64_t ring_stride_bytes = 0;
  uint64_t* records_dropped = nullptr;         // in the segment header
  std::byte* exemplars_base = nullptr;         // lane i's slots at exemplars_base + i * exemplar_stride_bytes
  uint64_t exemplar_stride_bytes = 0;
  uint64_t* exemplars_dropped = nullptr;       // in the segment header
  uint64_t* native_out_of_range = nullptr;     // in the segment header
  uint32_t precise_clock = 0;                  // WriterOptions::clock == kPrecise
};
static_assert(sizeof(WriterSlot) == 128);
extern WriterSlot g_writer_slots[kSlotCount];

// This thread's lanes, one entry per writer slot. Trivial type,
// constant-initialized (entry 0, the unset slot's, points at
// g_unset_cells; the others are zero), so
// access is a plain %fs-relative load with no TLS init guard. The registry
// clears a thread's entry (relaxed atomic stores under its mutex) when the
// Writer in that slot is closed or destroyed, and a fork() child clears its
// own; the owning thread reads it with relaxed loads.
struct ThreadLane {
  std::byte* exclusive_base = nullptr;  // this thread's own lane, or nullptr
  std::byte* shared_base = nullptr;     // the shared lane, when no own lane was free
  std::byte* ring_base = nullptr;       // this thread's ring region (with its own lane)
  std::byte* exemplar_base = nullptr;   // this thread's exemplar slots (with its own lane)
};
static_assert(sizeof(ThreadLane) == 32);
// The unset slot's entry, which every thread has from its start.
inline constexpr ThreadLane kUnsetThreadLane{g_unset_cells, nullptr, nullptr, nullptr};
extern constinit thread_local ThreadLane t_lanes[kSlotCount];

// This thread's exclusive lane in writer `slot`, or nullptr when it has
// none yet (first use, after fork() or Close()) or writes the shared lane.
inline std::byte* ExclusiveLane(uint32_t slot) {
  // relaxed: the entry is set and cleared under the registry mutex, which
  // this thread also took when it obtained the handle it is using.
  return std::atomic_ref<std::byte*>(t_lanes[slot].exclusive_base).load(std::memory_order_relaxed);
}

// Cold paths, out of line: bind a lane (exclusive if one is free), then add
// with a plain store (exclusive) or an atomic read-modify-write (shared).
void AddSlow(uint32_t slot, uint32_t cell, uint64_t amount);
void AddSlow(uint32_t slot, uint32_t cell, double amount);
// Makes sure this thread is bound in writer `slot` (for Gauge::set).
void EnsureBound(uint32_t slot);

// Cell layout of a series (see shm/layout.h): counters and gauges have an
// integer cell (inc/dec) and a floating-point cell (add/set); integer
// increments stay on the integer pipeline, which is what makes inc() cost
// about as much as a plain store.

// Adds to a cell of a lane this thread owns: a plain load + store.
template <typename T>
inline void AddToOwnedCell(std::byte* lane_base, uint32_t cell, T amount) {
  std::atomic_ref<T> ref(reinterpret_cast<T*>(lane_base)[cell]);
  ref.store(ref.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
}

template <typename T>
inline void Add(uint32_t slot, uint32_t cell, T amount) {
  if (std::byte* lane = ExclusiveLane(slot)) {
    AddToOwnedCell<T>(lane, cell, amount);
  } else {
    AddSlow(slot, cell, amount);
  }
}

// A series without exemplar slots.
inline constexpr uint32_t kNoExemplar = 0xffffffffu;

}  // namespace internal

// One label of an exemplar (typically trace_id). Views: nothing is copied
// until a metric writes the exemplar into its slot.
struct ExemplarLabel {
  absl::string_view name;
  absl::string_view value;
};

// An exemplar: up to 8 labels, at most 128 characters of names and values
// in all (OpenMetrics' limit) and 160 bytes encoded; its value is the
// observation (or the counter's increment). Timestamp 0: now. Cheap to
// build on the hot path (it holds views); an exemplar that breaks a rule
// is dropped when written, and counted.
class Exemplar {
 public:
  Exemplar(std::initializer_list<ExemplarLabel> labels, uint64_t timestamp_unix_ns = 0)
      : timestamp_unix_ns_(timestamp_unix_ns) {
    for (const ExemplarLabel& label : labels) {
      if (count_ == kMaxLabels) {
        too_many_ = true;
        break;
      }
      name_data_[count_] = label.name.data();
      name_size_[count_] = label.name.size();
      value_data_[count_] = label.value.data();
      value_size_[count_] = label.value.size();
      ++count_;
    }
  }

 private:
  friend struct ExemplarWriter;
  static constexpr uint32_t kMaxLabels = 8;
  // Each label's views as four words in four arrays, only [0 .. count_)
  // written (the rest stays uninitialized, which costs nothing). Not an
  // array of ExemplarLabel: the compiler copies a 16-byte string_view with
  // one vector load from the initializer list that the caller has just
  // written with two 8-byte stores, and such a load cannot be forwarded
  // from the stores: two stalls of ~12 cycles, 8 of the 25 ns of an
  // exemplar on the 2-core EPYC. Separate arrays keep every copy 8 bytes.
  const char* name_data_[kMaxLabels];
  size_t name_size_[kMaxLabels];
  const char* value_data_[kMaxLabels];
  size_t value_size_[kMaxLabels];
  uint32_t count_ = 0;
  bool too_many_ = false;
  uint64_t timestamp_unix_ns_ = 0;
};

namespace internal {
// Counts a native histogram observation outside its range in the segment
// header (an atomic add: rare by design, the exporter shows it per process).
void NoteOutOfRange(uint32_t slot);

// Writes `exemplar` with `value` into this thread's slot `exemplar_index`
// of writer `slot` (seqlock, out of line: ~25 words of stores).
void WriteExemplar(uint32_t slot, uint32_t exemplar_index, double value, const Exemplar& exemplar);

// Bounds as the hot path searches them: padded with +Inf to a multiple of
// kBucketSearchWidth, so the search is a fixed number of vector compares.
inline constexpr uint32_t kBucketSearchWidth = 16;

using Double2 = double __attribute__((vector_size(16)));
using Int2 = long long __attribute__((vector_size(16)));

// Index of the bucket that holds `value`: the number of bounds strictly
// below it (bounds are "less or equal", like Prometheus's `le`), which is
// bucket_count for +Inf. NaN goes to +Inf. Branch-free and vectorized:
// random values cost no mispredictions. `padded` holds `padded_count`
// bounds (a multiple of 16), 16-byte aligned, the tail +Inf.
inline uint32_t BucketIndex(const double* padded, uint32_t padded_count, uint32_t bucket_count,
                            double value) {
  const Double2 v = {value, value};
  Int2 below = {0, 0};
  for (uint32_t base = 0; base < padded_count; base += kBucketSearchWidth) {
    const Double2* p = reinterpret_cast<const Double2*>(padded + base);
    // Summed as a tree, not a chain: four independent adds, then two.
    const Int2 a = (p[0] < v) + (p[1] < v), b = (p[2] < v) + (p[3] < v);
    const Int2 c = (p[4] < v) + (p[5] < v), d = (p[6] < v) + (p[7] < v);
    below += (a + b) + (c + d);  // -1 per bound below the value
  }
  const uint32_t index = static_cast<uint32_t>(-(below[0] + below[1]));
  return value == value ? index : bucket_count;
}

}  // namespace internal

// A monotonically increasing value. inc() is the cheapest operation we have.
class Counter {
 public:
  Counter() = default;
  void inc(uint64_t n = 1) const { internal::Add<uint64_t>(slot_, cell_, n); }
  // Fractional amounts (a cost in dollars, say). Negative and NaN amounts
  // are ignored: a counter never goes down.
  void add(double amount) const {
    if (!(amount >= 0)) return;
    internal::Add<double>(slot_, cell_ + 1, amount);
  }
  // The same, with an exemplar (kept when the family has exemplars on).
  void inc(uint64_t n, const Exemplar& exemplar) const {
    inc(n);
    if (exemplar_ != internal::kNoExemplar) internal::WriteExemplar(slot_, exemplar_, static_cast<double>(n), exemplar);
  }
  void add(double amount, const Exemplar& exemplar) const {
    if (!(amount >= 0)) return;
    add(amount);
    if (exemplar_ != internal::kNoExemplar) internal::WriteExemplar(slot_, exemplar_, amount, exemplar);
  }
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  Counter(uint32_t slot, uint32_t cell, uint32_t exemplar)
      : slot_(slot), cell_(cell), exemplar_(exemplar), valid_(true) {}
  uint32_t slot_ = internal::kUnsetSlot;
  uint32_t cell_ = 0;
  uint32_t exemplar_ = internal::kNoExemplar;
  bool valid_ = false;
};

// A value that goes up and down. inc()/dec()/add() are as cheap as a
// counter's and never serialize threads. set() costs two loads per lane in
// use (it writes the difference into the shared lane); a set() racing an
// inc() on another thread may drop that inc, as with any last-writer-wins
// gauge.
class Gauge {
 public:
  Gauge() = default;
  void inc(int64_t n = 1) const { internal::Add<uint64_t>(slot_, cell_, static_cast<uint64_t>(n)); }
  void dec(int64_t n = 1) const { inc(-n); }
  void add(double delta) const { internal::Add<double>(slot_, cell_ + 1, delta); }
  void set(double value) const;
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  Gauge(uint32_t slot, uint32_t cell) : slot_(slot), cell_(cell), valid_(true) {}
  uint32_t slot_ = internal::kUnsetSlot;
  uint32_t cell_ = 0;
  bool valid_ = false;
};

// A histogram with fixed bucket bounds. observe() bumps one bucket and the
// sum in this thread's lane; the reader derives _count from the buckets.
class Histogram {
 public:
  Histogram() = default;
  void observe(double value) const { ObserveIn(Bucket(value), value); }
  // The same, with an exemplar in the value's bucket (kept when the family
  // has exemplars on).
  void observe(double value, const Exemplar& exemplar) const {
    const uint32_t bucket = Bucket(value);
    ObserveIn(bucket, value);
    if (exemplar_ != internal::kNoExemplar) internal::WriteExemplar(slot_, exemplar_ + bucket, value, exemplar);
  }
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  uint32_t Bucket(double value) const { return internal::BucketIndex(bounds_, padded_count_, bucket_count_, value); }
  void ObserveIn(uint32_t bucket, double value) const {
    if (std::byte* lane = internal::ExclusiveLane(slot_)) {
      internal::AddToOwnedCell<uint64_t>(lane, cell_ + bucket, uint64_t{1});
      internal::AddToOwnedCell<double>(lane, cell_ + bucket_count_ + 1, value);
    } else {
      internal::AddSlow(slot_, cell_ + bucket, uint64_t{1});
      internal::AddSlow(slot_, cell_ + bucket_count_ + 1, value);
    }
  }
  Histogram(uint32_t slot, uint32_t cell, const double* padded_bounds, uint32_t bucket_count, uint32_t exemplar)
      : slot_(slot),
        cell_(cell),
        exemplar_(exemplar),
        bucket_count_(bucket_count),
        padded_count_((bucket_count + internal::kBucketSearchWidth - 1) / internal::kBucketSearchWidth *
                      internal::kBucketSearchWidth),
        bounds_(padded_bounds),
        valid_(true) {}
  uint32_t slot_ = internal::kUnsetSlot;
  uint32_t cell_ = 0;
  uint32_t exemplar_ = internal::kNoExemplar;
  uint32_t bucket_count_ = 0;
  uint32_t padded_count_ = 0;
  const double* bounds_ = nullptr;  // the writer's padded copy; same address after fork()
  bool valid_ = false;
};

// A native (sparse, exponential) histogram: observe() finds the bucket in
// constant time (shm/native_buckets.h: exponent bits, one table load, one
// compare; no logarithm, no search) and bumps it and the sum in this
// thread's lane, like a classic histogram. Values outside the family's
// [min, max] count in the outermost bucket and in the out-of-range cell.
class NativeHistogram {
 public:
  NativeHistogram() = default;
  void observe(double value) const { ObserveIn(value, ClassicBucket(value)); }
  // The same, with an exemplar in the value's classic bucket (the only
  // one, +Inf, without classic bounds); kept when the family has exemplars on.
  void observe(double value, const Exemplar& exemplar) const {
    const uint32_t classic = ClassicBucket(value);
    ObserveIn(value, classic);
    if (exemplar_ != internal::kNoExemplar) internal::WriteExemplar(slot_, exemplar_ + classic, value, exemplar);
  }
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  // The value's classic bucket; 0 without classic bounds (the exemplar's
  // one slot then).
  uint32_t ClassicBucket(double value) const {
    return classic_count_ == 0 ? 0 : internal::BucketIndex(classic_bounds_, classic_padded_, classic_count_, value);
  }
  // Counts `value`, whose classic bucket is `classic` (unused without classic bounds).
  void ObserveIn(double value, uint32_t classic) const {
    const double magnitude = std::fabs(value);
    uint32_t bucket_cell = shm::kNativeZeroCell;
    bool out_of_range = false;
    if (!(magnitude <= zero_threshold_)) {  // NaN goes this way, to the top bucket
      const int32_t index = shm::NativeBucketIndex(magnitude, schema_, table_);
      const int32_t kept = std::clamp(index, index_min_, index_max_);
      out_of_range = kept != index;
      const uint32_t offset = static_cast<uint32_t>(kept - index_min_);
      if (!(value < 0)) {
        bucket_cell = shm::kNativeFirstBucketCell + offset;
      } else if (negative_first_cell_ != 0) {
        bucket_cell = negative_first_cell_ + offset;
      } else {
        out_of_range = true;  // no negative buckets: counted in the zero bucket
      }
    }
    if (std::byte* lane = internal::ExclusiveLane(slot_)) {
      internal::AddToOwnedCell<uint64_t>(lane, cell_ + bucket_cell, uint64_t{1});
      internal::AddToOwnedCell<double>(lane, cell_ + shm::kNativeSumCell, value);
      if (out_of_range) [[unlikely]] {
        internal::AddToOwnedCell<uint64_t>(lane, cell_ + shm::kNativeOutOfRangeCell, uint64_t{1});
        internal::NoteOutOfRange(slot_);
      }
      if (classic_count_ != 0) {
        internal::AddToOwnedCell<uint64_t>(lane, cell_ + classic_first_cell_ + classic, uint64_t{1});
      }
    } else {
      ObserveSlow(bucket_cell, out_of_range, value, classic);
    }
  }
  void ObserveSlow(uint32_t bucket_cell, bool out_of_range, double value, uint32_t classic) const;
  uint32_t slot_ = internal::kUnsetSlot;
  uint32_t cell_ = 0;
  uint32_t exemplar_ = internal::kNoExemplar;
  int32_t schema_ = 0;
  int32_t index_min_ = 0;
  int32_t index_max_ = 0;
  uint32_t negative_first_cell_ = 0;  // 0: no negative buckets
  double zero_threshold_ = 0;
  // Unset handles write cells 0 .. 3 of the unset block (kUnsetCells).
  const shm::NativeSchemaTable* table_ = nullptr;  // schema > 0 only
  uint32_t classic_first_cell_ = 0;
  uint32_t classic_count_ = 0;    // classic bounds; 0: none
  uint32_t classic_padded_ = 0;
  const double* classic_bounds_ = nullptr;
  bool valid_ = false;
};

}  // namespace shmetrics
