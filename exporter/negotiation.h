// Content negotiation for /metrics (RFC 9110 section 12): media ranges
// with q-values in Accept, codings with q-values in Accept-Encoding.
#pragma once

#include "absl/strings/string_view.h"
#include "shmetrics/collector.h"

namespace shmetrics::exporter {

// The exposition format for an Accept header. Ranges are ranked by q, then
// specificity, then position, as Prometheus's Go client does; the first
// that names a format we serve wins: application/openmetrics-text (version
// 1.0.0 or 0.0.1, or none), text/plain (version 0.0.4 or none) or
// application/vnd.google.protobuf with proto=io.prometheus.client.MetricFamily
// and encoding=delimited (as Prometheus asks when native histograms are
// on); a wildcard (*/*, text/*) means text 0.0.4, application/* OpenMetrics
// (never protobuf). A
// format whose most specific matching range has q=0 is never chosen.
// Nothing acceptable, or no header: text 0.0.4, as every Prometheus client
// answers.
reader::ExpositionFormat NegotiateFormat(absl::string_view accept);

// Whether an Accept-Encoding header allows gzip: "gzip" or "x-gzip" with
// q > 0, or "*" with q > 0 when gzip is not refused by name.
bool AcceptsGzip(absl::string_view accept_encoding);

}  // namespace shmetrics::exporter
