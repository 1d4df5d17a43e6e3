// The collector's state, shared by its three parts: scanning and
// retirement (collector.cc), the aggregated index and its validation
// (index.cc), and the exposition (exposition.cc). Internal header.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <string>
#include <vector>

#include "shmetrics/archive.h"
#include "shmetrics/collector.h"

namespace shmetrics::reader {

// Scan() builds a new View aside, under scan_mu, and swaps it in; renders
// and the read accessors take the published View (a shared_ptr copy under
// a mutex held for that copy only) and never wait for a scan. A View owns
// what it points to: the segments (shared), the archive (immutable once
// published: retirement folds into a copy).
struct Collector::State {
  CollectorOptions options;
  std::string archive_path;

  // One segment's part of a series: copied out of its SeriesView so that a
  // render walks packed sources, not series scattered over the heap.
  struct Source {
    const Segment* segment;
    SeriesCells cells;
  };
  // A series while the index is built, and for Snapshot(): cold data.
  struct OutSeries {
    std::vector<std::string> label_values;
    std::string pid;  // per-process gauges
    std::vector<Source> sources;
    const ArchivedSeries* archived = nullptr;
    uint64_t created_unix_ns = 0;  // earliest of its sources and archived part; 0: unknown
  };
  // What a scrape touches for one series, packed: offsets into the group's
  // contiguous buffers, so rendering walks memory in order.
  struct HotSeries {
    uint32_t text_end;    // end of this series' line starts in text_lines
    uint32_t om_end;      // end in om_lines (counters only)
    uint32_t source_end;  // end of this series' sources in `sources`
    const ArchivedSeries* archived;
    uint64_t created_unix_ns;
    uint32_t proto_end;   // end of this series' LabelPair fields in proto_labels
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
    std::string proto_labels;  // per series, its Metric.label fields, encoded
    bool exemplars = false;    // some source keeps exemplars
  };

  struct OpenSegment {
    std::shared_ptr<Segment> segment;
    std::string service;
    uint32_t pid = 0;
    bool alive = false;
  };

  // Everything a render or an accessor reads: immutable once published.
  struct View {
    std::shared_ptr<const std::vector<OutGroup>> index;  // shared by views until it changes
    std::vector<OpenSegment> segments;     // keeps the index's segments mapped
    std::shared_ptr<const Archive> archive;  // keeps the index's archived series
    std::shared_ptr<const std::vector<Problem>> problems = std::make_shared<std::vector<Problem>>();
    CollectorCounters counters;
    // shm::GuardedFaultCount() when the scan that made this view began: a
    // render that sees another count knows some mapping faulted since, and
    // leaves out whatever faulted (the next scan drops and reports it).
    uint64_t faults_at_scan = 0;
  };

  // Scan side: guarded by scan_mu. std::mutex rather than absl::Mutex:
  // Debian's Abseil is built without ThreadSanitizer annotations.
  std::mutex scan_mu;
  int archive_lock_fd = -1;  // held (LOCK_EX) while this collector retires
  std::map<std::string, OpenSegment> segments;  // by file name
  // Problems by (path, family): those found while scanning are replaced
  // by each scan, those of the index by each rebuild, the archive's when
  // it is next read.
  using ProblemMap = std::map<std::pair<std::string, std::string>, Problem>;
  ProblemMap scan_problems, index_problems, archive_problems;
  std::map<std::string, std::set<std::string>> logged;  // path -> errors already on stderr
  // Files a scan refused for good (not a segment, corrupt, untrusted), by
  // file name: while a file's stamp stays the same it is not opened again
  // for kRefusedRecheckNs, and its problem is reported from here. Junk
  // that another tenant leaves in the directory would otherwise be opened,
  // mapped and validated by every scan. Stores through a shared mapping
  // move no part of the stamp (tmpfs), hence the recheck: a file mended
  // that way is read within 30 s. A writer's segment is never refused so:
  // it appears under its name by rename, whole and ready (a new inode).
  struct RefusedFile {
    FileStamp stamp;          // lstat before the open that refused it
    int64_t checked_steady_ns;  // when that open ran (steady clock)
    ProblemKind kind;
    std::string error;
  };
  static constexpr int64_t kRefusedRecheckNs = 30'000'000'000;
  std::map<std::string, RefusedFile> refused;
  bool refused_changed = false;  // since the last Publish()
  // What the last Publish() listed: reused while no problem changes.
  std::shared_ptr<const std::vector<Problem>> problems = std::make_shared<std::vector<Problem>>();
  ProblemMap published_scan_problems, published_index_problems, published_archive_problems;
  CollectorCounters counters;
  std::shared_ptr<const Archive> archive = std::make_shared<Archive>();
  FileStamp archive_stamp;  // of the file `archive` was loaded from
  std::vector<OutGroup> index;  // being built by RebuildIndex()
  std::shared_ptr<const std::vector<OutGroup>> built = std::make_shared<std::vector<OutGroup>>();
  bool index_stale = true;

  // Published side.
  mutable std::mutex published_mu;  // guards `published` (the pointer only)
  std::shared_ptr<const View> published = std::make_shared<View>();
  std::atomic<int64_t> scan_started_ns{0};  // steady clock; 0 while no scan runs
  uint64_t faults_at_scan = 0;              // scan side: GuardedFaultCount() as the scan began
  mutable std::atomic<size_t> last_render_bytes{0};

  std::shared_ptr<const View> Published() const {
    std::lock_guard lock(published_mu);
    return published;
  }
  void Publish();  // swaps in a View of the scan side's state
  absl::Status ScanLocked();  // Scan() with scan_mu held

  // Records a problem (and logs it once per file and error).
  void Report(ProblemMap& into, const std::string& path, ProblemKind kind, const std::string& family,
              const std::string& error);
  void LogOnce(const std::string& path, ProblemKind kind, const std::string& error);

  // Forgets the folded names for which `gone` is true and saves the
  // archive (copy on write); whether it did.
  bool ForgetFolded(absl::FunctionRef<bool(const std::string&)> gone);

  void Log(absl::string_view sentence) const;  // options.log, or stderr
  absl::Status LoadArchive();  // from archive_path, with the trust rules
  void RebuildIndex();         // index.cc
  // Appends series `index` of `group` (nothing when it vanished and
  // skip_faulted is set).
  static void RenderSeries(const OutGroup& group, size_t index, ExpositionFormat format, bool skip_faulted,
                           std::string* out);
  // The protobuf exposition (exposition_protobuf.cc): a MetricFamily's
  // name, help, type and unit fields, and one Metric field per series.
  static void AppendProtobufFamilyHeader(const OutGroup& group, std::string* out);
  static void RenderSeriesProtobuf(const OutGroup& group, size_t index, bool skip_faulted, std::string* out);
  // A series whose every source faulted (its file shrank) and that has no
  // archived part: left out of the pass rather than shown as a reset.
  static bool SeriesVanished(const Source* begin, const Source* end, const ArchivedSeries* archived);
  // A StateSet series' states, bit i for state i: set where any source is in it.
  static uint64_t StatesOf(const OutGroup& group, const Source* begin, const Source* end, bool skip_faulted);
  // The newest exemplar `index` over a series' sources; false when none.
  static bool NewestExemplar(const Source* begin, const Source* end, uint32_t index, bool skip_faulted,
                             ExemplarView* out);
  static double ScalarOf(const OutGroup& group, const Source* begin, const Source* end,
                         const ArchivedSeries* archived, bool skip_faulted);
  static double HistogramOf(const Source* begin, const Source* end, const ArchivedSeries* archived,
                            uint64_t* buckets, size_t bucket_count, bool skip_faulted);
  // A native histogram's cells (shape.cell_count() of them, cell 0 unused),
  // summed over sources and the archive; returns the sum.
  static double NativeOf(const shm::NativeShape& shape, const Source* begin, const Source* end,
                         const ArchivedSeries* archived, uint64_t* cells, bool skip_faulted);
  // Classic buckets (bounds + 1, non-cumulative) from native cells: the
  // classic cells when the family has bounds, else one bucket, the count.
  static void ClassicOfNative(const shm::NativeShape& shape, const uint64_t* cells, uint64_t* buckets);
};

// A Metric.label field (exposition_protobuf.cc).
void AppendProtobufLabel(std::string* out, absl::string_view name, absl::string_view value);

}  // namespace shmetrics::reader
