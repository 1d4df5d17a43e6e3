#include "shmetrics/shm/names.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace shmetrics::shm {

const char* MetricTypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter: return "counter";
    case MetricType::kGauge: return "gauge";
    case MetricType::kHistogram: return "histogram";
    case MetricType::kInfo: return "info";
    case MetricType::kStateSet: return "stateset";
  }
  return "unknown";
}

namespace {
// True when `exposed` is a name that the exporter's process metrics occupy.
bool IsExporterProcessName(absl::string_view exposed) {
  for (absl::string_view counter : kExporterProcessCounters) {
    for (const std::string& taken : ExpositionNames(counter, MetricType::kCounter)) {
      if (exposed == taken) return true;
    }
  }
  for (absl::string_view gauge : kExporterProcessGauges) {
    if (exposed == gauge) return true;
  }
  return false;
}
}  // namespace

absl::Status CheckFamilyRules(absl::string_view name, MetricType type, GaugeMerge merge,
                              const std::vector<std::string>& label_names) {
  auto broken = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("family '", name, "': ", why));
  };
  if (!IsValidMetricName(name)) {
    return broken(absl::StrCat("invalid metric name: must match [a-zA-Z_:][a-zA-Z0-9_:]*, at most ",
                               kMaxNameBytes, " bytes"));
  }
  if (absl::StartsWith(name, kReservedFamilyPrefix)) {
    return broken(absl::StrCat("names beginning with ", kReservedFamilyPrefix,
                               " are reserved for the exporter's own metrics"));
  }
  for (const std::string& taken : ExpositionNames(name, type)) {
    if (IsExporterProcessName(taken)) {
      return broken(absl::StrCat("the name '", taken,
                                 "' is reserved for the exporter's own process metrics (process_cpu_seconds_total, "
                                 "process_open_fds, process_max_fds, process_virtual_memory_bytes, "
                                 "process_resident_memory_bytes, process_start_time_seconds)"));
    }
  }
  if (!IsValidMetricName(OpenMetricsFamilyName(name, type))) {
    return broken("a counter needs a name before its _total suffix");
  }
  if (type == MetricType::kInfo && absl::EndsWith(name, "_info")) {
    return broken("an info family is named without its _info suffix (the exposition adds it)");
  }
  if (type == MetricType::kStateSet) {
    if (!IsValidLabelName(name)) {
      return broken("a stateset's name is also its state label's name: it must be a valid label name (no ':')");
    }
    for (const std::string& label : label_names) {
      if (label == name) return broken("a stateset's label names cannot include its own name (its state label)");
    }
  }
  if (label_names.size() > kMaxLabels) {
    return broken(absl::StrCat("too many label names (", label_names.size(), "); at most ", kMaxLabels));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsValidLabelName(label)) {
      return broken(absl::StrCat("invalid label name '", label,
                                 "': must match [a-zA-Z_][a-zA-Z0-9_]* without a __ prefix"));
    }
    if (label == kServiceLabel) {
      return broken("label name 'service' is reserved: the exporter adds it to every series");
    }
    if (type == MetricType::kHistogram && label == "le") {
      return broken("label name 'le' is reserved for histogram buckets");
    }
    if (type == MetricType::kGauge && merge == GaugeMerge::kPerProcess && label == kPidLabel) {
      return broken("label name 'pid' is reserved in a per-process gauge: the exporter adds it");
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == label) return broken(absl::StrCat("duplicate label name '", label, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckUnit(absl::string_view name, MetricType type, absl::string_view unit) {
  if (unit.empty()) return absl::OkStatus();
  bool chars_ok = unit.size() <= 64;
  for (char ch : unit) {
    chars_ok = chars_ok && (absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == ':');
  }
  if (!chars_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("family '", name, "': invalid unit: must be 1 to 64 of [a-zA-Z0-9_:]"));
  }
  if (type == MetricType::kCounter && unit == "total") {
    return absl::InvalidArgumentError(
        absl::StrCat("family '", name, "': 'total' is a counter's suffix, not a unit"));
  }
  const std::string family = OpenMetricsFamilyName(name, type);
  if (!absl::EndsWith(family, absl::StrCat("_", unit))) {
    return absl::InvalidArgumentError(absl::StrCat("family '", name, "': with unit '", unit,
                                                   "' its name must end in _", unit,
                                                   type == MetricType::kCounter ? " (before _total)" : "",
                                                   ", as OpenMetrics requires"));
  }
  return absl::OkStatus();
}

std::string OpenMetricsFamilyName(absl::string_view name, MetricType type) {
  if (type == MetricType::kCounter && absl::EndsWith(name, "_total")) {
    return std::string(name.substr(0, name.size() - 6));
  }
  return std::string(name);
}

std::vector<std::string> ExpositionNames(absl::string_view name, MetricType type) {
  const std::string om = OpenMetricsFamilyName(name, type);
  std::vector<std::string> names{std::string(name), om};
  switch (type) {
    case MetricType::kCounter:
      names.push_back(om + "_total");
      names.push_back(om + "_created");
      break;
    case MetricType::kGauge:
      break;
    case MetricType::kHistogram:
      for (const char* suffix : {"_bucket", "_sum", "_count", "_created"}) names.push_back(om + suffix);
      break;
    case MetricType::kInfo:
      names.push_back(om + "_info");
      break;
    case MetricType::kStateSet:
      break;
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

bool NamesClash(absl::string_view name_a, MetricType type_a, absl::string_view name_b, MetricType type_b) {
  if (name_a == name_b) return type_a != type_b;
  const std::vector<std::string> a = ExpositionNames(name_a, type_a);
  const std::vector<std::string> b = ExpositionNames(name_b, type_b);
  // Both sorted: a merge walk finds a common name.
  for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
    if (a[i] == b[j]) return true;
    a[i] < b[j] ? ++i : ++j;
  }
  return false;
}

}  // namespace shmetrics::shm
