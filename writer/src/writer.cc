#include "shmetrics/writer.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <ctime>
#include <limits>
#include <new>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <bit>
#include <chrono>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "shmetrics/shm/names.h"
#include "shmetrics/shm/segment_file.h"
#include "realtime_clock.h"

namespace shmetrics {
namespace internal {
alignas(64) std::byte g_unset_cells[kUnsetCells * 8];
namespace {
const uint32_t g_unset_high_water = 0;
uint64_t g_unset_records_dropped = 0;
}  // namespace
// Slot 0 is the unset handles' (see hot_path.h): its one lane is
// g_unset_cells, and it has no ring.
WriterSlot g_writer_slots[kSlotCount] = {
    {.lanes_base = g_unset_cells, .lane_stride_bytes = sizeof g_unset_cells,
     .lanes_high_water = &g_unset_high_water, .records_dropped = &g_unset_records_dropped}};
constinit thread_local ThreadLane t_lanes[kSlotCount] = {kUnsetThreadLane};
}  // namespace internal

namespace {
using internal::g_writer_slots;
using internal::kMaxWritersPerProcess;
using internal::kSlotCount;
using internal::t_lanes;

// Writers occupy slots 1 .. kMaxWritersPerProcess (slot 0 is the unset handles').
constexpr uint32_t kFirstWriterSlot = 1;

// One process-wide mutex guards every Writer's registration state, the
// writer slots and lane ownership. It is a plain std::mutex rather than an
// absl::Mutex because fork() handlers lock it in the parent and unlock it in
// the child, which is well defined for a pthread mutex and not documented
// for absl::Mutex (whose waiter lists could name threads the child lacks).
std::mutex g_registry_mu;
Writer* g_writers[kSlotCount];  // guarded by g_registry_mu; [0] stays null

constexpr absl::string_view kOverflowValue = "shmetrics_overflow";

uint64_t LaneOwnerWordForThisThread() {
  return (uint64_t{static_cast<uint32_t>(getpid())} << 32) |
         static_cast<uint32_t>(syscall(SYS_gettid));
}

// Threads that have bound a lane: their t_lanes arrays, so that destroying
// a Writer can clear every thread's entry for its slot.
std::vector<internal::ThreadLane*> g_bound_threads;  // guarded by g_registry_mu

// Registers this thread on its first binding; on thread exit, gives its
// exclusive lanes back and unregisters. Constructed under g_registry_mu.
struct LaneReleaser {
  LaneReleaser() { g_bound_threads.push_back(t_lanes); }
  ~LaneReleaser();
  void Touch() {}
};
thread_local LaneReleaser t_lane_releaser;

// Set by ~LaneReleaser. A thread_local constructed before this thread's
// first metric operation is destroyed after the releaser; if its
// destructor uses a metric, the lane it would claim would never be given
// back. Such late uses go to the shared lane instead. Trivial and
// constant-initialized: no TLS guard.
constinit thread_local bool t_lanes_released = false;

// Every entry of this thread's t_lanes back to how a thread starts.
void ResetThreadLanes(internal::ThreadLane* lanes) {
  lanes[internal::kUnsetSlot] = internal::kUnsetThreadLane;
  for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) lanes[s] = internal::ThreadLane{};
}

template <typename T>
T LoadRelaxed(T& field) {
  return std::atomic_ref<T>(field).load(std::memory_order_relaxed);
}
template <typename T>
void StoreRelaxed(T& field, T value) {
  std::atomic_ref<T>(field).store(value, std::memory_order_relaxed);
}

}  // namespace

struct Writer::Impl {
  WriterOptions options;
  std::unique_ptr<shm::WritableSegment> segment;
  uint32_t slot = 0;
  bool registered = false;  // g_writers[slot] is this writer
  bool closed = false;
  // After Close(): where this writer's handles write from then on, one
  // lane and one ring region of private memory that nobody reads. Shared by
  // every thread that binds after Close(); never resized.
  std::vector<uint64_t> closed_sink;
  // Taken by the fork() prepare handler, used by the child, freed by both.
  shm::ForkSnapshot fork_snapshot;
  // In a fork() child whose segment could not be made: why. Registration
  // then fails with it; handles write into private memory.
  absl::Status fork_error;

  struct FamilyInfo {
    FamilySpec spec;
    // Bounds padded with +Inf for the hot path's vector search; the
    // allocation never moves, and survives fork() at the same address.
    std::shared_ptr<double[]> padded_bounds;
    std::string help;
    std::string name;
    uint32_t overflow_series = shm::kNoIndex;  // published lazily from the reserve
  };
  std::vector<FamilyInfo> families;
  absl::flat_hash_map<std::string, uint32_t> family_by_name;
  // Every name a family occupies in the outputs (shm::ExpositionNames) ->
  // that family: a new family whose names meet another's is refused.
  absl::flat_hash_map<std::string, uint32_t> exposition_owner;
  absl::flat_hash_map<std::string, uint32_t> series_by_key;
  absl::flat_hash_map<std::string, shm::StringRef> interned;
  // Series slots and cells held back for families' overflow series.
  uint32_t reserved_series = 0;
  uint32_t reserved_cells = 0;
  bool full_reported = false;
  bool exemplars_full_reported = false;

  shm::SegmentHeader& header() const { return segment->header(); }

  // What registration returns in a fork child without a segment.
  absl::Status NoSegmentError() const {
    return absl::FailedPreconditionError(absl::StrCat("fork child ", getpid(),
                                                      " has no segment of its own: ", fork_error.message()));
  }
  template <typename T>
  T* region(uint64_t offset) const {
    return reinterpret_cast<T*>(segment->base() + offset);
  }
  shm::LaneOwnerWord* lane_owners() const {
    return region<shm::LaneOwnerWord>(header().lane_owner_offset);
  }
  uint64_t lane_stride() const {
    return shm::AlignUp(uint64_t{header().cells_per_lane} * 8, shm::kCacheLine);
  }

  absl::StatusOr<shm::StringRef> Intern(absl::string_view text) {
    if (auto it = interned.find(text); it != interned.end()) return it->second;
    shm::SegmentHeader& h = header();
    if (uint64_t{h.string_arena_used} + text.size() > h.string_arena_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("string arena (", h.string_arena_bytes,
                                                       " bytes) exhausted in segment ",
                                                       segment->path()));
    }
    shm::StringRef ref{h.string_arena_used, static_cast<uint32_t>(text.size())};
    std::memcpy(region<char>(h.string_arena_offset) + ref.offset, text.data(), text.size());
    // relaxed: informational; the bytes are published by the count that
    // later covers the descriptor pointing at them.
    std::atomic_ref<uint32_t>(h.string_arena_used)
        .store(ref.offset + ref.length, std::memory_order_relaxed);
    interned.emplace(std::string(text), ref);
    return ref;
  }

  uint32_t CellsFor(const FamilyInfo& family) const {
    if (family.spec.native) return family.spec.native_shape.cell_count();
    return family.spec.type == shm::MetricType::kHistogram
               ? static_cast<uint32_t>(family.spec.bounds.size()) + 2
               : 2;  // integer cell + floating-point cell
  }

  // Writes a series descriptor at the next index and publishes it.
  uint32_t PublishSeries(uint32_t family, uint32_t first_cell, uint32_t cell_count,
                         const std::vector<shm::StringRef>& values, uint32_t flags,
                         uint32_t first_exemplar = internal::kNoExemplar, uint32_t exemplar_count = 0) {
    shm::SegmentHeader& h = header();
    const uint32_t index = h.series_count;
    shm::SeriesDescriptor& d = region<shm::SeriesDescriptor>(h.series_table_offset)[index];
    d = shm::SeriesDescriptor{};
    d.family_index = family;
    d.first_cell = first_cell;
    d.cell_count = cell_count;
    d.flags = flags;
    for (size_t i = 0; i < values.size(); ++i) d.label_values[i] = values[i];
    d.created_unix_ns = shm::NowUnixNs();
    if (exemplar_count > 0) {
      d.first_exemplar = first_exemplar;
      d.exemplar_count = exemplar_count;
      // relaxed: the slots are published with the descriptor, by series_count.
      std::atomic_ref<uint32_t>(h.exemplar_slots_used)
          .store(first_exemplar + exemplar_count, std::memory_order_relaxed);
    }
    std::atomic_ref<uint32_t>(h.cells_used).store(first_cell + cell_count, std::memory_order_relaxed);
    // release: publishes the descriptor and the strings it refers to; pairs
    // with the acquire load of series_count in reader/src/segment.cc.
    std::atomic_ref<uint32_t>(h.series_count).store(index + 1, std::memory_order_release);
    return index;
  }
};

// ------------------------------------------------------------- lane binding

namespace {
// Binds this thread in writer `slot_index`: claims a free exclusive lane,
// else the shared lane; after Close(), the writer's private sink. Takes the
// registry mutex.
void BindLane(uint32_t slot_index) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  Writer* writer = g_writers[slot_index];
  internal::WriterSlot& slot = g_writer_slots[slot_index];
  if (writer == nullptr) {
    std::fprintf(stderr, "shmetrics: metric handle used after its Writer was destroyed\n");
    std::abort();
  }
  Writer::Impl& impl = writer->impl();
  internal::ThreadLane& lane = t_lanes[slot_index];
  if (impl.closed) {
    // Values are final: from now on this thread's operations on the writer
    // land in memory nobody reads.
    if (!t_lanes_released) t_lane_releaser.Touch();  // registered: destroying the writer clears this entry
    std::byte* sink = reinterpret_cast<std::byte*>(impl.closed_sink.data());
    StoreRelaxed(lane.exclusive_base, sink);
    if (slot.ring_stride_bytes > 0) StoreRelaxed(lane.ring_base, sink + slot.lane_stride_bytes);
    if (slot.exemplar_stride_bytes > 0) {
      StoreRelaxed(lane.exemplar_base, sink + slot.lane_stride_bytes + slot.ring_stride_bytes);
    }
    return;
  }
  shm::SegmentHeader& h = impl.header();
  std::byte* const shared = slot.lanes_base + uint64_t{slot.shared_lane} * slot.lane_stride_bytes;
  if (t_lanes_released) {
    // A thread_local destructor after this thread's lane releaser: claim
    // nothing (nobody would give it back); the shared lane is always there.
    StoreRelaxed(lane.shared_base, shared);
    return;
  }
  t_lane_releaser.Touch();  // registers this thread, once
  const uint32_t exclusive = h.lane_count - 1;
  shm::LaneOwnerWord* owners = impl.lane_owners();
  for (uint32_t i = 0; i < exclusive; ++i) {
    std::atomic_ref<uint64_t> owner(owners[i]);
    if (owner.load(std::memory_order_relaxed) != 0) continue;
    owner.store(LaneOwnerWordForThisThread(), std::memory_order_relaxed);
    if (i + 1 > h.lanes_high_water) {
      // release: a reader that sees the new high water also finds this
      // lane's owner word set.
      std::atomic_ref<uint32_t>(h.lanes_high_water).store(i + 1, std::memory_order_release);
    }
    StoreRelaxed(lane.exclusive_base, slot.lanes_base + uint64_t{i} * slot.lane_stride_bytes);
    if (slot.ring_stride_bytes > 0) {
      StoreRelaxed(lane.ring_base, slot.rings_base + uint64_t{i} * slot.ring_stride_bytes);
    }
    if (slot.exemplar_stride_bytes > 0) {
      StoreRelaxed(lane.exemplar_base, slot.exemplars_base + uint64_t{i} * slot.exemplar_stride_bytes);
    }
    return;
  }
  std::atomic_ref<uint64_t>(h.lane_fallback_count).fetch_add(1, std::memory_order_relaxed);
  StoreRelaxed(lane.shared_base, shared);
}

template <typename T>
void AddSlowImpl(uint32_t slot, uint32_t cell, T amount) {
  for (;;) {
    if (std::byte* lane = internal::ExclusiveLane(slot)) {
      internal::AddToOwnedCell<T>(lane, cell, amount);
      return;
    }
    if (std::byte* lane = LoadRelaxed(t_lanes[slot].shared_base)) {
      std::atomic_ref<T>(reinterpret_cast<T*>(lane)[cell]).fetch_add(amount, std::memory_order_relaxed);
      return;
    }
    BindLane(slot);
  }
}

// Clears every bound thread's entry for `slot`. Caller holds g_registry_mu.
void UnbindSlotEverywhere(uint32_t slot) {
  for (internal::ThreadLane* lanes : g_bound_threads) {
    StoreRelaxed(lanes[slot].exclusive_base, static_cast<std::byte*>(nullptr));
    StoreRelaxed(lanes[slot].shared_base, static_cast<std::byte*>(nullptr));
    StoreRelaxed(lanes[slot].ring_base, static_cast<std::byte*>(nullptr));
    StoreRelaxed(lanes[slot].exemplar_base, static_cast<std::byte*>(nullptr));
  }
}

// ------------------------------------------------------------ request log

// A record is written straight into its ring slot, each word computed in
// registers: no staging copy in memory, no library call, no per-field
// memset, and only the words of a text field that its text or the
// replaced record's text reaches.
constexpr size_t kRecordWords = sizeof(shm::RequestRecord) / 8;
constexpr size_t kLengthsWord = offsetof(shm::RequestRecord, status) / 8;
constexpr size_t kMethodWord = offsetof(shm::RequestRecord, method) / 8;
constexpr size_t kEndpointWord = offsetof(shm::RequestRecord, endpoint) / 8;
constexpr size_t kErrorWord = offsetof(shm::RequestRecord, error) / 8;
static_assert(kRecordWords == 16 && kLengthsWord == 4 && kMethodWord == 5 && kEndpointWord == 6 && kErrorWord == 12);
static_assert(offsetof(shm::RequestRecord, timestamp_unix_ns) == 8 && offsetof(shm::RequestRecord, duration_ns) == 16 &&
              offsetof(shm::RequestRecord, response_bytes) == 24);
// Word 4: status (bytes 0-1), flags (2), method, endpoint and error lengths (3-5), reserved (6-7).
static_assert(offsetof(shm::RequestRecord, flags) == 34 && offsetof(shm::RequestRecord, method_length) == 35 &&
              offsetof(shm::RequestRecord, endpoint_length) == 36 && offsetof(shm::RequestRecord, error_length) == 37);

// The clock of the timestamps a writer takes itself (WriterOptions::clock).
inline uint64_t ClockNs(const internal::WriterSlot& slot) {
  return slot.precise_clock != 0 ? internal::RealtimeNowNs() : internal::CoarseRealtimeNs();
}

inline uint64_t Load8(const char* p) {
  uint64_t word;
  std::memcpy(&word, p, 8);
  return word;
}

// Bytes p[0 .. n) (n < 8) in the low bytes of a word, the rest zero,
// reading nothing outside p[0 .. n).
inline uint64_t LoadShort(const char* p, size_t n) {
  if (n >= 4) {  // two 4-byte loads that overlap on identical bytes
    uint32_t low, high;
    std::memcpy(&low, p, 4);
    std::memcpy(&high, p + n - 4, 4);
    return low | (uint64_t{high} << ((n - 4) * 8));
  }
  if (n == 0) return 0;
  const uint64_t first = static_cast<unsigned char>(p[0]), middle = static_cast<unsigned char>(p[n / 2]),
                 last = static_cast<unsigned char>(p[n - 1]);
  return first | (middle << (n / 2 * 8)) | (last << ((n - 1) * 8));
}

// How many bytes of `text` fit in `capacity`: all of it, or the longest
// prefix that does not split a UTF-8 character (shm::Utf8Prefix, inline).
inline size_t FittingBytes(absl::string_view text, size_t capacity) {
  if (text.size() <= capacity) [[likely]] return text.size();
  size_t n = capacity;
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;  // don't split a character
  return n;
}

// release on each payload word (a plain store on x86): a reader whose
// acquire load sees any new word also sees the odd sequence stored before
// it, so it can tell the slot changed under it. Pairs with the acquire
// loads in Segment::ReadRing. (Not a release fence: TSan cannot model
// fences.)
inline void StorePayload(uint64_t& word, uint64_t value) {
  std::atomic_ref<uint64_t>(word).store(value, std::memory_order_release);
}

// Zeroes the words of a field that an older text of `old_bytes` reached
// beyond a new one of `bytes` (at most `capacity_words`, whatever
// `old_bytes` says). With the new text's last word zero-padded, the bytes
// past a field's length stay zero (an evicted record's text or a replaced
// trace id does not linger in the segment), for fewer stores than zeroing
// the whole field: the words past both texts are zero already.
inline void ZeroStaleWords(uint64_t* words, size_t bytes, size_t old_bytes, size_t capacity_words) {
  const size_t old_words = std::min((old_bytes + 7) / 8, capacity_words);
#pragma GCC unroll 1
  for (size_t i = (bytes + 7) / 8; i < old_words; ++i) StorePayload(words[i], 0);
}

// Stores text[0 .. n) into the words of a field that hold it, the last
// one zero-padded, and zeroes what the slot's older record (`old_n`
// bytes) left beyond it (ZeroStaleWords): the record path is bound by its
// stores.
template <size_t kWords>
inline void StoreField(uint64_t* words, const char* text, size_t n, size_t old_n) {
  ZeroStaleWords(words, n, old_n, kWords);
  if (n < 8) {
    if (n > 0) StorePayload(words[0], LoadShort(text, n));
    return;
  }
  // Every load stays inside the text: the last word's address is clamped
  // to the text's last 8 bytes and shifted down.
  const size_t full_words = n / 8;
#pragma GCC unroll 1
  for (size_t i = 0; i < full_words; ++i) StorePayload(words[i], Load8(text + 8 * i));
  if (const size_t tail = n % 8; tail > 0) StorePayload(words[full_words], Load8(text + n - 8) >> (8 * (8 - tail)));
}

// Slot `k mod slot_count` of a ring whose slots start at `slots`.
inline uint64_t* RingSlot(std::byte* slots, uint32_t slot_count, uint64_t k) {
  return reinterpret_cast<uint64_t*>(slots + (k & (slot_count - 1)) * sizeof(shm::RequestRecord));
}

// The seqlock write of record k into `words`: odd sequence, payload (by
// `store_payload`), even sequence, write index. Single producer.
template <typename StorePayloadWords>
inline void WriteRecord(uint64_t* words, uint64_t k, uint64_t* write_index, StorePayloadWords store_payload) {
  std::atomic_ref<uint64_t>(words[0]).store(2 * k + 1, std::memory_order_relaxed);
  store_payload(words);
  // release: the payload is complete before the even sequence is seen.
  std::atomic_ref<uint64_t>(words[0]).store(2 * k + 2, std::memory_order_release);
  std::atomic_ref<uint64_t>(*write_index).store(k + 1, std::memory_order_release);
}
}  // namespace

void RequestLog::record(const RequestRecordInput& request) const {
  std::byte* ring = LoadRelaxed(t_lanes[slot_].ring_base);
  if (ring == nullptr) [[unlikely]] {
    internal::EnsureBound(slot_);
    ring = LoadRelaxed(t_lanes[slot_].ring_base);
  }
  const internal::WriterSlot& slot = g_writer_slots[slot_];
  if (ring == nullptr) [[unlikely]] {  // the shared lane has no ring, or rings are off
    std::atomic_ref<uint64_t>(*slot.records_dropped).fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto* header = reinterpret_cast<shm::RingHeader*>(ring);
  std::byte* request_slots = ring + sizeof(shm::RingHeader);
  std::byte* error_slots = request_slots + uint64_t{slot.request_slots} * sizeof(shm::RequestRecord);
  const bool to_errors = request.error && slot.error_slots > 0;
  // The record is built in the request ring's slot, or in the error ring's
  // when there is no request ring; an error is then copied to the error ring.
  const bool to_requests = slot.request_slots > 0;
  if (!to_requests && !to_errors) return;
  uint64_t* const index = to_requests ? &header->request_write_index : &header->error_write_index;
  const uint64_t k = LoadRelaxed(*index);  // only this thread writes it
  uint64_t* const words = to_requests ? RingSlot(request_slots, slot.request_slots, k)
                                      : RingSlot(error_slots, slot.error_slots, k);

  const uint64_t timestamp = request.timestamp_unix_ns != 0 ? request.timestamp_unix_ns : ClockNs(slot);
  const size_t method_bytes = FittingBytes(request.method, shm::kRecordMethodBytes);
  const size_t endpoint_bytes = FittingBytes(request.endpoint, shm::kRecordEndpointBytes);
  const size_t error_bytes = FittingBytes(request.error_message, shm::kRecordErrorBytes);
  const uint64_t lengths = uint64_t{request.status} | uint64_t{request.error ? shm::kRecordFlagError : 0u} << 16 |
                           uint64_t{method_bytes} << 24 | uint64_t{endpoint_bytes} << 32 |
                           uint64_t{error_bytes} << 40;
  // The lengths of the record this one replaces: only this thread writes the slot.
  const uint64_t old_lengths = LoadRelaxed(words[kLengthsWord]);
  WriteRecord(words, k, index, [&](uint64_t* w) {
    StorePayload(w[1], timestamp);
    StorePayload(w[2], request.duration_ns);
    StorePayload(w[3], request.response_bytes);
    StorePayload(w[kLengthsWord], lengths);
    StoreField<shm::kRecordMethodBytes / 8>(w + kMethodWord, request.method.data(), method_bytes,
                                            (old_lengths >> 24) & 0xFF);
    StoreField<shm::kRecordEndpointBytes / 8>(w + kEndpointWord, request.endpoint.data(), endpoint_bytes,
                                              (old_lengths >> 32) & 0xFF);
    StoreField<shm::kRecordErrorBytes / 8>(w + kErrorWord, request.error_message.data(), error_bytes,
                                           (old_lengths >> 40) & 0xFF);
  });
  if (to_requests && to_errors) {
    const uint64_t e = LoadRelaxed(header->error_write_index);
    WriteRecord(RingSlot(error_slots, slot.error_slots, e), e, &header->error_write_index, [words](uint64_t* w) {
#pragma GCC unroll 16
      for (size_t i = 1; i < kRecordWords; ++i) {
        // relaxed: our own stores, read back by the thread that made them.
        StorePayload(w[i], std::atomic_ref<uint64_t>(words[i]).load(std::memory_order_relaxed));
      }
    });
  }
}

// ---------------------------------------------------------------- exemplars

// Whether every byte is below 0x80, eight at a time.
inline bool IsAscii(absl::string_view text) {
  uint64_t high = 0;
  size_t i = 0;
  for (; i + 8 <= text.size(); i += 8) high |= Load8(text.data() + i);
  for (; i < text.size(); ++i) high |= static_cast<unsigned char>(text[i]);
  return (high & 0x8080808080808080ull) == 0;
}

// The last label name of at most 16 bytes that this thread found valid:
// exemplars name the same label ("trace_id") time after time, and
// comparing two words costs less than checking every byte (6 of the 31 ns
// of an exemplar on the 2-core EPYC). Compared by content, so a name at a
// reused address is never taken for another.
struct ValidLabelName {
  uint64_t words[2];  // the name's bytes, zero-padded
  uint64_t size;      // 0: none yet
};
constinit thread_local ValidLabelName t_valid_label_name = {{0, 0}, 0};

inline bool IsValidLabelNameCached(absl::string_view name) {
  const size_t size = name.size();
  if (size == 0 || size > 16) return shm::IsValidLabelName(name);
  // Bytes 0..7 and 8..15 of the name, zero-padded; no load outside it.
  const uint64_t low = size >= 8 ? Load8(name.data()) : LoadShort(name.data(), size);
  const uint64_t high = size > 8 ? Load8(name.data() + size - 8) >> (8 * (16 - size)) : 0;
  ValidLabelName& last = t_valid_label_name;
  if (last.size == size && last.words[0] == low && last.words[1] == high) return true;
  if (!shm::IsValidLabelName(name)) return false;
  last = {{low, high}, size};
  return true;
}

// Packs a byte stream into whole words and stores each (StorePayload) as
// soon as it is complete. The words are built in registers from 8-byte
// loads of the source: a staging buffer written byte-wise and read back
// word-wise stalls on store forwarding (it cost a third of the exemplar
// path).
class WordPacker {
 public:
  explicit WordPacker(uint64_t* out) : out_(out) {}
  // Appends the low `n` bytes of `word` (1..8; the bytes above must be 0).
  void Put(uint64_t word, unsigned n) {
    pending_ |= word << (8 * fill_);  // fill_ < 8: a shift of at most 56
    const unsigned total = fill_ + n;
    if (total < 8) {
      fill_ = total;
      return;
    }
    StorePayload(*out_++, pending_);
    pending_ = fill_ == 0 ? 0 : word >> (64 - 8 * fill_);  // what did not fit
    fill_ = total - 8;
  }
  void Put(absl::string_view text) {
    const size_t full_words = text.size() / 8;
    // A whole word leaves fill_ as it is: the shifts are the same for each
    // (fill_ == 0 is apart, as a shift by 64 is undefined).
    if (fill_ == 0) {
      for (size_t i = 0; i < full_words; ++i) StorePayload(*out_++, Load8(text.data() + 8 * i));
    } else {
      const unsigned low_shift = 8 * fill_, high_shift = 64 - low_shift;
      for (size_t i = 0; i < full_words; ++i) {
        const uint64_t word = Load8(text.data() + 8 * i);
        StorePayload(*out_++, pending_ | word << low_shift);
        pending_ = word >> high_shift;
      }
    }
    if (const size_t tail = text.size() % 8; tail > 0) {
      Put(LoadShort(text.data() + 8 * full_words, tail), static_cast<unsigned>(tail));
    }
  }
  // Stores the last, partial word, zero-padded.
  void Finish() {
    if (fill_ > 0) StorePayload(*out_++, pending_);
  }

 private:
  uint64_t* out_;
  uint64_t pending_ = 0;
  unsigned fill_ = 0;  // bytes in pending_, 0..7
};

// Reaches Exemplar's private parts (a friend).
struct ExemplarWriter {
  static absl::string_view Name(const Exemplar& exemplar, uint32_t i) {
    return {exemplar.name_data_[i], exemplar.name_size_[i]};
  }
  static ExemplarLabel Label(const Exemplar& exemplar, uint32_t i) {
    return {Name(exemplar, i), {exemplar.value_data_[i], exemplar.value_size_[i]}};
  }
  // Bytes of the labels as the slot keeps them (u8 length, name, u8
  // length, value, ...), or 0 when a rule is broken.
  static size_t EncodedBytes(const Exemplar& exemplar) {
    if (exemplar.too_many_ || exemplar.count_ == 0) return 0;
    size_t bytes = 0, runes = 0;
    for (uint32_t i = 0; i < exemplar.count_; ++i) {
      const ExemplarLabel label = Label(exemplar, i);
      bytes += 2 + label.name.size() + label.value.size();
      if (bytes > shm::kExemplarLabelBytes || !IsValidLabelNameCached(label.name)) return 0;
      for (uint32_t j = 0; j < i; ++j) {
        if (Name(exemplar, j) == label.name) return 0;  // a label twice
      }
      runes += label.name.size();
      if (IsAscii(label.value)) [[likely]] {  // trace ids: no UTF-8 decoding needed
        runes += label.value.size();
      } else {
        if (!shm::IsValidUtf8(label.value)) return 0;
        runes += shm::Utf8Length(label.value);
      }
    }
    return runes > shm::kMaxExemplarRunes ? 0 : bytes;
  }
  // Stores the labels (already checked by EncodedBytes()) from `words` on,
  // the last word zero-padded, and zeroes what the replaced exemplar's
  // labels (`old_bytes`) left beyond them (ZeroStaleWords).
  static void Store(const Exemplar& exemplar, size_t bytes, size_t old_bytes, uint64_t* words) {
    ZeroStaleWords(words, bytes, old_bytes, shm::kExemplarLabelBytes / 8);
    WordPacker packer(words);
    for (uint32_t i = 0; i < exemplar.count_; ++i) {
      const ExemplarLabel label = Label(exemplar, i);
      packer.Put(label.name.size(), 1);
      packer.Put(label.name);
      packer.Put(label.value.size(), 1);
      packer.Put(label.value);
    }
    packer.Finish();
  }
  // Always the precise clock, whatever WriterOptions::clock says: readers
  // pick the newest exemplar across lanes and processes by its timestamp,
  // and threads within one coarse tick would all tie (the lowest lane would
  // win every time); OpenMetrics also shows it beside the series' _created.
  static uint64_t Timestamp(const Exemplar& exemplar) {
    return exemplar.timestamp_unix_ns_ != 0 ? exemplar.timestamp_unix_ns_ : internal::RealtimeNowNs();
  }
  static uint8_t LabelCount(const Exemplar& exemplar) { return static_cast<uint8_t>(exemplar.count_); }
};

void internal::NoteOutOfRange(uint32_t slot_index) {
  uint64_t* counter = g_writer_slots[slot_index].native_out_of_range;
  if (counter != nullptr) std::atomic_ref<uint64_t>(*counter).fetch_add(1, std::memory_order_relaxed);
}

void internal::WriteExemplar(uint32_t slot_index, uint32_t exemplar_index, double value, const Exemplar& exemplar) {
  std::byte* base = LoadRelaxed(t_lanes[slot_index].exemplar_base);
  if (base == nullptr) [[unlikely]] {
    EnsureBound(slot_index);
    base = LoadRelaxed(t_lanes[slot_index].exemplar_base);
  }
  const WriterSlot& slot = g_writer_slots[slot_index];
  const size_t length = base == nullptr ? 0 : ExemplarWriter::EncodedBytes(exemplar);
  if (length == 0) [[unlikely]] {
    // The shared lane keeps no exemplars (one writer per slot), nor does a
    // broken exemplar get in.
    if (slot.exemplars_dropped != nullptr) {
      std::atomic_ref<uint64_t>(*slot.exemplars_dropped).fetch_add(1, std::memory_order_relaxed);
    }
    return;
  }
  const uint64_t timestamp = ExemplarWriter::Timestamp(exemplar);
  auto* words = reinterpret_cast<uint64_t*>(base + uint64_t{exemplar_index} * sizeof(shm::ExemplarSlot));
  constexpr size_t kLabelWord = offsetof(shm::ExemplarSlot, labels) / 8;
  static_assert(kLabelWord == 4 && offsetof(shm::ExemplarSlot, value) == 8 &&
                offsetof(shm::ExemplarSlot, timestamp_unix_ns) == 16 && offsetof(shm::ExemplarSlot, labels_length) == 24 &&
                offsetof(shm::ExemplarSlot, label_count) == 26);
  // The seqlock of the rings (WriteRecord): odd, payload with release
  // stores, even. Only this thread writes the slot.
  const uint64_t sequence = LoadRelaxed(words[0]) & ~uint64_t{1};
  const uint64_t old_length = LoadRelaxed(words[3]) & 0xFFFF;  // the replaced exemplar's labels_length
  std::atomic_ref<uint64_t>(words[0]).store(sequence + 1, std::memory_order_relaxed);
  StorePayload(words[1], std::bit_cast<uint64_t>(value));
  StorePayload(words[2], timestamp);
  StorePayload(words[3], uint64_t{length} | uint64_t{ExemplarWriter::LabelCount(exemplar)} << 16);
  ExemplarWriter::Store(exemplar, length, old_length, words + kLabelWord);
  std::atomic_ref<uint64_t>(words[0]).store(sequence + 2, std::memory_order_release);
}

uint64_t PreciseNowUnixNs() { return internal::RealtimeNowNs(); }

RequestLog Writer::requests() const {
  RequestLog log;
  log.slot_ = impl_->slot;
  return log;
}

void internal::AddSlow(uint32_t slot, uint32_t cell, uint64_t amount) { AddSlowImpl(slot, cell, amount); }
void internal::AddSlow(uint32_t slot, uint32_t cell, double amount) { AddSlowImpl(slot, cell, amount); }
void internal::EnsureBound(uint32_t slot) {
  if (ExclusiveLane(slot) == nullptr && LoadRelaxed(t_lanes[slot].shared_base) == nullptr) BindLane(slot);
}

namespace {
LaneReleaser::~LaneReleaser() {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) {
    std::byte* base = LoadRelaxed(t_lanes[s].exclusive_base);
    if (base != nullptr && g_writers[s] != nullptr && !g_writers[s]->impl().closed) {
      const internal::WriterSlot& slot = g_writer_slots[s];
      const uint64_t index = uint64_t(base - slot.lanes_base) / slot.lane_stride_bytes;
      // release: the cells this thread wrote are handed to the next owner
      // (who also takes g_registry_mu, which alone would suffice in-process).
      std::atomic_ref<uint64_t>(g_writers[s]->impl().lane_owners()[index]).store(0, std::memory_order_release);
    }
    t_lanes[s] = internal::ThreadLane{};
  }
  std::erase(g_bound_threads, t_lanes);
  t_lanes_released = true;
}
}  // namespace

namespace {
// Binds this thread in writer `slot_index` and returns the writer's slot,
// or nullptr once the writer is closed (its values are final): the check
// of Gauge::set and StateSet, which write into the shared lane.
const internal::WriterSlot* OpenWriterSlot(uint32_t slot_index) {
  internal::EnsureBound(slot_index);
  const internal::WriterSlot& slot = g_writer_slots[slot_index];
  // relaxed: Close() stores it under the registry mutex before unbinding
  // this thread, which then rebinds (EnsureBound) under the same mutex.
  if (std::atomic_ref<uint32_t>(const_cast<uint32_t&>(slot.closed)).load(std::memory_order_relaxed) != 0) {
    return nullptr;
  }
  return &slot;
}

std::byte* SharedLane(const internal::WriterSlot& slot) {
  return slot.lanes_base + uint64_t{slot.shared_lane} * slot.lane_stride_bytes;
}
}  // namespace

void Gauge::set(double value) const {
  const internal::WriterSlot* open = OpenWriterSlot(slot_);
  if (open == nullptr) return;
  const internal::WriterSlot& slot = *open;
  const uint32_t high_water =
      std::atomic_ref<uint32_t>(*const_cast<uint32_t*>(slot.lanes_high_water)).load(std::memory_order_acquire);
  const uint32_t lanes = std::min(high_water, slot.shared_lane);
  // The value a reader computes is the sum of (integer cell + double cell)
  // over lanes; make it `value` by writing the shared lane's double cell.
  double others = 0;
  auto add_lane = [&](uint32_t lane, bool with_double) {
    std::byte* base = slot.lanes_base + uint64_t{lane} * slot.lane_stride_bytes;
    auto* integer = reinterpret_cast<uint64_t*>(base) + cell_;
    others += static_cast<double>(static_cast<int64_t>(
        std::atomic_ref<uint64_t>(*integer).load(std::memory_order_relaxed)));
    if (with_double) {
      others += std::atomic_ref<double>(reinterpret_cast<double*>(base)[cell_ + 1]).load(std::memory_order_relaxed);
    }
  };
  for (uint32_t i = 0; i < lanes; ++i) add_lane(i, true);
  add_lane(slot.shared_lane, false);
  auto* shared = reinterpret_cast<double*>(SharedLane(slot));
  std::atomic_ref<double>(shared[cell_ + 1]).store(value - others, std::memory_order_relaxed);
}

// ------------------------------------------------------------------- fork()

// The registry lock is held across the whole fork(): the prepare handler
// takes it (and copies each writer's descriptors while nothing can change
// them), the parent and child handlers release it. A child therefore lays
// out its segment from a private copy that nothing the parent does after
// fork() can reach.
struct WriterForkHandlers {
  static void Prepare() {
    g_registry_mu.lock();
    for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) {
      Writer* writer = g_writers[s];
      if (writer == nullptr || writer->impl().closed) continue;
      writer->impl().fork_snapshot = writer->impl().segment->TakeForkSnapshot();
    }
  }
  static void Parent() {
    for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) {
      if (g_writers[s] != nullptr) g_writers[s]->impl().fork_snapshot = shm::ForkSnapshot{};
    }
    g_registry_mu.unlock();
  }
  static void Child() {
    for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) {
      Writer* writer = g_writers[s];
      if (writer == nullptr || writer->impl().closed) continue;
      Writer::Impl& w = writer->impl();
      w.fork_error = w.segment->ReplaceInForkChild(w.fork_snapshot);
      w.fork_snapshot = shm::ForkSnapshot{};
      if (!w.fork_error.ok()) {
        std::fprintf(stderr, "shmetrics: fork child %d has no segment of its own, its metrics are "
                     "dropped: %s\n", static_cast<int>(getpid()), w.fork_error.ToString().c_str());
      }
    }
    // Only this thread survives in the child, and the child's segments have
    // no lane owners yet: forget every binding; this thread rebinds on use.
    const bool registered = std::find(g_bound_threads.begin(), g_bound_threads.end(), t_lanes) !=
                            g_bound_threads.end();
    g_bound_threads.clear();
    if (registered) g_bound_threads.push_back(t_lanes);
    ResetThreadLanes(t_lanes);
    g_registry_mu.unlock();
  }
};

namespace {
void RegisterForkHandlersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    pthread_atfork(&WriterForkHandlers::Prepare, &WriterForkHandlers::Parent,
                   &WriterForkHandlers::Child);
  });
}

absl::Status ValidateBounds(const std::vector<double>& bounds, bool may_be_empty = false) {
  if (bounds.empty() && may_be_empty) return absl::OkStatus();
  if (bounds.empty() || bounds.size() > shm::kMaxBuckets) {
    return absl::InvalidArgumentError(
        absl::StrCat("a histogram needs 1 to ", shm::kMaxBuckets, " bucket bounds, got ", bounds.size()));
  }
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
      return absl::InvalidArgumentError(
          "histogram bounds must be finite and strictly increasing (+Inf is implicit)");
    }
  }
  return absl::OkStatus();
}

// The native shape `options` asks for, or InvalidArgument.
absl::StatusOr<shm::NativeShape> NativeShapeOf(const NativeHistogramOptions& options) {
  if (options.schema < shm::kMinNativeSchema || options.schema > shm::kMaxNativeSchema) {
    return absl::InvalidArgumentError(absl::StrCat("native histogram schema must be ", shm::kMinNativeSchema,
                                                   " to ", shm::kMaxNativeSchema, ", got ", options.schema));
  }
  if (!(std::isfinite(options.zero_threshold) && options.zero_threshold >= 0 &&
        std::isfinite(options.min) && options.min > options.zero_threshold &&
        options.min >= std::numeric_limits<double>::min() && std::isfinite(options.max) &&
        options.max > options.min)) {
    return absl::InvalidArgumentError(
        "native histogram range must satisfy 0 <= zero_threshold < min < max, all finite, min a normal number");
  }
  if (absl::Status s = ValidateBounds(options.classic_bounds, true); !s.ok()) return s;
  shm::NativeShape shape;
  shape.schema = options.schema;
  shape.negative = options.negative;
  const shm::NativeSchemaTable* table = shm::NativeSchemaTableFor(options.schema);
  shape.index_min = shm::NativeBucketIndex(options.min, options.schema, table);
  shape.index_max = shm::NativeBucketIndex(options.max, options.schema, table);
  shape.zero_threshold = options.zero_threshold;
  shape.classic_bounds = static_cast<uint32_t>(options.classic_bounds.size());
  if (shape.buckets_per_sign() > shm::kMaxNativeBuckets) {
    return absl::InvalidArgumentError(absl::StrCat(
        "native histogram range [", options.min, ", ", options.max, "] at schema ", options.schema, " needs ",
        shape.buckets_per_sign(), " buckets per sign; at most ", shm::kMaxNativeBuckets,
        " (narrow the range or lower the schema)"));
  }
  return shape;
}

absl::Status ValidateStates(absl::string_view name, const std::vector<std::string>& states) {
  if (states.empty() || states.size() > shm::kMaxStates) {
    return absl::InvalidArgumentError(
        absl::StrCat("stateset '", name, "' needs 1 to ", shm::kMaxStates, " states, got ", states.size()));
  }
  for (size_t i = 0; i < states.size(); ++i) {
    const std::string& state = states[i];
    if (state.empty() || state.size() > shm::kMaxLabelValueBytes || !shm::IsValidUtf8(state) ||
        state.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("stateset '", name, "': a state must be 1 to ",
                                                     shm::kMaxLabelValueBytes, " bytes of UTF-8 without NUL"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (states[j] == state) {
        return absl::InvalidArgumentError(absl::StrCat("stateset '", name, "': state '", state, "' is repeated"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

// ------------------------------------------------------------------- Writer

std::vector<double> DefaultBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i, start *= factor) bounds.push_back(start);
  return bounds;
}

Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Writer>> Writer::Create(const WriterOptions& options) {
  RegisterForkHandlersOnce();
  shm::WritableSegment::Options segment_options;
  segment_options.directory = options.directory;
  segment_options.service = options.service;
  static std::atomic<uint32_t> next_instance{0};
  segment_options.instance = next_instance.fetch_add(1, std::memory_order_relaxed);
  segment_options.capacities = options.capacities;
  segment_options.group_readable = options.group_readable;

  // Declared before the lock: on failure it is destroyed after the lock is
  // released (its destructor takes the lock).
  std::unique_ptr<Writer> writer;
  // The whole creation holds the registry lock, so a fork() sees this
  // writer complete and published, or not at all.
  std::lock_guard<std::mutex> lock(g_registry_mu);
  uint32_t slot = kSlotCount;
  for (uint32_t s = kFirstWriterSlot; s < kSlotCount; ++s) {
    if (g_writers[s] == nullptr) {
      slot = s;
      break;
    }
  }
  if (slot == kSlotCount) {
    return absl::ResourceExhaustedError(
        absl::StrCat("at most ", kMaxWritersPerProcess, " writers per process"));
  }
  absl::StatusOr<std::unique_ptr<shm::WritableSegment>> segment =
      shm::WritableSegment::Create(segment_options);
  if (!segment.ok()) return segment.status();

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->segment = *std::move(segment);
  impl->slot = slot;
  writer.reset(new Writer(std::move(impl)));
  Impl& w = *writer->impl_;
  shm::SegmentHeader& h = w.header();
  internal::WriterSlot& ws = g_writer_slots[slot];
  ws.lanes_base = w.segment->base() + h.lanes_offset;
  ws.lane_stride_bytes = w.lane_stride();
  ws.shared_lane = h.lane_count - 1;
  ws.lanes_high_water = &h.lanes_high_water;
  ws.request_slots = h.ring_slots_per_lane;
  ws.error_slots = h.error_ring_slots_per_lane;
  std::atomic_ref<uint32_t>(ws.closed).store(0, std::memory_order_relaxed);
  ws.rings_base = w.segment->base() + h.rings_offset;
  ws.ring_stride_bytes = shm::RingStrideBytes(options.capacities);
  ws.records_dropped = &h.records_dropped;
  ws.exemplars_base = w.segment->base() + h.exemplars_offset;
  ws.exemplar_stride_bytes = uint64_t{h.exemplar_slots_per_lane} * sizeof(shm::ExemplarSlot);
  ws.exemplars_dropped = &h.exemplars_dropped;
  ws.native_out_of_range = &h.native_out_of_range;
  ws.precise_clock = options.clock == WriterOptions::Clock::kPrecise ? 1 : 0;
  UnbindSlotEverywhere(slot);  // no thread keeps a binding from the slot's last writer
  // The overflow label value is interned up front so that using an overflow
  // series never needs arena space.
  if (absl::StatusOr<shm::StringRef> ref = w.Intern(kOverflowValue); !ref.ok()) return ref.status();
  w.segment->MarkReady();
  // Complete, ready, locked: now readers may see it, under its final name.
  if (absl::Status published = w.segment->Publish(); !published.ok()) return published;
  g_writers[slot] = writer.get();
  w.registered = true;
  return writer;
}

Writer::~Writer() {
  Close();
  std::lock_guard<std::mutex> lock(g_registry_mu);
  if (!impl_->registered) return;
  g_writers[impl_->slot] = nullptr;
  UnbindSlotEverywhere(impl_->slot);
}

void Writer::Close() {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  Impl& w = *impl_;
  if (w.closed) return;
  w.closed = true;
  if (!w.registered) return;  // a Create() that failed: nothing was shown
  // The sink where handles write from now on (one lane and one ring),
  // before any thread can rebind.
  const internal::WriterSlot& ws = g_writer_slots[w.slot];
  w.closed_sink.assign((ws.lane_stride_bytes + ws.ring_stride_bytes + ws.exemplar_stride_bytes) / 8, 0);
  std::atomic_ref<uint32_t>(g_writer_slots[w.slot].closed).store(1, std::memory_order_relaxed);
  w.segment->MarkClosed();
  // Every thread rebinds, to the sink; the lanes it held are free.
  UnbindSlotEverywhere(w.slot);
  shm::SegmentHeader& h = w.header();
  for (uint32_t i = 0; i + 1 < h.lane_count; ++i) {
    // release: pairs with a reader's acquire load of the owner word, like
    // the lane releaser's.
    std::atomic_ref<uint64_t>(w.lane_owners()[i]).store(0, std::memory_order_release);
  }
  if (w.options.remove_on_close) (void)w.segment->Unlink();
}

const std::string& Writer::path() const { return impl_->segment->path(); }

uint32_t Writer::series_count() const {
  return std::atomic_ref<uint32_t>(impl_->header().series_count).load(std::memory_order_relaxed);
}

uint64_t Writer::series_overflow_count() const {
  return std::atomic_ref<uint64_t>(impl_->header().series_overflow_count)
      .load(std::memory_order_relaxed);
}

absl::StatusOr<uint32_t> Writer::AddFamily(absl::string_view name, absl::string_view help, FamilySpec spec) {
  const shm::MetricType type = spec.type;
  const std::vector<std::string>& label_names = spec.label_names;
  const GaugeMerge merge = spec.merge;
  const std::vector<double>& bounds = spec.bounds;
  if (!shm::IsValidMetricName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid metric name '", name, "': must match [a-zA-Z_:][a-zA-Z0-9_:]* (at most ",
        shm::kMaxNameBytes, " bytes)"));
  }
  if (help.size() > shm::kMaxHelpBytes || !shm::IsValidUtf8(help)) {
    return absl::InvalidArgumentError(absl::StrCat("help of '", name, "' must be UTF-8, at most ",
                                                   shm::kMaxHelpBytes, " bytes"));
  }
  if (absl::Status s = shm::CheckFamilyRules(name, type, merge, label_names); !s.ok()) return s;
  if (absl::Status s = shm::CheckUnit(name, type, spec.unit); !s.ok()) return s;
  if (type == shm::MetricType::kStateSet) {
    if (absl::Status s = ValidateStates(name, spec.states); !s.ok()) return s;
  }
  if (type == shm::MetricType::kHistogram && !spec.native) {
    if (absl::Status s = ValidateBounds(bounds); !s.ok()) return s;
  }

  std::lock_guard<std::mutex> lock(g_registry_mu);
  Impl& w = *impl_;
  if (!w.fork_error.ok()) return w.NoSegmentError();
  if (auto it = w.family_by_name.find(name); it != w.family_by_name.end()) {
    const FamilySpec& existing = w.families[it->second].spec;
    if (existing.type != type || existing.label_names != label_names || existing.bounds != bounds ||
        existing.unit != spec.unit || existing.native != spec.native || existing.exemplars != spec.exemplars ||
        existing.states != spec.states ||
        (spec.native && existing.native_shape != spec.native_shape)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "metric '", name, "' is already registered as a ", existing.native ? "native " : "",
          shm::MetricTypeName(existing.type), " with labels [", absl::StrJoin(existing.label_names, ","), "]",
          existing.type == shm::MetricType::kHistogram ? " and other bounds or options" : "",
          existing.unit != spec.unit ? absl::StrCat(" and unit '", existing.unit, "'") : ""));
    }
    return it->second;
  }
  const std::vector<std::string> occupied = shm::ExpositionNames(name, type);
  for (const std::string& taken : occupied) {
    if (auto it = w.exposition_owner.find(taken); it != w.exposition_owner.end()) {
      const Impl::FamilyInfo& other = w.families[it->second];
      return absl::AlreadyExistsError(absl::StrCat(
          "metric '", name, "' (", shm::MetricTypeName(type), ") cannot be exported beside the ",
          shm::MetricTypeName(other.spec.type), " '", other.name, "': both would use the name '", taken, "'"));
    }
  }
  shm::SegmentHeader& h = w.header();
  const uint32_t index = h.family_count;
  if (index >= h.family_capacity) {
    return absl::ResourceExhaustedError(absl::StrCat("family capacity ", h.family_capacity,
                                                     " exhausted in segment ", w.segment->path()));
  }
  if (bounds.size() > h.bounds_capacity - h.bounds_used) {
    return absl::ResourceExhaustedError(absl::StrCat("bucket bound capacity ", h.bounds_capacity,
                                                     " exhausted in segment ", w.segment->path()));
  }
  Impl::FamilyInfo info{spec, nullptr, std::string(help), std::string(name)};
  if (type == shm::MetricType::kHistogram && !bounds.empty()) {
    const size_t width = internal::kBucketSearchWidth;
    const size_t padded = (bounds.size() + width - 1) / width * width;
    info.padded_bounds = std::shared_ptr<double[]>(
        new (std::align_val_t{16}) double[padded], [](double* p) { operator delete[](p, std::align_val_t{16}); });
    for (size_t i = 0; i < padded; ++i) {
      info.padded_bounds[i] = i < bounds.size() ? bounds[i] : std::numeric_limits<double>::infinity();
    }
  }
  const uint32_t overflow_cells = label_names.empty() ? 0 : w.CellsFor(info);
  const uint32_t overflow_series = label_names.empty() ? 0 : 1;
  if (h.series_count + w.reserved_series + overflow_series > h.series_capacity ||
      h.cells_used + w.reserved_cells + overflow_cells > h.cells_per_lane) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no room for the overflow series of family '", name, "' in segment ", w.segment->path()));
  }

  shm::FamilyDescriptor d{};
  absl::StatusOr<shm::StringRef> name_ref = w.Intern(name);
  if (!name_ref.ok()) return name_ref.status();
  absl::StatusOr<shm::StringRef> help_ref = w.Intern(help);
  if (!help_ref.ok()) return help_ref.status();
  d.name = *name_ref;
  d.help = *help_ref;
  if (!spec.unit.empty()) {
    absl::StatusOr<shm::StringRef> unit_ref = w.Intern(spec.unit);
    if (!unit_ref.ok()) return unit_ref.status();
    d.unit = *unit_ref;
  }
  if (type == shm::MetricType::kStateSet) {
    absl::StatusOr<shm::StringRef> states_ref = w.Intern(absl::StrJoin(spec.states, std::string(1, '\0')));
    if (!states_ref.ok()) return states_ref.status();
    shm::SetStateSetStates(d, *states_ref);
  }
  if (spec.native) {
    const shm::NativeShape& native = spec.native_shape;
    d.native_flags = shm::kNativeFlagEnabled | (native.negative ? shm::kNativeFlagNegative : 0);
    d.native_schema = static_cast<int8_t>(native.schema);
    d.native_index_min = native.index_min;
    d.native_index_max = native.index_max;
    d.native_zero_threshold = native.zero_threshold;
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    absl::StatusOr<shm::StringRef> ref = w.Intern(label_names[i]);
    if (!ref.ok()) return ref.status();
    d.label_names[i] = *ref;
  }
  d.type = static_cast<uint8_t>(type);
  d.gauge_merge = static_cast<uint8_t>(merge);
  d.label_count = static_cast<uint16_t>(label_names.size());
  d.created_unix_ns = shm::NowUnixNs();
  if (type == shm::MetricType::kHistogram && !bounds.empty()) {
    double* area = w.region<double>(h.bounds_offset);
    d.bounds_index = h.bounds_used;
    d.bucket_count = static_cast<uint32_t>(bounds.size());
    std::memcpy(area + h.bounds_used, bounds.data(), bounds.size() * sizeof(double));
    std::atomic_ref<uint32_t>(h.bounds_used)
        .store(h.bounds_used + d.bucket_count, std::memory_order_relaxed);
  }
  w.region<shm::FamilyDescriptor>(h.family_table_offset)[index] = d;
  // release: publishes the descriptor, its strings and bounds; pairs with
  // the acquire load of family_count in the reader.
  std::atomic_ref<uint32_t>(h.family_count).store(index + 1, std::memory_order_release);
  w.reserved_series += overflow_series;
  w.reserved_cells += overflow_cells;
  w.families.push_back(std::move(info));
  w.family_by_name.emplace(std::string(name), index);
  for (const std::string& taken : occupied) w.exposition_owner.emplace(taken, index);
  return index;
}

absl::StatusOr<Writer::SeriesCells> Writer::AddSeries(uint32_t family,
                                                      std::vector<absl::string_view> values) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  Impl& w = *impl_;
  if (!w.fork_error.ok()) return w.NoSegmentError();
  Impl::FamilyInfo& info = w.families[family];
  const std::vector<std::string>& label_names = info.spec.label_names;
  if (values.size() != label_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "family '", info.name, "' with labels [",
        absl::StrJoin(label_names, ","), "] needs ", label_names.size(),
        " label values, got ", values.size()));
  }
  std::string key;
  absl::StrAppend(&key, family, "\xff");
  for (absl::string_view value : values) {
    if (value.size() > shm::kMaxLabelValueBytes || !shm::IsValidUtf8(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label value must be UTF-8, at most ", shm::kMaxLabelValueBytes, " bytes"));
    }
    absl::StrAppend(&key, value.size(), ":", value);
  }
  shm::SegmentHeader& h = w.header();
  const uint32_t cell_count = w.CellsFor(info);
  if (auto it = w.series_by_key.find(key); it != w.series_by_key.end()) {
    const shm::SeriesDescriptor& d = w.region<shm::SeriesDescriptor>(h.series_table_offset)[it->second];
    return SeriesCells{d.first_cell, info.padded_bounds.get(), static_cast<uint32_t>(info.spec.bounds.size()),
                       family, d.exemplar_count > 0 ? d.first_exemplar : internal::kNoExemplar};
  }
  const bool has_room = h.series_count + w.reserved_series < h.series_capacity &&
                        h.cells_used + w.reserved_cells + cell_count <= h.cells_per_lane;
  std::vector<shm::StringRef> refs;
  bool interned = has_room;
  if (has_room) {
    for (absl::string_view value : values) {
      absl::StatusOr<shm::StringRef> ref = w.Intern(value);
      if (!ref.ok()) {
        interned = false;
        break;
      }
      refs.push_back(*ref);
    }
  }
  if (!interned) {
    const std::string what = absl::StrCat(
        "series capacity exhausted in segment ", w.segment->path(), " (", h.series_count,
        " series of ", h.series_capacity, ", ", h.cells_used, " cells of ", h.cells_per_lane,
        ", arena ", h.string_arena_used, " of ", h.string_arena_bytes, " bytes)");
    if (w.options.on_full == WriterOptions::OnFull::kError || label_names.empty()) {
      return absl::ResourceExhaustedError(what);
    }
    std::atomic_ref<uint64_t>(h.series_overflow_count).fetch_add(1, std::memory_order_relaxed);
    if (!w.full_reported) {
      w.full_reported = true;
      std::fprintf(stderr, "shmetrics: %s; new series now go to their family's series with every "
                   "label = \"%s\"\n", what.c_str(), std::string(kOverflowValue).c_str());
    }
    if (info.overflow_series == shm::kNoIndex) {
      const shm::StringRef overflow_ref = w.interned.find(kOverflowValue)->second;
      std::vector<shm::StringRef> overflow_refs(label_names.size(), overflow_ref);
      w.reserved_series -= 1;
      w.reserved_cells -= cell_count;
      info.overflow_series = w.PublishSeries(family, h.cells_used, cell_count, overflow_refs,
                                             shm::kSeriesFlagOverflow);
    }
    const shm::SeriesDescriptor& d =
        w.region<shm::SeriesDescriptor>(h.series_table_offset)[info.overflow_series];
    return SeriesCells{d.first_cell, info.padded_bounds.get(), static_cast<uint32_t>(info.spec.bounds.size()),
                       family, internal::kNoExemplar};
  }
  const uint32_t first_cell = h.cells_used;
  // Exemplar slots, when the family wants them and there is room; without
  // room the series works, its exemplars are dropped (and counted).
  uint32_t first_exemplar = internal::kNoExemplar, exemplar_count = 0;
  if (info.spec.exemplars) {
    const uint32_t wanted = info.spec.type == shm::MetricType::kCounter ? 1
                                                                        : static_cast<uint32_t>(info.spec.bounds.size()) + 1;
    if (uint64_t{h.exemplar_slots_used} + wanted <= h.exemplar_slots_per_lane) {
      first_exemplar = h.exemplar_slots_used;
      exemplar_count = wanted;
    } else if (!w.exemplars_full_reported) {
      w.exemplars_full_reported = true;
      std::fprintf(stderr, "shmetrics: exemplar slots exhausted in segment %s (%u per lane); new series keep "
                   "no exemplars (Capacities::exemplar_slots_per_lane)\n", w.segment->path().c_str(),
                   h.exemplar_slots_per_lane);
    }
  }
  const uint32_t index = w.PublishSeries(family, first_cell, cell_count, refs, 0, first_exemplar, exemplar_count);
  w.series_by_key.emplace(std::move(key), index);
  return SeriesCells{first_cell, info.padded_bounds.get(), static_cast<uint32_t>(info.spec.bounds.size()), family,
                     first_exemplar};
}

template <typename Handle>
absl::StatusOr<Handle> Writer::MakeHandle(uint32_t family, std::vector<absl::string_view> values) {
  absl::StatusOr<SeriesCells> cells = AddSeries(family, std::move(values));
  if (!cells.ok()) return cells.status();
  if constexpr (std::is_same_v<Handle, Histogram>) {
    return Histogram(impl_->slot, cells->first_cell, cells->bounds, cells->bucket_count, cells->first_exemplar);
  } else if constexpr (std::is_same_v<Handle, Counter>) {
    return Counter(impl_->slot, cells->first_cell, cells->first_exemplar);
  } else if constexpr (std::is_same_v<Handle, StateSet>) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    StateSet handle;
    handle.slot_ = impl_->slot;
    handle.cell_ = cells->first_cell;
    handle.state_count_ = static_cast<uint32_t>(impl_->families[cells->family].spec.states.size());
    handle.valid_ = true;
    return handle;
  } else if constexpr (std::is_same_v<Handle, NativeHistogram>) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    const shm::NativeShape& shape = impl_->families[cells->family].spec.native_shape;
    NativeHistogram handle;
    handle.slot_ = impl_->slot;
    handle.cell_ = cells->first_cell;
    handle.exemplar_ = cells->first_exemplar;
    handle.schema_ = shape.schema;
    handle.index_min_ = shape.index_min;
    handle.index_max_ = shape.index_max;
    handle.negative_first_cell_ = shape.negative ? shape.negative_first_cell() : 0;
    handle.zero_threshold_ = shape.zero_threshold;
    handle.table_ = shm::NativeSchemaTableFor(shape.schema);
    handle.classic_first_cell_ = shape.classic_first_cell();
    handle.classic_count_ = cells->bucket_count;
    handle.classic_padded_ = (cells->bucket_count + internal::kBucketSearchWidth - 1) /
                             internal::kBucketSearchWidth * internal::kBucketSearchWidth;
    handle.classic_bounds_ = cells->bounds;
    handle.valid_ = true;
    return handle;
  } else {
    return Handle(impl_->slot, cells->first_cell);
  }
}

template <typename Family>
absl::StatusOr<Family> Writer::MakeFamily(absl::StatusOr<uint32_t> index) {
  if (!index.ok()) return index.status();
  Family family;
  family.writer_ = this;
  family.family_ = *index;
  return family;
}

absl::StatusOr<CounterFamily> Writer::AddCounter(absl::string_view name, absl::string_view help,
                                                 std::vector<std::string> label_names,
                                                 const MetricOptions& options) {
  FamilySpec spec;
  spec.type = shm::MetricType::kCounter;
  spec.label_names = std::move(label_names);
  spec.unit = options.unit;
  spec.exemplars = options.exemplars;
  return MakeFamily<CounterFamily>(AddFamily(name, help, std::move(spec)));
}

absl::StatusOr<GaugeFamily> Writer::AddGauge(absl::string_view name, absl::string_view help,
                                             std::vector<std::string> label_names, GaugeMerge merge,
                                             const MetricOptions& options) {
  FamilySpec spec;
  spec.type = shm::MetricType::kGauge;
  spec.label_names = std::move(label_names);
  spec.merge = merge;
  spec.unit = options.unit;
  return MakeFamily<GaugeFamily>(AddFamily(name, help, std::move(spec)));
}

absl::StatusOr<HistogramFamily> Writer::AddHistogram(absl::string_view name, absl::string_view help,
                                                     std::vector<std::string> label_names,
                                                     std::vector<double> bounds, const MetricOptions& options) {
  FamilySpec spec;
  spec.type = shm::MetricType::kHistogram;
  spec.label_names = std::move(label_names);
  spec.bounds = std::move(bounds);
  spec.unit = options.unit;
  spec.exemplars = options.exemplars;
  return MakeFamily<HistogramFamily>(AddFamily(name, help, std::move(spec)));
}

absl::StatusOr<NativeHistogramFamily> Writer::AddNativeHistogram(absl::string_view name, absl::string_view help,
                                                                 std::vector<std::string> label_names,
                                                                 const NativeHistogramOptions& options) {
  absl::StatusOr<shm::NativeShape> shape = NativeShapeOf(options);
  if (!shape.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("family '", name, "': ", shape.status().message()));
  }
  FamilySpec spec;
  spec.type = shm::MetricType::kHistogram;
  spec.label_names = std::move(label_names);
  spec.bounds = options.classic_bounds;
  spec.unit = options.unit;
  spec.native = true;
  spec.native_shape = *shape;
  spec.exemplars = options.exemplars;
  return MakeFamily<NativeHistogramFamily>(AddFamily(name, help, std::move(spec)));
}

absl::StatusOr<InfoFamily> Writer::AddInfo(absl::string_view name, absl::string_view help,
                                           std::vector<std::string> label_names) {
  FamilySpec spec;
  spec.type = shm::MetricType::kInfo;
  spec.label_names = std::move(label_names);
  return MakeFamily<InfoFamily>(AddFamily(name, help, std::move(spec)));
}

absl::StatusOr<StateSetFamily> Writer::AddStateSet(absl::string_view name, absl::string_view help,
                                                   std::vector<std::string> label_names,
                                                   std::vector<std::string> states) {
  FamilySpec spec;
  spec.type = shm::MetricType::kStateSet;
  spec.label_names = std::move(label_names);
  spec.states = std::move(states);
  return MakeFamily<StateSetFamily>(AddFamily(name, help, std::move(spec)));
}

absl::Status InfoFamily::Add(std::initializer_list<absl::string_view> values) const {
  return writer_->AddSeries(family_, std::vector<absl::string_view>(values)).status();
}
absl::Status InfoFamily::Add(const std::vector<std::string>& values) const {
  return writer_->AddSeries(family_, std::vector<absl::string_view>(values.begin(), values.end())).status();
}

void StateSet::set(uint32_t state_index) const {
  if (state_index < state_count_) Store(uint64_t{state_index} + 1);
}

void StateSet::clear() const {
  if (valid_) Store(0);
}

void StateSet::Store(uint64_t cell_value) const {
  const internal::WriterSlot* open = OpenWriterSlot(slot_);
  if (open == nullptr) return;
  auto* shared = reinterpret_cast<uint64_t*>(SharedLane(*open));
  std::atomic_ref<uint64_t>(shared[cell_]).store(cell_value, std::memory_order_relaxed);
}

void NativeHistogram::ObserveSlow(uint32_t bucket_cell, bool out_of_range, double value, uint32_t classic) const {
  internal::AddSlow(slot_, cell_ + bucket_cell, uint64_t{1});
  internal::AddSlow(slot_, cell_ + shm::kNativeSumCell, value);
  if (out_of_range) {
    internal::AddSlow(slot_, cell_ + shm::kNativeOutOfRangeCell, uint64_t{1});
    internal::NoteOutOfRange(slot_);
  }
  if (classic_count_ != 0) internal::AddSlow(slot_, cell_ + classic_first_cell_ + classic, uint64_t{1});
}

#define SHMETRICS_WITH_LABELS(Family, Handle)                                               \
  absl::StatusOr<Handle> Family::WithLabels(std::initializer_list<absl::string_view> values) \
      const {                                                                               \
    return writer_->MakeHandle<Handle>(family_, std::vector<absl::string_view>(values));     \
  }                                                                                         \
  absl::StatusOr<Handle> Family::WithLabels(const std::vector<std::string>& values) const { \
    return writer_->MakeHandle<Handle>(                                                     \
        family_, std::vector<absl::string_view>(values.begin(), values.end()));             \
  }
SHMETRICS_WITH_LABELS(CounterFamily, Counter)
SHMETRICS_WITH_LABELS(GaugeFamily, Gauge)
SHMETRICS_WITH_LABELS(HistogramFamily, Histogram)
SHMETRICS_WITH_LABELS(NativeHistogramFamily, NativeHistogram)
SHMETRICS_WITH_LABELS(StateSetFamily, StateSet)
#undef SHMETRICS_WITH_LABELS

}  // namespace shmetrics
