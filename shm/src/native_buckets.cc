#include "shmetrics/shm/native_buckets.h"

#include <cmath>
#include <mutex>

namespace shmetrics::shm {

namespace {
NativeSchemaTable* BuildTable(int schema) {
  auto* table = new NativeSchemaTable{};
  const uint32_t boundaries = 1u << schema;
  const uint32_t slices = 2u << schema;
  const int slice_shift = 52 - (schema + 1);
  for (uint32_t slice = 0; slice < slices; ++slice) {
    const uint64_t start = uint64_t{slice} << slice_shift;
    const uint64_t end = uint64_t{slice + 1} << slice_shift;
    uint16_t below = 0;
    uint64_t inside = UINT64_MAX;
    for (uint32_t j = 0; j < boundaries; ++j) {
      // The boundary 2^(j / 2^schema) in [1, 2): its mantissa bits.
      const double boundary = static_cast<double>(std::exp2(static_cast<long double>(j) / boundaries));
      const uint64_t bits = std::bit_cast<uint64_t>(boundary) & ((uint64_t{1} << 52) - 1);
      if (bits < start) ++below;
      else if (bits < end) inside = bits;
    }
    table->below[slice] = below;
    table->boundary_mantissa[slice] = inside;
  }
  return table;
}
}  // namespace

const NativeSchemaTable* NativeSchemaTableFor(int schema) {
  if (schema <= 0 || schema > kMaxNativeSchema) return nullptr;
  static const NativeSchemaTable* tables[kMaxNativeSchema + 1] = {};
  static std::once_flag once[kMaxNativeSchema + 1];
  std::call_once(once[schema], [schema] { tables[schema] = BuildTable(schema); });
  return tables[schema];
}

double NativeBucketUpperBound(int32_t index, int schema) {
  if (schema <= 0) return std::ldexp(1.0, index * (1 << -schema));
  const int32_t per_octave = 1 << schema;
  // Split into octave and position so that powers of two come out exact.
  const int32_t octave = index >= 0 ? index / per_octave : -((-index + per_octave - 1) / per_octave);
  const int32_t position = index - octave * per_octave;
  const double fraction = static_cast<double>(std::exp2(static_cast<long double>(position) / per_octave));
  return std::ldexp(fraction, octave);
}

}  // namespace shmetrics::shm
