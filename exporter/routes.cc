#include "routes.h"

#include "absl/strings/str_cat.h"
#include "log.h"
#include "negotiation.h"
#include "shmetrics/shm/segment_file.h"

namespace shmetrics::exporter {
namespace {

HttpResponse Json(unsigned status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.content_type = "application/json";
  response.body = std::move(body);
  return response;
}

}  // namespace

Routes::Routes(std::unique_ptr<reader::Collector> collector, ScanScheduler::Options scan_options,
               size_t piece_bytes, std::function<void()> after_scan)
    : collector_(std::move(collector)),
      scheduler_(collector_.get(), scan_options, std::move(after_scan)),
      piece_bytes_(piece_bytes) {
  self_.start_unix_seconds = shm::NowUnixNs() * 1e-9;
}

SelfStats Routes::Self() {
  SelfStats self;
  {
    std::lock_guard lock(self_mu_);
    self = self_;
  }
  const ScanScheduler::Report scans = scheduler_.report();
  self.stale_views_busy_total = scans.stale.busy;
  self.stale_views_scan_wait_total = scans.stale.scan_wait;
  self.stale_views_scan_failed_total = scans.stale.scan_failed;
  self.ready = scans.ready;
  self.last_scan_failed = scans.last_scan_failed;
  self.requests_waiting_for_scan = scans.waiting;
  return self;
}

HttpResponse Routes::Handle(const HttpRequest& request) {
  const absl::string_view path = request.path;
  const bool known = path == "/" || path == "/metrics" || path == "/api/health" || path == "/api/stats" ||
                     path == "/api/recent" || path == "/api/errors";
  if (!known) return JsonErrorResponse(404, absl::StrCat("not found: ", path));
  if (request.method != "GET" && request.method != "HEAD") {
    HttpResponse response = JsonErrorResponse(405, absl::StrCat("method ", request.method, " not allowed; use GET"));
    response.headers.emplace_back("Allow", "GET, HEAD");
    return response;
  }
  if (path == "/") {
    HttpResponse response;
    response.content_type = "text/plain; charset=utf-8";
    response.body = "shmetrics exporter\n/metrics\n/api/health\n/api/stats\n/api/recent\n/api/errors\n";
    return response;
  }
  // Health never waits (liveness probes); scrapes come before JSON views.
  scheduler_.Freshen(path == "/api/health" ? ScanScheduler::Wait::kNever
                     : path == "/metrics"  ? ScanScheduler::Wait::kScrape
                                           : ScanScheduler::Wait::kView);
  // Before the first scan the view holds the archive alone: an exposition
  // without the live writers would read as their series vanishing.
  if (path != "/api/health" && !scheduler_.ready()) {
    return JsonErrorResponse(503, "the exporter's first directory scan has not completed yet");
  }
  if (path == "/metrics") return Metrics(request);
  std::string body;
  if (path == "/api/recent" || path == "/api/errors") {
    const int status = RenderRecent(*collector_,
                                    path == "/api/errors" ? reader::RingKind::kErrors : reader::RingKind::kRequests,
                                    std::string(request.query), &body);
    return Json(status, std::move(body));
  }
  if (path == "/api/health") {
    const int status = RenderHealth(*collector_, Self(), &body);
    return Json(status, std::move(body));
  }
  RenderStats(*collector_, &body);
  HttpResponse response = Json(200, std::move(body));
  response.compressible = true;
  return response;
}

HttpResponse Routes::Metrics(const HttpRequest& request) {
  const reader::ExpositionFormat format = NegotiateFormat(request.accept);
  const auto start = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(self_mu_);
    ++self_.scrapes_total;
  }
  HttpResponse response;
  response.content_type = reader::ContentType(format);
  response.headers.emplace_back("Vary", "Accept, Accept-Encoding");
  response.compressible = true;
  // The first piece decides: an exposition that fits in it goes out with a
  // Content-Length in one write; a larger one is streamed, a piece at a
  // time, each rendered from the mappings when the previous one is out.
  auto stream = std::make_shared<reader::ExpositionStream>(collector_->StreamExposition(format));
  if (request.spare_body != nullptr) response.body = std::move(*request.spare_body);
  response.body.reserve(piece_bytes_ + 4096);
  if (!stream->Next(&response.body, piece_bytes_)) {
    AppendTail(format, start, &response.body);
    return response;
  }
  response.next_piece = [this, stream, format, start](std::string* out) {
    if (stream->Next(out, piece_bytes_)) return true;
    AppendTail(format, start, out);
    return false;
  };
  return response;
}

void Routes::AppendTail(reader::ExpositionFormat format, std::chrono::steady_clock::time_point start,
                        std::string* out) {
  // The exporter's own metrics are written as text; the protobuf format
  // gets them converted (a few dozen counters and gauges).
  const bool protobuf = format == reader::ExpositionFormat::kProtobuf;
  std::string text;
  std::string* tail = protobuf ? &text : out;
  const reader::ExpositionFormat text_format = protobuf ? reader::ExpositionFormat::kPrometheusText : format;
  RenderSelfMetrics(*collector_, Self(), text_format, tail);
  if (const HttpServer* server = server_.load(); server != nullptr) {
    RenderHttpMetrics(server->Counters(), text_format, tail);
  }
  if (protobuf) reader::AppendTextAsProtobuf(text, out);
  if (format == reader::ExpositionFormat::kOpenMetrics) out->append("# EOF\n");
  std::lock_guard lock(self_mu_);
  self_.last_scrape_duration_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void RenderHttpMetrics(const HttpCounters& c, reader::ExpositionFormat format, std::string* out) {
  const bool om = format == reader::ExpositionFormat::kOpenMetrics;
  auto counter = [&](const char* family, const char* help, uint64_t value) {
    absl::StrAppend(out, "# HELP ", family, om ? "" : "_total", " ", help, "\n# TYPE ", family, om ? "" : "_total",
                    " counter\n", family, "_total ", value, "\n");
  };
  absl::StrAppend(out,
                  "# HELP shmetrics_exporter_http_connections HTTP connections open now.\n"
                  "# TYPE shmetrics_exporter_http_connections gauge\n"
                  "shmetrics_exporter_http_connections ",
                  c.connections_open, "\n");
  counter("shmetrics_exporter_http_connections_accepted", "HTTP connections accepted.", c.connections_accepted_total);
  counter("shmetrics_exporter_http_connections_refused",
          "HTTP connections closed at once: --web.max-connections were open.", c.connections_refused_total);
  counter("shmetrics_exporter_http_requests", "HTTP requests read whole.", c.requests_total);
  counter("shmetrics_exporter_http_bad_requests",
          "HTTP requests refused unread: malformed, header too large or too slow, or with a body.",
          c.bad_requests_total);
  counter("shmetrics_exporter_http_tls_handshake_failures",
          "TLS handshakes that failed, plain HTTP sent to a TLS listener included.", c.tls_handshake_failures_total);
  counter("shmetrics_exporter_http_auth_failures", "Requests answered 401.", c.auth_failures_total);
  counter("shmetrics_exporter_http_busy", "Requests answered 503: too many were waiting for a handler thread.",
          c.busy_total);
}

}  // namespace shmetrics::exporter
