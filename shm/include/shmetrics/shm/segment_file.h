// Segment files: naming, creation, read-only mapping and writer liveness.
//
// A writer creates its file with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 (or
// 0640) regardless of umask, allocates every byte up front with
// posix_fallocate (so a full tmpfs fails here, never as SIGBUS later), and
// holds an exclusive flock() on it for as long as it lives. The kernel drops
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
// Returns nullopt for any file name that is not a segment's.
std::optional<SegmentFileId> ParseSegmentFileName(absl::string_view file_name);

// $SHMETRICS_DIR when set and non-empty, else /dev/shm.
std::string DirectoryFromEnvironment();

// Start time of a process in clock ticks since boot (/proc/<pid>/stat field
// 22), or 0 when the process does not exist or cannot be read.
uint64_t ProcessStartTicks(pid_t pid);
uint64_t NowUnixNs();

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

class WritableSegment {
 public:
  struct Options {
    std::string directory;
    std::string service;
    uint32_t instance = 0;        // distinct per writer within one process
    Capacities capacities;
    bool group_readable = false;  // 0640 instead of 0600
  };
  // Creates, allocates, locks and maps a new segment, and writes the header
  // with state kInitializing. The caller lays out its tables and then calls
  // MarkReady(). Errors: InvalidArgument (bad service name or capacities),
  // AlreadyExists, ResourceExhausted (no space: ENOSPC from posix_fallocate),
  // PermissionDenied, NotFound (directory), Internal (anything else).
  static absl::StatusOr<std::unique_ptr<WritableSegment>> Create(const Options& options);

  ~WritableSegment();  // unlocks and unmaps; does not remove the file
  WritableSegment(const WritableSegment&) = delete;
  WritableSegment& operator=(const WritableSegment&) = delete;

  std::byte* base() const { return base_; }
  uint64_t size_bytes() const { return size_bytes_; }
  const std::string& path() const { return path_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }

  void MarkReady();
  void MarkClosed();
  // Deletes the file (the mapping stays valid until destruction).
  absl::Status Unlink();

  // Called in a fork() child: creates a segment for the child process with
  // the same layout and the parent's descriptors, tables and strings (but no
  // values), and maps it MAP_FIXED at the same address, so that every
  // pointer and handle taken before the fork stays valid and writes into the
  // child's own file. Uses raw syscalls only (no allocation beyond the path
  // string), because the child of a multithreaded parent may only do that.
  // On failure the range is replaced by an anonymous private mapping so the
  // child can never write into its parent's segment.
  absl::Status ReplaceInForkChild();

 private:
  WritableSegment() = default;
  std::string directory_;
  std::string path_;
  int fd_ = -1;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  std::byte* base_ = nullptr;
  uint64_t size_bytes_ = 0;
  mode_t mode_ = 0600;
  uint32_t instance_ = 0;
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

 private:
  ReadOnlyMapping() = default;
  std::string path_;
  int fd_ = -1;
  int guard_slot_ = -1;
  const std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  int64_t ctime_sec_ = 0;
};

}  // namespace shmetrics::shm
