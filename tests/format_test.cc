// docs/segment-format.md and shm/layout.h must agree: every row of the
// document's struct tables is checked against offsetof/sizeof here.
#include <doctest/doctest.h>

#include <cstddef>
#include <map>
#include <sstream>
#include <string>

#include "shmetrics/shm/layout.h"
#include "test_support.h"

namespace shmetrics {
namespace {

// "| 40 | 4 | u32 | pid | ..." rows under "### <Struct> (" headings.
std::map<std::string, std::map<std::string, std::pair<size_t, size_t>>> DocumentedFields() {
  std::istringstream doc(testing::ReadFile(SHMETRICS_TESTS_DIR "/../docs/segment-format.md"));
  std::map<std::string, std::map<std::string, std::pair<size_t, size_t>>> fields;
  std::string section, line;
  while (std::getline(doc, line)) {
    if (line.rfind("### ", 0) == 0) {
      section = line.substr(4, line.find(' ', 4) - 4);
      continue;
    }
    if (section.empty() || line.rfind("| ", 0) != 0 || !std::isdigit(static_cast<unsigned char>(line[2]))) continue;
    std::istringstream row(line);
    std::string bar, offset, size, type, name;
    row >> bar >> offset >> bar >> size >> bar >> type >> bar >> name;
    fields[section][name] = {std::stoul(offset), std::stoul(size)};
  }
  return fields;
}

#define FIELD(Struct, field) {#field, {offsetof(shm::Struct, field), sizeof(shm::Struct::field)}}

TEST_CASE("every documented field sits at the offset and size the code uses") {
  const auto documented = DocumentedFields();
  const std::map<std::string, std::map<std::string, std::pair<size_t, size_t>>> code = {
      {"SegmentHeader",
       {FIELD(SegmentHeader, magic), FIELD(SegmentHeader, layout_version), FIELD(SegmentHeader, header_size_bytes),
        FIELD(SegmentHeader, total_size_bytes), FIELD(SegmentHeader, endian_marker), FIELD(SegmentHeader, state),
        FIELD(SegmentHeader, created_unix_ns), FIELD(SegmentHeader, pid), FIELD(SegmentHeader, parent_pid),
        FIELD(SegmentHeader, process_start_ticks), FIELD(SegmentHeader, service_name),
        FIELD(SegmentHeader, family_capacity), FIELD(SegmentHeader, series_capacity),
        FIELD(SegmentHeader, lane_count), FIELD(SegmentHeader, cells_per_lane),
        FIELD(SegmentHeader, string_arena_bytes), FIELD(SegmentHeader, bounds_capacity),
        FIELD(SegmentHeader, ring_slots_per_lane), FIELD(SegmentHeader, ring_slot_bytes),
        FIELD(SegmentHeader, family_table_offset), FIELD(SegmentHeader, series_table_offset),
        FIELD(SegmentHeader, string_arena_offset), FIELD(SegmentHeader, bounds_offset),
        FIELD(SegmentHeader, lane_owner_offset), FIELD(SegmentHeader, lanes_offset),
        FIELD(SegmentHeader, rings_offset), FIELD(SegmentHeader, rings_size_bytes),
        FIELD(SegmentHeader, family_count), FIELD(SegmentHeader, series_count),
        FIELD(SegmentHeader, string_arena_used), FIELD(SegmentHeader, bounds_used),
        FIELD(SegmentHeader, cells_used), FIELD(SegmentHeader, lanes_high_water),
        FIELD(SegmentHeader, series_overflow_count), FIELD(SegmentHeader, closed_unix_ns),
        FIELD(SegmentHeader, lane_fallback_count), FIELD(SegmentHeader, error_ring_slots_per_lane),
        FIELD(SegmentHeader, instance_plus_one), FIELD(SegmentHeader, records_dropped),
        FIELD(SegmentHeader, exemplars_offset), FIELD(SegmentHeader, exemplar_slots_per_lane),
        FIELD(SegmentHeader, exemplar_slots_used), FIELD(SegmentHeader, exemplars_dropped), FIELD(SegmentHeader, native_out_of_range),
        FIELD(SegmentHeader, reserved)}},
      {"RingHeader",
       {FIELD(RingHeader, request_write_index), FIELD(RingHeader, error_write_index), FIELD(RingHeader, reserved)}},
      {"RequestRecord",
       {FIELD(RequestRecord, sequence), FIELD(RequestRecord, timestamp_unix_ns), FIELD(RequestRecord, duration_ns),
        FIELD(RequestRecord, response_bytes), FIELD(RequestRecord, status), FIELD(RequestRecord, flags),
        FIELD(RequestRecord, method_length), FIELD(RequestRecord, endpoint_length),
        FIELD(RequestRecord, error_length), FIELD(RequestRecord, reserved), FIELD(RequestRecord, method),
        FIELD(RequestRecord, endpoint), FIELD(RequestRecord, error)}},
      {"StringRef", {FIELD(StringRef, offset), FIELD(StringRef, length)}},
      {"FamilyDescriptor",
       {FIELD(FamilyDescriptor, name), FIELD(FamilyDescriptor, help), FIELD(FamilyDescriptor, type),
        FIELD(FamilyDescriptor, gauge_merge), FIELD(FamilyDescriptor, label_count),
        FIELD(FamilyDescriptor, bucket_count), FIELD(FamilyDescriptor, bounds_index),
        FIELD(FamilyDescriptor, native_schema), FIELD(FamilyDescriptor, native_flags),
        FIELD(FamilyDescriptor, reserved0), FIELD(FamilyDescriptor, label_names), FIELD(FamilyDescriptor, unit),
        FIELD(FamilyDescriptor, created_unix_ns), FIELD(FamilyDescriptor, native_index_min),
        FIELD(FamilyDescriptor, native_index_max), FIELD(FamilyDescriptor, native_zero_threshold)}},
      {"SeriesDescriptor",
       {FIELD(SeriesDescriptor, family_index), FIELD(SeriesDescriptor, first_cell),
        FIELD(SeriesDescriptor, cell_count), FIELD(SeriesDescriptor, flags),
        FIELD(SeriesDescriptor, label_values), FIELD(SeriesDescriptor, created_unix_ns),
        FIELD(SeriesDescriptor, first_exemplar), FIELD(SeriesDescriptor, exemplar_count)}},
      {"ExemplarSlot",
       {FIELD(ExemplarSlot, sequence), FIELD(ExemplarSlot, value), FIELD(ExemplarSlot, timestamp_unix_ns),
        FIELD(ExemplarSlot, labels_length), FIELD(ExemplarSlot, label_count), FIELD(ExemplarSlot, reserved),
        FIELD(ExemplarSlot, labels)}},
  };
  CHECK(documented == code);
  CHECK(sizeof(shm::SegmentHeader) == 512);
  CHECK(sizeof(shm::FamilyDescriptor) == 128);
  CHECK(sizeof(shm::SeriesDescriptor) == 96);
}

TEST_CASE("region offsets follow the documented formulas") {
  shm::Capacities c;  // the defaults
  const shm::RegionPlan plan = shm::PlanRegions(c);
  auto align = [](uint64_t x) { return (x + 63) / 64 * 64; };
  CHECK(plan.family_table_offset == 512);
  CHECK(plan.series_table_offset == align(512 + 256 * 128));
  CHECK(plan.string_arena_offset == align(plan.series_table_offset + 4096 * 96));
  CHECK(plan.bounds_offset == align(plan.string_arena_offset + 256 * 1024));
  CHECK(plan.lane_owner_offset == align(plan.bounds_offset + 2048 * 8));
  CHECK(plan.lanes_offset == align(plan.lane_owner_offset + 33 * 8));
  CHECK(plan.rings_offset == align(plan.lanes_offset + 33 * 8192 * 8));
  CHECK(plan.rings_size_bytes == 32 * (64 + (64 + 16) * 128));
  CHECK(plan.exemplars_offset == align(plan.rings_offset + plan.rings_size_bytes));
  CHECK(plan.total_size_bytes == (plan.exemplars_offset + 32 * 64 * 192 + 4095) / 4096 * 4096);
  CHECK(plan.total_size_bytes == 3'592'192);
}

}  // namespace
}  // namespace shmetrics
