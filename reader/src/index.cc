// The aggregated index: series grouped per (family, service), checked
// against the exposition rules and against each other, with their line
// starts pre-rendered. Rebuilt by Scan() when segments or series change.
#include <algorithm>
#include <cstdint>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "collector_state.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::reader {
namespace {

// One family of one service while the index is built.
struct Candidate {
  FamilyShape shape;
  std::string reference;  // the file whose shape the others must match
  std::map<std::vector<std::string>, Collector::State::OutSeries> series;  // by label values [, pid]
  // Precedence when names clash: a family some segment still has beats one
  // only the archive remembers, then the one registered first.
  bool in_segments = false;
  uint64_t created_unix_ns = UINT64_MAX;  // earliest registration among its segments
  bool accepted = false;
};

}  // namespace

void Collector::State::RebuildIndex() {
  index_problems.clear();
  // By (family name, service): the order in which conflicts are resolved.
  std::map<std::pair<std::string, std::string>, Candidate> candidates;
  auto candidate_for = [&](const FamilyShape& shape, const std::string& service,
                           const std::string& path) -> Candidate* {
    auto [it, inserted] = candidates.try_emplace({shape.name, service});
    Candidate& c = it->second;
    if (inserted) {
      c.shape = shape;
      c.reference = path;
      return &c;
    }
    if (c.shape.SameAs(shape)) return &c;
    Report(index_problems, path, ProblemKind::kConflict, shape.name,
           absl::StrCat(path, ": family ", shape.name, " of service ", service, " is a ",
                        shm::MetricTypeName(shape.type), " with other labels or buckets than in ", c.reference,
                        "; its series here are skipped"));
    return nullptr;
  };

  // The archive first: it is the service's oldest history.
  for (const auto& [key, archived] : archive->series()) {
    if (!options.service_filter.empty() && archived.service != options.service_filter) continue;
    const FamilyShape& shape = archived.shape;
    if (absl::Status rules = shm::CheckFamilyRules(shape.name, shape.type, shape.merge, shape.label_names);
        !rules.ok()) {
      Report(index_problems, archive_path, ProblemKind::kInvalidFamily, shape.name,
             absl::StrCat(archive_path, ": ", rules.message(), "; skipped"));
      continue;
    }
    Candidate* c = candidate_for(shape, archived.service, archive_path);
    if (c == nullptr) continue;
    OutSeries& out = c->series[archived.label_values];
    out.label_values = archived.label_values;
    out.archived = &archived;
    out.created_unix_ns = archived.created_unix_ns;
  }
  for (const auto& [name, open] : segments) {
    const Segment& segment = *open.segment;
    for (const FamilyView& family : segment.families()) {
      if (family.rejected.empty()) continue;
      Report(index_problems, segment.path(), ProblemKind::kInvalidFamily, family.name,
             absl::StrCat(segment.path(), ": ", family.rejected, "; skipped"));
    }
    for (const SeriesView& series : segment.series()) {
      const FamilyView& family = segment.families()[series.family];
      if (!family.rejected.empty()) continue;
      const FamilyShape shape = ShapeOf(family);
      const bool gauge = shape.type == shm::MetricType::kGauge;
      const bool per_process = gauge && shape.merge == shm::GaugeMerge::kPerProcess;
      if (gauge && !open.alive && (shape.merge == shm::GaugeMerge::kLiveSum || per_process)) continue;
      const bool live_only = shape.type == shm::MetricType::kInfo || shape.type == shm::MetricType::kStateSet;
      if (live_only && !open.alive) continue;
      Candidate* c = candidate_for(shape, open.service, segment.path());
      if (c == nullptr) continue;
      c->in_segments = true;
      c->created_unix_ns = std::min(c->created_unix_ns, family.created_unix_ns);
      std::vector<std::string> key = series.label_values;
      if (per_process) key.push_back(absl::StrCat(open.pid));
      OutSeries& out = c->series[key];
      out.label_values = series.label_values;
      if (per_process) out.pid = key.back();
      out.sources.push_back({&segment, series.cells()});
      if (series.created_unix_ns != 0 && (out.created_unix_ns == 0 || series.created_unix_ns < out.created_unix_ns)) {
        out.created_unix_ns = series.created_unix_ns;
      }
    }
  }

  // Across families: every name a family occupies in either output must be
  // its own. Families claim their names in order of precedence (in a
  // segment before archive-only, then registered first, then by name and
  // service), so a newcomer cannot take a name from a family that was
  // there before it, and a family that is gone from every segment cannot
  // keep one from a live family. One that meets a name already claimed is
  // skipped, with the family it met.
  std::vector<std::pair<const std::pair<std::string, std::string>*, Candidate*>> by_precedence;
  for (auto& [key, c] : candidates) by_precedence.emplace_back(&key, &c);
  std::stable_sort(by_precedence.begin(), by_precedence.end(), [](const auto& a, const auto& b) {
    return std::make_tuple(!a.second->in_segments, a.second->created_unix_ns) <
           std::make_tuple(!b.second->in_segments, b.second->created_unix_ns);
  });
  std::map<std::string, std::pair<std::string, shm::MetricType>> owner_of_name;
  for (auto& [key, c] : by_precedence) {
    const auto& [family_name, service] = *key;
    const std::vector<std::string> names = shm::ExpositionNames(family_name, c->shape.type);
    const std::pair<std::string, shm::MetricType>* met = nullptr;
    for (const std::string& name : names) {
      auto it = owner_of_name.find(name);
      if (it != owner_of_name.end() && (it->second.first != family_name || it->second.second != c->shape.type)) {
        met = &it->second;
        break;
      }
    }
    if (met != nullptr) {
      Report(index_problems, c->reference, ProblemKind::kConflict, family_name,
             absl::StrCat("family ", family_name, " (", shm::MetricTypeName(c->shape.type), ") of service ",
                          service, " cannot be exported beside the ", shm::MetricTypeName(met->second), " ",
                          met->first, " of another service or process, registered before it; it is skipped (",
                          c->reference, ")"));
      continue;
    }
    for (const std::string& name : names) owner_of_name.try_emplace(name, family_name, c->shape.type);
    c->accepted = true;
  }

  index.clear();
  counters.series = 0;
  counters.archived_series = archive->series().size();
  for (auto& [key, c] : candidates) {
    if (!c.accepted) continue;
    const auto& [family_name, service] = key;
    OutGroup group;
    group.shape = std::move(c.shape);
    group.service = service;
    group.first_of_family = index.empty() || index.back().shape.name != family_name;
    group.om_name = shm::OpenMetricsFamilyName(family_name, group.shape.type);
    for (double bound : group.shape.bounds) {
      std::string le = "le=\"";
      AppendDouble(&le, bound);
      group.le_texts.push_back(le + "\"");
    }
    group.le_texts.push_back("le=\"+Inf\"");
    const auto& label_names = group.shape.label_names;
    for (auto& [series_key, out] : c.series) {
      std::string labels;  // escaped `k="v",...` without braces
      for (size_t i = 0; i < label_names.size(); ++i) {
        absl::StrAppend(&labels, label_names[i], "=\"");
        AppendLabelValue(&labels, out.label_values[i]);
        labels.append("\",");
      }
      labels.append("service=\"");
      AppendLabelValue(&labels, service);
      labels.push_back('"');
      if (!out.pid.empty()) absl::StrAppend(&labels, ",pid=\"", out.pid, "\"");
      const std::string braced = "{" + labels + "}";
      for (size_t i = 0; i < label_names.size(); ++i) {
        AppendProtobufLabel(&group.proto_labels, label_names[i], out.label_values[i]);
      }
      AppendProtobufLabel(&group.proto_labels, shm::kServiceLabel, service);
      if (!out.pid.empty()) AppendProtobufLabel(&group.proto_labels, shm::kPidLabel, out.pid);
      if (group.shape.type == shm::MetricType::kHistogram) {
        for (const std::string& le : group.le_texts) {
          absl::StrAppend(&group.text_lines, family_name, "_bucket{", labels, ",", le, "} ");
          group.line_ends.push_back(static_cast<uint32_t>(group.text_lines.size()));
        }
        absl::StrAppend(&group.text_lines, family_name, "_sum", braced, " ");
        group.line_ends.push_back(static_cast<uint32_t>(group.text_lines.size()));
        absl::StrAppend(&group.text_lines, family_name, "_count", braced, " ");
        group.line_ends.push_back(static_cast<uint32_t>(group.text_lines.size()));
      } else if (group.shape.type == shm::MetricType::kStateSet) {
        // One line per state: the state label is named after the family.
        for (const std::string& state : group.shape.states) {
          absl::StrAppend(&group.text_lines, family_name, "{", labels, ",", family_name, "=\"");
          AppendLabelValue(&group.text_lines, state);
          group.text_lines.append("\"} ");
          group.line_ends.push_back(static_cast<uint32_t>(group.text_lines.size()));
        }
      } else if (group.shape.type == shm::MetricType::kInfo) {
        absl::StrAppend(&group.text_lines, family_name, "_info", braced, " ");
      } else {
        absl::StrAppend(&group.text_lines, family_name, braced, " ");
        if (group.shape.type == shm::MetricType::kCounter) {
          absl::StrAppend(&group.om_lines, group.om_name, "_total", braced, " ");
        }
      }
      group.sources.insert(group.sources.end(), out.sources.begin(), out.sources.end());
      for (const Source& source : out.sources) group.exemplars |= source.cells.exemplar_count > 0;
      group.hot.push_back({static_cast<uint32_t>(group.text_lines.size()),
                           static_cast<uint32_t>(group.om_lines.size()),
                           static_cast<uint32_t>(group.sources.size()), out.archived,
                           // to the millisecond: every format shows the same instant
                           out.created_unix_ns / 1000000 * 1000000,
                           static_cast<uint32_t>(group.proto_labels.size())});
      group.series.push_back(std::move(out));
    }
    counters.series += group.series.size();
    index.push_back(std::move(group));
  }
}

}  // namespace shmetrics::reader
