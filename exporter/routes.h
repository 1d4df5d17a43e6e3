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

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>

#include "http_server.h"
#include "scan_scheduler.h"
#include "shmetrics/collector.h"
#include "views.h"

namespace shmetrics::exporter {

// Handler threads that wait for a scan leave others to serve.
static_assert(ScanScheduler::kMaxWaiters < kHandlerThreads);

class Routes {
 public:
  // `collector` is scanned by scheduler() (see scan_scheduler.h).
  Routes(std::unique_ptr<reader::Collector> collector, ScanScheduler::Options scan_options, size_t piece_bytes,
         std::function<void()> after_scan = nullptr);

  HttpResponse Handle(const HttpRequest& request);
  ScanScheduler& scheduler() { return scheduler_; }

  // For the self-metrics: the server is started after the routes.
  void SetServer(const HttpServer* server) { server_.store(server); }
  const reader::Collector& collector() const { return *collector_; }

 private:
  HttpResponse Metrics(const HttpRequest& request);
  // Self-metrics and the OpenMetrics "# EOF", after the services' series.
  void AppendTail(reader::ExpositionFormat format, std::chrono::steady_clock::time_point start, std::string* out);
  SelfStats Self();

  std::unique_ptr<reader::Collector> collector_;
  ScanScheduler scheduler_;
  const size_t piece_bytes_;
  std::atomic<const HttpServer*> server_{nullptr};

  std::mutex self_mu_;
  SelfStats self_;  // guarded by self_mu_
};

// The HTTP server's own counters as metrics (shmetrics_exporter_http_*).
void RenderHttpMetrics(const HttpCounters& counters, reader::ExpositionFormat format, std::string* out);

}  // namespace shmetrics::exporter
