// Helpers shared by the tests: a private segment directory per test, file
// helpers, and reading a whole directory of segments into summed values.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "shmetrics/collector.h"
#include "shmetrics/reader.h"
#include "shmetrics/writer.h"

namespace shmetrics::testing {

// A fresh directory under /dev/shm, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/dev/shm/shmetrics-test-XXXXXX";
    const char* made = mkdtemp(pattern);
    if (made == nullptr) std::abort();
    path_ = made;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::vector<std::string> SegmentPaths() const {
    std::vector<std::string> paths;
    auto entries = reader::ListSegments(path_);
    if (entries.ok()) {
      for (const auto& e : *entries) paths.push_back(e.path);
    }
    return paths;
  }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A segment's `bytes` as if written by writer `instance` of process `pid`
// started at tick `start_ticks`: a copy placed under a writer's name must
// say the same in its header (readers refuse one that names another).
inline std::string AsWrittenBy(std::string bytes, uint32_t pid, uint64_t start_ticks, uint32_t instance = 0) {
  const uint32_t instance_plus_one = instance + 1;
  std::memcpy(bytes.data() + offsetof(shm::SegmentHeader, pid), &pid, sizeof pid);
  std::memcpy(bytes.data() + offsetof(shm::SegmentHeader, process_start_ticks), &start_ticks, sizeof start_ticks);
  std::memcpy(bytes.data() + offsetof(shm::SegmentHeader, instance_plus_one), &instance_plus_one,
              sizeof instance_plus_one);
  return bytes;
}

// Scans, then renders the Prometheus text exposition.
inline std::string ScanAndRender(reader::Collector& collector) {
  REQUIRE(collector.Scan().ok());
  std::string out;
  collector.Render(reader::ExpositionFormat::kPrometheusText, &out);
  return out;
}

// Writer options for a test's own directory.
inline WriterOptions WriterIn(const TempDir& dir, const std::string& service) {
  WriterOptions options;
  options.service = service;
  options.directory = dir.path();
  return options;
}

// Leaves a Unix socket file at `path` (bound, then closed).
inline bool MakeUnixSocket(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof address.sun_path) return false;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const bool bound = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  close(fd);
  return bound;
}

// fork() with stdio flushed first, so a child never repeats the parent's
// buffered output (sanitizer runtimes flush at _exit).
inline pid_t Fork() {
  std::fflush(nullptr);
  return fork();
}

// Exit status of a child, or -signal when it was killed.
inline int WaitChild(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1000;
}

// "name{v1,v2}" -> value summed over every segment given.
struct Totals {
  std::map<std::string, double> scalars;
  std::map<std::string, std::vector<uint64_t>> buckets;  // non-cumulative, +Inf last
  std::map<std::string, double> sums;
};

inline std::string SeriesKey(const reader::FamilyView& f, const reader::SeriesView& s) {
  std::string key = f.name + "{";
  for (size_t i = 0; i < s.label_values.size(); ++i) key += (i ? "," : "") + s.label_values[i];
  return key + "}";
}

inline void AddSegment(const reader::Segment& segment, Totals& totals) {
  for (const auto& s : segment.series()) {
    const auto& f = segment.families()[s.family];
    const std::string key = SeriesKey(f, s);
    if (f.type == shm::MetricType::kHistogram) {
      std::vector<uint64_t> buckets(f.bounds.size() + 1);
      const double sum = segment.HistogramValue(s, buckets.data());
      auto& total = totals.buckets[key];
      total.resize(buckets.size());
      for (size_t b = 0; b < buckets.size(); ++b) total[b] += buckets[b];
      totals.sums[key] += sum;
    } else {
      totals.scalars[key] += segment.ScalarValue(s);
    }
  }
}

}  // namespace shmetrics::testing

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

namespace shmetrics::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout only
};

inline CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 65536> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

inline std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char ch : text) quoted += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return quoted + "'";
}

// The HTTP status curl gets for `url` ("000" when it gets none), with
// `extra_args` (already quoted) before the URL.
inline std::string CurlStatus(const std::string& url, const std::string& extra_args = "", int seconds = 5) {
  return RunCommand("curl -s -o /dev/null -w '%{http_code}' --max-time " + std::to_string(seconds) + " " +
                    extra_args + " " + ShellQuote(url) + " 2>/dev/null")
      .output;
}

// A "Name:  value kB" field of /proc/PID/status ("VmRSS:", "VmHWM:"), in
// KiB; 0 when absent.
inline uint64_t ProcStatusKiB(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, field.size(), field) == 0) return std::stoull(line.substr(field.size()));
  }
  return 0;
}

// A child process running a program; killed (SIGTERM, then SIGKILL) and
// reaped when destroyed.
class Subprocess {
 public:
  Subprocess(const std::vector<std::string>& argv, const std::string& log_path) {
    pid_ = Fork();
    if (pid_ == 0) {
      FILE* log = std::fopen(log_path.c_str(), "w");
      if (log != nullptr) {
        dup2(fileno(log), 1);
        dup2(fileno(log), 2);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Subprocess() { Stop(); }
  pid_t pid() const { return pid_; }
  // SIGTERM and wait up to 20 s (a sanitizer build on a busy machine), then
  // SIGKILL. Returns the exit status (see WaitChild).
  int Stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 2000; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        pid_ = -1;
        return exit_status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    exit_status_ = WaitChild(pid_);
    pid_ = -1;
    return exit_status_;
  }

 private:
  pid_t pid_ = -1;
  int exit_status_ = -1000;
};

// A loopback port that was free a moment ago.
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string encoding;
  std::string body;
};

// GET through tests/expo.py (python's urllib): an HTTP client that is not ours.
inline HttpResponse HttpGet(const std::string& url, const std::string& extra_args = "") {
  const CommandResult r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/expo.py get " + ShellQuote(url) +
                                     " " + extra_args + " 2>/dev/null");
  HttpResponse response;
  const size_t blank = r.output.find("\n\n");
  if (r.exit_code != 0 || blank == std::string::npos) return response;
  std::sscanf(r.output.c_str(), "STATUS %d", &response.status);
  const auto header_value = [&](const std::string& name) {
    const size_t at = r.output.find("\n" + name + " ");
    if (at == std::string::npos || at > blank) return std::string();
    const size_t start = at + name.size() + 2;
    return r.output.substr(start, r.output.find('\n', start) - start);
  };
  response.content_type = header_value("CONTENT-TYPE");
  response.encoding = header_value("ENCODING");
  response.body = r.output.substr(blank + 2);
  return response;
}

}  // namespace shmetrics::testing
