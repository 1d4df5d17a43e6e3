// Rendering the index: Prometheus text 0.0.4 and OpenMetrics 1.0, and the
// aggregated snapshot. Values are read straight from the mappings.
#include <algorithm>
#include <charconv>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "collector_state.h"
#include "protobuf_wire.h"
#include "shmetrics/shm/fault_guard.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::reader {
namespace {

// HELP text: 0.0.4 escapes backslash and newline; OpenMetrics also quotes.
void AppendHelp(std::string* out, absl::string_view help, ExpositionFormat format) {
  for (char ch : help) {
    if (ch == '\\') out->append("\\\\");
    else if (ch == '\n') out->append("\\n");
    else if (ch == '"' && format == ExpositionFormat::kOpenMetrics) out->append("\\\"");
    else out->push_back(ch);
  }
}

void AppendCount(std::string* out, uint64_t value) {
  char buffer[24];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
  out->append(buffer, result.ptr);
}

// A Unix time in seconds, to the millisecond: _created values and exemplar
// timestamps, the same instant in every format.
void AppendUnixSeconds(std::string* out, uint64_t unix_ns) {
  const uint64_t ms = unix_ns / 1000000;
  AppendCount(out, ms / 1000);
  const char fraction[4] = {'.', static_cast<char>('0' + ms % 1000 / 100), static_cast<char>('0' + ms % 100 / 10),
                            static_cast<char>('0' + ms % 10)};
  out->append(fraction, 4);
}

// A creation time and the line's end.
void AppendCreated(std::string* out, uint64_t created_unix_ns) {
  AppendUnixSeconds(out, created_unix_ns);
  out->push_back('\n');
}

}  // namespace

double Collector::State::ScalarOf(const OutGroup& group, const Source* begin, const Source* end,
                                  const ArchivedSeries* archived, bool skip_faulted) {
  const shm::GaugeMerge merge = group.shape.merge;
  const bool extreme = group.shape.type == shm::MetricType::kGauge &&
                       (merge == shm::GaugeMerge::kMax || merge == shm::GaugeMerge::kMin);
  if (!extreme) {
    double total = archived != nullptr ? archived->scalar : 0;
    for (const Source* source = begin; source != end; ++source) {
      if (skip_faulted && source->segment->Faulted()) continue;
      total += source->segment->ScalarValue(source->cells);
    }
    return total;
  }
  bool have = archived != nullptr;
  double result = have ? archived->scalar : 0;
  for (const Source* source = begin; source != end; ++source) {
    if (skip_faulted && source->segment->Faulted()) continue;
    const double value = source->segment->ScalarValue(source->cells);
    result = !have ? value : merge == shm::GaugeMerge::kMax ? std::max(result, value) : std::min(result, value);
    have = true;
  }
  return result;
}

double Collector::State::HistogramOf(const Source* begin, const Source* end, const ArchivedSeries* archived,
                                     uint64_t* buckets, size_t bucket_count, bool skip_faulted) {
  double sum = 0;
  if (archived != nullptr) {
    std::copy(archived->buckets.begin(), archived->buckets.end(), buckets);
    sum = archived->sum;
  } else {
    std::fill(buckets, buckets + bucket_count, 0);
  }
  uint64_t scratch[shm::kMaxBuckets + 1];
  for (const Source* source = begin; source != end; ++source) {
    if (skip_faulted && source->segment->Faulted()) continue;
    sum += source->segment->HistogramValue(source->cells, scratch);
    for (size_t b = 0; b < bucket_count; ++b) buckets[b] += scratch[b];
  }
  return sum;
}

double Collector::State::NativeOf(const shm::NativeShape& shape, const Source* begin, const Source* end,
                                  const ArchivedSeries* archived, uint64_t* cells, bool skip_faulted) {
  const uint32_t count = shape.cell_count();
  double sum = 0;
  if (archived != nullptr && archived->native_cells.size() == count) {
    std::copy(archived->native_cells.begin(), archived->native_cells.end(), cells);
    sum = archived->sum;
  } else {
    std::fill(cells, cells + count, 0);
  }
  for (const Source* source = begin; source != end; ++source) {
    if (skip_faulted && source->segment->Faulted()) continue;
    sum += source->segment->AddNativeCells(source->cells, shape, cells);
  }
  cells[shm::kNativeSumCell] = 0;
  return sum;
}

void Collector::State::ClassicOfNative(const shm::NativeShape& shape, const uint64_t* cells, uint64_t* buckets) {
  ClassicBucketsOfNative(shape, cells, buckets);
}

uint64_t Collector::State::StatesOf(const OutGroup& group, const Source* begin, const Source* end,
                                    bool skip_faulted) {
  uint64_t current = 0;
  const size_t states = group.shape.states.size();
  for (const Source* source = begin; source != end; ++source) {
    if (skip_faulted && source->segment->Faulted()) continue;
    // The shared lane holds index + 1 (the other lanes are unused): any
    // other value is a process in no state, or a forged one.
    const uint64_t value = source->segment->SharedLaneCell(source->cells);
    if (value >= 1 && value <= states) current |= uint64_t{1} << (value - 1);
  }
  return current;
}

bool Collector::State::NewestExemplar(const Source* begin, const Source* end, uint32_t index, bool skip_faulted,
                                      ExemplarView* out) {
  bool found = false;
  ExemplarView candidate;
  for (const Source* source = begin; source != end; ++source) {
    if (source->cells.exemplar_count == 0 || (skip_faulted && source->segment->Faulted())) continue;
    if (!source->segment->NewestExemplar(source->cells, index, &candidate)) continue;
    if (found && candidate.timestamp_unix_ns <= out->timestamp_unix_ns) continue;
    *out = candidate;
    found = true;
  }
  return found;
}

namespace {
// " # {name=\"value\",...} value timestamp": an OpenMetrics exemplar, to
// the millisecond like _created.
void AppendOpenMetricsExemplar(std::string* out, const ExemplarView& exemplar) {
  out->append(" # {");
  bool first = true;
  exemplar.ForEachLabel([&](absl::string_view name, absl::string_view value) {
    if (!first) out->push_back(',');
    first = false;
    out->append(name.data(), name.size());
    out->append("=\"");
    AppendLabelValue(out, value);
    out->push_back('"');
  });
  out->append("} ");
  AppendDouble(out, exemplar.value);
  out->push_back(' ');
  AppendUnixSeconds(out, exemplar.timestamp_unix_ns);
}
}  // namespace

namespace {
// Largest cell array of a native series: 3 + 2 signs * kMaxNativeBuckets + 65 classic.
constexpr size_t kMaxNativeCells = 3 + 2 * shm::kMaxNativeBuckets + shm::kMaxBuckets + 1;
}  // namespace

bool Collector::State::SeriesVanished(const Source* begin, const Source* end, const ArchivedSeries* archived) {
  if (archived != nullptr) return false;
  for (const auto* source = begin; source != end; ++source) {
    if (!source->segment->Faulted()) return false;
  }
  return true;
}

void Collector::State::RenderSeries(const OutGroup& group, size_t index, ExpositionFormat format,
                                    bool skip_faulted, std::string* out) {
  const HotSeries& series = group.hot[index];
  const HotSeries* previous = index == 0 ? nullptr : &group.hot[index - 1];
  const Source* begin = group.sources.data() + (previous != nullptr ? previous->source_end : 0);
  const Source* end = group.sources.data() + series.source_end;
  if (skip_faulted && SeriesVanished(begin, end, series.archived)) return;
  const bool om_counter = format == ExpositionFormat::kOpenMetrics && group.shape.type == shm::MetricType::kCounter;
  const std::string& lines = om_counter ? group.om_lines : group.text_lines;
  if (group.shape.type == shm::MetricType::kStateSet) {
    const size_t states = group.shape.states.size();
    const uint64_t current = StatesOf(group, begin, end, skip_faulted);
    const uint32_t* line_end = group.line_ends.data() + index * states;
    uint32_t line_begin = index == 0 ? 0 : line_end[-1];
    for (size_t state = 0; state < states; ++state) {
      out->append(lines.data() + line_begin, line_end[state] - line_begin);
      out->append((current >> state & 1) != 0 ? "1\n" : "0\n");
      line_begin = line_end[state];
    }
    return;
  }
  if (group.shape.type == shm::MetricType::kInfo) {
    const uint32_t line_begin = previous == nullptr ? 0 : previous->text_end;
    out->append(lines.data() + line_begin, series.text_end - line_begin);
    out->append("1\n");
    return;
  }
  if (group.shape.type != shm::MetricType::kHistogram) {
    const uint32_t line_begin = previous == nullptr ? 0 : om_counter ? previous->om_end : previous->text_end;
    const uint32_t line_end = om_counter ? series.om_end : series.text_end;
    out->append(lines.data() + line_begin, line_end - line_begin);
    AppendDouble(out, ScalarOf(group, begin, end, series.archived, skip_faulted));
    if (om_counter && group.exemplars) {
      ExemplarView exemplar;
      if (NewestExemplar(begin, end, 0, skip_faulted, &exemplar)) AppendOpenMetricsExemplar(out, exemplar);
    }
    out->push_back('\n');
    if (om_counter && series.created_unix_ns != 0) {
      // "<om name>_total{...} " becomes "<om name>_created{...} ".
      const size_t prefix = group.om_name.size() + 6;
      out->append(group.om_name);
      out->append("_created");
      out->append(lines.data() + line_begin + prefix, line_end - line_begin - prefix);
      AppendCreated(out, series.created_unix_ns);
    }
    return;
  }
  // Each histogram series owns bucket_count + 2 line starts: its buckets,
  // _sum and _count.
  const size_t bucket_count = group.shape.bounds.size() + 1;
  const uint32_t* line_end = group.line_ends.data() + index * (bucket_count + 2);
  uint32_t line_begin = index == 0 ? 0 : line_end[-1];
  auto line_start = [&]() {
    out->append(lines.data() + line_begin, *line_end - line_begin);
    line_begin = *line_end++;
  };
  uint64_t buckets[shm::kMaxBuckets + 1];
  double sum;
  if (group.shape.native) {
    uint64_t cells[kMaxNativeCells];
    sum = NativeOf(group.shape.native_shape, begin, end, series.archived, cells, skip_faulted);
    ClassicOfNative(group.shape.native_shape, cells, buckets);
  } else {
    sum = HistogramOf(begin, end, series.archived, buckets, bucket_count, skip_faulted);
  }
  // _count is the +Inf bucket: both come from the same bucket counts.
  uint64_t cumulative = 0;
  const bool om_exemplars = format == ExpositionFormat::kOpenMetrics && group.exemplars;
  for (size_t b = 0; b < bucket_count; ++b) {
    cumulative += buckets[b];
    line_start();
    AppendCount(out, cumulative);
    ExemplarView exemplar;
    if (om_exemplars && NewestExemplar(begin, end, static_cast<uint32_t>(b), skip_faulted, &exemplar)) {
      AppendOpenMetricsExemplar(out, exemplar);
    }
    out->push_back('\n');
  }
  line_start();
  AppendDouble(out, sum);
  out->push_back('\n');
  line_start();
  AppendCount(out, cumulative);
  out->push_back('\n');
  if (format == ExpositionFormat::kOpenMetrics && series.created_unix_ns != 0) {
    // "<name>_count{...} " becomes "<name>_created{...} ".
    const size_t name_size = group.shape.name.size();
    const char* count_line = lines.data() + (line_end[-2]);
    out->append(group.shape.name);
    out->append("_created");
    out->append(count_line + name_size + 6, *(line_end - 1) - line_end[-2] - name_size - 6);
    AppendCreated(out, series.created_unix_ns);
  }
}

struct ExpositionStream::Impl {
  std::shared_ptr<const Collector::State::View> view;
  ExpositionFormat format = ExpositionFormat::kPrometheusText;
  size_t group = 0;        // next group of view->index
  size_t series = 0;       // next series of that group
  bool header_done = false;
  // Protobuf: where the open MetricFamily message starts in the piece
  // being written (npos: none open). Each piece closes its messages.
  size_t family_mark = std::string::npos;
  // A file truncated under its mapping reads as zeros from the truncation
  // on (fault_guard.h): such a segment is left out rather than served,
  // whether it faulted before this stream began (since the scan that made
  // the view) or during it. Once set, stays set for the rest of the stream.
  bool skip_faulted = false;
};

ExpositionStream::ExpositionStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExpositionStream::ExpositionStream(ExpositionStream&&) noexcept = default;
ExpositionStream& ExpositionStream::operator=(ExpositionStream&&) noexcept = default;
ExpositionStream::~ExpositionStream() = default;

bool ExpositionStream::Next(std::string* out, size_t min_bytes) {
  Impl& s = *impl_;
  const std::vector<Collector::State::OutGroup>& index = *s.view->index;
  const bool protobuf = s.format == ExpositionFormat::kProtobuf;
  const size_t start_size = out->size();
  auto close_family = [&] {
    if (s.family_mark == std::string::npos) return;
    proto::Close(out, s.family_mark);
    s.family_mark = std::string::npos;
  };
  while (out->size() - start_size < min_bytes) {
    if (s.group >= index.size()) break;
    const Collector::State::OutGroup& group = index[s.group];
    if (!s.header_done) {
      s.header_done = true;
      if (group.first_of_family && !protobuf) {
        const bool om = s.format == ExpositionFormat::kOpenMetrics;
        const shm::MetricType type = group.shape.type;
        const bool info = type == shm::MetricType::kInfo;
        // Text 0.0.4 has neither info nor stateset: gauges, as the Python client writes them.
        const std::string name = om ? group.om_name : info ? group.shape.name + "_info" : group.shape.name;
        const char* type_name = om || (!info && type != shm::MetricType::kStateSet) ? shm::MetricTypeName(type) : "gauge";
        absl::StrAppend(out, "# HELP ", name, " ");
        AppendHelp(out, group.shape.help, s.format);
        absl::StrAppend(out, "\n# TYPE ", name, " ", type_name, "\n");
        if (s.format == ExpositionFormat::kOpenMetrics && !group.shape.unit.empty()) {
          absl::StrAppend(out, "# UNIT ", name, " ", group.shape.unit, "\n");
        }
      }
    }
    if (s.series >= group.hot.size()) {
      close_family();
      ++s.group;
      s.series = 0;
      s.header_done = false;
      continue;
    }
    if (protobuf && s.family_mark == std::string::npos) {
      s.family_mark = proto::Open(out, 0);
      Collector::State::AppendProtobufFamilyHeader(group, out);
    }
    auto render = [&](bool skip_faulted) {
      if (protobuf) {
        Collector::State::RenderSeriesProtobuf(group, s.series, skip_faulted, out);
      } else {
        Collector::State::RenderSeries(group, s.series, s.format, skip_faulted, out);
      }
    };
    // A fault while reading this series (the handler counts it on this
    // thread, synchronously) may have turned some of its reads into zeros:
    // render it again without whatever faulted. Series before it were read
    // before the fault, so they stand.
    const size_t mark = out->size();
    const uint64_t faults_before = shm::GuardedFaultCount();
    render(s.skip_faulted);
    if (!s.skip_faulted && shm::GuardedFaultCount() != faults_before) {
      out->resize(mark);
      s.skip_faulted = true;
      render(true);
    }
    ++s.series;
  }
  close_family();
  return s.group < index.size();
}

ExpositionStream Collector::StreamExposition(ExpositionFormat format) const {
  auto impl = std::make_unique<ExpositionStream::Impl>();
  impl->view = state_->Published();
  impl->format = format;
  impl->skip_faulted = shm::GuardedFaultCount() != impl->view->faults_at_scan;
  return ExpositionStream(std::move(impl));
}

void Collector::Render(ExpositionFormat format, std::string* out) const {
  const State& s = *state_;
  out->reserve(out->size() + s.last_render_bytes.load(std::memory_order_relaxed) + 4096);
  const size_t start_size = out->size();
  ExpositionStream stream = StreamExposition(format);
  while (stream.Next(out, SIZE_MAX)) {
  }
  s.last_render_bytes.store(out->size() - start_size, std::memory_order_relaxed);
}

std::vector<AggregatedSeries> Collector::Snapshot() const {
  const std::shared_ptr<const State::View> view = state_->Published();
  std::vector<AggregatedSeries> result;
  auto take = [&](bool skip_faulted) {
    result.clear();
    for (const State::OutGroup& group : *view->index) {
      for (const State::OutSeries& series : group.series) {
        AggregatedSeries a;
        a.created_unix_ns = series.created_unix_ns;
        a.service = group.service;
        a.family = group.shape.name;
        a.type = group.shape.type;
        for (size_t i = 0; i < group.shape.label_names.size(); ++i) {
          a.labels.emplace_back(group.shape.label_names[i], series.label_values[i]);
        }
        if (!series.pid.empty()) a.labels.emplace_back(std::string(shm::kPidLabel), series.pid);
        const State::Source* begin = series.sources.data();
        const State::Source* end = begin + series.sources.size();
        if (group.shape.type == shm::MetricType::kStateSet) {
          // One sample per state, as the exposition shows them.
          const uint64_t current = State::StatesOf(group, begin, end, skip_faulted);
          for (size_t state = 0; state < group.shape.states.size(); ++state) {
            AggregatedSeries one = a;
            one.labels.emplace_back(group.shape.name, group.shape.states[state]);
            one.value = (current >> state & 1) != 0 ? 1 : 0;
            result.push_back(std::move(one));
          }
          continue;
        }
        if (group.shape.type == shm::MetricType::kInfo) {
          a.value = 1;
        } else if (group.shape.native) {
          a.bounds = group.shape.bounds;
          a.buckets.resize(a.bounds.size() + 1);
          a.native = true;
          a.native_shape = group.shape.native_shape;
          a.native_cells.resize(a.native_shape.cell_count());
          a.sum = State::NativeOf(a.native_shape, begin, end, series.archived, a.native_cells.data(), skip_faulted);
          State::ClassicOfNative(a.native_shape, a.native_cells.data(), a.buckets.data());
        } else if (group.shape.type == shm::MetricType::kHistogram) {
          a.bounds = group.shape.bounds;
          a.buckets.resize(a.bounds.size() + 1);
          a.sum = State::HistogramOf(begin, end, series.archived, a.buckets.data(), a.buckets.size(), skip_faulted);
        } else {
          a.value = State::ScalarOf(group, begin, end, series.archived, skip_faulted);
        }
        result.push_back(std::move(a));
      }
    }
  };
  const uint64_t faults_before = shm::GuardedFaultCount();  // as in Render()
  const bool faulted_since_scan = faults_before != view->faults_at_scan;
  take(faulted_since_scan);
  if (!faulted_since_scan && shm::GuardedFaultCount() != faults_before) take(true);
  return result;
}

}  // namespace shmetrics::reader
