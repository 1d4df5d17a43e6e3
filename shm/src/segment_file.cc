#include "shmetrics/shm/segment_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "shmetrics/shm/fault_guard.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>

namespace shmetrics::shm {
namespace bip = boost::interprocess;

absl::Status ErrnoStatus(int err, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR: return absl::NotFoundError(message);
    case EACCES:
    case EPERM: return absl::PermissionDeniedError(message);
    case EEXIST: return absl::AlreadyExistsError(message);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM: return absl::ResourceExhaustedError(message);
    case ELOOP: return absl::FailedPreconditionError(absl::StrCat(what, ": is a symbolic link"));
    default: return absl::InternalError(message);
  }
}

namespace {

// Maps `size` bytes of the file open as `fd` through Boost.Interprocess,
// after checking that the path still names the same inode as `fd` (the
// path is opened twice: once by us with O_NOFOLLOW, once by Boost).
absl::StatusOr<std::unique_ptr<bip::mapped_region>> MapWithBoost(const std::string& path, int fd,
                                                                 uint64_t size, bool writable) {
  struct stat ours {};
  if (fstat(fd, &ours) != 0) return ErrnoStatus(errno, "fstat " + path);
  try {
    const bip::mode_t mode = writable ? bip::read_write : bip::read_only;
    // The file_mapping may go away once the region exists (Boost documents this).
    bip::file_mapping file(path.c_str(), mode);
    struct stat theirs {};
    if (fstat(file.get_mapping_handle().handle, &theirs) != 0 || theirs.st_ino != ours.st_ino ||
        theirs.st_dev != ours.st_dev) {
      return absl::FailedPreconditionError(path + ": file was replaced while opening");
    }
    return std::make_unique<bip::mapped_region>(file, mode, 0, size);
  } catch (const bip::interprocess_exception& e) {
    return absl::InternalError(absl::StrCat("map ", path, ": ", e.what()));
  }
}

}  // namespace

std::string SegmentFileName(absl::string_view service, uint32_t pid, uint64_t start_ticks,
                            uint32_t instance) {
  return absl::StrCat(kFilePrefix, service, ".", pid, ".", start_ticks, ".", instance);
}

std::optional<SegmentFileId> ParseSegmentFileName(absl::string_view file_name) {
  if (file_name.substr(0, kFilePrefix.size()) != kFilePrefix) return std::nullopt;
  std::vector<absl::string_view> parts = absl::StrSplit(file_name.substr(kFilePrefix.size()), '.');
  if (parts.size() != 4 || !IsValidServiceName(parts[0])) return std::nullopt;
  SegmentFileId id;
  id.service = std::string(parts[0]);
  if (!absl::SimpleAtoi(parts[1], &id.pid) || !absl::SimpleAtoi(parts[2], &id.start_ticks) ||
      !absl::SimpleAtoi(parts[3], &id.instance)) {
    return std::nullopt;
  }
  // Only the spelling SegmentFileName makes (no leading zero, no sign):
  // "shmetrics.svc.0327..." must not pass for another name of the process
  // that "shmetrics.svc.327..." names, as a copy counted twice.
  if (SegmentFileName(id.service, id.pid, id.start_ticks, id.instance) != file_name) return std::nullopt;
  return id;
}

std::string DirectoryFromEnvironment() {
  const char* dir = std::getenv("SHMETRICS_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string(kDefaultDirectory);
}

namespace {

// Fields 3 (state) and 22 (start time in clock ticks) of /proc/<pid>/stat.
// Raw open()/read(): also used in a fork() child, where iostreams are
// unwelcome. False when the process does not exist or cannot be read.
bool ReadProcessStat(pid_t pid, char* state, uint64_t* start_ticks) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buffer[1024];
  const ssize_t n = read(fd, buffer, sizeof buffer - 1);
  close(fd);
  if (n <= 0) return false;
  buffer[n] = '\0';
  // The command name (field 2) may contain spaces and parentheses: fields
  // after it are counted from the last ')'.
  const char* p = strrchr(buffer, ')');
  if (p == nullptr || p[1] != ' ' || p[2] == '\0') return false;
  *state = p[2];
  int field = 2;
  while (*p != '\0' && field < 22) {
    if (*p == ' ') ++field;
    ++p;
  }
  uint64_t ticks = 0;
  std::from_chars(p, buffer + n, ticks);
  *start_ticks = ticks;
  return true;
}

}  // namespace

uint64_t ProcessStartTicks(pid_t pid) {
  char state = 0;
  uint64_t ticks = 0;
  return ReadProcessStat(pid, &state, &ticks) ? ticks : 0;
}

uint64_t OwnStartTicks() {
  // /proc tells only if it is of this process's pid namespace: in one
  // whose /proc is the outer one (unshare --pid without a /proc of its
  // own), /proc/<getpid()> is another process, the outer pid 1 say.
  // No allocation: this runs in fork() children too.
  char self[32] = {}, own[32] = {};
  const ssize_t n = readlink("/proc/self", self, sizeof self - 1);
  const int own_length = snprintf(own, sizeof own, "%d", static_cast<int>(getpid()));
  const bool proc_is_ours = n > 0 && n == own_length && std::memcmp(self, own, static_cast<size_t>(n)) == 0;
  if (const uint64_t ticks = proc_is_ours ? ProcessStartTicks(getpid()) : 0; ticks != 0) return ticks;
  timespec boot{};
  clock_gettime(CLOCK_BOOTTIME, &boot);
  const uint64_t ticks_per_second = static_cast<uint64_t>(std::max(1L, sysconf(_SC_CLK_TCK)));
  return std::max<uint64_t>(1, static_cast<uint64_t>(boot.tv_sec) * ticks_per_second +
                                   static_cast<uint64_t>(boot.tv_nsec) * ticks_per_second / 1000000000);
}

bool ProcessRunning(uint32_t pid, uint64_t start_ticks) {
  if (pid == 0 || pid > static_cast<uint32_t>(std::numeric_limits<pid_t>::max())) return false;
  char state = 0;
  uint64_t ticks = 0;
  if (!ReadProcessStat(static_cast<pid_t>(pid), &state, &ticks)) return false;
  // Z: exited, not reaped yet (its flock is already gone); X (x on old
  // kernels): being torn down.
  if (state == 'Z' || state == 'X' || state == 'x') return false;
  return ticks == start_ticks;
}

std::string TempSegmentFileName(absl::string_view service, uint32_t pid, uint64_t start_ticks,
                                uint32_t instance) {
  return absl::StrCat(kTempFilePrefix, service, ".", pid, ".", start_ticks, ".", instance);
}

bool IsTempSegmentFileName(absl::string_view file_name) {
  if (file_name.substr(0, kTempFilePrefix.size()) != kTempFilePrefix) return false;
  const absl::string_view rest = file_name.substr(kTempFilePrefix.size());
  const std::optional<SegmentFileId> id = ParseSegmentFileName(absl::StrCat(kFilePrefix, rest));
  // Only the canonical spelling (no leading zeros, no sign): the name must
  // be one that TempSegmentFileName makes.
  return id.has_value() && TempSegmentFileName(id->service, id->pid, id->start_ticks, id->instance) == file_name;
}

absl::StatusOr<std::vector<std::string>> RemoveAbandonedTempFiles(const std::string& directory,
                                                                  double grace_seconds) {
  const int dir_fd = open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, "open directory " + directory);
  // fdopendir takes its own descriptor, so that dir_fd outlives the listing.
  DIR* listing = fdopendir(dup(dir_fd));
  if (listing == nullptr) {
    const int error = errno;
    close(dir_fd);
    return ErrnoStatus(error, "list " + directory);
  }
  std::vector<std::string> names;
  while (const dirent* entry = readdir(listing)) {
    if (IsTempSegmentFileName(entry->d_name)) names.emplace_back(entry->d_name);
  }
  closedir(listing);

  const uid_t me = geteuid();
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  auto seconds_since = [&now](const timespec& t) {
    return static_cast<double>(now.tv_sec - t.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec - t.tv_nsec);
  };
  std::vector<std::string> removed;
  for (const std::string& name : names) {
    const int fd = openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;  // gone meanwhile, or a symlink (ELOOP): not ours to touch
    struct stat st {};
    const bool candidate = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == me &&
                           seconds_since(st.st_mtim) >= grace_seconds &&
                           seconds_since(st.st_ctim) >= grace_seconds &&
                           flock(fd, LOCK_EX | LOCK_NB) == 0;  // free: its creator is gone
    struct stat again {};
    // Still the same file under that name (not replaced since we opened it)?
    if (candidate && fstatat(dir_fd, name.c_str(), &again, AT_SYMLINK_NOFOLLOW) == 0 &&
        again.st_ino == st.st_ino && again.st_dev == st.st_dev && unlinkat(dir_fd, name.c_str(), 0) == 0) {
      removed.push_back(absl::StrCat(directory, "/", name));
    }
    close(fd);  // drops our lock
  }
  close(dir_fd);
  return removed;
}

uint64_t NowUnixNs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------- writer side

absl::Status ValidateCapacities(const Capacities& c) {
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("capacity out of range: ", what));
  };
  // Also the reader's caps: what a reader accepts is bounded by these, so
  // no consistent segment can make a reader allocate or touch without limit.
  if (c.families < 1 || c.families > (1u << 16)) return bad("families (1 .. 2^16)");
  if (c.series < 1 || c.series > (1u << 20)) return bad("series (1 .. 2^20)");
  if (c.exclusive_lanes < 1 || c.exclusive_lanes > 1024) return bad("exclusive_lanes (1 .. 1024)");
  if (c.cells_per_lane < 1 || c.cells_per_lane > (1u << 24)) return bad("cells_per_lane (1 .. 2^24)");
  if (c.string_arena_bytes < 64 || c.string_arena_bytes > (64u << 20)) return bad("string_arena_bytes (64 .. 64 MiB)");
  if (c.bounds > (1u << 20)) return bad("bounds (0 .. 2^20)");
  if (c.exemplar_slots_per_lane > (1u << 16)) return bad("exemplar slots (0 .. 2^16 per lane)");
  if (c.ring_slots_per_lane > (1u << 16) || c.error_ring_slots_per_lane > (1u << 16)) {
    return bad("ring slots (0 .. 2^16 each)");
  }
  auto power_of_two_or_zero = [](uint32_t n) { return (n & (n - 1)) == 0; };
  if (!power_of_two_or_zero(c.ring_slots_per_lane) || !power_of_two_or_zero(c.error_ring_slots_per_lane)) {
    return bad("ring slots must be 0 or a power of two");
  }
  const bool rings = c.ring_slots_per_lane + c.error_ring_slots_per_lane > 0;
  if (rings && c.ring_slot_bytes != sizeof(RequestRecord)) return bad("ring_slot_bytes (128 with rings)");
  const RegionPlan plan = PlanRegions(c);
  if (plan.total_size_bytes > kMaxSegmentBytes) return bad("total size above 1 GiB");
  return absl::OkStatus();
}

namespace {

// `pid` and `start_ticks` are the ones the file is named with (readers
// refuse a header that disagrees with its name): read once, not again here.
void FillHeader(SegmentHeader& h, const Capacities& c, const RegionPlan& plan, absl::string_view service,
                uint32_t pid, uint64_t start_ticks, uint32_t instance, uint32_t parent_pid) {
  h.magic = kMagic;
  h.layout_version = kLayoutVersion;
  h.header_size_bytes = sizeof(SegmentHeader);
  h.total_size_bytes = plan.total_size_bytes;
  h.endian_marker = kEndianMarker;
  h.created_unix_ns = NowUnixNs();
  h.pid = pid;
  h.parent_pid = parent_pid;
  h.process_start_ticks = start_ticks;
  h.instance_plus_one = instance + 1;
  std::memset(h.service_name, 0, sizeof h.service_name);
  std::memcpy(h.service_name, service.data(), service.size());
  h.family_capacity = c.families;
  h.series_capacity = c.series;
  h.lane_count = plan.lane_count;
  h.cells_per_lane = c.cells_per_lane;
  h.string_arena_bytes = c.string_arena_bytes;
  h.bounds_capacity = c.bounds;
  h.ring_slots_per_lane = c.ring_slots_per_lane;
  h.ring_slot_bytes = c.ring_slot_bytes;
  h.error_ring_slots_per_lane = c.error_ring_slots_per_lane;
  h.family_table_offset = plan.family_table_offset;
  h.series_table_offset = plan.series_table_offset;
  h.string_arena_offset = plan.string_arena_offset;
  h.bounds_offset = plan.bounds_offset;
  h.lane_owner_offset = plan.lane_owner_offset;
  h.lanes_offset = plan.lanes_offset;
  h.rings_offset = plan.rings_offset;
  h.rings_size_bytes = plan.rings_size_bytes;
  h.exemplars_offset = plan.exemplars_offset;
  h.exemplar_slots_per_lane = c.exemplar_slots_per_lane;
}

// Creates a new file exclusively under `path` (a temporary name), takes the
// writer lock before anything else, sets the mode and allocates it. On
// failure removes what it made. Plain syscalls (used in fork children too).
int CreateLockedFile(const char* path, mode_t mode, uint64_t size, int* error) {
  const int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    *error = errno;
    return -1;
  }
  int rc = 0;
  if (flock(fd, LOCK_EX) != 0) rc = errno;
  if (rc == 0 && fchmod(fd, mode) != 0) rc = errno;  // umask must not widen or narrow the mode we chose
  if (rc == 0) rc = posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (rc != 0) {
    *error = rc;
    unlink(path);
    close(fd);
    return -1;
  }
  return fd;
}

// Renames `from` to `to` unless `to` exists (whatever it is: a symlink
// planted there is never replaced, nor followed). Returns 0 or an errno.
int RenameNoReplace(const char* from, const char* to) {
  if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return errno;
  // A filesystem without RENAME_NOREPLACE: link() refuses an existing name
  // too. For a moment the file has two links (readers skip it meanwhile).
  if (link(from, to) != 0) return errno;
  unlink(from);
  return 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WritableSegment>> WritableSegment::Create(const Options& options) {
  if (!IsValidServiceName(options.service)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid service name '", options.service, "': use 1-48 of [A-Za-z0-9_-]"));
  }
  if (absl::Status s = ValidateCapacities(options.capacities); !s.ok()) return s;
  const RegionPlan plan = PlanRegions(options.capacities);

  auto segment = std::unique_ptr<WritableSegment>(new WritableSegment());
  segment->directory_ = options.directory.empty() ? DirectoryFromEnvironment() : options.directory;
  segment->mode_ = options.group_readable ? 0640 : 0600;
  const pid_t pid = getpid();
  const uint64_t start_ticks = OwnStartTicks();
  // A name already taken (a file or link planted there, or a writer of
  // another pid namespace with the same pid and start tick) is passed
  // over for the next instance, kMaxInstanceTries times at most.
  int error = 0;
  int fd = -1;
  for (uint32_t attempt = 0; attempt < kMaxInstanceTries; ++attempt) {
    segment->instance_ = options.instance + attempt;
    segment->temp_path_ = absl::StrCat(
        segment->directory_, "/", TempSegmentFileName(options.service, pid, start_ticks, segment->instance_));
    fd = CreateLockedFile(segment->temp_path_.c_str(), segment->mode_, plan.total_size_bytes, &error);
    if (fd >= 0 || error != EEXIST) break;
  }
  segment->path_ = absl::StrCat(segment->directory_, "/",
                                SegmentFileName(options.service, pid, start_ticks, segment->instance_));
  if (fd < 0) {
    if (error == ENOSPC) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", plan.total_size_bytes, " bytes for ", segment->temp_path_,
          ": no space left (is the tmpfs full? Docker's default /dev/shm is 64 MiB)"));
    }
    return ErrnoStatus(error, "create " + segment->temp_path_);
  }
  segment->fd_ = fd;  // from here the destructor removes the temporary file on failure
  auto region = MapWithBoost(segment->temp_path_, segment->fd_, plan.total_size_bytes, /*writable=*/true);
  if (!region.ok()) return region.status();
  segment->region_ = *std::move(region);
  segment->base_ = static_cast<std::byte*>(segment->region_->get_address());
  segment->size_bytes_ = plan.total_size_bytes;
  FillHeader(segment->header(), options.capacities, plan, options.service, static_cast<uint32_t>(pid), start_ticks,
             segment->instance_, 0);
  return segment;
}

// The region's destructor unmaps the range, also after ReplaceInForkChild
// put another file's pages (or anonymous ones) at the same address and size.
WritableSegment::~WritableSegment() {
  region_.reset();
  if (fd_ >= 0) {
    if (!published_) unlink(temp_path_.c_str());  // made, never shown to readers
    close(fd_);  // drops the flock
  }
}

void WritableSegment::MarkReady() {
  // release: publishes the header and tables written before; pairs with the
  // acquire load of `state` in the reader's Open.
  std::atomic_ref<uint32_t>(header().state)
      .store(static_cast<uint32_t>(SegmentState::kReady), std::memory_order_release);
}

absl::Status WritableSegment::Publish() {
  if (published_) return absl::OkStatus();
  int error = RenameNoReplace(temp_path_.c_str(), path_.c_str());
  // The name is taken: the next instance's, recorded in the header first
  // (no reader lists the temporary name, so none sees it change).
  const SegmentHeader& h = header();
  const absl::string_view service(h.service_name, strnlen(h.service_name, sizeof h.service_name));
  for (uint32_t attempt = 1; error == EEXIST && attempt < kMaxInstanceTries; ++attempt) {
    ++instance_;
    header().instance_plus_one = instance_ + 1;
    path_ = absl::StrCat(directory_, "/", SegmentFileName(service, h.pid, h.process_start_ticks, instance_));
    error = RenameNoReplace(temp_path_.c_str(), path_.c_str());
  }
  if (error != 0) return ErrnoStatus(error, absl::StrCat("publish ", temp_path_, " as ", path_));
  published_ = true;
  return absl::OkStatus();
}

void WritableSegment::MarkClosed() {
  std::atomic_ref<uint64_t>(header().closed_unix_ns).store(NowUnixNs(), std::memory_order_relaxed);
  // release: the final values are published with the state change.
  std::atomic_ref<uint32_t>(header().state)
      .store(static_cast<uint32_t>(SegmentState::kClosed), std::memory_order_release);
}

absl::Status WritableSegment::Unlink() {
  if (!published_ || fd_ < 0) return absl::OkStatus();  // no file of our own
  if (unlink(path_.c_str()) != 0) return ErrnoStatus(errno, "unlink " + path_);
  return absl::OkStatus();
}

ForkSnapshot WritableSegment::TakeForkSnapshot() const {
  const SegmentHeader& h = header();
  // relaxed: the caller holds the lock under which every count is written.
  auto count = [](const uint32_t& field) {
    return uint64_t{std::atomic_ref<uint32_t>(const_cast<uint32_t&>(field)).load(std::memory_order_relaxed)};
  };
  ForkSnapshot snapshot;
  snapshot.pieces[0] = {0, sizeof(SegmentHeader)};
  snapshot.pieces[1] = {h.family_table_offset, count(h.family_count) * sizeof(FamilyDescriptor)};
  snapshot.pieces[2] = {h.series_table_offset, count(h.series_count) * sizeof(SeriesDescriptor)};
  snapshot.pieces[3] = {h.string_arena_offset, count(h.string_arena_used)};
  snapshot.pieces[4] = {h.bounds_offset, count(h.bounds_used) * sizeof(double)};
  uint64_t total = 0;
  for (const ForkSnapshot::Piece& piece : snapshot.pieces) total += piece.size_bytes;
  snapshot.bytes = std::make_unique_for_overwrite<std::byte[]>(total);
  uint64_t at = 0;
  for (const ForkSnapshot::Piece& piece : snapshot.pieces) {
    std::memcpy(snapshot.bytes.get() + at, base_ + piece.offset, piece.size_bytes);
    at += piece.size_bytes;
  }
  return snapshot;
}

void WritableSegment::DetachInForkChild(const ForkSnapshot& snapshot) {
  void* mapped = mmap(base_, size_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (mapped != base_) {
    // Not even anonymous memory: take the range away rather than leave the
    // parent's file under the child's handles.
    munmap(base_, size_bytes_);
    return;
  }
  uint64_t at = 0;
  for (const ForkSnapshot::Piece& piece : snapshot.pieces) {
    std::memcpy(base_ + piece.offset, snapshot.bytes.get() + at, piece.size_bytes);
    at += piece.size_bytes;
  }
}

absl::Status WritableSegment::ReplaceInForkChild(const ForkSnapshot& snapshot) {
  const pid_t pid = getpid();
  const uint64_t start_ticks = OwnStartTicks();
  // The parent's file and lock are the parent's: this process lets go of
  // its inherited descriptor whatever happens next.
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  published_ = false;

  // The child's header, complete before anyone can see the file.
  SegmentHeader h;
  std::memcpy(&h, snapshot.bytes.get(), sizeof h);
  const uint32_t parent_pid = h.pid;
  h.pid = static_cast<uint32_t>(pid);
  h.parent_pid = parent_pid;
  h.process_start_ticks = start_ticks;
  h.instance_plus_one = instance_ + 1;
  h.created_unix_ns = NowUnixNs();
  h.state = static_cast<uint32_t>(SegmentState::kReady);
  h.closed_unix_ns = 0;
  h.lanes_high_water = 0;
  h.series_overflow_count = 0;
  h.lane_fallback_count = 0;
  h.records_dropped = 0;
  h.exemplars_dropped = 0;
  h.native_out_of_range = 0;
  char service[kServiceNameBytes + 1] = {};
  std::memcpy(service, h.service_name, kServiceNameBytes);
  path_ = absl::StrCat(directory_, "/", SegmentFileName(service, static_cast<uint32_t>(pid), start_ticks, instance_));
  temp_path_ = absl::StrCat(directory_, "/", TempSegmentFileName(service, static_cast<uint32_t>(pid), start_ticks, instance_));

  int error = 0;
  const int fd = CreateLockedFile(temp_path_.c_str(), mode_, size_bytes_, &error);
  if (fd >= 0) {
    auto write_all = [fd](const void* data, uint64_t size, uint64_t offset) {
      const auto* bytes = static_cast<const std::byte*>(data);
      uint64_t done = 0;
      while (done < size) {
        const ssize_t n = pwrite(fd, bytes + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return n < 0 ? errno : EIO;
        done += static_cast<uint64_t>(n);
      }
      return 0;
    };
    error = write_all(&h, sizeof h, 0);
    uint64_t at = snapshot.pieces[0].size_bytes;
    for (size_t i = 1; i < ForkSnapshot::kPieces && error == 0; ++i) {
      const ForkSnapshot::Piece& piece = snapshot.pieces[i];
      error = write_all(snapshot.bytes.get() + at, piece.size_bytes, piece.offset);
      at += piece.size_bytes;
    }
    // Lanes, owner words and rings are zero: fresh from posix_fallocate.
    if (error == 0 &&
        mmap(base_, size_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) != base_) {
      error = errno;
    }
    if (error == 0) error = RenameNoReplace(temp_path_.c_str(), path_.c_str());
    if (error == 0) {
      fd_ = fd;
      published_ = true;
      return absl::OkStatus();
    }
    unlink(temp_path_.c_str());
    close(fd);
  }
  DetachInForkChild(snapshot);
  return ErrnoStatus(error, absl::StrCat("create child segment ", temp_path_));
}


// ---------------------------------------------------------------- reader side

bool ReadOnlyMapping::Options::Trusts(uid_t owner) const {
  return allow_other_owners || owner == geteuid() ||
         std::find(trusted_uids.begin(), trusted_uids.end(), owner) != trusted_uids.end();
}

absl::StatusOr<std::unique_ptr<ReadOnlyMapping>> ReadOnlyMapping::Open(const std::string& path,
                                                                       const Options& options) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0 && errno == ELOOP) return absl::PermissionDeniedError(path + ": is a symbolic link, not read");
  // A socket (ENXIO) or a device file without its driver: planted, like a
  // FIFO, not a damaged segment.
  if (fd < 0 && (errno == ENXIO || errno == ENODEV)) {
    return absl::PermissionDeniedError(path + ": not a regular file, not read");
  }
  if (fd < 0) return ErrnoStatus(errno, "open " + path);
  auto mapping = std::unique_ptr<ReadOnlyMapping>(new ReadOnlyMapping());
  mapping->fd_ = fd;
  mapping->path_ = path;
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat " + path);
  if (!S_ISREG(st.st_mode)) return absl::PermissionDeniedError(path + ": not a regular file, not read");
  if (st.st_nlink != 1) return absl::PermissionDeniedError(path + ": has extra hard links, not read");
  if (!options.Trusts(st.st_uid)) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": owned by uid ", st.st_uid, ", not by this user (uid ",
                                                    geteuid(), ") or a trusted uid"));
  }
  if (static_cast<uint64_t>(st.st_size) < sizeof(SegmentHeader)) {
    return absl::DataLossError(absl::StrCat(path, ": truncated: ", st.st_size,
                                            " bytes, smaller than a segment header"));
  }
  mapping->size_bytes_ = static_cast<uint64_t>(st.st_size);
  mapping->device_ = st.st_dev;
  mapping->inode_ = st.st_ino;
  mapping->ctime_sec_ = st.st_ctim.tv_sec;
  // Map the descriptor that was opened and checked, never the path again:
  // a file swapped in meanwhile (a FIFO, another user's file) is never
  // opened, let alone mapped.
  void* data = mmap(nullptr, mapping->size_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  if (data == MAP_FAILED) return ErrnoStatus(errno, "map " + path);
  mapping->data_ = static_cast<const std::byte*>(data);
  mapping->guard_slot_ = GuardRange(data, mapping->size_bytes_);
  if (mapping->guard_slot_ < 0) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": not mapped: ", kMaxGuardedRanges,
                                                     " segments are mapped already"));
  }
  return mapping;
}

ReadOnlyMapping::~ReadOnlyMapping() {
  UnguardRange(guard_slot_);
  if (data_ != nullptr) munmap(const_cast<std::byte*>(data_), size_bytes_);
  if (fd_ >= 0) close(fd_);
}

bool ReadOnlyMapping::PathNamesThisFile() const {
  struct stat st {};
  return lstat(path_.c_str(), &st) == 0 && st.st_dev == device_ && st.st_ino == inode_;
}

bool ReadOnlyMapping::Faulted() const { return RangeFaulted(guard_slot_); }

double ReadOnlyMapping::AgeSeconds() const {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<double>(now.tv_sec - ctime_sec_);
}

bool ReadOnlyMapping::WriterHoldsLock() const {
  // A shared lock succeeds only when no exclusive (writer) lock is held. We
  // drop it at once, so a writer blocked in flock(LOCK_EX) waits a moment at most.
  if (flock(fd_, LOCK_SH | LOCK_NB) == 0) {
    flock(fd_, LOCK_UN);
    return false;
  }
  return errno == EWOULDBLOCK;
}

uint64_t ReadOnlyMapping::CurrentFileSize() const {
  struct stat st {};
  if (fstat(fd_, &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace shmetrics::shm
