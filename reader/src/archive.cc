// The archive file: trusted loading, atomic saving, folding. The format is
// in docs/archive-format.md.
#include "shmetrics/archive.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "shmetrics/collector.h"
#include "shmetrics/shm/names.h"

namespace shmetrics::reader {
namespace {

constexpr absl::string_view kArchiveHeader = "shmetrics-archive\t2";
constexpr absl::string_view kArchiveHeaderV1 = "shmetrics-archive\t1";
constexpr uint64_t kMaxArchiveBytes = uint64_t{1} << 30;

std::string SeriesKey(absl::string_view service, absl::string_view family,
                      const std::vector<std::string>& values) {
  return absl::StrCat(service, "\x1f", family, "\x1f", absl::StrJoin(values, "\x1f"));
}

absl::Status Untrusted(const std::string& path, absl::string_view why) {
  return absl::PermissionDeniedError(absl::StrCat(path, ": untrusted archive: ", why));
}

// Reads the whole file `fd` (at most kMaxArchiveBytes).
absl::StatusOr<std::string> ReadAll(int fd, const std::string& path, uint64_t size) {
  if (size > kMaxArchiveBytes) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": archive of ", size, " bytes is over the 1 GiB limit"));
  }
  std::string text(size, '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = pread(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return shm::ErrnoStatus(errno, "read " + path);
    if (n == 0) break;  // shrank meanwhile: parse what is there (and fail on a cut line)
    done += static_cast<size_t>(n);
  }
  text.resize(done);
  return text;
}

absl::Status Malformed(const std::string& path, absl::string_view why) {
  return absl::DataLossError(absl::StrCat(path, ": unreadable archive: ", why));
}

absl::StatusOr<ArchivedSeries> ParseSeries(const std::vector<std::string>& fields, int version) {
  auto bad = [] { return absl::DataLossError("malformed series"); };
  if (fields.size() < 8 || fields[0] != "S") return bad();
  ArchivedSeries a;
  a.service = fields[1];
  a.shape.name = fields[2];
  int type = 0, merge = 0;
  size_t label_count = 0, bound_count = 0;
  if (!absl::SimpleAtoi(fields[3], &type) || type < 1 || type > 3 || !absl::SimpleAtoi(fields[4], &merge) ||
      merge < 0 || merge > 4 || !absl::SimpleAtoi(fields[6], &label_count) || label_count > shm::kMaxLabels ||
      !shm::IsValidMetricName(a.shape.name) || !shm::IsValidServiceName(a.service)) {
    return bad();
  }
  a.shape.type = static_cast<shm::MetricType>(type);
  a.shape.merge = static_cast<shm::GaugeMerge>(merge);
  a.shape.help = fields[5];
  size_t next = 7;
  if (fields.size() < next + 2 * label_count + 1) return bad();
  for (size_t i = 0; i < label_count; ++i) a.shape.label_names.push_back(fields[next++]);
  for (size_t i = 0; i < label_count; ++i) a.label_values.push_back(fields[next++]);
  if (!absl::SimpleAtoi(fields[next++], &bound_count) || bound_count > shm::kMaxBuckets) return bad();
  const bool histogram = a.shape.type == shm::MetricType::kHistogram;
  // Version 2 appends: unit, created_unix_ns, then "-", or a native
  // histogram's schema, negative, index_min, index_max, zero_threshold and
  // cells 1 .. cell_count-1. A native histogram has no separate buckets.
  size_t extra = 0;
  bool native = false;
  if (version >= 2) {
    if (fields.size() < 3) return bad();
    native = fields.back() != "-";
    extra = native ? 0 : 3;
  }
  if (native) {
    // Find the shape first: its fields sit after the label values, bounds,
    // scalar, sum, unit and created (no classic bucket list).
    const size_t at = next + bound_count + 4;
    int schema = 0, negative = 0;
    int32_t index_min = 0, index_max = 0;
    double zero_threshold = 0;
    if (!histogram || fields.size() < at + 5 || !absl::SimpleAtoi(fields[at], &schema) ||
        !absl::SimpleAtoi(fields[at + 1], &negative) || !absl::SimpleAtoi(fields[at + 2], &index_min) ||
        !absl::SimpleAtoi(fields[at + 3], &index_max) || !absl::SimpleAtod(fields[at + 4], &zero_threshold) ||
        schema < shm::kMinNativeSchema || schema > shm::kMaxNativeSchema || negative < 0 || negative > 1 ||
        index_min > index_max || int64_t{index_max} - index_min >= int64_t{shm::kMaxNativeBuckets} ||
        !std::isfinite(zero_threshold) || !(zero_threshold >= 0)) {
      return bad();
    }
    a.shape.native = true;
    a.shape.native_shape = {schema, negative == 1, index_min, index_max, zero_threshold,
                            static_cast<uint32_t>(bound_count)};
    extra = 2 + 5 + (a.shape.native_shape.cell_count() - 1);
  }
  const size_t bucket_count = histogram && !native ? bound_count + 1 : 0;
  if ((histogram && !native && bound_count == 0) || fields.size() != next + bound_count + 2 + bucket_count + extra) {
    return bad();
  }
  for (size_t i = 0; i < bound_count; ++i) {
    double bound;
    if (!absl::SimpleAtod(fields[next++], &bound) || !std::isfinite(bound) ||
        (i > 0 && !(bound > a.shape.bounds.back()))) {
      return bad();
    }
    a.shape.bounds.push_back(bound);
  }
  if (!absl::SimpleAtod(fields[next++], &a.scalar) || !absl::SimpleAtod(fields[next++], &a.sum)) return bad();
  for (size_t i = 0; i < bucket_count; ++i) {
    uint64_t count;
    if (!absl::SimpleAtoi(fields[next++], &count)) return bad();
    a.buckets.push_back(count);
  }
  if (version >= 2) {
    a.shape.unit = fields[next++];
    if (!absl::SimpleAtoi(fields[next++], &a.created_unix_ns) || !shm::CheckUnit(a.shape.name, a.shape.type, a.shape.unit).ok()) {
      return bad();
    }
    if (native) {
      next += 5;
      a.native_cells.assign(a.shape.native_shape.cell_count(), 0);
      for (size_t c = 1; c < a.native_cells.size(); ++c) {
        if (!absl::SimpleAtoi(fields[next++], &a.native_cells[c])) return bad();
      }
    }
  }
  for (const std::string& text : fields) {
    if (!shm::IsValidUtf8(text)) return bad();
  }
  return a;
}

}  // namespace

FamilyShape ShapeOf(const FamilyView& f) {
  return {f.name, f.help, f.type, f.gauge_merge, f.label_names, f.bounds, f.unit, f.native, f.native_shape, f.states};
}

bool KeptWhenRetired(const FamilyShape& shape) {
  // Info and StateSet describe live processes only.
  if (shape.type == shm::MetricType::kInfo || shape.type == shm::MetricType::kStateSet) return false;
  return shape.type != shm::MetricType::kGauge ||
         (shape.merge != shm::GaugeMerge::kLiveSum && shape.merge != shm::GaugeMerge::kPerProcess);
}

FileStamp StampOf(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return {};
  return {st.st_dev, st.st_ino, st.st_size, int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
          int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec};
}

absl::StatusOr<Archive> Archive::Load(const std::string& path) {
  // O_NONBLOCK: a FIFO planted under this name must not block the open.
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return Archive();
  if (fd < 0 && errno == ELOOP) return Untrusted(path, "a symbolic link");
  if (fd < 0 && (errno == ENXIO || errno == ENODEV)) return Untrusted(path, "not a regular file");  // a socket
  if (fd < 0) return shm::ErrnoStatus(errno, "open " + path);
  struct stat st {};
  absl::StatusOr<std::string> text = absl::InternalError("unread");
  if (fstat(fd, &st) != 0) {
    text = shm::ErrnoStatus(errno, "fstat " + path);
  } else if (!S_ISREG(st.st_mode)) {
    text = Untrusted(path, "not a regular file");
  } else if (st.st_uid != geteuid()) {  // the retirer's own file: no other uid is trusted with it
    text = Untrusted(path, absl::StrCat("owned by uid ", st.st_uid, ", not by this user (uid ", geteuid(), ")"));
  } else if ((st.st_mode & 07777) != 0600) {
    text = Untrusted(path, absl::StrFormat("mode %04o, not 0600", st.st_mode & 07777));
  } else if (st.st_nlink > 1) {
    // (0 links: renamed over since we opened it. What we read is then a
    // complete older archive, and the caller sees the new one next time.)
    text = Untrusted(path, "has extra hard links");
  } else {
    text = ReadAll(fd, path, static_cast<uint64_t>(st.st_size));
  }
  close(fd);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::StatusOr<Archive> Archive::Parse(absl::string_view text, const std::string& path) {
  Archive archive;
  int line_number = 0;
  int version = 2;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (line_number == 1) {
      if (line == kArchiveHeaderV1) {
        version = 1;
      } else if (line != kArchiveHeader) {
        return Malformed(path, "bad header");
      }
      continue;
    }
    if (line.empty()) continue;  // the final newline
    std::vector<std::string> fields;
    for (absl::string_view raw : absl::StrSplit(line, '\t')) {
      std::string field;
      if (!absl::CUnescape(raw, &field)) return Malformed(path, absl::StrCat("line ", line_number));
      fields.push_back(std::move(field));
    }
    if (fields.size() == 2 && fields[0] == "F") {
      archive.folded_.insert(fields[1]);
      continue;
    }
    absl::StatusOr<ArchivedSeries> series = ParseSeries(fields, version);
    if (!series.ok()) return Malformed(path, absl::StrCat("line ", line_number));
    const std::string key = SeriesKey(series->service, series->shape.name, series->label_values);
    archive.series_[key] = *std::move(series);
  }
  if (line_number == 0 || text.empty() || text.back() != '\n') return Malformed(path, "cut short");
  return archive;
}

absl::Status Archive::Save(const std::string& path) const {
  std::string text(kArchiveHeader);
  text.push_back('\n');
  for (const std::string& name : folded_) absl::StrAppend(&text, "F\t", absl::CEscape(name), "\n");
  for (const auto& [key, a] : series_) {
    absl::StrAppend(&text, "S\t", absl::CEscape(a.service), "\t", absl::CEscape(a.shape.name), "\t",
                    static_cast<int>(a.shape.type), "\t", static_cast<int>(a.shape.merge), "\t",
                    absl::CEscape(a.shape.help), "\t", a.shape.label_names.size());
    for (const auto& n : a.shape.label_names) absl::StrAppend(&text, "\t", absl::CEscape(n));
    for (const auto& v : a.label_values) absl::StrAppend(&text, "\t", absl::CEscape(v));
    absl::StrAppend(&text, "\t", a.shape.bounds.size());
    for (double b : a.shape.bounds) {
      text.push_back('\t');
      AppendDouble(&text, b);
    }
    text.push_back('\t');
    AppendDouble(&text, a.scalar);
    text.push_back('\t');
    AppendDouble(&text, a.sum);
    for (uint64_t b : a.buckets) absl::StrAppend(&text, "\t", b);
    absl::StrAppend(&text, "\t", absl::CEscape(a.shape.unit), "\t", a.created_unix_ns);
    if (!a.shape.native) {
      text.append("\t-");
    } else {
      const shm::NativeShape& n = a.shape.native_shape;
      absl::StrAppend(&text, "\t", n.schema, "\t", n.negative ? 1 : 0, "\t", n.index_min, "\t", n.index_max, "\t");
      AppendDouble(&text, n.zero_threshold);
      for (size_t c = 1; c < a.native_cells.size(); ++c) absl::StrAppend(&text, "\t", a.native_cells[c]);
    }
    text.push_back('\n');
  }
  // A fresh name with O_EXCL: a file someone planted under a predictable
  // temporary name can be neither written through nor renamed into place.
  std::random_device random;
  const std::string temp = absl::StrCat(path, ".tmp.", getpid(), ".", random(), random());
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return shm::ErrnoStatus(errno, "create " + temp);
  bool ok = fchmod(fd, 0600) == 0;  // whatever the umask
  size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ok = ok && done == text.size() && fsync(fd) == 0;
  const int saved_errno = errno;
  close(fd);
  if (!ok || rename(temp.c_str(), path.c_str()) != 0) {
    const int err = ok ? errno : saved_errno;
    unlink(temp.c_str());
    return shm::ErrnoStatus(err, "write " + path);
  }
  return absl::OkStatus();
}

std::vector<std::string> Archive::Fold(const Segment& segment, const std::string& service,
                                       const std::string& file_name) {
  std::vector<std::string> dropped;
  std::vector<uint64_t> buckets;
  for (const SeriesView& series : segment.series()) {
    const FamilyView& family = segment.families()[series.family];
    if (!family.rejected.empty()) continue;
    const FamilyShape shape = ShapeOf(family);
    if (!KeptWhenRetired(shape)) continue;
    auto [it, inserted] = series_.try_emplace(SeriesKey(service, shape.name, series.label_values));
    ArchivedSeries& a = it->second;
    if (inserted) {
      a.shape = shape;
      a.service = service;
      a.label_values = series.label_values;
      a.buckets.assign(shape.type == shm::MetricType::kHistogram && !shape.native ? shape.bounds.size() + 1 : 0, 0);
      if (shape.native) a.native_cells.assign(shape.native_shape.cell_count(), 0);
    } else if (!a.shape.SameAs(shape)) {
      if (dropped.empty() || dropped.back() != shape.name) dropped.push_back(shape.name);
      continue;
    }
    if (series.created_unix_ns != 0 && (a.created_unix_ns == 0 || series.created_unix_ns < a.created_unix_ns)) {
      a.created_unix_ns = series.created_unix_ns;
    }
    if (shape.native) {
      a.sum += segment.AddNativeCells(series.cells(), shape.native_shape, a.native_cells.data());
      a.native_cells[shm::kNativeSumCell] = 0;
      continue;
    }
    if (shape.type == shm::MetricType::kHistogram) {
      buckets.assign(shape.bounds.size() + 1, 0);
      a.sum += segment.HistogramValue(series, buckets.data());
      for (size_t b = 0; b < buckets.size(); ++b) a.buckets[b] += buckets[b];
      continue;
    }
    const double value = segment.ScalarValue(series);
    if (shape.type == shm::MetricType::kGauge && shape.merge == shm::GaugeMerge::kMax) {
      a.scalar = inserted ? value : std::max(a.scalar, value);
    } else if (shape.type == shm::MetricType::kGauge && shape.merge == shm::GaugeMerge::kMin) {
      a.scalar = inserted ? value : std::min(a.scalar, value);
    } else {
      a.scalar += value;
    }
  }
  folded_.insert(file_name);
  return dropped;
}

size_t Archive::DropService(const std::string& service) {
  size_t dropped = 0;
  for (auto it = series_.begin(); it != series_.end();) {
    if (it->second.service == service) {
      it = series_.erase(it);
      ++dropped;
    } else {
      ++it;
    }
  }
  return dropped;
}

bool Archive::PruneFolded(absl::FunctionRef<bool(const std::string&)> gone) {
  return std::erase_if(folded_, gone) > 0;
}

}  // namespace shmetrics::reader
