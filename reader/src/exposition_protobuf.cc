// The protobuf exposition (io.prometheus.client.MetricFamily, delimited;
// docs/metrics.proto is the schema): the one format that carries native
// histograms to Prometheus 2.42. Encoded by hand (protobuf_wire.h) straight
// from the mappings into the output, like the text formats: no message
// objects, no copies. Each piece of a stream holds whole MetricFamily
// messages: a family with more series than fit in one piece is sent as
// several messages of the same name, which the format allows.
#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#include "collector_state.h"
#include "protobuf_wire.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::reader {
namespace {

// Field numbers of docs/metrics.proto.
namespace field {
constexpr uint32_t kFamilyName = 1, kFamilyHelp = 2, kFamilyType = 3, kFamilyMetric = 4, kFamilyUnit = 5;
constexpr uint32_t kLabelPairName = 1, kLabelPairValue = 2;
constexpr uint32_t kMetricLabel = 1, kMetricGauge = 2, kMetricCounter = 3, kMetricHistogram = 7;
constexpr uint32_t kValue = 1;  // Gauge.value, Counter.value
constexpr uint32_t kCounterCreated = 3;
constexpr uint32_t kHistogramCount = 1, kHistogramSum = 2, kHistogramBucket = 3, kHistogramSchema = 5,
                   kHistogramZeroThreshold = 6, kHistogramZeroCount = 7, kHistogramNegativeSpan = 9,
                   kHistogramNegativeDelta = 10, kHistogramPositiveSpan = 12, kHistogramPositiveDelta = 13,
                   kHistogramCreated = 15, kHistogramExemplars = 16;
constexpr uint32_t kBucketCumulativeCount = 1, kBucketUpperBound = 2, kBucketExemplar = 3;
constexpr uint32_t kCounterExemplar = 2;
constexpr uint32_t kExemplarLabel = 1, kExemplarValue = 2, kExemplarTimestamp = 3;
constexpr uint32_t kSpanOffset = 1, kSpanLength = 2;
constexpr uint32_t kTimestampSeconds = 1, kTimestampNanos = 2;
}  // namespace field
constexpr uint64_t kTypeCounter = 0, kTypeGauge = 1, kTypeHistogram = 4;

constexpr size_t kMaxNativeCells = 3 + 2 * shm::kMaxNativeBuckets + shm::kMaxBuckets + 1;

void AppendTimestamp(std::string* out, uint32_t field_number, uint64_t unix_ns) {
  const size_t mark = proto::Open(out, field_number);
  proto::AppendVarintField(out, field::kTimestampSeconds, unix_ns / 1000000000);
  if (unix_ns % 1000000000 != 0) proto::AppendVarintField(out, field::kTimestampNanos, unix_ns % 1000000000);
  proto::Close(out, mark);
}

void AppendExemplar(std::string* out, uint32_t field_number, const ExemplarView& exemplar) {
  const size_t mark = proto::Open(out, field_number);
  exemplar.ForEachLabel([&](absl::string_view name, absl::string_view value) {
    const size_t label = proto::Open(out, field::kExemplarLabel);
    proto::AppendStringField(out, field::kLabelPairName, name);
    proto::AppendStringField(out, field::kLabelPairValue, value);
    proto::Close(out, label);
  });
  proto::AppendDoubleField(out, field::kExemplarValue, exemplar.value);
  // To the millisecond, as in OpenMetrics.
  AppendTimestamp(out, field::kExemplarTimestamp, exemplar.timestamp_unix_ns / 1000000 * 1000000);
  proto::Close(out, mark);
}

// One sign's buckets, cells[0 .. count) at indices index_min ..: spans of
// consecutive non-empty buckets, each count as a delta from the previous.
void AppendNativeBuckets(std::string* out, const uint64_t* cells, uint32_t count, int32_t index_min,
                         uint32_t span_field, uint32_t delta_field, bool noop_span_if_empty) {
  std::string deltas;
  int64_t previous_count = 0;
  int64_t next_index = 0;  // where the previous span ended (the first span's offset is absolute)
  bool first = true;
  for (uint32_t j = 0; j < count;) {
    if (cells[j] == 0) {
      ++j;
      continue;
    }
    uint32_t end = j;
    while (end < count && cells[end] != 0) ++end;
    const int64_t index = int64_t{index_min} + j;
    const size_t span = proto::Open(out, span_field);
    const int64_t offset = first ? index : index - next_index;
    if (offset != 0) proto::AppendVarintField(out, field::kSpanOffset, proto::ZigZag(offset));
    proto::AppendVarintField(out, field::kSpanLength, end - j);
    proto::Close(out, span);
    for (uint32_t b = j; b < end; ++b) {
      const int64_t bucket_count = static_cast<int64_t>(cells[b]);
      proto::AppendVarint(&deltas, proto::ZigZag(bucket_count - previous_count));
      previous_count = bucket_count;
    }
    next_index = int64_t{index_min} + end;
    first = false;
    j = end;
  }
  if (first && noop_span_if_empty) {
    // No bucket in use: an empty span tells a newer Prometheus that this is
    // a native histogram even before its first observation.
    const size_t span = proto::Open(out, span_field);
    proto::AppendVarintField(out, field::kSpanLength, 0);
    proto::Close(out, span);
  }
  if (!deltas.empty()) proto::AppendStringField(out, delta_field, deltas);
}

}  // namespace

void Collector::State::AppendProtobufFamilyHeader(const OutGroup& group, std::string* out) {
  // Info and StateSet are gauges here, as in text 0.0.4 (the format has
  // neither); an Info family is named after its sample, <name>_info.
  proto::AppendStringField(out, field::kFamilyName, group.shape.type == shm::MetricType::kInfo
                                                        ? group.shape.name + "_info"
                                                        : group.shape.name);
  if (!group.shape.help.empty()) proto::AppendStringField(out, field::kFamilyHelp, group.shape.help);
  const uint64_t type = group.shape.type == shm::MetricType::kCounter     ? kTypeCounter
                        : group.shape.type == shm::MetricType::kHistogram ? kTypeHistogram
                                                                           : kTypeGauge;
  proto::AppendVarintField(out, field::kFamilyType, type);
  if (!group.shape.unit.empty()) proto::AppendStringField(out, field::kFamilyUnit, group.shape.unit);
}

void Collector::State::RenderSeriesProtobuf(const OutGroup& group, size_t index, bool skip_faulted,
                                            std::string* out) {
  const HotSeries& series = group.hot[index];
  const HotSeries* previous = index == 0 ? nullptr : &group.hot[index - 1];
  const Source* begin = group.sources.data() + (previous != nullptr ? previous->source_end : 0);
  const Source* end = group.sources.data() + series.source_end;
  if (skip_faulted && SeriesVanished(begin, end, series.archived)) return;
  // This series' Metric.label fields, encoded when the index was built.
  const uint32_t labels_begin = previous == nullptr ? 0 : previous->proto_end;
  const absl::string_view labels(group.proto_labels.data() + labels_begin, series.proto_end - labels_begin);
  auto gauge_metric = [&](double value, absl::string_view extra_name, absl::string_view extra_value) {
    const size_t metric = proto::Open(out, field::kFamilyMetric);
    out->append(labels.data(), labels.size());
    if (!extra_name.empty()) AppendProtobufLabel(out, extra_name, extra_value);
    const size_t gauge = proto::Open(out, field::kMetricGauge);
    proto::AppendDoubleField(out, field::kValue, value);
    proto::Close(out, gauge);
    proto::Close(out, metric);
  };
  if (group.shape.type == shm::MetricType::kInfo) {
    gauge_metric(1, "", "");
    return;
  }
  if (group.shape.type == shm::MetricType::kStateSet) {
    const uint64_t current = StatesOf(group, begin, end, skip_faulted);
    for (size_t state = 0; state < group.shape.states.size(); ++state) {
      gauge_metric((current >> state & 1) != 0 ? 1 : 0, group.shape.name, group.shape.states[state]);
    }
    return;
  }
  const size_t metric = proto::Open(out, field::kFamilyMetric);
  out->append(labels.data(), labels.size());
  switch (group.shape.type) {
    case shm::MetricType::kCounter: {
      const size_t counter = proto::Open(out, field::kMetricCounter);
      proto::AppendDoubleField(out, field::kValue, ScalarOf(group, begin, end, series.archived, skip_faulted));
      ExemplarView exemplar;
      if (group.exemplars && NewestExemplar(begin, end, 0, skip_faulted, &exemplar)) {
        AppendExemplar(out, field::kCounterExemplar, exemplar);
      }
      if (series.created_unix_ns != 0) AppendTimestamp(out, field::kCounterCreated, series.created_unix_ns);
      proto::Close(out, counter);
      break;
    }
    case shm::MetricType::kInfo:
    case shm::MetricType::kStateSet:
      break;  // above
    case shm::MetricType::kGauge: {
      const size_t gauge = proto::Open(out, field::kMetricGauge);
      proto::AppendDoubleField(out, field::kValue, ScalarOf(group, begin, end, series.archived, skip_faulted));
      proto::Close(out, gauge);
      break;
    }
    case shm::MetricType::kHistogram: {
      const size_t histogram = proto::Open(out, field::kMetricHistogram);
      const size_t bucket_count = group.shape.bounds.size() + 1;
      uint64_t buckets[shm::kMaxBuckets + 1];
      uint64_t cells[kMaxNativeCells];
      double sum;
      const shm::NativeShape& shape = group.shape.native_shape;
      if (group.shape.native) {
        sum = NativeOf(shape, begin, end, series.archived, cells, skip_faulted);
        ClassicOfNative(shape, cells, buckets);
      } else {
        sum = HistogramOf(begin, end, series.archived, buckets, bucket_count, skip_faulted);
      }
      uint64_t total = 0;
      for (size_t b = 0; b < bucket_count; ++b) total += buckets[b];
      proto::AppendVarintField(out, field::kHistogramCount, total);
      proto::AppendDoubleField(out, field::kHistogramSum, sum);
      // Classic buckets, finite bounds only: +Inf is the count, written
      // out only to carry an exemplar.
      uint64_t cumulative = 0;
      // A native histogram's exemplars also go in Histogram.exemplars,
      // where a Prometheus newer than 2.42 looks for them.
      std::string native_exemplars;
      for (size_t b = 0; b < bucket_count; ++b) {
        cumulative += buckets[b];
        ExemplarView exemplar;
        const bool with_exemplar =
            group.exemplars && NewestExemplar(begin, end, static_cast<uint32_t>(b), skip_faulted, &exemplar);
        if (with_exemplar && group.shape.native) AppendExemplar(&native_exemplars, field::kHistogramExemplars, exemplar);
        const bool infinite = b + 1 == bucket_count;
        if (infinite && !with_exemplar) break;
        const size_t bucket = proto::Open(out, field::kHistogramBucket);
        proto::AppendVarintField(out, field::kBucketCumulativeCount, cumulative);
        proto::AppendDoubleField(out, field::kBucketUpperBound,
                                 infinite ? std::numeric_limits<double>::infinity() : group.shape.bounds[b]);
        if (with_exemplar) AppendExemplar(out, field::kBucketExemplar, exemplar);
        proto::Close(out, bucket);
      }
      if (group.shape.native) {
        proto::AppendVarintField(out, field::kHistogramSchema, proto::ZigZag(shape.schema));
        proto::AppendDoubleField(out, field::kHistogramZeroThreshold, shape.zero_threshold);
        proto::AppendVarintField(out, field::kHistogramZeroCount, cells[shm::kNativeZeroCell]);
        if (shape.negative) {
          AppendNativeBuckets(out, cells + shape.negative_first_cell(), shape.buckets_per_sign(), shape.index_min,
                              field::kHistogramNegativeSpan, field::kHistogramNegativeDelta, false);
        }
        AppendNativeBuckets(out, cells + shm::kNativeFirstBucketCell, shape.buckets_per_sign(), shape.index_min,
                            field::kHistogramPositiveSpan, field::kHistogramPositiveDelta, true);
      }
      if (series.created_unix_ns != 0) AppendTimestamp(out, field::kHistogramCreated, series.created_unix_ns);
      out->append(native_exemplars);
      proto::Close(out, histogram);
      break;
    }
  }
  proto::Close(out, metric);
}

void AppendProtobufLabel(std::string* out, absl::string_view name, absl::string_view value) {
  const size_t label = proto::Open(out, field::kMetricLabel);
  proto::AppendStringField(out, field::kLabelPairName, name);
  proto::AppendStringField(out, field::kLabelPairValue, value);
  proto::Close(out, label);
}

namespace {
// Unescapes a text label value (\\, \", \n) from `text` at `*at` (just
// after the opening quote) up to its closing quote.
bool ReadQuoted(absl::string_view text, size_t* at, std::string* value) {
  for (size_t i = *at; i < text.size(); ++i) {
    if (text[i] == '"') {
      *at = i + 1;
      return true;
    }
    if (text[i] == '\\' && i + 1 < text.size()) {
      ++i;
      value->push_back(text[i] == 'n' ? '\n' : text[i]);
    } else {
      value->push_back(text[i]);
    }
  }
  return false;
}
}  // namespace

void AppendTextAsProtobuf(absl::string_view text, std::string* out) {
  size_t family = std::string::npos;
  std::string help, name;
  uint64_t type = kTypeGauge;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::ConsumePrefix(&line, "# HELP ")) {
      const size_t space = line.find(' ');
      if (family != std::string::npos) proto::Close(out, family);
      family = std::string::npos;
      name = std::string(line.substr(0, space));
      help = space == absl::string_view::npos ? "" : std::string(line.substr(space + 1));
      continue;
    }
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      type = absl::EndsWith(line, " counter") ? kTypeCounter : kTypeGauge;
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    const size_t name_end = line.find_first_of("{ ");
    if (name_end == absl::string_view::npos) continue;
    std::vector<std::pair<std::string, std::string>> labels;
    size_t at = name_end;
    bool ok = true;
    if (line[at] == '{') {
      ++at;
      while (ok && at < line.size() && line[at] != '}') {
        const size_t eq = line.find("=\"", at);
        if (eq == absl::string_view::npos) {
          ok = false;
          break;
        }
        std::pair<std::string, std::string> label{std::string(line.substr(at, eq - at)), ""};
        at = eq + 2;
        ok = ReadQuoted(line, &at, &label.second);
        labels.push_back(std::move(label));
        if (at < line.size() && line[at] == ',') ++at;
      }
      ++at;  // the closing brace
    }
    double value = 0;
    if (!ok || at >= line.size() || line[at] != ' ' || !absl::SimpleAtod(line.substr(at + 1), &value)) continue;
    if (family == std::string::npos) {
      family = proto::Open(out, 0);
      proto::AppendStringField(out, field::kFamilyName, name);
      if (!help.empty()) proto::AppendStringField(out, field::kFamilyHelp, help);
      proto::AppendVarintField(out, field::kFamilyType, type);
    }
    const size_t metric = proto::Open(out, field::kFamilyMetric);
    for (const auto& [label_name, label_value] : labels) AppendProtobufLabel(out, label_name, label_value);
    const size_t holder = proto::Open(out, type == kTypeCounter ? field::kMetricCounter : field::kMetricGauge);
    proto::AppendDoubleField(out, field::kValue, value);
    proto::Close(out, holder);
    proto::Close(out, metric);
  }
  if (family != std::string::npos) proto::Close(out, family);
}

}  // namespace shmetrics::reader
