// The archive: final totals of retired writers, per service.
//
// When a writer is gone its segment is folded into the archive, a text file
// `shmetrics-archive` in the segment directory, and then removed, so that
// aggregated counters never go backwards when a process exits and dead
// segments never pile up. docs/archive-format.md describes the file, the
// lock protocol and the merge rules.
//
// Trust. The archive decides what is served and which segment files get
// removed, so it is only read when it is a regular file (never a symlink,
// FIFO or device; opened O_NOFOLLOW | O_NONBLOCK), with one link, mode
// 0600, owned by this process's effective uid (the retirer's: uids trusted
// for segments are not trusted with the archive). Anything else is
// reported as untrusted and never read.
//
//   auto archive = shmetrics::reader::Archive::Load(path).value();
//   for (const auto& [key, series] : archive.series()) ...
//
// Thread safety: thread-compatible.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shmetrics/reader.h"

namespace shmetrics::reader {

inline constexpr const char* kArchiveFileName = "shmetrics-archive";

// What must agree for series of one service to be merged.
struct FamilyShape {
  std::string name;
  std::string help;
  shm::MetricType type = shm::MetricType::kCounter;
  shm::GaugeMerge merge = shm::GaugeMerge::kLiveSum;
  std::vector<std::string> label_names;
  std::vector<double> bounds;  // classic bounds (a native histogram's may be empty)
  std::string unit;
  bool native = false;
  shm::NativeShape native_shape;  // when native
  std::vector<std::string> states;  // a StateSet's
  bool SameAs(const FamilyShape& other) const {
    return type == other.type && label_names == other.label_names && bounds == other.bounds &&
           unit == other.unit && native == other.native && states == other.states &&
           (!native || native_shape == other.native_shape) &&
           (type != shm::MetricType::kGauge || merge == other.merge);
  }
};
FamilyShape ShapeOf(const FamilyView& family);

// Whether a family's final values outlive its writer: counters, histograms
// and gauges merged by sum, max or min (not live sums or per-process ones).
bool KeptWhenRetired(const FamilyShape& shape);

struct ArchivedSeries {
  std::string service;
  FamilyShape shape;
  std::vector<std::string> label_values;
  double scalar = 0;              // counters and gauges
  double sum = 0;                 // histograms
  std::vector<uint64_t> buckets;  // classic histograms: non-cumulative, +Inf last
  // Native histograms: every cell of the series (shm/native_buckets.h;
  // cell 0, the sum, stays 0: the sum is `sum`), classic buckets included.
  std::vector<uint64_t> native_cells;
  // The earliest creation time of the series in any segment folded in:
  // `_created` does not move when a process restarts. 0: unknown.
  uint64_t created_unix_ns = 0;
};

// Identity of a file as far as stat tells: the archive is replaced by
// rename, so a new save is a new inode; a write() moves the mtime, and a
// chmod, chown or link the ctime. Stores through a shared mapping move
// none of them (tmpfs): the stamp does not see those.
struct FileStamp {
  dev_t device = 0;
  ino_t inode = 0;
  off_t size = -1;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};
// The stamp of `path` (lstat); size -1 when it does not exist.
FileStamp StampOf(const std::string& path);

class Archive {
 public:
  // Loads `path`. A missing file is an empty archive. Errors:
  // PermissionDenied (untrusted: not a regular file, a symlink, another
  // owner, a mode other than 0600, extra links; or unreadable), DataLoss
  // (not an archive, or a malformed line), ResourceExhausted (over 1 GiB).
  static absl::StatusOr<Archive> Load(const std::string& path);
  // Parses the text of an archive file; `path` names it in errors.
  // DataLoss on anything malformed.
  static absl::StatusOr<Archive> Parse(absl::string_view text, const std::string& path);

  // Writes the archive to `path` atomically: a new temporary file beside it
  // (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600, a name no one else can
  // pre-create), fsync, rename over `path`.
  absl::Status Save(const std::string& path) const;

  // Adds a segment's final values (families the reader rejected are
  // skipped) and records its file name as folded. Returns the names of the
  // families whose values could not be kept: their shape (type, labels,
  // buckets) differs from the archived family of that service and name.
  std::vector<std::string> Fold(const Segment& segment, const std::string& service,
                                const std::string& file_name);

  // Removes every series of a service; returns how many.
  size_t DropService(const std::string& service);
  // Forgets the folded names for which `gone` is true (their files are no
  // longer in the directory: only a name whose file still exists can be
  // folded twice). Returns whether any was forgotten.
  bool PruneFolded(absl::FunctionRef<bool(const std::string&)> gone);

  // Keyed by service, family and label values ("\x1f"-joined).
  const std::map<std::string, ArchivedSeries>& series() const { return series_; }
  // Segment file names already folded in (their files may still exist if
  // the folder crashed before removing them: they must not be read again).
  const std::set<std::string>& folded() const { return folded_; }
  bool empty() const { return series_.empty() && folded_.empty(); }

 private:
  std::map<std::string, ArchivedSeries> series_;
  std::set<std::string> folded_;
};

}  // namespace shmetrics::reader
