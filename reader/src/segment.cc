#include <dirent.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/reader.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::reader {
namespace {
// Whether an exemplar slot's labels follow the rules (layout.h): 1 to 8
// labels, valid names, UTF-8 values, within the area, <= 128 characters.
bool ValidExemplar(const shm::ExemplarSlot& slot) {
  if (slot.label_count < 1 || slot.label_count > shm::kMaxLabels || slot.labels_length > sizeof slot.labels) {
    return false;
  }
  size_t at = 0, runes = 0;
  absl::string_view names[shm::kMaxLabels];
  for (uint8_t i = 0; i < slot.label_count; ++i) {
    for (int part = 0; part < 2; ++part) {
      if (at >= slot.labels_length) return false;
      const size_t length = static_cast<unsigned char>(slot.labels[at]);
      if (at + 1 + length > slot.labels_length) return false;
      const absl::string_view text(slot.labels + at + 1, length);
      if (part == 0 ? !shm::IsValidLabelName(text) : !shm::IsValidUtf8(text)) return false;
      if (part == 0) {
        for (uint8_t j = 0; j < i; ++j) {
          if (names[j] == text) return false;  // a label twice: no parser takes it
        }
        names[i] = text;
      }
      runes += shm::Utf8Length(text);
      at += 1 + length;
    }
  }
  return at == slot.labels_length && runes <= shm::kMaxExemplarRunes;
}
}  // namespace

namespace {

// Relaxed atomic load from the read-only mapping. __atomic_load_n accepts a
// const pointer (std::atomic_ref<const T> does not exist in C++20); an
// aligned 8-byte atomic load is a plain load and never writes the page.
template <typename T>
T LoadRelaxed(const void* address) {
  return __atomic_load_n(static_cast<const T*>(address), __ATOMIC_RELAXED);
}
template <typename T>
T LoadAcquire(const void* address) {
  return __atomic_load_n(static_cast<const T*>(address), __ATOMIC_ACQUIRE);
}

absl::Status Corrupt(const std::string& path, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(path, ": corrupt segment: ", what));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Segment>> Segment::Open(const std::string& path,
                                                       const Options& options) {
  absl::StatusOr<std::unique_ptr<shm::ReadOnlyMapping>> mapping =
      shm::ReadOnlyMapping::Open(path, options.mapping);
  if (!mapping.ok()) return mapping.status();
  auto segment = std::unique_ptr<Segment>(new Segment());
  segment->mapping_ = *std::move(mapping);
  if (absl::Status s = segment->ValidateHeader(options); !s.ok()) return s;
  if (absl::Status s = segment->Refresh(); !s.ok()) return s;
  return segment;
}

absl::Status Segment::ValidateHeader(const Options& options) {
  const std::byte* data = mapping_->data();
  const std::string& file = mapping_->path();
  // acquire: pairs with the writer's release store of kReady (MarkReady),
  // which publishes every header field written before it.
  const uint32_t state = LoadAcquire<uint32_t>(data + offsetof(shm::SegmentHeader, state));
  std::memcpy(&header_, data, sizeof header_);
  if (header_.magic != shm::kMagic) {
    if (state == 0 && header_.magic == 0 && mapping_->AgeSeconds() < options.initializing_grace_seconds) {
      return absl::UnavailableError(absl::StrCat(file, ": not ready yet (being created)"));
    }
    return absl::FailedPreconditionError(absl::StrCat(file, ": not a shmetrics segment (bad magic)"));
  }
  if (header_.endian_marker != shm::kEndianMarker) {
    return absl::FailedPreconditionError(absl::StrCat(file, ": written on a machine of other byte order"));
  }
  if (header_.layout_version < shm::kOldestLayoutVersion || header_.layout_version > shm::kLayoutVersion) {
    return absl::FailedPreconditionError(absl::StrCat(file, ": layout version ", header_.layout_version,
                                                      " is not supported (this reader reads versions ",
                                                      shm::kOldestLayoutVersion, " to ", shm::kLayoutVersion, ")"));
  }
  if (state == static_cast<uint32_t>(shm::SegmentState::kInitializing)) {
    if (mapping_->AgeSeconds() < options.initializing_grace_seconds) {
      return absl::UnavailableError(absl::StrCat(file, ": not ready yet (being initialized)"));
    }
    return Corrupt(file, absl::StrCat("still initializing after ", options.initializing_grace_seconds,
                                      " s (its creator probably died during setup)"));
  }
  if (state > static_cast<uint32_t>(shm::SegmentState::kClosed)) {
    return Corrupt(file, absl::StrCat("unknown state ", state));
  }
  if (header_.header_size_bytes != sizeof(shm::SegmentHeader)) {
    return Corrupt(file, absl::StrCat("header size ", header_.header_size_bytes));
  }
  if (header_.total_size_bytes != mapping_->size_bytes()) {
    return Corrupt(file, absl::StrCat("truncated or extended: file has ", mapping_->size_bytes(),
                                      " bytes, header says ", header_.total_size_bytes));
  }
  const size_t name_length = strnlen(header_.service_name, sizeof header_.service_name);
  const absl::string_view service(header_.service_name, name_length);
  if (!shm::IsValidServiceName(service)) return Corrupt(file, "invalid service name");
  // A segment speaks for the writer its file is named after, and only
  // that one. Another service: one tenant's series would pass for
  // another's. Another process, or another writer of it (the instance,
  // recorded by writers since it was added; 0 before, not checked): a copy
  // of a live segment under another name would count its values twice, and
  // once more when both are retired. A file not named like a segment
  // (opened by path, say) has nothing to compare.
  if (const std::optional<shm::SegmentFileId> id = shm::ParseSegmentFileName(file.substr(file.rfind('/') + 1))) {
    if (id->service != service) {
      return absl::FailedPreconditionError(absl::StrCat(file, ": header names service '", service,
                                                        "' but the file name says '", id->service, "'"));
    }
    if (id->pid != header_.pid || id->start_ticks != header_.process_start_ticks) {
      return absl::FailedPreconditionError(absl::StrCat(
          file, ": header names process ", header_.pid, " started at tick ", header_.process_start_ticks,
          " but the file name says ", id->pid, " at tick ", id->start_ticks, " (a copy of another segment?)"));
    }
    if (header_.instance_plus_one != 0 && header_.instance_plus_one != uint64_t{id->instance} + 1) {
      return absl::FailedPreconditionError(absl::StrCat(file, ": header names writer instance ",
                                                        header_.instance_plus_one - 1, " but the file name says ",
                                                        id->instance, " (a copy of another segment?)"));
    }
  }
  if (header_.lane_count < 2) return Corrupt(file, "lane count below 2");
  shm::Capacities capacities;
  capacities.families = header_.family_capacity;
  capacities.series = header_.series_capacity;
  capacities.exclusive_lanes = header_.lane_count - 1;
  capacities.cells_per_lane = header_.cells_per_lane;
  capacities.string_arena_bytes = header_.string_arena_bytes;
  capacities.bounds = header_.bounds_capacity;
  capacities.ring_slots_per_lane = header_.ring_slots_per_lane;
  capacities.ring_slot_bytes = header_.ring_slot_bytes;
  capacities.error_ring_slots_per_lane = header_.error_ring_slots_per_lane;
  // Version 1 had no exemplars: its exemplar fields are reserved zeros.
  const bool v1 = header_.layout_version == 1;
  if (v1 && (header_.exemplars_offset != 0 || header_.exemplar_slots_per_lane != 0)) {
    return Corrupt(file, "a version 1 segment with exemplar fields");
  }
  capacities.exemplar_slots_per_lane = header_.exemplar_slots_per_lane;
  if (absl::Status s = shm::ValidateCapacities(capacities); !s.ok()) {
    return Corrupt(file, s.message());
  }
  // Every region offset is a function of the capacities: recompute them and
  // require an exact match, so no offset in the file is trusted on its own.
  const shm::RegionPlan plan = shm::PlanRegions(capacities);
  if (plan.family_table_offset != header_.family_table_offset ||
      plan.series_table_offset != header_.series_table_offset ||
      plan.string_arena_offset != header_.string_arena_offset ||
      plan.bounds_offset != header_.bounds_offset ||
      plan.lane_owner_offset != header_.lane_owner_offset ||
      plan.lanes_offset != header_.lanes_offset || plan.rings_offset != header_.rings_offset ||
      plan.rings_size_bytes != header_.rings_size_bytes ||
      (!v1 && plan.exemplars_offset != header_.exemplars_offset) ||
      plan.total_size_bytes != header_.total_size_bytes) {
    return Corrupt(file, "region offsets do not match the capacities");
  }
  lane_stride_bytes_ = shm::AlignUp(uint64_t{header_.cells_per_lane} * 8, shm::kCacheLine);
  ring_stride_bytes_ = shm::RingStrideBytes(capacities);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Segment::ReadString(shm::StringRef ref, size_t max_bytes,
                                                absl::string_view what) {
  if (ref.length > max_bytes || uint64_t{ref.offset} + ref.length > header_.string_arena_bytes) {
    return Corrupt(path(), absl::StrCat(what, " points outside the string arena"));
  }
  // Descriptors may all point at the same bytes: bound what is copied, not
  // only what is mapped.
  string_bytes_copied_ += ref.length;
  if (string_bytes_copied_ > kMaxStringBytesCopied) {
    return Corrupt(path(), absl::StrCat("its strings add up to more than the reader's cap of ",
                                        kMaxStringBytesCopied >> 20, " MiB"));
  }
  std::string text(reinterpret_cast<const char*>(mapping_->data() + header_.string_arena_offset +
                                                 ref.offset),
                   ref.length);
  if (!shm::IsValidUtf8(text)) return Corrupt(path(), absl::StrCat(what, " is not UTF-8"));
  return text;
}

absl::Status Segment::Refresh() {
  if (!broken_.ok()) return broken_;
  broken_ = RefreshUnchecked();
  return broken_;
}

absl::Status Segment::RefreshUnchecked() {
  const std::string& file = path();
  if (mapping_->Faulted() || mapping_->CurrentFileSize() < mapping_->size_bytes()) {
    return Corrupt(file, "the file shrank after it was mapped");
  }
  const std::byte* data = mapping_->data();
  // acquire: pairs with the writer's release store of family_count, which
  // publishes the descriptors (and strings, bounds) below the count.
  const uint32_t family_count = LoadAcquire<uint32_t>(data + offsetof(shm::SegmentHeader, family_count));
  if (family_count > header_.family_capacity) {
    return Corrupt(file, absl::StrCat("family count ", family_count, " above capacity ",
                                      header_.family_capacity));
  }
  absl::flat_hash_set<std::string> names;
  for (const FamilyView& f : families_) names.insert(f.name);
  // Structure (offsets, lengths, UTF-8, types, bounds) is checked here and
  // fails the whole segment; exposition rules fail one family (`rejected`).
  for (uint32_t i = static_cast<uint32_t>(families_.size()); i < family_count; ++i) {
    shm::FamilyDescriptor d;
    std::memcpy(&d, data + header_.family_table_offset + uint64_t{i} * sizeof d, sizeof d);
    const std::string where = absl::StrCat("family ", i);
    FamilyView f;
    absl::StatusOr<std::string> name = ReadString(d.name, shm::kMaxNameBytes, where + " name");
    if (!name.ok()) return name.status();
    f.name = *std::move(name);
    absl::StatusOr<std::string> help = ReadString(d.help, shm::kMaxHelpBytes, where + " help");
    if (!help.ok()) return help.status();
    f.help = *std::move(help);
    absl::StatusOr<std::string> unit = ReadString(d.unit, shm::kMaxNameBytes, where + " unit");
    if (!unit.ok()) return unit.status();
    f.unit = *std::move(unit);
    const uint8_t last_type = header_.layout_version >= 2 ? 5 : 3;
    if (d.type < 1 || d.type > last_type) return Corrupt(file, absl::StrCat(where, " has unknown type ", d.type));
    f.type = static_cast<shm::MetricType>(d.type);
    if (d.gauge_merge > static_cast<uint8_t>(shm::GaugeMerge::kPerProcess)) {
      return Corrupt(file, where + " has an unknown gauge merge mode");
    }
    f.gauge_merge = static_cast<shm::GaugeMerge>(d.gauge_merge);
    if (d.label_count > shm::kMaxLabels) return Corrupt(file, where + " has too many labels");
    for (uint32_t l = 0; l < d.label_count; ++l) {
      absl::StatusOr<std::string> label = ReadString(d.label_names[l], shm::kMaxNameBytes, where + " label");
      if (!label.ok()) return label.status();
      f.label_names.push_back(*std::move(label));
    }
    const bool native = (d.native_flags & shm::kNativeFlagEnabled) != 0;
    if (d.native_flags != 0 && (f.type != shm::MetricType::kHistogram || !native)) {
      return Corrupt(file, where + " has native histogram flags but is not a native histogram");
    }
    if (native) {
      if ((d.native_flags & ~(shm::kNativeFlagEnabled | shm::kNativeFlagNegative)) != 0 ||
          d.native_schema < shm::kMinNativeSchema || d.native_schema > shm::kMaxNativeSchema ||
          d.native_index_min > d.native_index_max ||
          int64_t{d.native_index_max} - d.native_index_min >= int64_t{shm::kMaxNativeBuckets} ||
          !std::isfinite(d.native_zero_threshold) || !(d.native_zero_threshold >= 0)) {
        return Corrupt(file, where + " has an invalid native histogram schema, bucket range or zero threshold");
      }
      f.native = true;
      f.native_shape.schema = d.native_schema;
      f.native_shape.negative = (d.native_flags & shm::kNativeFlagNegative) != 0;
      f.native_shape.index_min = d.native_index_min;
      f.native_shape.index_max = d.native_index_max;
      f.native_shape.zero_threshold = d.native_zero_threshold;
      f.native_shape.classic_bounds = d.bucket_count;
    } else if (d.native_schema != 0 || std::bit_cast<uint64_t>(d.native_zero_threshold) != 0 ||
               (f.type != shm::MetricType::kStateSet && (d.native_index_min != 0 || d.native_index_max != 0))) {
      return Corrupt(file, where + " has native histogram fields but is not a native histogram");
    }
    if (f.type == shm::MetricType::kStateSet) {
      absl::StatusOr<std::string> states =
          ReadString(shm::StateSetStates(d), shm::kMaxStates * (shm::kMaxLabelValueBytes + 1), where + " states");
      if (!states.ok()) return states.status();
      f.states = absl::StrSplit(*states, '\0');
      bool valid = f.states.size() <= shm::kMaxStates;
      for (size_t i = 0; valid && i < f.states.size(); ++i) {
        valid = !f.states[i].empty() && f.states[i].size() <= shm::kMaxLabelValueBytes &&
                std::find(f.states.begin(), f.states.begin() + i, f.states[i]) == f.states.begin() + i;
      }
      if (!valid) return Corrupt(file, where + " has invalid states (1 to 64 distinct, 1 to 256 bytes each)");
    }
    if (f.type == shm::MetricType::kHistogram && (d.bucket_count != 0 || !native)) {
      if (d.bucket_count < 1 || d.bucket_count > shm::kMaxBuckets ||
          uint64_t{d.bounds_index} + d.bucket_count > header_.bounds_capacity) {
        return Corrupt(file, where + " has bucket bounds outside the bounds area");
      }
      f.bounds.resize(d.bucket_count);
      std::memcpy(f.bounds.data(), data + header_.bounds_offset + uint64_t{d.bounds_index} * 8,
                  d.bucket_count * sizeof(double));
      for (uint32_t b = 0; b < d.bucket_count; ++b) {
        if (!std::isfinite(f.bounds[b]) || (b > 0 && !(f.bounds[b] > f.bounds[b - 1]))) {
          return Corrupt(file, where + " has bounds that are not finite and increasing");
        }
      }
    } else if (d.bucket_count != 0) {
      return Corrupt(file, where + " has buckets but is not a histogram");
    }
    f.created_unix_ns = d.created_unix_ns;
    if (absl::Status rules = shm::CheckFamilyRules(f.name, f.type, f.gauge_merge, f.label_names); !rules.ok()) {
      f.rejected = std::string(rules.message());
    } else if (absl::Status unit_rule = shm::CheckUnit(f.name, f.type, f.unit); !unit_rule.ok()) {
      f.rejected = std::string(unit_rule.message());
    } else if (!names.insert(f.name).second) {
      f.rejected = absl::StrCat("family '", f.name, "': repeats the name of an earlier family in the segment");
    }
    families_.push_back(std::move(f));
    family_count_.store(static_cast<uint32_t>(families_.size()), std::memory_order_relaxed);
  }

  // acquire: pairs with the writer's release store of series_count.
  const uint32_t series_count = LoadAcquire<uint32_t>(data + offsetof(shm::SegmentHeader, series_count));
  if (series_count > header_.series_capacity) {
    return Corrupt(file, absl::StrCat("series count ", series_count, " above capacity ",
                                      header_.series_capacity));
  }
  for (uint32_t i = static_cast<uint32_t>(series_.size()); i < series_count; ++i) {
    shm::SeriesDescriptor d;
    std::memcpy(&d, data + header_.series_table_offset + uint64_t{i} * sizeof d, sizeof d);
    const std::string where = absl::StrCat("series ", i);
    if (d.family_index >= families_.size()) {
      return Corrupt(file, absl::StrCat(where, " names family ", d.family_index, " of ", families_.size()));
    }
    const FamilyView& f = families_[d.family_index];
    const uint32_t expected_cells = f.native                                 ? f.native_shape.cell_count()
                                    : f.type == shm::MetricType::kHistogram ? static_cast<uint32_t>(f.bounds.size()) + 2
                                                                            : 2;
    if (d.cell_count != expected_cells ||
        uint64_t{d.first_cell} + d.cell_count > header_.cells_per_lane) {
      return Corrupt(file, where + " has cells outside the lane");
    }
    SeriesView s;
    s.family = d.family_index;
    s.is_signed = f.type == shm::MetricType::kGauge;
    s.first_cell = d.first_cell;
    s.cell_count = d.cell_count;
    s.overflow = (d.flags & shm::kSeriesFlagOverflow) != 0;
    s.created_unix_ns = d.created_unix_ns;
    if (d.exemplar_count != 0) {
      const uint32_t allowed = f.type == shm::MetricType::kCounter     ? 1
                               : f.type == shm::MetricType::kHistogram ? static_cast<uint32_t>(f.bounds.size()) + 1
                                                                       : 0;
      // The writer stores exemplar_slots_used before the series count that
      // publishes the descriptor (acquired above): a series' slots are below it.
      const uint32_t slots_used = std::min(
          LoadRelaxed<uint32_t>(data + offsetof(shm::SegmentHeader, exemplar_slots_used)),
          header_.exemplar_slots_per_lane);
      if (header_.layout_version < 2 || d.exemplar_count != allowed ||
          uint64_t{d.first_exemplar} + d.exemplar_count > slots_used) {
        return Corrupt(file, where + " has exemplar slots outside the exemplar region, or too many");
      }
      // Each slot belongs to one series: one that claims another's would
      // show that series' exemplars as its own.
      if (exemplar_slot_owned_.size() < header_.exemplar_slots_per_lane) {
        exemplar_slot_owned_.resize(header_.exemplar_slots_per_lane, false);
      }
      for (uint32_t e = d.first_exemplar; e < d.first_exemplar + d.exemplar_count; ++e) {
        if (exemplar_slot_owned_[e]) return Corrupt(file, where + " claims the exemplar slots of another series");
        exemplar_slot_owned_[e] = true;
      }
      s.first_exemplar = d.first_exemplar;
      s.exemplar_count = d.exemplar_count;
    } else if (d.first_exemplar != 0 && (header_.layout_version < 2 || d.first_exemplar != shm::kNoIndex)) {
      return Corrupt(file, where + " has an exemplar slot but no exemplar count");
    }
    for (size_t l = 0; l < f.label_names.size(); ++l) {
      absl::StatusOr<std::string> value =
          ReadString(d.label_values[l], shm::kMaxLabelValueBytes, where + " label value");
      if (!value.ok()) return value.status();
      s.label_values.push_back(*std::move(value));
    }
    series_.push_back(std::move(s));
    series_count_.store(static_cast<uint32_t>(series_.size()), std::memory_order_relaxed);
  }
  const uint32_t high_water =
      LoadAcquire<uint32_t>(data + offsetof(shm::SegmentHeader, lanes_high_water));
  lanes_to_sum_.store(std::min(high_water, header_.lane_count - 1), std::memory_order_relaxed);
  return absl::OkStatus();
}

uint64_t Segment::LoadCell(uint32_t lane, uint32_t cell) const {
  return LoadRelaxed<uint64_t>(mapping_->data() + header_.lanes_offset + lane * lane_stride_bytes_ +
                               uint64_t{cell} * 8);
}

double Segment::ScalarValue(SeriesCells series) const {
  // Integer cells are summed as integers (exact, wrapping like the
  // writer's), then the floating-point cells are added.
  const bool is_signed = series.is_signed;
  uint64_t integer = 0;
  double fraction = 0;
  auto add_lane = [&](uint32_t lane) {
    integer += LoadCell(lane, series.first_cell);
    fraction += std::bit_cast<double>(LoadCell(lane, series.first_cell + 1));
  };
  const uint32_t lanes = lanes_to_sum_.load(std::memory_order_relaxed);
  for (uint32_t lane = 0; lane < lanes; ++lane) add_lane(lane);
  add_lane(header_.lane_count - 1);
  const double whole = is_signed ? static_cast<double>(static_cast<int64_t>(integer)) : static_cast<double>(integer);
  return whole + fraction;
}

double Segment::AddNativeCells(SeriesCells series, const shm::NativeShape& shape, uint64_t* cells_out) const {
  // The shape was checked against the series' cell count when it was read.
  const uint32_t count = shape.cell_count();
  double sum = 0;
  auto add_lane = [&](uint32_t lane) {
    sum += std::bit_cast<double>(LoadCell(lane, series.first_cell + shm::kNativeSumCell));
    for (uint32_t c = shm::kNativeZeroCell; c < count; ++c) cells_out[c] += LoadCell(lane, series.first_cell + c);
  };
  const uint32_t lanes = lanes_to_sum_.load(std::memory_order_relaxed);
  for (uint32_t lane = 0; lane < lanes; ++lane) add_lane(lane);
  add_lane(header_.lane_count - 1);
  return sum;
}

uint64_t NativeCount(const shm::NativeShape& shape, const uint64_t* cells) {
  uint64_t total = cells[shm::kNativeZeroCell];
  for (uint32_t c = shm::kNativeFirstBucketCell; c < shape.classic_first_cell(); ++c) total += cells[c];
  return total;
}

void ClassicBucketsOfNative(const shm::NativeShape& shape, const uint64_t* cells, uint64_t* buckets) {
  const uint64_t total = NativeCount(shape, cells);
  if (shape.classic_bounds == 0) {
    buckets[0] = total;
    return;
  }
  uint64_t running = 0;
  for (uint32_t b = 0; b < shape.classic_bounds; ++b) {
    buckets[b] = std::min(cells[shape.classic_first_cell() + b], total - running);
    running += buckets[b];
  }
  buckets[shape.classic_bounds] = total - running;
}

double Segment::HistogramValue(const SeriesView& series, uint64_t* buckets) const {
  const FamilyView& family = families_[series.family];
  if (!family.native) return HistogramValue(series.cells(), buckets);
  std::vector<uint64_t> cells(family.native_shape.cell_count(), 0);
  const double sum = AddNativeCells(series.cells(), family.native_shape, cells.data());
  ClassicBucketsOfNative(family.native_shape, cells.data(), buckets);
  return sum;
}

bool Segment::NewestExemplar(SeriesCells series, uint32_t index, ExemplarView* out) const {
  if (index >= series.exemplar_count) return false;
  const uint32_t lanes = lanes_to_sum_.load(std::memory_order_relaxed);
  const std::byte* data = mapping_->data();
  bool found = false;
  for (uint32_t lane = 0; lane < lanes; ++lane) {
    const std::byte* slot = data + header_.exemplars_offset +
                            (uint64_t{lane} * header_.exemplar_slots_per_lane + series.first_exemplar + index) *
                                sizeof(shm::ExemplarSlot);
    // Seqlock read, as ReadRecord: sequence, payload, sequence, all acquire.
    const uint64_t before = LoadAcquire<uint64_t>(slot);
    if (before == 0 || (before & 1) != 0) continue;
    shm::ExemplarSlot copy{};
    auto* words = reinterpret_cast<uint64_t*>(&copy);
    for (size_t w = 1; w < sizeof copy / 8; ++w) words[w] = LoadAcquire<uint64_t>(slot + w * 8);
    if (LoadAcquire<uint64_t>(slot) != before) continue;
    if (found && copy.timestamp_unix_ns <= out->timestamp_unix_ns) continue;
    if (!ValidExemplar(copy)) continue;
    found = true;
    out->value = copy.value;
    out->timestamp_unix_ns = copy.timestamp_unix_ns;
    out->labels_length = copy.labels_length;
    out->label_count = copy.label_count;
    std::memcpy(out->labels, copy.labels, sizeof copy.labels);
  }
  return found;
}

uint64_t Segment::SharedLaneCell(SeriesCells series) const {
  return LoadCell(header_.lane_count - 1, series.first_cell);
}

double Segment::HistogramValue(SeriesCells series, uint64_t* buckets) const {
  const uint32_t bucket_cells = series.cell_count - 1;
  std::fill(buckets, buckets + bucket_cells, 0);
  double sum = 0;
  auto add_lane = [&](uint32_t lane) {
    for (uint32_t b = 0; b < bucket_cells; ++b) buckets[b] += LoadCell(lane, series.first_cell + b);
    sum += std::bit_cast<double>(LoadCell(lane, series.first_cell + bucket_cells));
  };
  const uint32_t lanes = lanes_to_sum_.load(std::memory_order_relaxed);
  for (uint32_t lane = 0; lane < lanes; ++lane) add_lane(lane);
  add_lane(header_.lane_count - 1);
  return sum;
}

uint32_t Segment::ring_count() const {
  return header_.rings_size_bytes == 0 ? 0 : header_.lane_count - 1;
}

const std::byte* Segment::RingSlots(uint32_t lane, RingKind kind, uint64_t* slot_count, uint64_t* written) const {
  *slot_count = 0;
  *written = 0;
  if (lane >= ring_count()) return nullptr;
  const std::byte* ring = mapping_->data() + header_.rings_offset + lane * ring_stride_bytes_;
  const bool errors = kind == RingKind::kErrors;
  *slot_count = errors ? header_.error_ring_slots_per_lane : header_.ring_slots_per_lane;
  if (*slot_count == 0) return nullptr;
  // acquire: pairs with the writer's release store of the write index; the
  // records below it were complete when it was stored.
  *written = LoadAcquire<uint64_t>(
      ring + (errors ? offsetof(shm::RingHeader, error_write_index) : offsetof(shm::RingHeader, request_write_index)));
  return ring + sizeof(shm::RingHeader) +
         (errors ? uint64_t{header_.ring_slots_per_lane} * sizeof(shm::RequestRecord) : 0);
}

RingExtent Segment::RingExtentOf(uint32_t lane, RingKind kind) const {
  uint64_t slot_count = 0, written = 0;
  RingSlots(lane, kind, &slot_count, &written);
  return {written > slot_count ? written - slot_count : 0, written};
}

SlotRead Segment::ReadRecord(uint32_t lane, RingKind kind, uint64_t k, RequestRecordView* out) const {
  uint64_t slot_count = 0, written = 0;
  const std::byte* slots = RingSlots(lane, kind, &slot_count, &written);
  if (slots == nullptr) return SlotRead::kTorn;
  const std::byte* slot = slots + (k % slot_count) * sizeof(shm::RequestRecord);
  // Seqlock read: sequence, payload, sequence again, all acquire loads
  // (plain loads on x86): the second sequence load cannot move before
  // the payload loads, and pairs with the writer's release stores.
  const uint64_t before = LoadAcquire<uint64_t>(slot);
  shm::RequestRecord copy{};
  auto* words = reinterpret_cast<uint64_t*>(&copy);
  for (size_t w = 1; w < sizeof copy / 8; ++w) words[w] = LoadAcquire<uint64_t>(slot + w * 8);
  const uint64_t after = LoadAcquire<uint64_t>(slot);
  if (before != after || before != 2 * k + 2) {
    // A newer record took the slot before or while we copied it: lost to
    // an overwrite. Anything else is a slot that was never completed.
    return std::max(before, after) > 2 * k + 2 ? SlotRead::kOverwritten : SlotRead::kTorn;
  }
  if (copy.method_length > sizeof copy.method || copy.endpoint_length > sizeof copy.endpoint ||
      copy.error_length > sizeof copy.error) {
    return SlotRead::kTorn;
  }
  RequestRecordView& view = *out;
  view.timestamp_unix_ns = copy.timestamp_unix_ns;
  view.duration_ns = copy.duration_ns;
  view.response_bytes = copy.response_bytes;
  view.status = copy.status;
  view.error = (copy.flags & shm::kRecordFlagError) != 0;
  view.method.assign(copy.method, copy.method_length);
  view.endpoint.assign(copy.endpoint, copy.endpoint_length);
  view.error_message.assign(copy.error, copy.error_length);
  if (!shm::IsValidUtf8(view.method) || !shm::IsValidUtf8(view.endpoint) || !shm::IsValidUtf8(view.error_message)) {
    return SlotRead::kTorn;
  }
  view.lane = lane;
  view.index = k;
  return SlotRead::kOk;
}

RingRead Segment::ReadRing(uint32_t lane, RingKind kind, uint64_t from, uint64_t max_slots) const {
  RingRead result;
  const RingExtent extent = RingExtentOf(lane, kind);
  result.next = extent.written;
  if (from > extent.written) from = extent.written;  // a reader ahead of a restarted writer
  if (from < extent.oldest) {
    result.overwritten = extent.oldest - from;
    from = extent.oldest;
  }
  if (extent.written - from > max_slots) {  // bounded: the newest max_slots only
    result.skipped = extent.written - from - max_slots;
    from = extent.written - max_slots;
  }
  for (uint64_t k = from; k < extent.written; ++k) {
    RequestRecordView view;
    switch (ReadRecord(lane, kind, k, &view)) {
      case SlotRead::kOk: result.records.push_back(std::move(view)); break;
      case SlotRead::kOverwritten: ++result.overwritten; break;
      case SlotRead::kTorn: ++result.torn; break;
    }
  }
  return result;
}

bool Segment::WriterAlive() const {
  const uint32_t state = LoadAcquire<uint32_t>(mapping_->data() + offsetof(shm::SegmentHeader, state));
  return state == static_cast<uint32_t>(shm::SegmentState::kReady) && mapping_->WriterHoldsLock();
}

SegmentInfo Segment::Info() const {
  const std::byte* data = mapping_->data();
  SegmentInfo info;
  info.path = path();
  info.service = std::string(header_.service_name, strnlen(header_.service_name, sizeof header_.service_name));
  info.pid = header_.pid;
  info.parent_pid = header_.parent_pid;
  info.process_start_ticks = header_.process_start_ticks;
  info.created_unix_ns = header_.created_unix_ns;
  info.closed_unix_ns = LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, closed_unix_ns));
  const uint32_t state = LoadAcquire<uint32_t>(data + offsetof(shm::SegmentHeader, state));
  info.state = state <= 2 ? static_cast<shm::SegmentState>(state) : shm::SegmentState::kInitializing;
  info.size_bytes = mapping_->size_bytes();
  info.family_count = family_count_.load(std::memory_order_relaxed);
  info.family_capacity = header_.family_capacity;
  info.series_count = series_count_.load(std::memory_order_relaxed);
  info.series_capacity = header_.series_capacity;
  info.cells_used = std::min(LoadRelaxed<uint32_t>(data + offsetof(shm::SegmentHeader, cells_used)),
                             header_.cells_per_lane);
  info.cells_per_lane = header_.cells_per_lane;
  // Lanes whose owner word is set right now.
  const uint32_t exclusive = header_.lane_count - 1;
  for (uint32_t lane = 0; lane < exclusive; ++lane) {
    info.lanes_in_use += LoadRelaxed<uint64_t>(data + header_.lane_owner_offset + lane * 8ull) != 0;
  }
  info.exclusive_lanes = exclusive;
  info.series_overflow_count =
      LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, series_overflow_count));
  info.lane_fallback_count =
      LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, lane_fallback_count));
  info.records_dropped = LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, records_dropped));
  info.exemplars_dropped = LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, exemplars_dropped));
  info.native_out_of_range = LoadRelaxed<uint64_t>(data + offsetof(shm::SegmentHeader, native_out_of_range));
  if (ring_count() > 0) {
    for (uint32_t lane = 0; lane < ring_count(); ++lane) {
      const uint64_t written = LoadRelaxed<uint64_t>(data + header_.rings_offset + lane * ring_stride_bytes_);
      info.records_written += written;
      if (written > header_.ring_slots_per_lane) info.records_overwritten += written - header_.ring_slots_per_lane;
    }
  }
  return info;
}

absl::StatusOr<std::vector<DirectoryEntry>> ListSegments(const std::string& directory) {
  DIR* dir = opendir(directory.c_str());
  if (dir == nullptr) return shm::ErrnoStatus(errno, "cannot list " + directory);
  std::vector<DirectoryEntry> entries;
  while (const dirent* entry = readdir(dir)) {
    std::optional<shm::SegmentFileId> id = shm::ParseSegmentFileName(entry->d_name);
    if (!id) continue;
    entries.push_back({absl::StrCat(directory, "/", entry->d_name), entry->d_name, *std::move(id)});
  }
  closedir(dir);
  std::sort(entries.begin(), entries.end(),
            [](const DirectoryEntry& a, const DirectoryEntry& b) { return a.file_name < b.file_name; });
  return entries;
}

}  // namespace shmetrics::reader
