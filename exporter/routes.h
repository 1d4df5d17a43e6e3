// The exporter's routes: what each path answers, as an HttpHandler.
//
//   GET /metrics      Prometheus text 0.0.4 or OpenMetrics 1.0.0 (Accept,
//                     q-values), gzip on Accept-Encoding, streamed in pieces
//   GET /api/health   JSON; 503 when a segment or the archive is corrupt
//   GET /api/stats    JSON statistics (totals, error rates, percentiles)
//   GET /api/recent, /api/errors   newest request (error) records,
//                     ?limit=N&service=S&endpoint=E&status=C
//
// Thread-safe: the server's threads call Handle() concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "http_server.h"
#include "shmetrics/collector.h"
#include "views.h"

namespace shmetrics::exporter {

class Routes {
 public:
  // min_scan_interval: a scan starts at most this long after the last one
  // began. scan_wait: how long after a running scan began a request still
  // waits for it (see ScanForRequest).
  Routes(std::unique_ptr<reader::Collector> collector, std::chrono::milliseconds min_scan_interval,
         std::chrono::milliseconds scan_wait, size_t piece_bytes);

  HttpResponse Handle(const HttpRequest& request);
  // For the background scanner: rescans unless a scan runs or one began
  // less than min_scan_interval ago. Never waits.
  void MaybeScan();
  // For a request: makes the view at least as new as the directory was when
  // the request arrived (or min_scan_interval before). A scan already
  // running is waited for, then one is started if no scan began after the
  // arrival. Bounded three ways, so that a slow or stuck scan (a hung file
  // system) cannot take the server:
  //  - `wait` false (health, for liveness probes): never waits, scans only
  //    if none runs;
  //  - a running scan is waited for only until scan_wait after it began:
  //    then the last view is served;
  //  - at most kMaxTiedHandlers handler threads wait or scan at once; a
  //    request beyond that is served the last view at once, so the other
  //    handler threads keep serving.
  void ScanForRequest(bool wait);
  // No scan starts after this (on the way out: a handler thread stuck in
  // a scan could not be joined), and requests waiting on a scan stop.
  void StopScanning();

  static constexpr int kMaxTiedHandlers = kHandlerThreads / 2;
  static_assert(kMaxTiedHandlers >= 1 && kMaxTiedHandlers < kHandlerThreads);

  // For the self-metrics: the server is started after the routes.
  void SetServer(const HttpServer* server) { server_.store(server); }
  const reader::Collector& collector() const { return *collector_; }

 private:
  HttpResponse Metrics(const HttpRequest& request);
  // Self-metrics and the OpenMetrics "# EOF", after the services' series.
  void AppendTail(reader::ExpositionFormat format, std::chrono::steady_clock::time_point start, std::string* out);
  SelfStats Self();

  std::unique_ptr<reader::Collector> collector_;
  const std::chrono::milliseconds min_scan_interval_;
  const std::chrono::milliseconds scan_wait_;
  const size_t piece_bytes_;
  std::atomic<const HttpServer*> server_{nullptr};
  std::atomic<bool> scanning_stopped_{false};

  // Runs one scan, scan_mu_ held on entry and exit but not during it.
  void ScanUnlocked(std::unique_lock<std::mutex>& lock);

  // std::mutex, not absl::Mutex: Debian's Abseil carries no TSan annotations.
  std::mutex scan_mu_;
  std::condition_variable scan_done_;  // notified when a scan ends
  // All guarded by scan_mu_:
  bool scanning_ = false;
  uint64_t scans_started_ = 0;
  std::chrono::steady_clock::time_point last_scan_;  // when the last scan began
  int tied_handlers_ = 0;                             // handler threads in ScanForRequest
  std::mutex self_mu_;
  SelfStats self_;  // guarded by self_mu_
};

// The HTTP server's own counters as metrics (shmetrics_exporter_http_*).
void RenderHttpMetrics(const HttpCounters& counters, reader::ExpositionFormat format, std::string* out);

}  // namespace shmetrics::exporter
