#include "shmetrics/shm/layout.h"

namespace shmetrics::shm {

uint64_t RingStrideBytes(const Capacities& c) {
  const uint64_t slots = uint64_t{c.ring_slots_per_lane} + c.error_ring_slots_per_lane;
  return slots == 0 ? 0 : sizeof(RingHeader) + slots * c.ring_slot_bytes;
}

RegionPlan PlanRegions(const Capacities& c) {
  RegionPlan plan{};
  plan.lane_count = c.exclusive_lanes + 1;
  uint64_t offset = sizeof(SegmentHeader);
  auto take = [&offset](uint64_t bytes) {
    const uint64_t start = AlignUp(offset, kRegionAlign);
    offset = start + bytes;
    return start;
  };
  plan.family_table_offset = take(uint64_t{c.families} * sizeof(FamilyDescriptor));
  plan.series_table_offset = take(uint64_t{c.series} * sizeof(SeriesDescriptor));
  plan.string_arena_offset = take(c.string_arena_bytes);
  plan.bounds_offset = take(uint64_t{c.bounds} * sizeof(double));
  plan.lane_owner_offset = take(uint64_t{plan.lane_count} * sizeof(LaneOwnerWord));
  const uint64_t lane_stride = AlignUp(uint64_t{c.cells_per_lane} * 8, kCacheLine);
  plan.lanes_offset = take(uint64_t{plan.lane_count} * lane_stride);
  plan.rings_size_bytes = RingStrideBytes(c) * c.exclusive_lanes;
  plan.rings_offset = take(plan.rings_size_bytes);
  plan.exemplars_offset = take(uint64_t{c.exemplar_slots_per_lane} * c.exclusive_lanes * sizeof(ExemplarSlot));
  plan.total_size_bytes = AlignUp(offset, 4096);
  return plan;
}

namespace {
bool IsAsciiLetter(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'); }
bool IsDigit(char ch) { return ch >= '0' && ch <= '9'; }
}  // namespace

bool IsValidMetricName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char ch = name[i];
    const bool ok = IsAsciiLetter(ch) || ch == '_' || ch == ':' || (i > 0 && IsDigit(ch));
    if (!ok) return false;
  }
  return true;
}

bool IsValidServiceName(absl::string_view name) {
  if (name.empty() || name.size() > 48) return false;
  for (char ch : name) {
    if (!(IsAsciiLetter(ch) || IsDigit(ch) || ch == '_' || ch == '-')) return false;
  }
  return true;
}

size_t Utf8Length(absl::string_view text) {
  size_t characters = 0;
  for (char ch : text) characters += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;  // not a continuation byte
  return characters;
}

bool IsValidUtf8(absl::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    const unsigned char lead = *p;
    int extra;
    uint32_t code;
    if (lead < 0x80) { ++p; continue; }
    if ((lead & 0xE0) == 0xC0) { extra = 1; code = lead & 0x1F; }
    else if ((lead & 0xF0) == 0xE0) { extra = 2; code = lead & 0x0F; }
    else if ((lead & 0xF8) == 0xF0) { extra = 3; code = lead & 0x07; }
    else return false;
    if (end - p <= extra) return false;
    for (int i = 1; i <= extra; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      code = (code << 6) | (p[i] & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMinForLength[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    p += extra + 1;
  }
  return true;
}

absl::string_view Utf8Prefix(absl::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t n = max_bytes;
  // Back up over continuation bytes (10xxxxxx): text[n] must start a character.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return text.substr(0, n);
}

}  // namespace shmetrics::shm
