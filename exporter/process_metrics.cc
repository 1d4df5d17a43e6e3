#include "process_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/shm/segment_file.h"

namespace shmetrics::exporter {
namespace {

// /proc files report size 0: read until EOF, at most `max_bytes`.
absl::StatusOr<std::string> ReadProcFile(const char* path, size_t max_bytes) {
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return shm::ErrnoStatus(errno, absl::StrCat("cannot open ", path));
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      close(fd);
      return shm::ErrnoStatus(error, absl::StrCat("cannot read ", path));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > max_bytes) {
      close(fd);
      return absl::OutOfRangeError(absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
    }
  }
  close(fd);
  return text;
}

// /proc/stat holds a line per CPU and a long "intr" line: generous.
constexpr size_t kMaxProcStatBytes = size_t{16} << 20;
constexpr size_t kMaxProcSelfStatBytes = 4096;

// btime never changes while the machine is up: read once, on success.
absl::StatusOr<uint64_t> BootTime() {
  static std::atomic<uint64_t> cached{0};  // relaxed: a plain value, no data published with it
  if (const uint64_t boot = cached.load(std::memory_order_relaxed); boot != 0) return boot;
  absl::StatusOr<std::string> text = ReadProcFile("/proc/stat", kMaxProcStatBytes);
  if (!text.ok()) return text.status();
  absl::StatusOr<uint64_t> boot = ParseBootTime(*text);
  if (boot.ok()) cached.store(*boot, std::memory_order_relaxed);
  return boot;
}

absl::StatusOr<uint64_t> CountOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return shm::ErrnoStatus(errno, "cannot list /proc/self/fd");
  const int own = dirfd(dir);
  uint64_t count = 0;
  while (const dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd)) continue;  // "." and ".."
    count += fd != own;
  }
  closedir(dir);
  return count;
}

}  // namespace

absl::StatusOr<ProcStatFields> ParseProcStat(absl::string_view text) {
  const size_t close_paren = text.rfind(')');
  if (close_paren == absl::string_view::npos) {
    return absl::InvalidArgumentError("/proc/<pid>/stat has no ')' after the command name");
  }
  // After the command: field 3 (state) is index 0, so field N is index N - 3.
  const std::vector<absl::string_view> fields =
      absl::StrSplit(text.substr(close_paren + 1), absl::ByAnyChar(" \n"), absl::SkipEmpty());
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kStartTime = 22 - 3, kVsize = 23 - 3, kRss = 24 - 3;
  if (fields.size() <= kRss) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/<pid>/stat has ", fields.size(), " fields after the command name, expected at least ",
                     kRss + 1));
  }
  ProcStatFields out;
  const std::pair<size_t, uint64_t*> wanted[] = {{kUtime, &out.utime_ticks},
                                                 {kStime, &out.stime_ticks},
                                                 {kStartTime, &out.start_ticks},
                                                 {kVsize, &out.vsize_bytes},
                                                 {kRss, &out.rss_pages}};
  for (const auto& [index, value] : wanted) {
    if (!absl::SimpleAtoi(fields[index], value)) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/<pid>/stat field ", index + 3, " is not a count: '",
                                                     fields[index], "'"));
    }
  }
  return out;
}

absl::StatusOr<uint64_t> ParseBootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    uint64_t boot = 0;
    if (!absl::SimpleAtoi(line, &boot)) {
      return absl::InvalidArgumentError(absl::StrCat("/proc/stat btime is not a number: '", line, "'"));
    }
    return boot;
  }
  return absl::InvalidArgumentError("/proc/stat has no btime line");
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
  absl::StatusOr<std::string> stat_text = ReadProcFile("/proc/self/stat", kMaxProcSelfStatBytes);
  if (!stat_text.ok()) return stat_text.status();
  absl::StatusOr<ProcStatFields> stat = ParseProcStat(*stat_text);
  if (!stat.ok()) return stat.status();
  absl::StatusOr<uint64_t> boot = BootTime();
  if (!boot.ok()) return boot.status();
  absl::StatusOr<uint64_t> open_fds = CountOpenFds();
  if (!open_fds.ok()) return open_fds.status();
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) != 0) return shm::ErrnoStatus(errno, "getrlimit(RLIMIT_NOFILE)");
  const long ticks_per_second = sysconf(_SC_CLK_TCK);
  const long page_bytes = sysconf(_SC_PAGESIZE);
  if (ticks_per_second <= 0 || page_bytes <= 0) return absl::InternalError("sysconf(_SC_CLK_TCK or _SC_PAGESIZE)");

  ProcessStats out;
  out.cpu_seconds_total = double(stat->utime_ticks + stat->stime_ticks) / double(ticks_per_second);
  out.resident_memory_bytes = stat->rss_pages * uint64_t(page_bytes);
  out.virtual_memory_bytes = stat->vsize_bytes;
  out.open_fds = *open_fds;
  out.max_fds = files.rlim_cur == RLIM_INFINITY ? UINT64_MAX : uint64_t(files.rlim_cur);
  out.start_time_seconds = double(stat->start_ticks) / double(ticks_per_second) + double(*boot);
  return out;
}

}  // namespace shmetrics::exporter
