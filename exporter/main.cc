// shmetrics-exporter: serves every segment of a directory over HTTP.
//
//   GET /metrics      Prometheus text 0.0.4, or OpenMetrics 1.0 when the
//                     Accept header asks for it; gzip when accepted.
//   GET /api/health   JSON; 503 when a segment is corrupt or unreadable.
//   GET /api/stats    JSON statistics (totals, error rates, percentiles).
//   GET /api/recent, /api/errors   the newest request (error) records,
//                     ?limit=N&service=S&endpoint=E&status=C
//
// HTTP is civetweb's (the server prometheus-cpp's pull side is built on).
// Exit codes: 0 clean stop, 2 bad flags, 3 directory unusable, 4 cannot
// listen, 5 another exporter already retires segments in the directory.
#include <civetweb.h>
#include <signal.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/collector.h"
#include "shmetrics/version.h"
#include "views.h"

namespace shmetrics::exporter {
namespace {

enum ExitCode { kOk = 0, kBadFlags = 2, kBadDirectory = 3, kCannotListen = 4, kArchiveLocked = 5 };

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

struct Server {
  std::unique_ptr<reader::Collector> collector;
  std::vector<std::string> credentials;  // "user:password" lines; empty = no auth
  std::chrono::milliseconds min_scan_interval{100};

  // std::mutex, not absl::Mutex: Debian's Abseil carries no TSan annotations.
  std::mutex scan_mu;
  std::chrono::steady_clock::time_point last_scan;  // guarded by scan_mu
  std::mutex self_mu;
  SelfStats self;  // guarded by self_mu

  // Rescans at most every min_scan_interval. Never waits: while another
  // thread scans (or a scan is stuck), the last view is served.
  void MaybeScan() {
    std::unique_lock lock(scan_mu, std::try_to_lock);
    if (!lock.owns_lock()) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_scan < min_scan_interval) return;
    last_scan = now;
    if (absl::Status s = collector->Scan(); !s.ok()) std::fprintf(stderr, "shmetrics-exporter: %s\n", s.ToString().c_str());
  }
};

bool Gzip(const std::string& input, std::string* output) {
  z_stream stream{};
  // windowBits 15 + 16: a gzip wrapper rather than zlib's.
  if (deflateInit2(&stream, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return false;
  output->resize(deflateBound(&stream, input.size()) + 32);
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  stream.avail_in = static_cast<uInt>(input.size());
  stream.next_out = reinterpret_cast<Bytef*>(output->data());
  stream.avail_out = static_cast<uInt>(output->size());
  const int rc = deflate(&stream, Z_FINISH);
  output->resize(stream.total_out);
  deflateEnd(&stream);
  return rc == Z_STREAM_END;
}

void Send(mg_connection* conn, int status, const char* content_type, const std::string& body,
          bool head_only, const char* extra_headers = "") {
  const char* reason = status == 200 ? "OK" : status == 400 ? "Bad Request" : status == 401 ? "Unauthorized"
                     : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed"
                     : status == 501 ? "Not Implemented" : status == 503 ? "Service Unavailable" : "Error";
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n%s\r\n",
            status, reason, content_type, body.size(), extra_headers);
  if (!head_only) mg_write(conn, body.data(), body.size());
}

void SendJsonError(mg_connection* conn, int status, absl::string_view message, bool head_only,
                   const char* extra_headers = "") {
  std::string body = "{\"error\":";
  reader::AppendJsonString(&body, message);
  body += "}\n";
  Send(conn, status, "application/json", body, head_only, extra_headers);
}

// Compares without an early exit, so timing does not reveal the prefix.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

bool Authorized(const Server& server, mg_connection* conn) {
  if (server.credentials.empty()) return true;
  const char* header = mg_get_header(conn, "Authorization");
  if (header == nullptr || !absl::StartsWith(header, "Basic ")) return false;
  std::string decoded;
  if (!absl::Base64Unescape(absl::string_view(header).substr(6), &decoded)) return false;
  for (const std::string& line : server.credentials) {
    if (ConstantTimeEquals(line, decoded)) return true;
  }
  return false;
}

int HandleRequest(mg_connection* conn, void* data) {
  Server& server = *static_cast<Server*>(data);
  const mg_request_info* request = mg_get_request_info(conn);
  const std::string path = request->local_uri != nullptr ? request->local_uri : "";
  const std::string method = request->request_method != nullptr ? request->request_method : "";
  const bool head = method == "HEAD";
  const bool known = path == "/" || path == "/metrics" || path == "/api/health" || path == "/api/stats" ||
                     path == "/api/recent" || path == "/api/errors";
  if (!known) {
    SendJsonError(conn, 404, "not found: " + path, head);
    return 404;
  }
  if (method != "GET" && !head) {
    SendJsonError(conn, 405, "method " + method + " not allowed; use GET", false, "Allow: GET, HEAD\r\n");
    return 405;
  }
  if (!Authorized(server, conn)) {
    SendJsonError(conn, 401, "authentication required", head, "WWW-Authenticate: Basic realm=\"shmetrics\"\r\n");
    return 401;
  }
  if (path == "/") {
    Send(conn, 200, "text/plain; charset=utf-8",
         "shmetrics exporter\n/metrics\n/api/health\n/api/stats\n/api/recent\n/api/errors\n", head);
    return 200;
  }
  server.MaybeScan();
  std::string body;
  if (path == "/api/recent" || path == "/api/errors") {
    const int status = RenderRecent(*server.collector,
                                    path == "/api/errors" ? reader::RingKind::kErrors : reader::RingKind::kRequests,
                                    request->query_string != nullptr ? request->query_string : "", &body);
    Send(conn, status, "application/json", body, head);
    return status;
  }
  if (path == "/api/health") {
    SelfStats self;
    {
      std::lock_guard lock(server.self_mu);
      self = server.self;
    }
    const int status = RenderHealth(*server.collector, self, &body);
    Send(conn, status, "application/json", body, head);
    return status;
  }
  if (path == "/api/stats") {
    RenderStats(*server.collector, &body);
    Send(conn, 200, "application/json", body, head);
    return 200;
  }
  // /metrics
  const char* accept = mg_get_header(conn, "Accept");
  const auto format = accept != nullptr && absl::StrContains(accept, "application/openmetrics-text")
                          ? reader::ExpositionFormat::kOpenMetrics
                          : reader::ExpositionFormat::kPrometheusText;
  const auto start = std::chrono::steady_clock::now();
  body.reserve(1 << 16);
  server.collector->Render(format, &body);
  SelfStats self;
  {
    std::lock_guard lock(server.self_mu);
    ++server.self.scrapes_total;
    self = server.self;
  }
  RenderSelfMetrics(*server.collector, self, format, &body);
  if (format == reader::ExpositionFormat::kOpenMetrics) body += "# EOF\n";
  {
    std::lock_guard lock(server.self_mu);
    server.self.last_scrape_duration_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  const char* encoding = mg_get_header(conn, "Accept-Encoding");
  std::string gz;
  if (encoding != nullptr && absl::StrContains(encoding, "gzip") && Gzip(body, &gz)) {
    Send(conn, 200, reader::ContentType(format), gz, head, "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n");
  } else {
    Send(conn, 200, reader::ContentType(format), body, head, "Vary: Accept-Encoding\r\n");
  }
  return 200;
}

// civetweb logs through this callback; keep its lines recognisable.
int OnLog(const mg_connection*, const char* message) {
  std::fprintf(stderr, "shmetrics-exporter: http: %s\n", message);
  return 1;
}

int Run(int argc, char** argv) {
  CLI::App app{"shmetrics-exporter: serves shmetrics segments as Prometheus/OpenMetrics and JSON"};
  app.footer(
      "ROUTES\n"
      "  /metrics (Prometheus text 0.0.4, OpenMetrics 1.0 on Accept, gzip), /api/health, /api/stats,\n"
      "  /api/recent, /api/errors\n"
      "EXIT STATUS\n"
      "  0 stopped by signal, 2 bad flags, 3 directory unusable (or not writable: --no-retire),\n"
      "  4 cannot listen, 5 another exporter already retires segments in the directory (--no-retire)\n"
      "ENVIRONMENT\n"
      "  SHMETRICS_DIR  the segment directory when --dir is not given (default /dev/shm)\n"
      "FILES\n"
      "  DIR/shmetrics.SERVICE.PID.TICKS.N  segments (read-only; only this user's unless trusted)\n"
      "  DIR/shmetrics-archive              totals of retired writers (this user's, mode 0600)\n"
      "  DIR/shmetrics-archive.lock         held while this exporter retires dead writers\n"
      "SEE ALSO\n"
      "  shmetrics(1) --help; docs/segment-format.md, docs/archive-format.md, docs/naming-rules.md");
  app.set_version_flag("--version", "shmetrics-exporter " SHMETRICS_VERSION_LINE);
  std::string directory = shm::DirectoryFromEnvironment();
  std::string service;
  std::string listen = "127.0.0.1:9464";
  bool no_retire = false;
  bool allow_other_owners = false;
  std::string basic_auth_file;
  std::string tls_certificate;
  int threads = 8;
  int min_scan_interval_ms = 100;
  app.add_option("--dir", directory, "segment directory (default $SHMETRICS_DIR or /dev/shm)");
  app.add_option("--service", service, "serve only this service");
  app.add_option("--listen", listen, "address:port to listen on (loopback by default)");
  app.add_flag("--no-retire", no_retire, "never fold or remove dead writers' segments");
  std::vector<uid_t> trusted_uids;
  app.add_flag("--allow-other-owners", allow_other_owners,
               "read segments owned by any user (root included, only this user's are read otherwise; the "
               "archive is always this user's own)");
  app.add_option("--trusted-uids", trusted_uids,
                 "uids whose segments are read besides this user's (comma-separated or repeated)")
      ->delimiter(',')
      ->allow_extra_args(false);
  app.add_option("--basic-auth-file", basic_auth_file,
                 "file of user:password lines; requests must authenticate with HTTP basic auth")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", tls_certificate,
                 "not available in this build: terminate TLS in front of the exporter (see README)");
  app.add_option("--threads", threads, "HTTP worker threads")->check(CLI::Range(1, 256));
  app.add_option("--min-scan-interval-ms", min_scan_interval_ms,
                 "rescan the directory at most this often")->check(CLI::Range(0, 60000));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kBadFlags;
  }

  if (!tls_certificate.empty()) {
    // Debian 12's civetweb 1.15 loads OpenSSL 3 with a missing symbol and
    // jumps to a null pointer on the first TLS request (seen here): refuse
    // rather than crash later.
    std::fprintf(stderr,
                 "shmetrics-exporter: --tls-cert is not available: Debian's civetweb 1.15 crashes on TLS "
                 "requests with OpenSSL 3; put a TLS terminator (stunnel, nginx) in front of the exporter and keep "
                 "the exporter on loopback\n");
    return kBadFlags;
  }
  Server server;
  server.min_scan_interval = std::chrono::milliseconds(min_scan_interval_ms);
  if (!basic_auth_file.empty()) {
    std::ifstream in(basic_auth_file);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty() && line[0] != '#') server.credentials.push_back(line);
    }
    if (server.credentials.empty()) {
      std::fprintf(stderr, "shmetrics-exporter: %s holds no user:password line\n", basic_auth_file.c_str());
      return kBadFlags;
    }
  }
  reader::CollectorOptions options;
  options.directory = directory;
  options.service_filter = service;
  options.retire_dead = !no_retire;
  options.segment.mapping.allow_other_owners = allow_other_owners;
  options.segment.mapping.trusted_uids = trusted_uids;
  auto collector = reader::Collector::Create(options);
  if (!collector.ok()) {
    std::fprintf(stderr, "shmetrics-exporter: %s\n", std::string(collector.status().message()).c_str());
    return collector.status().code() == absl::StatusCode::kFailedPrecondition ? kArchiveLocked : kBadDirectory;
  }
  server.collector = *std::move(collector);
  (void)server.collector->Scan();
  {
    std::lock_guard lock(server.self_mu);
    server.self.start_unix_seconds = shm::NowUnixNs() * 1e-9;
  }

  mg_init_library(0);
  const std::string thread_count = std::to_string(threads);
  const char* mg_options[] = {"listening_ports", listen.c_str(), "num_threads", thread_count.c_str(),
                              "request_timeout_ms", "10000", "enable_keep_alive", "yes", nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = &OnLog;
  mg_context* context = mg_start(&callbacks, nullptr, mg_options);
  if (context == nullptr) {
    std::fprintf(stderr, "shmetrics-exporter: cannot listen on %s\n", listen.c_str());
    mg_exit_library();
    return kCannotListen;
  }
  mg_set_request_handler(context, "/", &HandleRequest, &server);
  std::fprintf(stderr, "shmetrics-exporter %s: serving %s on http://%s/metrics\n", kVersion, directory.c_str(),
               listen.c_str());

  signal(SIGINT, &OnSignal);
  signal(SIGTERM, &OnSignal);
  signal(SIGPIPE, SIG_IGN);
  // Scans in the background too, so dead writers are retired and problems
  // logged even while nobody scrapes. On its own thread: a scan stuck in
  // the kernel (a hung file system) must not keep a signal from stopping us.
  std::atomic<bool> scanner_done{false};
  std::thread scanner([&] {
    while (!g_stop.load()) {
      server.MaybeScan();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    scanner_done.store(true);
  });
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  mg_stop(context);  // prompt: request handlers never wait for a scan
  mg_exit_library();
  for (int i = 0; i < 20 && !scanner_done.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!scanner_done.load()) {
    std::fprintf(stderr, "shmetrics-exporter: stopped (a scan was still stuck after %.1f s)\n",
                 server.collector->ScanRunningSeconds());
    std::fflush(stderr);
    _exit(kOk);  // the stuck thread cannot be joined; nothing is left to flush
  }
  scanner.join();
  std::fprintf(stderr, "shmetrics-exporter: stopped\n");
  return kOk;
}

}  // namespace
}  // namespace shmetrics::exporter

int main(int argc, char** argv) { return shmetrics::exporter::Run(argc, argv); }
