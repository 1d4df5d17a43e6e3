// shmetrics segment layout, version 2 (version 1 is version 2 without
// native histograms; readers accept both).
//
// One segment is one file (normally on tmpfs, /dev/shm) written by exactly one
// process and read by any number of read-only mappers. This header is the
// single source of truth for the byte layout; docs/segment-format.md mirrors
// it field by field, and the static_asserts below pin every offset a reader
// relies on to the numbers written in that document.
//
// Layout of a segment (every region starts on a 64-byte boundary):
//
//   [SegmentHeader 512 B][FamilyDescriptor x family_capacity]
//   [SeriesDescriptor x series_capacity][string arena][bucket bounds (f64)]
//   [lane owner words (u64) x lane_count][lanes: lane_count x cells_per_lane x 8 B]
//   [rings: exclusive lanes x (RingHeader + request slots + error slots)]
//   [exemplars: exclusive lanes x exemplar_slots_per_lane x ExemplarSlot] (version 2)
//
// A "cell" is one 8-byte value slot. Every series owns `cell_count` cells at
// the same index `first_cell` in every lane; the value of the series is the
// sum over lanes. Lanes 0 .. lane_count-2 are exclusive (owned by one thread
// at a time, updated with a plain load + store); the last lane is shared and
// updated with atomic read-modify-write by threads that found no free lane.
//
// Cell encodings (value = sum over lanes):
//   counter   2 cells: u64 integer increments, then f64 fractional amounts;
//                      value = u64 sum + f64 sum
//   gauge     2 cells: i64 (two's complement) integer deltas, then f64
//                      deltas; set() writes the correction into the shared
//                      lane's f64 cell
//   histogram B+2 cells: u64 count per bucket (B finite bounds, then +Inf),
//                      then f64 sum. _count is the sum of the buckets, so the
//                      +Inf bucket always equals _count.
//   native    3 + N + (negative ? N : 0) + (B > 0 ? B + 1 : 0) cells, where
//   histogram          N = native_index_max - native_index_min + 1:
//                      f64 sum, u64 zero bucket, u64 out-of-range count,
//                      N u64 positive buckets (indices min .. max), N u64
//                      negative buckets if the family has them, then B+1
//                      u64 classic bucket counts if it has classic bounds.
//                      _count is the sum of zero, positive and negative
//                      buckets (and equals the classic +Inf cumulative).
//
// Publication protocol (memory ordering): the writer fills a descriptor and
// the strings/bounds it points to, then increments family_count/series_count
// with a release store. A reader loads the count with acquire and may then
// read descriptors below it. Counts never decrease; descriptors below a
// published count never change. The reader still validates everything, since
// a file may be corrupt or hostile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

namespace shmetrics::shm {

inline constexpr uint64_t kMagic = 0x31435254454d4853ull;  // "SHMETRC1" in file byte order
inline constexpr uint32_t kLayoutVersion = 2;
inline constexpr uint32_t kOldestLayoutVersion = 1;     // readers accept 1 .. kLayoutVersion
inline constexpr uint32_t kEndianMarker = 0x01020304u;   // reads 0x04030201 on the other endianness
inline constexpr size_t kCacheLine = 64;                  // fixed, never hardware_destructive_interference_size
inline constexpr size_t kRegionAlign = 64;
inline constexpr size_t kMaxLabels = 8;
inline constexpr size_t kServiceNameBytes = 64;          // NUL-padded
inline constexpr size_t kMaxNameBytes = 200;             // metric and label names
inline constexpr size_t kMaxLabelValueBytes = 256;
inline constexpr size_t kMaxHelpBytes = 1024;
inline constexpr size_t kMaxBuckets = 64;                // finite bounds per histogram
inline constexpr uint32_t kNoIndex = 0xffffffffu;
// Native histograms: schemas -4 .. 8 (bucket boundaries 2^(k * 2^-schema)),
// at most this many buckets per sign.
inline constexpr int kMinNativeSchema = -4;
inline constexpr int kMaxNativeSchema = 8;
inline constexpr uint32_t kMaxNativeBuckets = 1024;
inline constexpr uint8_t kNativeFlagEnabled = 1u << 0;   // the family is a native histogram
inline constexpr uint8_t kNativeFlagNegative = 1u << 1;  // it has negative buckets

enum class SegmentState : uint32_t {
  kInitializing = 0,  // creator is still laying out the file: readers wait or skip
  kReady = 1,         // writer running
  kClosed = 2,        // writer shut down cleanly; values are final
};

// Info and StateSet are OpenMetrics types (version 2): an Info series is
// always 1 (its labels are the information); a StateSet series holds the
// index + 1 of its current state in the shared lane's integer cell (0: no
// state), written by set() with a plain atomic store, last writer wins.
enum class MetricType : uint8_t { kCounter = 1, kGauge = 2, kHistogram = 3, kInfo = 4, kStateSet = 5 };
inline constexpr uint32_t kMaxStates = 64;

// How the exporter merges one gauge family across the processes of a service.
enum class GaugeMerge : uint8_t {
  kLiveSum = 0,     // sum over live writers only (in-progress, connections, users)
  kSum = 1,         // sum over all segments, dead ones included
  kMax = 2,
  kMin = 3,
  kPerProcess = 4,  // one series per process with a `pid` label
};

// Reference to bytes in the string arena. Strings are not NUL-terminated.
struct StringRef {
  uint32_t offset;  // from the start of the string arena
  uint32_t length;  // bytes
};
static_assert(sizeof(StringRef) == 8);

struct SegmentHeader {
  uint64_t magic;                   //   0
  uint32_t layout_version;          //   8
  uint32_t header_size_bytes;       //  12  sizeof(SegmentHeader)
  uint64_t total_size_bytes;        //  16  the file size; readers check it against fstat
  uint32_t endian_marker;           //  24
  uint32_t state;                   //  28  SegmentState; atomic (release by writer)
  uint64_t created_unix_ns;         //  32
  uint32_t pid;                     //  40
  uint32_t parent_pid;              //  44  non-zero when created in a fork() child
  uint64_t process_start_ticks;     //  48  /proc/<pid>/stat field 22: pid + this names one process
  char service_name[kServiceNameBytes];  // 56

  // Capacities, fixed at creation.
  uint32_t family_capacity;         // 120
  uint32_t series_capacity;         // 124
  uint32_t lane_count;              // 128  exclusive lanes + 1 shared lane (the last)
  uint32_t cells_per_lane;          // 132
  uint32_t string_arena_bytes;      // 136
  uint32_t bounds_capacity;         // 140  f64 slots
  uint32_t ring_slots_per_lane;     // 144  request slots per exclusive lane (0: no rings)
  uint32_t ring_slot_bytes;         // 148  sizeof(RequestRecord) = 128 when rings exist

  // Region offsets from the start of the segment, each 64-byte aligned.
  uint64_t family_table_offset;     // 152
  uint64_t series_table_offset;     // 160
  uint64_t string_arena_offset;     // 168
  uint64_t bounds_offset;           // 176
  uint64_t lane_owner_offset;       // 184
  uint64_t lanes_offset;            // 192  lane i starts at lanes_offset + i * cells_per_lane * 8
  uint64_t rings_offset;            // 200
  uint64_t rings_size_bytes;        // 208

  // Published counters (atomic). Writer: release store after the data they
  // cover is written. Reader: acquire load before reading that data.
  uint32_t family_count;            // 216
  uint32_t series_count;            // 220
  uint32_t string_arena_used;       // 224
  uint32_t bounds_used;             // 228
  uint32_t cells_used;              // 232
  uint32_t lanes_high_water;        // 236  1 + highest lane index ever claimed
  uint64_t series_overflow_count;   // 240  series requests that went to an overflow series
  uint64_t closed_unix_ns;          // 248  set with state = kClosed
  uint64_t lane_fallback_count;     // 256  threads that found no free lane and used the shared one
  uint32_t error_ring_slots_per_lane;  // 264  error ring slots after the request slots
  uint32_t instance_plus_one;       // 268  the file name's instance + 1 (0: not recorded, by writers before it)
  uint64_t records_dropped;         // 272  records from threads without a ring (shared lane)
  // Version 2 (zero in version 1 segments, whose readers ignore them):
  uint64_t exemplars_offset;        // 280  the exemplar region
  uint32_t exemplar_slots_per_lane; // 288  per exclusive lane (0: no exemplars)
  uint32_t exemplar_slots_used;     // 292  atomic: slots handed to series so far
  uint64_t exemplars_dropped;       // 296  exemplars not kept: no own lane, or labels too long / invalid
  uint64_t native_out_of_range;     // 304  native histogram observations outside their family's range
  uint8_t reserved[200];            // 312 .. 512
};
static_assert(sizeof(SegmentHeader) == 512);
static_assert(alignof(SegmentHeader) == 8);
static_assert(offsetof(SegmentHeader, layout_version) == 8);
static_assert(offsetof(SegmentHeader, total_size_bytes) == 16);
static_assert(offsetof(SegmentHeader, state) == 28);
static_assert(offsetof(SegmentHeader, pid) == 40);
static_assert(offsetof(SegmentHeader, process_start_ticks) == 48);
static_assert(offsetof(SegmentHeader, service_name) == 56);
static_assert(offsetof(SegmentHeader, family_capacity) == 120);
static_assert(offsetof(SegmentHeader, ring_slot_bytes) == 148);
static_assert(offsetof(SegmentHeader, family_table_offset) == 152);
static_assert(offsetof(SegmentHeader, lanes_offset) == 192);
static_assert(offsetof(SegmentHeader, rings_size_bytes) == 208);
static_assert(offsetof(SegmentHeader, family_count) == 216);
static_assert(offsetof(SegmentHeader, lanes_high_water) == 236);
static_assert(offsetof(SegmentHeader, series_overflow_count) == 240);
static_assert(offsetof(SegmentHeader, lane_fallback_count) == 256);
static_assert(offsetof(SegmentHeader, error_ring_slots_per_lane) == 264);
static_assert(offsetof(SegmentHeader, records_dropped) == 272);
static_assert(offsetof(SegmentHeader, exemplars_offset) == 280);
static_assert(offsetof(SegmentHeader, exemplar_slots_used) == 292);
static_assert(offsetof(SegmentHeader, exemplars_dropped) == 296);
static_assert(offsetof(SegmentHeader, native_out_of_range) == 304);

struct FamilyDescriptor {
  StringRef name;                   //   0
  StringRef help;                   //   8
  uint8_t type;                     //  16  MetricType
  uint8_t gauge_merge;              //  17  GaugeMerge (gauges only)
  uint16_t label_count;             //  18  <= kMaxLabels
  uint32_t bucket_count;            //  20  finite classic bounds (histograms), else 0
  uint32_t bounds_index;            //  24  first bound in the bounds region
  int8_t native_schema;             //  28  native histograms: -4 .. 8, else 0
  uint8_t native_flags;             //  29  kNativeFlag*; 0 for every other family
  uint16_t reserved0;               //  30
  StringRef label_names[kMaxLabels];  // 32
  StringRef unit;                   //  96  may be empty
  uint64_t created_unix_ns;         // 104
  int32_t native_index_min;         // 112  lowest bucket index kept (values below count there)
  int32_t native_index_max;         // 116  highest (values above count there); a StateSet keeps
                                    //      its states here instead (StateSetStates)
  double native_zero_threshold;     // 120  |value| <= this goes to the zero bucket
};
static_assert(sizeof(FamilyDescriptor) == 128);
static_assert(offsetof(FamilyDescriptor, native_schema) == 28);
static_assert(offsetof(FamilyDescriptor, native_index_min) == 112);
static_assert(offsetof(FamilyDescriptor, native_index_max) == 116);

// A StateSet's states, NUL-separated in the string arena: a StringRef kept
// in the 8 bytes of native_index_min and native_index_max (only native
// histograms use those).
inline StringRef StateSetStates(const FamilyDescriptor& d) {
  StringRef states;
  static_assert(sizeof states == sizeof d.native_index_min + sizeof d.native_index_max);
  std::memcpy(&states, &d.native_index_min, sizeof states);
  return states;
}
inline void SetStateSetStates(FamilyDescriptor& d, StringRef states) {
  std::memcpy(&d.native_index_min, &states, sizeof states);
}
static_assert(offsetof(FamilyDescriptor, native_zero_threshold) == 120);
static_assert(offsetof(FamilyDescriptor, type) == 16);
static_assert(offsetof(FamilyDescriptor, bucket_count) == 20);
static_assert(offsetof(FamilyDescriptor, label_names) == 32);
static_assert(offsetof(FamilyDescriptor, unit) == 96);

inline constexpr uint32_t kSeriesFlagOverflow = 1u << 0;  // catches series beyond capacity

struct SeriesDescriptor {
  uint32_t family_index;            //  0
  uint32_t first_cell;              //  4  cell index, identical in every lane
  uint32_t cell_count;              //  8  2 (counter, gauge) or bucket_count + 2
  uint32_t flags;                   // 12  kSeriesFlag*
  StringRef label_values[kMaxLabels];  // 16
  uint64_t created_unix_ns;         // 80
  uint32_t first_exemplar;          // 88  version 2: its first exemplar slot, the same in every lane
  uint32_t exemplar_count;          // 92  0 (no exemplars), 1 (counter) or classic buckets + 1 (histogram)
};
static_assert(sizeof(SeriesDescriptor) == 96);
static_assert(offsetof(SeriesDescriptor, first_exemplar) == 88);
static_assert(offsetof(SeriesDescriptor, first_cell) == 4);
static_assert(offsetof(SeriesDescriptor, label_values) == 16);
static_assert(offsetof(SeriesDescriptor, created_unix_ns) == 80);

// Rings: every exclusive lane owns one ring region: a RingHeader, then
// ring_slots_per_lane request slots, then error_ring_slots_per_lane error
// slots, each a RequestRecord. Single producer (the lane's owner), passive
// readers. Record k of a ring lives in slot k % slots; its `sequence` is
// 2k+1 while being written and 2k+2 once complete (a seqlock: a reader
// copies the slot and keeps it only if the sequence read before and after
// is the same even number, 2k+2).
struct RingHeader {
  uint64_t request_write_index;     //  0  records ever written; atomic, release after each record
  uint64_t error_write_index;       //  8
  uint8_t reserved[48];             // 16 .. 64
};
static_assert(sizeof(RingHeader) == 64);
static_assert(offsetof(RingHeader, error_write_index) == 8);

inline constexpr size_t kRecordMethodBytes = 8;
inline constexpr size_t kRecordEndpointBytes = 48;
inline constexpr size_t kRecordErrorBytes = 32;
inline constexpr uint8_t kRecordFlagError = 1u << 0;

struct RequestRecord {
  uint64_t sequence;                // 0   seqlock word, see above
  uint64_t timestamp_unix_ns;       // 8   when the request ended
  uint64_t duration_ns;             // 16
  uint64_t response_bytes;          // 24
  uint16_t status;                  // 32  HTTP status (or any code)
  uint8_t flags;                    // 34  kRecordFlag*
  uint8_t method_length;            // 35  <= 8
  uint8_t endpoint_length;          // 36  <= 48
  uint8_t error_length;             // 37  <= 32
  uint8_t reserved[2];              // 38
  char method[kRecordMethodBytes];      // 40   truncated, not NUL-terminated
  char endpoint[kRecordEndpointBytes];  // 48
  char error[kRecordErrorBytes];        // 96 .. 128
};
static_assert(sizeof(RequestRecord) == 128);
static_assert(offsetof(RequestRecord, status) == 32);
static_assert(offsetof(RequestRecord, method) == 40);
static_assert(offsetof(RequestRecord, endpoint) == 48);
static_assert(offsetof(RequestRecord, error) == 96);

// Exemplars (version 2): each exclusive lane owns exemplar_slots_per_lane
// slots; a series with exemplars owns exemplar_count of them at the same
// index in every lane (a counter one, a histogram one per classic bucket).
// A slot holds the latest exemplar its lane's owner attached there, under
// the same seqlock as the rings: `sequence` is odd while being written,
// and a reader keeps a copy only if it read the same even sequence before
// and after. 0: never written.
inline constexpr size_t kExemplarLabelBytes = 160;
inline constexpr size_t kMaxExemplarRunes = 128;  // OpenMetrics: names and values, in all
struct ExemplarSlot {
  uint64_t sequence;                // 0   seqlock word
  double value;                     // 8   the observed value (histogram) or the increment (counter)
  uint64_t timestamp_unix_ns;       // 16
  uint16_t labels_length;           // 24  bytes of `labels` in use
  uint8_t label_count;              // 26  1 .. 8
  uint8_t reserved[5];              // 27
  // label_count pairs: u8 name length, name bytes, u8 value length, value bytes.
  char labels[kExemplarLabelBytes]; // 32 .. 192
};
static_assert(sizeof(ExemplarSlot) == 192);
static_assert(offsetof(ExemplarSlot, labels_length) == 24);
static_assert(offsetof(ExemplarSlot, labels) == 32);

// Lane owner word: 0 = free, otherwise (pid << 32 | kernel thread id low 32 bits).
using LaneOwnerWord = uint64_t;

// Capacities chosen at creation. Defaults fit a typical web service in 3.4 MiB (3,592,192 bytes).
struct Capacities {
  uint32_t families = 256;
  uint32_t series = 4096;
  uint32_t exclusive_lanes = 32;   // threads that get a private lane
  uint32_t cells_per_lane = 8192;  // 8 B each
  uint32_t string_arena_bytes = 256 * 1024;
  uint32_t bounds = 2048;
  uint32_t ring_slots_per_lane = 64;        // recent requests per thread
  uint32_t error_ring_slots_per_lane = 16;  // recent errors per thread
  uint32_t ring_slot_bytes = sizeof(RequestRecord);
  uint32_t exemplar_slots_per_lane = 64;    // 12 KiB per lane (families opt in to exemplars)
};

// Region offsets and total size computed from capacities. Pure function of
// its input, shared by the writer (to lay out) and the reader (to check).
struct RegionPlan {
  uint64_t family_table_offset, series_table_offset, string_arena_offset,
      bounds_offset, lane_owner_offset, lanes_offset, rings_offset,
      rings_size_bytes, exemplars_offset, total_size_bytes;
  uint32_t lane_count;
};
RegionPlan PlanRegions(const Capacities& capacities);
// Bytes of one exclusive lane's ring region (0 without rings).
uint64_t RingStrideBytes(const Capacities& capacities);

constexpr uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Character rules that are part of the format: a reader rejects a segment
// whose names break them, so that no output format can be broken by a name.
bool IsValidMetricName(absl::string_view name);   // [a-zA-Z_:][a-zA-Z0-9_:]*
inline bool IsValidLabelName(absl::string_view name);  // [a-zA-Z_][a-zA-Z0-9_]*, not "__" prefixed
bool IsValidServiceName(absl::string_view name);  // [a-zA-Z0-9_-]{1,48}
bool IsValidUtf8(absl::string_view text);
// Characters (code points) in valid UTF-8: its bytes that start one.
size_t Utf8Length(absl::string_view text);
// The longest prefix of `text` of at most `max_bytes` bytes that does not
// end inside a UTF-8 character: cutting valid UTF-8 with it keeps it valid.
absl::string_view Utf8Prefix(absl::string_view text, size_t max_bytes);

// Inline: the exemplar hot path checks its label names with it.
inline bool IsValidLabelName(absl::string_view name) {
  // Bit c of the two words: byte c may appear in a label name ([A-Za-z0-9_]).
  constexpr uint64_t kNameBytes[2] = {0x03FF000000000000ull, 0x07FFFFFE87FFFFFEull};
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  if ((name[0] >= '0' && name[0] <= '9') || (name[0] == '_' && name.size() > 1 && name[1] == '_')) return false;
  for (const char ch : name) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte >= 128 || ((kNameBytes[byte >> 6] >> (byte & 63)) & 1) == 0) return false;
  }
  return true;
}

}  // namespace shmetrics::shm
