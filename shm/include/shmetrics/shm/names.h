// Exposition rules for family and label names: the one implementation that
// the writer applies when a family is registered and the reader applies to
// every family a segment publishes (a segment is input: the reader never
// relies on the writer having checked). docs/naming-rules.md lists the same
// rules for people.
//
// Two kinds of rule:
//  - CheckFamilyRules: what one family must satisfy on its own (reserved
//    prefixes and label names, unique label names, a usable OpenMetrics
//    name). A family that breaks one is skipped by readers, alone.
//  - ExpositionNames / NamesClash: the names a family occupies in the text
//    and OpenMetrics outputs (its family names and every sample name, with
//    the suffixes its type adds). Two families whose occupied names meet
//    would make the output invalid (a histogram `x` beside a gauge
//    `x_count`, a counter `foo_total` beside a gauge `foo`, counters
//    `requests` and `requests_total`), so one of them must go.
//
// Thread safety: pure functions, thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "shmetrics/shm/layout.h"

namespace shmetrics::shm {

// Family names beginning with this belong to the exporter's own metrics.
inline constexpr absl::string_view kReservedFamilyPrefix = "shmetrics_exporter_";
// The standard process metrics (the Prometheus client libraries' names)
// that the exporter exports about itself, without a service label: no
// family may occupy one of their names, in either output format.
inline constexpr absl::string_view kExporterProcessCounters[] = {"process_cpu_seconds_total"};
inline constexpr absl::string_view kExporterProcessGauges[] = {
    "process_open_fds", "process_max_fds", "process_virtual_memory_bytes", "process_resident_memory_bytes",
    "process_start_time_seconds"};
// The exporter adds this label to every series: no family may declare it.
inline constexpr absl::string_view kServiceLabel = "service";
// The exporter adds this label to every series of a per-process gauge.
inline constexpr absl::string_view kPidLabel = "pid";

// InvalidArgument naming the rule a family breaks, or OK. Covers the
// character rules (IsValidMetricName, IsValidLabelName) as well.
absl::Status CheckFamilyRules(absl::string_view name, MetricType type, GaugeMerge merge,
                              const std::vector<std::string>& label_names);

// InvalidArgument unless `unit` is empty, or made of [a-zA-Z0-9_:] (at
// most 64 bytes) and the OpenMetrics family name ends in "_" + unit, as
// OpenMetrics requires of a family with a unit.
absl::Status CheckUnit(absl::string_view name, MetricType type, absl::string_view unit);

// The family name OpenMetrics uses: a counter loses a trailing "_total".
std::string OpenMetricsFamilyName(absl::string_view name, MetricType type);

// Every name the family occupies in either output format: its family names
// (text and OpenMetrics) and its sample names (with _total, _created,
// _bucket, _sum, _count as its type adds them). Sorted, unique.
std::vector<std::string> ExpositionNames(absl::string_view name, MetricType type);

// True when two distinct families (another name, or the same name with
// another type) cannot appear together in one output. A family never
// clashes with itself (same name, same type).
bool NamesClash(absl::string_view name_a, MetricType type_a, absl::string_view name_b, MetricType type_b);

const char* MetricTypeName(MetricType type);  // "counter", "gauge", "histogram"

}  // namespace shmetrics::shm
