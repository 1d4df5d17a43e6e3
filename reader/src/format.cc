// Number and string formatting shared by the exposition, JSON views and CLI.
#include <charconv>
#include <cmath>

#include "shmetrics/collector.h"

namespace shmetrics::reader {

void AppendDouble(std::string* out, double value) {
  if (std::isnan(value)) {
    out->append("NaN");
  } else if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
  } else if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    // Integral values (most counters) print as integers: same text as the
    // shortest round-trip form, a fraction of the cost.
    char buffer[24];
    auto result = std::to_chars(buffer, buffer + sizeof buffer, static_cast<int64_t>(value));
    if (value == 0 && std::signbit(value)) {
      out->append("-0");
      return;
    }
    out->append(buffer, result.ptr);
  } else {
    char buffer[48];
    // Shortest text that reads back as the same double; plain decimals from
    // 1e-4 up (0.0005, not 5e-04), as Go and Python write them, so that a
    // bucket bound reads the same in every format and every parser.
    const double magnitude = std::fabs(value);
    const auto result = magnitude >= 1e-4 && magnitude < 1e16
                            ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
                            : std::to_chars(buffer, buffer + sizeof buffer, value);
    out->append(buffer, result.ptr);
  }
}

void AppendJsonNumber(std::string* out, double value) {
  if (!std::isfinite(value)) {
    out->append("null");
    return;
  }
  AppendDouble(out, value);
}

void AppendLabelValue(std::string* out, absl::string_view value) {
  for (char ch : value) {
    if (ch == '\\') out->append("\\\\");
    else if (ch == '"') out->append("\\\"");
    else if (ch == '\n') out->append("\\n");
    else out->push_back(ch);
  }
}

namespace {
// Length of the well-formed UTF-8 sequence at the start of `text`
// (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF), or 0.
size_t Utf8SequenceLength(absl::string_view text) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  size_t length;
  unsigned char second_min = 0x80, second_max = 0xbf;
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) second_min = 0xa0;
    if (lead == 0xed) second_max = 0x9f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) second_min = 0x90;
    if (lead == 0xf4) second_max = 0x8f;
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < second_min || byte(1) > second_max) return 0;
  for (size_t i = 2; i < length; ++i) {
    if ((byte(i) & 0xc0) != 0x80) return 0;
  }
  return length;
}
}  // namespace

void AppendJsonString(std::string* out, absl::string_view text) {
  out->push_back('"');
  for (size_t i = 0; i < text.size();) {
    const char ch = text[i];
    switch (ch) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out->append("\\u00");
          out->push_back(kHex[(ch >> 4) & 0xf]);
          out->push_back(kHex[ch & 0xf]);
        } else if (const size_t length = Utf8SequenceLength(text.substr(i)); length == 0) {
          // JSON must be UTF-8: a byte that starts no valid sequence (from a
          // request path, or a writer's label) becomes U+FFFD.
          out->append("\\ufffd");
        } else {
          out->append(text.data() + i, length);
          i += length;
          continue;
        }
    }
    ++i;
  }
  out->push_back('"');
}

double EstimateQuantile(const std::vector<double>& bounds, const std::vector<uint64_t>& buckets,
                        double quantile) {
  uint64_t count = 0;
  for (uint64_t b : buckets) count += b;
  if (count == 0 || buckets.size() != bounds.size() + 1 || bounds.empty()) return std::nan("");
  if (quantile <= 0) return quantile < 0 ? -INFINITY : 0;  // as PromQL does for q < 0 / q = 0 with lower bound
  if (quantile >= 1) return bounds.back();
  const double rank = quantile * static_cast<double>(count);
  uint64_t below = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const uint64_t cumulative = below + buckets[i];
    if (static_cast<double>(cumulative) >= rank) {
      if (i == bounds.size()) return bounds.back();  // rank in +Inf bucket
      const double upper = bounds[i];
      const double lower = i == 0 ? (bounds[0] > 0 ? 0 : bounds[0]) : bounds[i - 1];
      if (buckets[i] == 0) return upper;
      return lower + (upper - lower) * ((rank - static_cast<double>(below)) / static_cast<double>(buckets[i]));
    }
    below = cumulative;
  }
  return bounds.back();
}

void QuantileBuckets(const AggregatedSeries& series, std::vector<double>* bounds, std::vector<uint64_t>* buckets) {
  bounds->clear();
  buckets->clear();
  if (!series.native || series.native_cells.size() != series.native_shape.cell_count()) {
    *bounds = series.bounds;
    *buckets = series.buckets;
    return;
  }
  const shm::NativeShape& shape = series.native_shape;
  const uint64_t* cells = series.native_cells.data();
  const uint32_t n = shape.buckets_per_sign();
  if (shape.negative) {
    // Most negative first: negative bucket k holds [-2^(k/2^s), -2^((k-1)/2^s)).
    for (uint32_t j = n; j-- > 0;) {
      bounds->push_back(-shm::NativeBucketUpperBound(shape.index_min + static_cast<int32_t>(j) - 1, shape.schema));
      buckets->push_back(cells[shape.negative_first_cell() + j]);
    }
  }
  bounds->push_back(shape.zero_threshold);
  buckets->push_back(cells[shm::kNativeZeroCell]);
  for (uint32_t j = 0; j < n; ++j) {
    const double upper = shm::NativeBucketUpperBound(shape.index_min + static_cast<int32_t>(j), shape.schema);
    if (!(upper > bounds->back())) {  // a bucket at or under the zero threshold: fold it into the one before
      buckets->back() += cells[shm::kNativeFirstBucketCell + j];
      continue;
    }
    bounds->push_back(upper);
    buckets->push_back(cells[shm::kNativeFirstBucketCell + j]);
  }
  buckets->push_back(0);  // +Inf: values above max are in the top bucket
}

const char* ContentType(ExpositionFormat format) {
  switch (format) {
    case ExpositionFormat::kOpenMetrics: return "application/openmetrics-text; version=1.0.0; charset=utf-8";
    case ExpositionFormat::kProtobuf:
      return "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";
    case ExpositionFormat::kPrometheusText: break;
  }
  return "text/plain; version=0.0.4; charset=utf-8";
}

}  // namespace shmetrics::reader
