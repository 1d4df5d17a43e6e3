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
#include <memory>
#include <mutex>

#include "http_server.h"
#include "shmetrics/collector.h"
#include "views.h"

namespace shmetrics::exporter {

class Routes {
 public:
  Routes(std::unique_ptr<reader::Collector> collector, std::chrono::milliseconds min_scan_interval,
         size_t piece_bytes);

  HttpResponse Handle(const HttpRequest& request);
  // Rescans at most every min_scan_interval. Never waits: while another
  // thread scans (or a scan is stuck), the last view is served.
  void MaybeScan();
  // No scan starts after this (on the way out: a handler thread stuck in
  // a scan could not be joined).
  void StopScanning() { scanning_stopped_.store(true); }
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
  const size_t piece_bytes_;
  std::atomic<const HttpServer*> server_{nullptr};
  std::atomic<bool> scanning_stopped_{false};

  // std::mutex, not absl::Mutex: Debian's Abseil carries no TSan annotations.
  std::mutex scan_mu_;
  std::chrono::steady_clock::time_point last_scan_;  // guarded by scan_mu_
  std::mutex self_mu_;
  SelfStats self_;  // guarded by self_mu_
};

// The HTTP server's own counters as metrics (shmetrics_exporter_http_*).
void RenderHttpMetrics(const HttpCounters& counters, reader::ExpositionFormat format, std::string* out);

}  // namespace shmetrics::exporter
