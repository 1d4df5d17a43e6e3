// Process-level helpers for exporter and tenancy tests: a forked writer
// process, the exporter as a subprocess, and samples parsed by
// python3-prometheus-client.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/shm/names.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics::testing {

// A forked writer process: runs `work`, reports ready, then idles until
// stopped (a clean exit without Close(): it reads as dead, like a crash).
class WriterProcess {
 public:
  // `configure`, when given, adjusts the options (capacities) before Create.
  WriterProcess(const std::string& dir, const std::string& service, std::function<void(Writer&)> work,
                std::function<void(WriterOptions&)> configure = nullptr) {
    int ready[2], stop[2];
    REQUIRE(pipe2(ready, O_CLOEXEC) == 0);  // the exporter (exec'd) must not keep a stop pipe open
    REQUIRE(pipe2(stop, O_CLOEXEC) == 0);
    pid_ = Fork();
    if (pid_ == 0) {
      // An inherited write end of another writer's stop pipe would keep
      // that writer from ever seeing EOF.
      for (int fd : StopFds()) close(fd);
      close(ready[0]);
      close(stop[1]);
      WriterOptions options;
      options.service = service;
      options.directory = dir;
      if (configure) configure(options);
      auto writer = Writer::Create(options);
      if (!writer.ok()) _exit(3);
      work(**writer);
      char byte = 'r';
      if (write(ready[1], &byte, 1) != 1) _exit(4);
      while (read(stop[0], &byte, 1) > 0) {
      }
      _exit(0);
    }
    close(ready[1]);
    close(stop[0]);
    stop_fd_ = stop[1];
    StopFds().push_back(stop_fd_);
    char byte = 0;
    REQUIRE(read(ready[0], &byte, 1) == 1);
    close(ready[0]);
  }
  ~WriterProcess() { Stop(); }
  void Stop() {
    if (pid_ <= 0) return;
    ForgetStopFd();
    close(stop_fd_);
    WaitChild(pid_);
    pid_ = -1;
  }
  void Kill9() {
    kill(pid_, SIGKILL);
    WaitChild(pid_);
    ForgetStopFd();
    close(stop_fd_);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }

 private:
  static std::vector<int>& StopFds() {
    static std::vector<int> fds;  // write ends of every live writer's stop pipe
    return fds;
  }
  void ForgetStopFd() { std::erase(StopFds(), stop_fd_); }
  pid_t pid_ = -1;
  int stop_fd_ = -1;
};

class Exporter {
 public:
  // `environment`, when given, holds NAME=value pairs set for the exporter
  // only (through env(1)). --min-scan-interval-ms is 0 unless `extra` sets
  // it. With `wait_ready`, returns once its first scan has completed.
  explicit Exporter(const TempDir& dir, std::vector<std::string> extra = {}, std::vector<std::string> environment = {},
                    bool wait_ready = true)
      : port_(FreePort()), log_(dir.path() + "/../" + std::filesystem::path(dir.path()).filename().string() + ".exporter.log") {
    std::vector<std::string> argv;
    if (!environment.empty()) {
      argv.push_back("/usr/bin/env");
      argv.insert(argv.end(), environment.begin(), environment.end());
    }
    for (std::string arg : {std::string(SHMETRICS_EXPORTER_BIN), std::string("--dir"), dir.path(),
                            std::string("--web.listen-address"), absl::StrCat("127.0.0.1:", port_)}) {
      argv.push_back(std::move(arg));
    }
    if (std::find(extra.begin(), extra.end(), "--min-scan-interval-ms") == extra.end()) {
      argv.insert(argv.end(), {"--min-scan-interval-ms", "0"});
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    process_ = std::make_unique<Subprocess>(argv, log_);
    // Up to 30 s each (a large directory under a sanitizer), not at all once
    // it has exited (a test of a refusal): it listens (a connection
    // accepted, plain HTTP or TLS alike), then its first scan completes
    // (health says "ready"; a client it refuses, TLS or basic auth, cannot
    // tell, and the first request waits for that scan anyway).
    for (int i = 0; i < 1200 && !Listening() && !Exited(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    for (int i = 0; wait_ready && i < 600 && !Exited(); ++i) {
      const HttpResponse health = HttpGet(url("/api/health"));
      if (health.status != 200 || !absl::StrContains(health.body, "\"ready\":false")) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  ~Exporter() {
    process_.reset();
    std::filesystem::remove(log_);
  }
  std::string url(const std::string& path) const { return absl::StrCat("http://127.0.0.1:", port_, path); }
  int port() const { return port_; }
  pid_t pid() const { return process_->pid(); }
  int Stop() { return process_->Stop(); }
  std::string Log() const { return ReadFile(log_); }

 private:
  bool Exited() const {
    siginfo_t info{};
    // WNOWAIT: the exit status stays for Stop() to collect.
    return waitid(P_PID, static_cast<id_t>(process_->pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid != 0;
  }
  bool Listening() const {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port_));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool connected = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    close(fd);
    return connected;
  }
  int port_;
  std::string log_;
  std::unique_ptr<Subprocess> process_;
};

// A real Prometheus (Debian's) on loopback, scraping `exporter` every
// second, with `feature` (--enable-feature=..., or none); its storage and
// log in `dir`. Stopped when destroyed.
class PrometheusServer {
 public:
  PrometheusServer(const TempDir& dir, const Exporter& exporter, const std::string& feature = "")
      : port_(FreePort()) {
    const std::string config = dir.path() + "/prometheus.yml";
    WriteFile(config, absl::StrCat("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: shmetrics\n"
                                   "    static_configs:\n      - targets: ['127.0.0.1:", exporter.port(), "']\n"));
    std::vector<std::string> argv = {"/usr/bin/prometheus", "--config.file=" + config,
                                     "--storage.tsdb.path=" + dir.path() + "/tsdb",
                                     absl::StrCat("--web.listen-address=127.0.0.1:", port_)};
    if (!feature.empty()) argv.push_back("--enable-feature=" + feature);
    process_ = std::make_unique<Subprocess>(argv, dir.path() + "/prometheus.log");
  }
  // The body of GET `path_and_query` ("/api/v1/query?query=..."), or "".
  std::string Get(const std::string& path_and_query) const {
    return HttpGet(absl::StrCat("http://127.0.0.1:", port_, path_and_query)).body;
  }
  // An instant query; `promql` URL-encoded.
  std::string Query(const std::string& promql) const { return Get("/api/v1/query?query=" + promql); }
  // `fetch()` every 200 ms until `done(body)`, at most 150 times (30 s: a
  // few scrapes once Prometheus is up); the last body either way.
  template <typename Fetch, typename Done>
  static std::string PollUntil(Fetch fetch, Done done) {
    std::string body;
    for (int i = 0; i < 150; ++i) {
      body = fetch();
      if (done(body)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return body;
  }
  // Query(promql) until its answer contains `text`.
  std::string QueryUntil(const std::string& promql, const std::string& text) const {
    return PollUntil([&] { return Query(promql); }, [&](const std::string& body) { return absl::StrContains(body, text); });
  }
  int Stop() { return process_->Stop(); }

 private:
  int port_;
  std::unique_ptr<Subprocess> process_;
};

// The value of a one-sample instant query's answer (`..."value":[t,"v"]...`), or NaN.
inline double QueryValue(const std::string& body) {
  const size_t at = body.rfind(",\"");
  if (!absl::StrContains(body, "\"result\":[{") || at == std::string::npos) return std::nan("");
  return std::strtod(body.c_str() + at + 2, nullptr);
}

// True for a sample line of the exporter's own metrics: shmetrics_exporter_*
// and the standard process_* metrics it adds about itself.
inline bool IsExporterSample(absl::string_view line) {
  if (absl::StartsWith(line, shm::kReservedFamilyPrefix)) return true;
  const absl::string_view name = line.substr(0, line.find_first_of("{ "));
  for (absl::string_view own : shm::kExporterProcessGauges) {
    if (name == own) return true;
  }
  for (absl::string_view own : shm::kExporterProcessCounters) {
    if (name == own) return true;  // the sample name, with _total, in either format
  }
  return false;
}

// Samples parsed by python3-prometheus-client, minus the exporter's own.
inline std::vector<std::string> ParsedSamples(const TempDir& dir, const std::string& body, const std::string& kind,
                                       bool drop_service = false) {
  const std::string file = dir.path() + "/exposition.txt";
  WriteFile(file, body);
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/expo.py samples " + file + " " + kind);
  std::filesystem::remove(file);
  REQUIRE(r.exit_code == 0);
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) {
    if (IsExporterSample(line)) continue;
    // OpenMetrics adds _created samples, which text 0.0.4 has no place for
    // (tests/native_test.cc checks them): left out, so both formats compare.
    if (kind == "openmetrics" && absl::StrContains(line, "_created{")) continue;
    std::string text(line);
    if (drop_service) {
      for (const char* pattern : {",service=\"web\"", "service=\"web\",", "service=\"web\""}) {
        if (const size_t at = text.find(pattern); at != std::string::npos) text.erase(at, strlen(pattern));
      }
    }
    lines.push_back(text);
  }
  return lines;
}

}  // namespace shmetrics::testing
