// The writer's hot path: metric handles and the per-thread lane binding.
//
// Every operation here is a handful of instructions: find this thread's lane
// (a thread_local load and one compare), then update a cell that no other
// thread writes. No lock, no allocation, no syscall. The first operation of
// a thread on a writer claims a lane (a cold path behind a mutex); a thread
// that finds every exclusive lane taken uses the shared lane, whose cells
// take atomic read-modify-write instead of a plain store.
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

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmetrics {
class Writer;

namespace internal {

inline constexpr uint32_t kMaxWritersPerProcess = 16;

// One entry per live Writer in this process. Written under the registry
// mutex; `generation` changes whenever the bindings below must be redone.
struct WriterSlot {
  std::atomic<uint64_t> generation{0};
  std::byte* lanes_base = nullptr;
  uint64_t lane_stride_bytes = 0;
  uint32_t shared_lane = 0;
  const uint32_t* lanes_high_water = nullptr;  // in the segment header
};
extern WriterSlot g_writer_slots[kMaxWritersPerProcess];

// This thread's lane in each writer. Trivial type, constant-initialized, so
// access is a plain %fs-relative load with no TLS init guard.
struct ThreadLane {
  uint64_t generation = 0;  // == the slot's generation when bound
  std::byte* lane_base = nullptr;
  bool shared = false;
};
extern constinit thread_local ThreadLane t_lanes[kMaxWritersPerProcess];

// Cold path: claims a lane for this thread (or the shared lane).
ThreadLane& BindLane(uint32_t slot);

inline ThreadLane& CurrentLane(uint32_t slot) {
  ThreadLane& lane = t_lanes[slot];
  // relaxed: a generation change is always followed by this thread taking
  // the registry mutex in BindLane before it touches the segment again.
  if (__builtin_expect(
          lane.generation != g_writer_slots[slot].generation.load(std::memory_order_relaxed), 0)) {
    return BindLane(slot);
  }
  return lane;
}

// Adds to a cell this thread owns (plain load + store) or to the shared
// lane's cell (atomic read-modify-write).
template <typename T>
inline void AddToCell(const ThreadLane& lane, uint32_t cell, T amount) {
  std::atomic_ref<T> ref(reinterpret_cast<T*>(lane.lane_base)[cell]);
  if (__builtin_expect(!lane.shared, 1)) {
    ref.store(ref.load(std::memory_order_relaxed) + amount, std::memory_order_relaxed);
  } else {
    ref.fetch_add(amount, std::memory_order_relaxed);
  }
}

// Index of the bucket that holds `value`: the first bound >= value (bounds
// are "less or equal", like Prometheus's `le`), or bucket_count for +Inf.
// NaN goes to +Inf. Branch-free, so random values cost no mispredictions.
inline uint32_t BucketIndex(const double* bounds, uint32_t bucket_count, double value) {
  uint32_t index = 0;
  if (bucket_count <= 16) {
    for (uint32_t i = 0; i < bucket_count; ++i) index += bounds[i] < value;
  } else {
    const double* base = bounds;
    uint32_t n = bucket_count;
    while (n > 1) {
      const uint32_t half = n / 2;
      base = base[half - 1] < value ? base + half : base;
      n -= half;
    }
    index = static_cast<uint32_t>(base - bounds) + (*base < value);
  }
  return value == value ? index : bucket_count;
}

}  // namespace internal

// A monotonically increasing value. inc() is the cheapest operation we have.
class Counter {
 public:
  Counter() = default;
  void inc() { add(1.0); }
  // Negative and NaN amounts are ignored: a counter never goes down.
  void add(double amount) {
    if (!(amount >= 0)) return;
    internal::AddToCell<double>(internal::CurrentLane(slot_), cell_, amount);
  }
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  Counter(uint32_t slot, uint32_t cell) : slot_(slot), cell_(cell), valid_(true) {}
  uint32_t slot_ = 0;
  uint32_t cell_ = 0;
  bool valid_ = false;
};

// A value that goes up and down. inc()/dec() are as cheap as a counter's and
// never serialize threads. set() costs one load per lane in use (it writes
// the difference into the shared lane); a set() racing an inc() on another
// thread may drop that inc, as with any last-writer-wins gauge.
class Gauge {
 public:
  Gauge() = default;
  void inc(double amount = 1.0) {
    internal::AddToCell<double>(internal::CurrentLane(slot_), cell_, amount);
  }
  void dec(double amount = 1.0) { inc(-amount); }
  void set(double value);
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  Gauge(uint32_t slot, uint32_t cell) : slot_(slot), cell_(cell), valid_(true) {}
  uint32_t slot_ = 0;
  uint32_t cell_ = 0;
  bool valid_ = false;
};

// A histogram with fixed bucket bounds. observe() bumps one bucket and the
// sum in this thread's lane; the reader derives _count from the buckets.
class Histogram {
 public:
  Histogram() = default;
  void observe(double value) {
    const internal::ThreadLane& lane = internal::CurrentLane(slot_);
    internal::AddToCell<uint64_t>(lane, cell_ + internal::BucketIndex(bounds_, bucket_count_, value),
                                  uint64_t{1});
    internal::AddToCell<double>(lane, cell_ + bucket_count_ + 1, value);
  }
  bool valid() const { return valid_; }

 private:
  friend class Writer;
  Histogram(uint32_t slot, uint32_t cell, const double* bounds, uint32_t bucket_count)
      : slot_(slot), cell_(cell), bucket_count_(bucket_count), bounds_(bounds), valid_(true) {}
  uint32_t slot_ = 0;
  uint32_t cell_ = 0;
  uint32_t bucket_count_ = 0;
  const double* bounds_ = nullptr;  // in the segment; same address after fork()
  bool valid_ = false;
};

}  // namespace shmetrics
