// Native (sparse, exponential) histogram buckets: which bucket a value goes
// to, and where each bucket ends. Part of the segment format: a writer and
// every reader must agree on it (docs/segment-format.md, "Lanes and values").
//
// At schema s, bucket k holds the values v with
//   2^((k-1) * 2^-s) < v <= 2^(k * 2^-s),
// the same buckets as Prometheus' native histograms. The writer finds k in
// constant time, without a logarithm: the exponent bits of v give the octave
// e, and the top s+1 bits of its mantissa pick one of 2^(s+1) equal slices
// of the octave. Bucket boundaries are at least ln2 / 2^s > 1 / 2^(s+1)
// apart within [1, 2), so a slice holds at most one boundary: a table gives
// the bucket at the slice's start, and one integer compare with that
// boundary's mantissa bits finishes the job.
//
// Thread safety: the tables are built once (NativeSchemaTableFor) and then
// only read; everything here is thread-safe.
#pragma once

#include <bit>
#include <cstdint>

#include "shmetrics/shm/layout.h"

namespace shmetrics::shm {

// Cells of a native histogram series, from its first cell (layout.h).
inline constexpr uint32_t kNativeSumCell = 0;         // f64
inline constexpr uint32_t kNativeZeroCell = 1;        // u64
inline constexpr uint32_t kNativeOutOfRangeCell = 2;  // u64, not part of the count
inline constexpr uint32_t kNativeFirstBucketCell = 3;

// What a native histogram family's descriptor says about its cells.
struct NativeShape {
  int schema = 3;
  bool negative = false;      // has negative buckets
  int32_t index_min = 0;
  int32_t index_max = 0;
  double zero_threshold = 0;
  uint32_t classic_bounds = 0;  // B: classic buckets B + 1 follow the native ones when B > 0

  uint32_t buckets_per_sign() const { return static_cast<uint32_t>(index_max - index_min + 1); }
  uint32_t negative_first_cell() const { return kNativeFirstBucketCell + buckets_per_sign(); }
  uint32_t classic_first_cell() const {
    return kNativeFirstBucketCell + buckets_per_sign() * (negative ? 2 : 1);
  }
  uint32_t cell_count() const { return classic_first_cell() + (classic_bounds > 0 ? classic_bounds + 1 : 0); }
  bool operator==(const NativeShape&) const = default;
};

// Per schema s > 0: for each of the 2^(s+1) slices of an octave, the number
// of boundaries 2^(j * 2^-s) (0 <= j < 2^s) below the slice's start, and the
// mantissa bits of the boundary inside the slice (UINT64_MAX when none).
struct NativeSchemaTable {
  uint16_t below[512];
  uint64_t boundary_mantissa[512];
};
// The table of a schema in 1 .. 8 (built on first use, never freed), or
// nullptr for schemas <= 0, which need none.
const NativeSchemaTable* NativeSchemaTableFor(int schema);

// The bucket index of a finite value > 0. `table` is
// NativeSchemaTableFor(schema). Subnormal values are treated as if their
// exponent were the smallest normal one's (they land below any usable
// range, so a histogram counts them as out of range).
inline int32_t NativeBucketIndex(double value, int schema, const NativeSchemaTable* table) {
  const uint64_t bits = std::bit_cast<uint64_t>(value);
  const uint64_t mantissa = bits & ((uint64_t{1} << 52) - 1);
  int32_t exponent = static_cast<int32_t>((bits >> 52) & 0x7ff) - 1023;
  if (exponent == -1023) exponent = -1022;
  if (schema > 0) {
    const uint64_t slice = mantissa >> (52 - (schema + 1));
    const int32_t below = table->below[slice] + (mantissa > table->boundary_mantissa[slice] ? 1 : 0);
    return exponent * (int32_t{1} << schema) + below;
  }
  // Boundaries are the powers 2^(m * 2^-schema), m integer: v = 2^exponent
  // exactly sits on one when 2^-schema divides exponent.
  const int shift = -schema;
  if (mantissa == 0) return -((-exponent) >> shift);  // ceil(exponent / 2^shift)
  return (exponent >> shift) + 1;                      // floor(exponent / 2^shift) + 1
}

// 2^(index * 2^-schema): the upper bound of bucket `index`.
double NativeBucketUpperBound(int32_t index, int schema);

}  // namespace shmetrics::shm
