// Segment files: naming, creation, read-only mapping and writer liveness.
//
// A writer creates its file under a temporary name with
// O_CREAT|O_EXCL|O_NOFOLLOW, takes an exclusive flock() on it at once and
// holds it for as long as it lives, sets mode 0600 (or 0640) regardless of
// umask, allocates every byte up front with posix_fallocate (so a full
// tmpfs fails here, never as SIGBUS later), lays the segment out and only
// then renames it to its final name. The kernel drops
// that lock when the process dies, kill -9 included, so "the lock is free"
// means "the writer is gone", whatever happened to its pid since.
//
// Thread safety: WritableSegment and ReadOnlyMapping are thread-compatible.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shmetrics/shm/layout.h"

namespace boost::interprocess {
class mapped_region;
}

namespace shmetrics::shm {

inline constexpr absl::string_view kFilePrefix = "shmetrics.";
inline constexpr absl::string_view kDefaultDirectory = "/dev/shm";

// "shmetrics.<service>.<pid>.<start_ticks>.<instance>": the start time keeps
// a reused pid from colliding with a dead writer's file that is not retired
// yet; the instance tells apart several writers of one process.
std::string SegmentFileName(absl::string_view service, uint32_t pid, uint64_t start_ticks,
                            uint32_t instance);

struct SegmentFileId {
  std::string service;
  uint32_t pid = 0;
  uint64_t start_ticks = 0;
  uint32_t instance = 0;
};
// Returns nullopt for any file name that is not a segment's, in the one
// spelling SegmentFileName makes (a leading zero or a sign is not one).
std::optional<SegmentFileId> ParseSegmentFileName(absl::string_view file_name);

// $SHMETRICS_DIR when set and non-empty, else /dev/shm.
std::string DirectoryFromEnvironment();

// Start time of a process in clock ticks since boot (/proc/<pid>/stat field
// 22), or 0 when the process does not exist or cannot be read.
uint64_t ProcessStartTicks(pid_t pid);
// This process's start ticks for its segment's name and header: as
// ProcessStartTicks(getpid()), or, when /proc cannot tell (no /proc in a
// sandbox, a /proc of another pid namespace, no descriptor left), the
// ticks since boot now (CLOCK_BOOTTIME, at least 1). Never 0: a name with
// 0 would be the next name of any later process given the same pid, and
// that one's segment would be taken for the retired one.
uint64_t OwnStartTicks();
uint64_t NowUnixNs();

// Whether process `pid` started at `start_ticks` still runs: false when it
// is gone, when the pid now names another process (another start time), and
// when it has exited but is not reaped yet (a zombie, state Z or X in
// /proc/<pid>/stat). Liveness of a writer is its flock; this is the answer
// for the one case the flock cannot give (a writer that closed its
// descriptors), and it must not count a dead, unreaped writer as running.
bool ProcessRunning(uint32_t pid, uint64_t start_ticks);

// Temporary files. A writer lays its segment out under
// ".shmetrics-tmp.<service>.<pid>.<start_ticks>.<instance>" in the segment
// directory, holding its flock from the start, and publishes it under its
// final name with one rename (renameat2 RENAME_NOREPLACE). A reader never
// takes a temporary file for a segment (ListSegments matches "shmetrics."
// only), so it never sees a half-made segment. A writer killed before the
// rename leaves its temporary file behind; RemoveAbandonedTempFiles removes
// such files.
inline constexpr absl::string_view kTempFilePrefix = ".shmetrics-tmp.";
std::string TempSegmentFileName(absl::string_view service, uint32_t pid, uint64_t start_ticks,
                                uint32_t instance);
// True for exactly the names TempSegmentFileName makes.
bool IsTempSegmentFileName(absl::string_view file_name);

// Removes, from `directory`, the temporary files whose creator is gone: a
// name of the exact temporary pattern, a regular file (never a symlink:
// opened O_NOFOLLOW|O_NONBLOCK), owned by this process's effective uid,
// unchanged for at least `grace_seconds` (by mtime and ctime), and whose
// flock nobody holds (the creator takes it before anything else, and the
// kernel drops it when the creator dies). The grace covers the moment
// between a creator's open() and its flock(). Returns the paths removed.
// A file that cannot be opened, locked or unlinked is left alone (it is not
// an error). Errors: NotFound, PermissionDenied (the directory itself).
// The exporter's collector and `shmetrics gc` call this on each scan.
absl::StatusOr<std::vector<std::string>> RemoveAbandonedTempFiles(const std::string& directory,
                                                                  double grace_seconds);

// An errno as a Status whose code says what kind of failure it is
// (NotFound, PermissionDenied, AlreadyExists, ResourceExhausted, ...),
// with the message "<what>: <strerror>".
absl::Status ErrnoStatus(int err, absl::string_view what);

// A segment is at most this large (the reader's cap, and the writer's).
inline constexpr uint64_t kMaxSegmentBytes = uint64_t{1} << 30;

// Range checks on capacities, shared by the writer (before laying out) and
// the reader (before trusting a header): InvalidArgument naming the field.
// The ranges are in docs/segment-format.md ("Limits").
absl::Status ValidateCapacities(const Capacities& capacities);

// A private copy of what a fork() child needs to lay out its own segment:
// the header and the published part of every metadata region (families,
// series, strings, bounds). Taken in the parent while the writer's
// registry lock is held (pthread_atfork prepare), so that nothing the
// parent registers after fork() can reach the child's file; the child gets
// it copy-on-write.
struct ForkSnapshot {
  struct Piece {
    uint64_t offset;  // in the segment
    uint64_t size_bytes;
  };
  static constexpr size_t kPieces = 5;  // header, families, series, arena, bounds
  Piece pieces[kPieces];
  std::unique_ptr<std::byte[]> bytes;   // the pieces, back to back
};

class WritableSegment {
 public:
  struct Options {
    std::string directory;
    std::string service;
    uint32_t instance = 0;        // distinct per writer within one process
    Capacities capacities;
    bool group_readable = false;  // 0640 instead of 0600
  };
  // Creates the segment under its temporary name (see kTempFilePrefix):
  // creates the file (O_CREAT|O_EXCL|O_NOFOLLOW), takes the writer's flock,
  // sets the mode, allocates every byte, maps it and writes the header with
  // state kInitializing. The caller lays out its tables, calls MarkReady()
  // and then Publish(). A name already taken (a planted file or link, a
  // writer of another pid namespace with the same pid and start tick) is
  // passed over for the next instance. Errors: InvalidArgument (bad service
  // name or capacities), AlreadyExists (64 names in a row taken),
  // ResourceExhausted (no space: ENOSPC from
  // posix_fallocate), PermissionDenied, NotFound (directory), Internal
  // (anything else).
  static absl::StatusOr<std::unique_ptr<WritableSegment>> Create(const Options& options);

  // Unlocks and unmaps. Removes the file only if it was never published.
  ~WritableSegment();
  WritableSegment(const WritableSegment&) = delete;
  WritableSegment& operator=(const WritableSegment&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // The final name, "<directory>/shmetrics.<service>.<pid>.<start_ticks>.<instance>"
  // (Publish() may move on to a later instance).
  const std::string& path() const { return path_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }

  void MarkReady();
  // Gives the file its final name in one step (renameat2 RENAME_NOREPLACE;
  // link + unlink where the filesystem lacks it): readers see the complete
  // segment or nothing. Something already there (a symlink, say) is never
  // replaced: the next instance's name is taken instead, and recorded in the
  // header. Errors: AlreadyExists (64 names in a row taken), others as
  // ErrnoStatus.
  absl::Status Publish();
  void MarkClosed();
  // Deletes the published file (the mapping stays valid until destruction).
  // Does nothing when this process has no published file of its own (a
  // fork child whose segment could not be made).
  absl::Status Unlink();

  // In the parent, under the lock that fork() handlers hold: copies what a
  // child needs. Allocates; call it from pthread_atfork's prepare handler.
  ForkSnapshot TakeForkSnapshot() const;

  // Called in a fork() child with the snapshot its parent took: lays out a
  // complete segment for the child under a temporary name (header with the
  // child's pid, start time, parent pid, zeroed per-process counters and
  // state kReady; the parent's descriptors and strings; no values), maps it
  // MAP_FIXED at the same address, so that every pointer and handle taken
  // before the fork stays valid and writes into the child's own file, and
  // publishes it. On failure the child never touches its parent's file: the
  // range becomes a private anonymous copy of the snapshot (handles then
  // write nowhere), the temporary file is removed, and the status names the
  // child's file and the errno.
  absl::Status ReplaceInForkChild(const ForkSnapshot& snapshot);

 private:
  WritableSegment() = default;
  // Maps a private anonymous copy of `snapshot` over the range: the child's
  // handles keep working and reach no file.
  void DetachInForkChild(const ForkSnapshot& snapshot);
  std::string directory_;
  std::string path_;
  std::string temp_path_;
  bool published_ = false;
  int fd_ = -1;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  std::byte* base_ = nullptr;
  uint64_t size_bytes_ = 0;
  mode_t mode_ = 0600;
  uint32_t instance_ = 0;
  static constexpr uint32_t kMaxInstanceTries = 64;
};

// A read-only view of a segment file's bytes. Never writes; opens the path
// once (O_NOFOLLOW | O_NONBLOCK: no link followed, no FIFO waited on),
// checks that descriptor is a regular file owned by a trusted user, and
// maps that same descriptor, exactly the size fstat reports. Reads of the
// mapping are guarded (fault_guard.h): a file truncated later makes reads
// return zeros and Faulted() true, never SIGBUS.
class ReadOnlyMapping {
 public:
  // Whose files are read. Root gets no exemption: a root exporter reads
  // another user's file only when told to.
  struct Options {
    bool allow_other_owners = false;  // any owner
    std::vector<uid_t> trusted_uids;  // owners trusted besides this process's effective uid
    bool Trusts(uid_t owner) const;
  };
  // Errors: NotFound, PermissionDenied (no permission, an owner not
  // trusted, a symlink, not a regular file, extra hard links), DataLoss
  // (smaller than a header).
  static absl::StatusOr<std::unique_ptr<ReadOnlyMapping>> Open(const std::string& path,
                                                               const Options& options);
  ~ReadOnlyMapping();
  ReadOnlyMapping(const ReadOnlyMapping&) = delete;
  ReadOnlyMapping& operator=(const ReadOnlyMapping&) = delete;

  const std::byte* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }
  const std::string& path() const { return path_; }
  // Seconds since the file's last status change (creation, for a segment).
  double AgeSeconds() const;
  // True when some process holds the writer's flock on this file.
  bool WriterHoldsLock() const;
  // Current size of the file per fstat (changes if someone truncates it).
  uint64_t CurrentFileSize() const;
  // True once a read of the mapping faulted because the file shrank (see
  // fault_guard.h): what was read since is zeros, and the mapping is done.
  bool Faulted() const;
  // Whether `path()` still names the file mapped (its device and inode per
  // lstat): false once it was removed, or replaced by another file.
  bool PathNamesThisFile() const;

 private:
  ReadOnlyMapping() = default;
  dev_t device_ = 0;
  ino_t inode_ = 0;
  std::string path_;
  int fd_ = -1;
  int guard_slot_ = -1;
  const std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  int64_t ctime_sec_ = 0;
};

}  // namespace shmetrics::shm
