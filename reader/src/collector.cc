// The collector's scan: segments found, opened, refreshed and checked for
// liveness; the archive loaded with its trust rules (and reloaded by
// read-only collectors when it changes); dead writers retired.
#include "shmetrics/collector.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "collector_state.h"
#include "shmetrics/shm/fault_guard.h"

namespace shmetrics::reader {
namespace {

ProblemKind KindOf(const absl::Status& status) {
  return status.code() == absl::StatusCode::kPermissionDenied ? ProblemKind::kUntrusted : ProblemKind::kCorrupt;
}

// Whether a failed Segment::Open says what the file is (its bytes, its
// type, owner or mode): the same file gives the same answer until its
// stamp changes. Not a lack of descriptors or memory, nor an I/O error.
bool RefusedForGood(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

// True when no process holds the writer's lock on `path` (or it is gone).
// Opened like a segment: never follows a link, never blocks on a FIFO.
bool NoWriterHolds(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT;
  struct stat st {};
  bool free = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_SH | LOCK_NB) == 0;
  close(fd);
  return free;
}

// Opens (creating if needed) the retirement lock. An error names why this
// collector must not retire: someone else's file, a link, not a file.
absl::StatusOr<int> OpenRetireLock(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0 && errno == ELOOP) return absl::PermissionDeniedError(path + ": is a symbolic link");
  if (fd < 0) return shm::ErrnoStatus(errno, "open " + path);
  struct stat st {};
  absl::Status untrusted;
  if (fstat(fd, &st) != 0) {
    untrusted = shm::ErrnoStatus(errno, "fstat " + path);
  } else if (!S_ISREG(st.st_mode)) {
    untrusted = absl::PermissionDeniedError(path + ": not a regular file");
  } else if (st.st_uid != geteuid()) {
    untrusted = absl::PermissionDeniedError(
        absl::StrCat(path, ": owned by uid ", st.st_uid, ", not by this user (uid ", geteuid(), ")"));
  } else if (st.st_nlink != 1) {
    untrusted = absl::PermissionDeniedError(path + ": has extra hard links");
  } else if ((st.st_mode & 07777) != 0600 && fchmod(fd, 0600) != 0) {
    untrusted = shm::ErrnoStatus(errno, "chmod 0600 " + path);
  }
  if (!untrusted.ok()) {
    close(fd);
    return untrusted;
  }
  return fd;
}

}  // namespace

const char* ProblemKindName(ProblemKind kind) {
  switch (kind) {
    case ProblemKind::kCorrupt: return "corrupt";
    case ProblemKind::kUntrusted: return "untrusted";
    case ProblemKind::kInvalidFamily: return "invalid_family";
    case ProblemKind::kConflict: return "conflict";
  }
  return "unknown";
}

bool WriterRunning(const Segment& segment) {
  if (segment.WriterAlive()) return true;
  const SegmentInfo info = segment.Info();
  if (info.state != shm::SegmentState::kReady) return false;
  // The lock is free but the same process (pid and start time) still runs:
  // it closed its descriptor (a daemon closing every fd, say). Not dead.
  // An exited process that is not reaped yet (a zombie) is dead.
  return info.process_start_ticks != 0 && shm::ProcessRunning(info.pid, info.process_start_ticks);
}

void Collector::State::Log(absl::string_view sentence) const {
  if (options.log) return options.log(sentence);
  std::fprintf(stderr, "shmetrics: %.*s\n", static_cast<int>(sentence.size()), sentence.data());
}

void Collector::State::Report(ProblemMap& into, const std::string& path, ProblemKind kind,
                              const std::string& family, const std::string& error) {
  into[{path, family}] = Problem{path, kind, family, error};
  LogOnce(path, kind, error);
}

void Collector::State::LogOnce(const std::string& path, ProblemKind kind, const std::string& error) {
  if (logged[path].insert(error).second) {
    // CEscape: a hostile name or path must not write raw bytes to a terminal.
    Log(absl::StrCat("skipping (", ProblemKindName(kind), ") ", absl::CEscape(error)));
  }
}

bool Collector::State::ForgetFolded(absl::FunctionRef<bool(const std::string&)> gone) {
  if (std::none_of(archive->folded().begin(), archive->folded().end(), gone)) return false;
  auto pruned = std::make_shared<Archive>(*archive);  // copied only when there is something to forget
  if (!pruned->PruneFolded(gone) || !pruned->Save(archive_path).ok()) return false;
  archive = std::move(pruned);
  archive_stamp = StampOf(archive_path);
  return true;
}

void Collector::State::Publish() {
  auto view = std::make_shared<View>();
  view->index = built;
  for (const auto& [name, open] : segments) view->segments.push_back(open);
  view->archive = archive;
  // The refused files' problems sit apart (they outlive a scan); the
  // maps are compared, not copied, until something changed.
  if (refused_changed || scan_problems != published_scan_problems || index_problems != published_index_problems ||
      archive_problems != published_archive_problems) {
    auto list = std::make_shared<std::vector<Problem>>();
    for (const ProblemMap* map : {&archive_problems, &scan_problems, &index_problems}) {
      for (const auto& [key, problem] : *map) list->push_back(problem);
    }
    for (const auto& [name, file] : refused) {
      list->push_back(Problem{absl::StrCat(options.directory, "/", name), file.kind, "", file.error});
    }
    problems = std::move(list);
    published_scan_problems = scan_problems;
    published_index_problems = index_problems;
    published_archive_problems = archive_problems;
    refused_changed = false;
  }
  view->problems = problems;
  view->counters = counters;
  view->faults_at_scan = faults_at_scan;
  std::shared_ptr<const View> old;
  {
    std::lock_guard lock(published_mu);
    old = std::move(published);
    published = std::move(view);
  }
  // `old` (and the segments only it kept mapped) goes here, outside the
  // lock, once the last render holding it is done.
}

absl::Status Collector::State::LoadArchive() {
  archive_problems.clear();
  archive = std::make_shared<Archive>();
  index_stale = true;
  if (!options.use_archive) return absl::OkStatus();
  const bool retiring = archive_lock_fd >= 0;
  archive_stamp = StampOf(archive_path);
  absl::StatusOr<Archive> loaded = Archive::Load(archive_path);
  if (loaded.ok()) {
    archive = std::make_shared<const Archive>(*std::move(loaded));
    return absl::OkStatus();
  }
  const ProblemKind kind = KindOf(loaded.status());
  std::string what(loaded.status().message());
  if (!retiring) {
    Report(archive_problems, archive_path, kind, "", what + "; not read");
    return absl::OkStatus();
  }
  // A retiring collector sets the file aside (it keeps it for inspection)
  // and starts a new archive. Where it cannot (another user's file in a
  // sticky directory), it stops retiring rather than trust or clobber it.
  const std::string aside =
      absl::StrCat(archive_path, kind == ProblemKind::kCorrupt ? ".corrupt-" : ".untrusted-", shm::NowUnixNs());
  if (rename(archive_path.c_str(), aside.c_str()) == 0) {
    archive_stamp = StampOf(archive_path);
    Report(archive_problems, archive_path, kind, "",
           absl::StrCat(what, "; set aside as ", aside, ", counters of retired writers restart from live values"));
    return absl::OkStatus();
  }
  Report(archive_problems, archive_path, kind, "",
         absl::StrCat(what, "; cannot set it aside (", std::strerror(errno),
                      "): dead writers are not retired until it is removed"));
  close(archive_lock_fd);
  archive_lock_fd = -1;
  counters.retiring = false;
  return absl::OkStatus();
}

Collector::Collector(std::unique_ptr<State> state) : state_(std::move(state)) {}

Collector::~Collector() {
  if (state_->archive_lock_fd >= 0) close(state_->archive_lock_fd);
}

absl::StatusOr<std::unique_ptr<Collector>> Collector::Create(const CollectorOptions& options) {
  auto state = std::make_unique<State>();
  state->options = options;
  if (state->options.directory.empty()) state->options.directory = shm::DirectoryFromEnvironment();
  const std::string& dir = state->options.directory;
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("segment directory ", dir, " does not exist"));
  }
  state->archive_path = absl::StrCat(dir, "/", kArchiveFileName);
  std::unique_lock lock(state->scan_mu);
  if (options.retire_dead) {
    if (access(dir.c_str(), W_OK | X_OK) != 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          "cannot retire dead writers' segments: ", dir, " is not writable by uid ", geteuid(),
          "; run read-only (--no-retire) to serve it anyway"));
    }
    const std::string lock_path = state->archive_path + ".lock";
    absl::StatusOr<int> fd = OpenRetireLock(lock_path);
    if (!fd.ok()) {
      // Someone planted the lock: serve, but never retire through it.
      state->Report(state->archive_problems, lock_path, ProblemKind::kUntrusted, "",
                    absl::StrCat("untrusted lock file: ", fd.status().message(),
                                 "; dead writers are not retired until it is removed"));
    } else if (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
      close(*fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "another exporter (or shmetrics gc) already retires segments in ", dir,
          "; run this one with retirement off to share the directory"));
    } else {
      state->archive_lock_fd = *fd;
      state->counters.retiring = true;
    }
  }
  const State::ProblemMap lock_problems = state->archive_problems;
  (void)state->LoadArchive();
  state->archive_problems.insert(lock_problems.begin(), lock_problems.end());
  state->Publish();
  lock.unlock();
  return std::unique_ptr<Collector>(new Collector(std::move(state)));
}

double Collector::ScanRunningSeconds() const {
  const int64_t started = state_->scan_started_ns.load(std::memory_order_relaxed);
  if (started == 0) return 0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() - started * 1e-9;
}

absl::Status Collector::Scan() {
  State& s = *state_;
  std::unique_lock lock(s.scan_mu);
  s.scan_started_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count(),
                          std::memory_order_relaxed);
  s.faults_at_scan = shm::GuardedFaultCount();
  absl::Status status = s.ScanLocked();
  s.scan_started_ns.store(0, std::memory_order_relaxed);
  return status;
}

absl::Status Collector::State::ScanLocked() {
  State& s = *this;
  absl::StatusOr<std::vector<DirectoryEntry>> entries = ListSegments(s.options.directory);
  if (!entries.ok()) return entries.status();
  ++s.counters.scans;
  s.counters.segments_not_ready = 0;
  // The lock protects only while its path still names the file we locked:
  // once it is removed or replaced, another collector can take a new lock
  // there, and two retirers would overwrite each other's archive.
  if (s.archive_lock_fd >= 0) {
    const std::string lock_path = s.archive_path + ".lock";
    struct stat held {}, named {};
    if (fstat(s.archive_lock_fd, &held) != 0 || lstat(lock_path.c_str(), &named) != 0 ||
        held.st_dev != named.st_dev || held.st_ino != named.st_ino) {
      close(s.archive_lock_fd);
      s.archive_lock_fd = -1;
      s.counters.retiring = false;
      s.Report(s.archive_problems, lock_path, ProblemKind::kUntrusted, "",
               absl::StrCat(lock_path, ": removed or replaced while this collector held it; dead writers are not "
                                       "retired by it any more (restart it to take the lock again)"));
    }
  }
  const bool retiring = s.archive_lock_fd >= 0;

  bool changed = false;
  // Monotonic: a step of the wall clock must not stretch the refused-file
  // window.
  const int64_t scan_began_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  // Every segment file, and those that pass the filters: views of the
  // names in `entries` (no copy per file and scan).
  absl::flat_hash_set<std::string_view> listed, present;
  uint64_t mapped_bytes = 0;
  for (const auto& [name, open] : s.segments) mapped_bytes += open.segment->mapping().size_bytes();
  s.scan_problems.clear();
  for (const DirectoryEntry& entry : *entries) {
    listed.insert(entry.file_name);
    if (!s.options.service_filter.empty() && entry.id.service != s.options.service_filter) continue;
    if (!s.options.file_filter.empty() && entry.file_name != s.options.file_filter) continue;
    present.insert(entry.file_name);
    if (s.archive->folded().contains(entry.file_name)) continue;  // handled below
    auto it = s.segments.find(entry.file_name);
    if (it != s.segments.end() && !it->second.segment->mapping().PathNamesThisFile()) {
      // Its name now names another file (moved over it): what is there
      // now is read as new, and the file that was mapped is gone from the
      // directory, as if removed (its writer's values with it).
      s.segments.erase(it);
      it = s.segments.end();
      changed = true;
    }
    if (it != s.segments.end()) {
      const size_t series_before = it->second.segment->series().size();
      if (absl::Status status = it->second.segment->Refresh(); !status.ok()) {
        s.Report(s.scan_problems, entry.path, KindOf(status), "", std::string(status.message()));
        s.segments.erase(it);
        changed = true;
      } else {
        // Refresh may have grown series(): the index points into it.
        changed |= it->second.segment->series().size() != series_before;
      }
      continue;
    }
    const FileStamp stamp = StampOf(entry.path);
    if (auto refused = s.refused.find(entry.file_name);
        refused != s.refused.end() && refused->second.stamp == stamp &&
        scan_began_ns - refused->second.checked_steady_ns < State::kRefusedRecheckNs) {
      continue;  // still reported: Publish() lists `refused`
    }
    absl::StatusOr<std::unique_ptr<Segment>> segment = Segment::Open(entry.path, s.options.segment);
    if (segment.status().code() == absl::StatusCode::kUnavailable ||
        segment.status().code() == absl::StatusCode::kNotFound) {  // being made; or retired or removed since listed
      s.refused_changed |= s.refused.erase(entry.file_name) > 0;  // whatever it was, it is that now
      if (segment.status().code() == absl::StatusCode::kUnavailable) ++s.counters.segments_not_ready;
      continue;
    }
    if (!segment.ok()) {
      const ProblemKind kind = KindOf(segment.status());
      std::string error(segment.status().message());
      if (RefusedForGood(segment.status())) {
        s.LogOnce(entry.path, kind, error);
        s.refused[entry.file_name] = {stamp, scan_began_ns, kind, std::move(error)};
        s.refused_changed = true;
      } else {
        s.refused_changed |= s.refused.erase(entry.file_name) > 0;
        s.Report(s.scan_problems, entry.path, kind, "", error);
      }
      continue;
    }
    s.refused_changed |= s.refused.erase(entry.file_name) > 0;
    const uint64_t size = (*segment)->mapping().size_bytes();
    if (mapped_bytes + size > s.options.max_mapped_bytes) {
      s.Report(s.scan_problems, entry.path, ProblemKind::kCorrupt, "",
               absl::StrCat(entry.path, ": not read: the directory's segments would map more than ",
                            s.options.max_mapped_bytes, " bytes"));
      continue;
    }
    mapped_bytes += size;
    const SegmentInfo info = (*segment)->Info();
    s.segments[entry.file_name] = State::OpenSegment{std::shared_ptr<Segment>(*std::move(segment)), info.service,
                                                     info.pid, true};
    changed = true;
  }

  s.refused_changed |= std::erase_if(s.refused, [&](const auto& entry) {
    return !present.contains(entry.first);  // gone, or filtered out
  }) > 0;

  // Read-only: the archive is read after the directory, so a segment that
  // another collector retired meanwhile is in the archive if it was not
  // listed or could not be opened; and one that was opened but is now in
  // the archive is dropped below, never counted twice.
  if (!retiring && s.options.use_archive && StampOf(s.archive_path) != s.archive_stamp) {
    (void)s.LoadArchive();
    changed = true;
  }
  for (auto it = s.segments.begin(); it != s.segments.end();) {
    if (present.contains(it->first) && !s.archive->folded().contains(it->first)) {
      ++it;
    } else {
      it = s.segments.erase(it);
      changed = true;
    }
  }
  // Folded before a crash or a failed unlink: its values are archived
  // already. Removed only when no writer holds it (a live writer's file is
  // never removed, whatever the archive says).
  if (retiring) {
    for (const std::string& name : s.archive->folded()) {
      const std::string path = absl::StrCat(s.options.directory, "/", name);
      if (present.contains(name) && NoWriterHolds(path)) unlink(path.c_str());
    }
  }

  // Liveness, then retirement of the dead.
  std::vector<std::string> to_retire;
  s.counters.segments_alive = s.counters.segments_dead = 0;
  for (auto& [name, open] : s.segments) {
    const bool was_alive = open.alive;
    open.alive = WriterRunning(*open.segment);
    changed |= open.alive != was_alive;
    if (open.alive) {
      ++s.counters.segments_alive;
    } else if (retiring) {
      to_retire.push_back(name);
    } else {
      ++s.counters.segments_dead;
    }
  }
  if (!to_retire.empty()) {
    changed = true;
    // Copy on write: the published View keeps reading the archive it has.
    auto folded = std::make_shared<Archive>(*s.archive);
    for (const std::string& name : to_retire) {
      const State::OpenSegment& open = s.segments.at(name);
      for (const std::string& family : folded->Fold(*open.segment, open.service, name)) {
        s.Report(s.scan_problems, open.segment->path(), ProblemKind::kConflict, family,
                 absl::StrCat(open.segment->path(), ": family ", family, " of service ", open.service,
                              " has another type, labels or buckets than in the archive; its final values "
                              "were not kept"));
      }
    }
    if (absl::Status saved = folded->Save(s.archive_path); saved.ok()) {
      s.archive = std::move(folded);
      s.archive_stamp = StampOf(s.archive_path);
      std::set<std::string> replaced;
      for (const std::string& name : to_retire) {
        const Segment& segment = *s.segments.at(name).segment;
        const std::string path = segment.path();
        // Only the file folded is removed: one moved over its name since
        // this scan looked is left, and its name is no longer folded, so
        // the next scan reads it rather than taking it for the folded one.
        if (!segment.mapping().PathNamesThisFile()) {
          replaced.insert(name);
        } else if (unlink(path.c_str()) != 0 && errno != ENOENT) {
          s.Report(s.scan_problems, path, ProblemKind::kCorrupt, "",
                   absl::StrCat(path, ": folded into the archive but not removed: ", std::strerror(errno)));
        }
        s.segments.erase(name);
        ++s.counters.segments_retired_total;
      }
      s.ForgetFolded([&](const std::string& name) { return replaced.contains(name); });
    } else {
      // Nothing was removed: reload the archive as it is on disk, so the
      // folded values are not counted twice, and count the segments live.
      const std::string why(saved.message());
      (void)s.LoadArchive();
      s.Report(s.scan_problems, s.archive_path, ProblemKind::kCorrupt, "",
               absl::StrCat(why, "; dead writers are kept until the archive can be written"));
      s.counters.segments_dead += to_retire.size();
    }
  }
  // Temporary files of writers killed while creating their segment.
  if (retiring) {
    absl::StatusOr<std::vector<std::string>> removed =
        shm::RemoveAbandonedTempFiles(s.options.directory, s.options.abandoned_temp_grace_seconds);
    if (removed.ok()) {
      for (const std::string& path : *removed) {
        s.Log(absl::StrCat("removed ", absl::CEscape(path), ": its writer died while creating it"));
      }
      s.counters.abandoned_removed_total += removed->size();
    }
  }
  // Names of files that are gone can never be folded again: forget them,
  // and only them, so the list stays as long as it must and no longer.
  if (retiring) changed |= s.ForgetFolded([&](const std::string& name) { return !listed.contains(name); });
  // Forget what was logged about files that are gone: bounded by the
  // directory, and a file that comes back is reported again.
  std::erase_if(s.logged, [&](const auto& entry) {
    const std::string& path = entry.first;
    const std::string_view name = std::string_view(path).substr(path.rfind('/') + 1);
    return path != s.archive_path && path.rfind(s.archive_path, 0) != 0 && !listed.contains(name);
  });

  if (changed || s.index_stale) {
    s.RebuildIndex();
    s.built = std::make_shared<const std::vector<OutGroup>>(std::move(s.index));
    s.index.clear();
    s.index_stale = false;
  }
  s.Publish();
  return absl::OkStatus();
}

std::vector<RecentRecord> Collector::Recent(const RecentQuery& query) const {
  const std::shared_ptr<const State::View> view = state_->Published();
  // Newest first across every ring: a merge that reads each ring from its
  // newest record backwards, one record at a time, so a request touches
  // about `limit` records plus one per ring, never whole rings. Slots read
  // (kept, filtered out, torn or overwritten) are bounded by `budget`.
  struct Cursor {
    const State::OpenSegment* open;
    uint32_t lane;
    uint64_t oldest;
    uint64_t next;  // the next record to read is next - 1
    RequestRecordView record;
  };
  size_t budget = kRecentScanBudget + 8 * query.limit;
  auto advance = [&](Cursor& c) {
    while (c.next > c.oldest && budget > 0) {
      --budget;
      --c.next;
      if (c.open->segment->ReadRecord(c.lane, query.kind, c.next, &c.record) == SlotRead::kOk) return true;
    }
    return false;
  };
  auto older = [](const Cursor* a, const Cursor* b) {  // heap order: newest on top
    if (a->record.timestamp_unix_ns != b->record.timestamp_unix_ns) {
      return a->record.timestamp_unix_ns < b->record.timestamp_unix_ns;
    }
    return std::tie(a->open->service, a->open->pid, a->record.lane, a->record.index) <
           std::tie(b->open->service, b->open->pid, b->record.lane, b->record.index);
  };
  std::vector<Cursor> cursors;
  for (const State::OpenSegment& open : view->segments) {
    if (!query.service.empty() && open.service != query.service) continue;
    for (uint32_t lane = 0; lane < open.segment->ring_count(); ++lane) {
      const RingExtent extent = open.segment->RingExtentOf(lane, query.kind);
      if (extent.written > extent.oldest) cursors.push_back({&open, lane, extent.oldest, extent.written, {}});
    }
  }
  std::vector<Cursor*> heap;
  for (Cursor& c : cursors) {
    if (advance(c)) heap.push_back(&c);
  }
  std::make_heap(heap.begin(), heap.end(), older);
  std::vector<RecentRecord> result;
  while (!heap.empty() && result.size() < query.limit) {
    std::pop_heap(heap.begin(), heap.end(), older);
    Cursor& c = *heap.back();
    const RequestRecordView& r = c.record;
    if ((query.endpoint.empty() || r.endpoint == query.endpoint) && (query.status < 0 || r.status == query.status)) {
      result.push_back({c.open->service, c.open->pid, r});
    }
    if (advance(c)) {
      std::push_heap(heap.begin(), heap.end(), older);
    } else {
      heap.pop_back();
    }
  }
  return result;
}

std::vector<SegmentReport> Collector::Segments() const {
  const std::shared_ptr<const State::View> view = state_->Published();
  std::vector<SegmentReport> reports;
  for (const State::OpenSegment& open : view->segments) reports.push_back({open.segment->Info(), open.alive});
  return reports;
}

std::vector<Problem> Collector::Problems() const { return *state_->Published()->problems; }
std::shared_ptr<const std::vector<Problem>> Collector::SharedProblems() const { return state_->Published()->problems; }

CollectorCounters Collector::Counters() const { return state_->Published()->counters; }

}  // namespace shmetrics::reader
