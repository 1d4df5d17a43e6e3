#include "negotiation.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace shmetrics::exporter {
namespace {

// One element of Accept or Accept-Encoding.
struct Range {
  std::string type, subtype;  // lower case; Accept-Encoding: type is the coding
  std::string version;        // the "version" parameter, if any
  std::string proto, encoding;  // the protobuf format's parameters, if any
  int q_thousandths = 1000;
  size_t position = 0;
  int Specificity() const { return type == "*" ? 0 : subtype == "*" ? 1 : version.empty() ? 2 : 3; }
};

// q = 0 / 0.x / 1 / 1.000 (RFC 9110 section 12.4.2); false when malformed.
bool ParseQ(absl::string_view text, int* q_thousandths) {
  if (text.empty() || text.size() > 5) return false;
  if (text[0] != '0' && text[0] != '1') return false;
  int value = (text[0] - '0') * 1000;
  if (text.size() > 1) {
    if (text[1] != '.') return false;
    int scale = 100;
    for (char ch : text.substr(2)) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(ch))) return false;
      value += (ch - '0') * scale;
      scale /= 10;
    }
  }
  if (value > 1000) return false;
  *q_thousandths = value;
  return true;
}

// Splits a header into ranges; `media` says whether elements are
// type/subtype (Accept) or a bare coding (Accept-Encoding). Malformed
// elements are skipped. Quoted parameter values may hold ',' and ';'.
std::vector<Range> ParseRanges(absl::string_view header, bool media) {
  std::vector<Range> ranges;
  bool quoted = false;
  // Elements split on ',', each into its name and parameters on ';'.
  std::vector<std::vector<std::string>> split(1, std::vector<std::string>(1));
  for (size_t i = 0; i < header.size(); ++i) {
    const char ch = header[i];
    if (quoted) {
      if (ch == '\\' && i + 1 < header.size()) {
        split.back().back().push_back(header[++i]);
      } else if (ch == '"') {
        quoted = false;
      } else {
        split.back().back().push_back(ch);
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      split.emplace_back(1);
    } else if (ch == ';') {
      split.back().emplace_back();
    } else {
      split.back().back().push_back(ch);
    }
  }
  for (size_t index = 0; index < split.size(); ++index) {
    std::vector<std::string>& element = split[index];
    Range range;
    range.position = index;
    const std::string name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(element[0]));
    if (name.empty()) continue;
    if (media) {
      const std::vector<std::string> type = absl::StrSplit(name, '/');
      if (type.size() != 2 || type[0].empty() || type[1].empty() || (type[0] == "*" && type[1] != "*")) continue;
      range.type = type[0];
      range.subtype = type[1];
    } else {
      range.type = name;
    }
    bool valid = true;
    for (size_t p = 1; p < element.size(); ++p) {
      const absl::string_view parameter = absl::StripAsciiWhitespace(element[p]);
      const size_t equals = parameter.find('=');
      if (equals == absl::string_view::npos) continue;
      const std::string key = absl::AsciiStrToLower(absl::StripAsciiWhitespace(parameter.substr(0, equals)));
      const absl::string_view value = absl::StripAsciiWhitespace(parameter.substr(equals + 1));
      if (key == "q") {
        valid = valid && ParseQ(value, &range.q_thousandths);
      } else if (key == "version") {
        range.version = std::string(value);
      } else if (key == "proto") {
        range.proto = std::string(value);
      } else if (key == "encoding") {
        range.encoding = std::string(value);
      }
    }
    if (valid) ranges.push_back(std::move(range));
  }
  return ranges;
}

struct Candidate {
  reader::ExpositionFormat format;
  const char* type;
  const char* subtype;
  std::vector<const char*> versions;
};

bool Matches(const Range& range, const Candidate& candidate, bool exactly) {
  if (range.type == "*") return !exactly;
  if (range.type != candidate.type) return false;
  if (range.subtype == "*") return !exactly;
  if (range.subtype != candidate.subtype) return false;
  if (candidate.format == reader::ExpositionFormat::kProtobuf) {
    // Only the delimited MetricFamily stream, named in full (as Prometheus
    // asks for it); the protobuf text encodings are not served.
    return range.proto == "io.prometheus.client.MetricFamily" && range.encoding == "delimited";
  }
  if (range.version.empty()) return true;
  return std::find(candidate.versions.begin(), candidate.versions.end(), range.version) != candidate.versions.end();
}

}  // namespace

reader::ExpositionFormat NegotiateFormat(absl::string_view accept) {
  // In the order a wildcard prefers them: text first, as the Go client.
  const Candidate candidates[] = {
      {reader::ExpositionFormat::kPrometheusText, "text", "plain", {"0.0.4"}},
      {reader::ExpositionFormat::kOpenMetrics, "application", "openmetrics-text", {"1.0.0", "0.0.1"}},
      {reader::ExpositionFormat::kProtobuf, "application", "vnd.google.protobuf", {}},
  };
  std::vector<Range> ranges = ParseRanges(accept, /*media=*/true);
  // A candidate is refused when its most specific matching range says q=0.
  auto refused = [&](const Candidate& candidate) {
    const Range* best = nullptr;
    for (const Range& range : ranges) {
      if (Matches(range, candidate, false) && (best == nullptr || range.Specificity() > best->Specificity())) {
        best = &range;
      }
    }
    return best != nullptr && best->q_thousandths == 0;
  };
  std::stable_sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    if (a.q_thousandths != b.q_thousandths) return a.q_thousandths > b.q_thousandths;
    return a.Specificity() > b.Specificity();
  });
  for (const Range& range : ranges) {
    if (range.q_thousandths == 0) break;
    for (const Candidate& candidate : candidates) {
      if (Matches(range, candidate, false) && !refused(candidate)) return candidate.format;
    }
  }
  return reader::ExpositionFormat::kPrometheusText;
}

bool AcceptsGzip(absl::string_view accept_encoding) {
  int gzip_q = -1, any_q = -1;
  for (const Range& range : ParseRanges(accept_encoding, /*media=*/false)) {
    if (range.type == "gzip" || range.type == "x-gzip") gzip_q = std::max(gzip_q, range.q_thousandths);
    if (range.type == "*") any_q = std::max(any_q, range.q_thousandths);
  }
  if (gzip_q >= 0) return gzip_q > 0;
  return any_q > 0;
}

}  // namespace shmetrics::exporter
