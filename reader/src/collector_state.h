// The collector's state, shared by its three parts: scanning and
// retirement (collector.cc), the aggregated index and its validation
// (index.cc), and the exposition (exposition.cc). Internal header.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "shmetrics/archive.h"
#include "shmetrics/collector.h"

namespace shmetrics::reader {

struct Collector::State {
  CollectorOptions options;
  std::string archive_path;
  int archive_lock_fd = -1;  // held (LOCK_EX) while this collector retires
  // std::shared_mutex rather than absl::Mutex: Debian's Abseil is built
  // without ThreadSanitizer annotations, so TSan could not see its
  // synchronization; pthread locks it intercepts. Guards everything below.
  mutable std::shared_mutex mu;

  struct OpenSegment {
    std::unique_ptr<Segment> segment;
    std::string service;
    uint32_t pid = 0;
    bool alive = false;
  };
  std::map<std::string, OpenSegment> segments;  // by file name

  // Problems by (path, family): those found while scanning are replaced
  // by each scan, those of the index by each rebuild, the archive's when
  // it is next read.
  using ProblemMap = std::map<std::pair<std::string, std::string>, Problem>;
  ProblemMap scan_problems, index_problems, archive_problems;
  std::set<std::string> logged;  // "path\nerror" lines already on stderr
  CollectorCounters counters;

  Archive archive;
  FileStamp archive_stamp;  // of the file `archive` was loaded from

  struct Source {
    const Segment* segment;
    const SeriesView* series;
  };
  // A series while the index is built, and for Snapshot(): cold data.
  struct OutSeries {
    std::vector<std::string> label_values;
    std::string pid;  // per-process gauges
    std::vector<Source> sources;
    const ArchivedSeries* archived = nullptr;
  };
  // What a scrape touches for one series, packed: offsets into the group's
  // contiguous buffers, so rendering walks memory in order.
  struct HotSeries {
    uint32_t text_end;    // end of this series' line starts in text_lines
    uint32_t om_end;      // end in om_lines (counters only)
    uint32_t source_end;  // end of this series' sources in `sources`
    const ArchivedSeries* archived;
  };
  // One family of one service. Groups of one family name are adjacent in
  // the index, and the first of them writes the HELP and TYPE lines.
  struct OutGroup {
    FamilyShape shape;
    std::string service;
    bool first_of_family = false;
    std::string om_name;                // OpenMetrics family name (counters lose _total)
    std::vector<std::string> le_texts;  // `le="0.1"` ... `le="+Inf"`
    std::vector<OutSeries> series;      // cold, same order as `hot`
    std::vector<HotSeries> hot;
    std::vector<Source> sources;
    // Line starts rendered once per index build, so that a scrape only
    // copies them and formats numbers: "name{labels} " per scalar series;
    // per histogram series its bucket lines, "_sum" and "_count", whose
    // ends are in line_ends (bounds + 3 per series).
    std::string text_lines;
    std::string om_lines;
    std::vector<uint32_t> line_ends;
  };
  std::vector<OutGroup> index;
  mutable std::atomic<size_t> last_render_bytes{0};
  bool index_stale = true;

  // Records a problem (and logs it once).
  void Report(ProblemMap& into, const std::string& path, ProblemKind kind, const std::string& family,
              const std::string& error);

  absl::Status LoadArchive();  // from archive_path, with the trust rules
  void RebuildIndex();         // index.cc
  void RenderGroup(const OutGroup& group, ExpositionFormat format, std::string* out) const;  // exposition.cc
  static double ScalarOf(const OutGroup& group, const Source* begin, const Source* end,
                         const ArchivedSeries* archived);
  static double HistogramOf(const Source* begin, const Source* end, const ArchivedSeries* archived,
                            uint64_t* buckets, size_t bucket_count);
};

}  // namespace shmetrics::reader
