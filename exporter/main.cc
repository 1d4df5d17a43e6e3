// shmetrics-exporter: serves every segment of a directory over HTTP (routes
// in routes.h, the server in http_server.h), with TLS and basic auth from
// an exporter-toolkit web config (web_config.h), reloaded on SIGHUP.
//
// Exit codes: 0 clean stop, 2 bad flags or web config, 3 directory
// unusable, 4 cannot listen, 5 another exporter already retires segments in
// the directory.
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "basic_auth.h"
#include "http_server.h"
#include "listen_address.h"
#include "log.h"
#include "routes.h"
#include "shmetrics/collector.h"
#include "shmetrics/version.h"
#include "tls_context.h"
#include "web_config.h"

namespace shmetrics::exporter {
namespace {

using tcp = boost::asio::ip::tcp;

enum ExitCode { kOk = 0, kBadFlags = 2, kBadDirectory = 3, kCannotListen = 4, kArchiveLocked = 5 };

// "10s", "500ms", "2m", "1h" (Prometheus durations, without days); false
// for anything else.
bool ParseDuration(const std::string& text, std::chrono::milliseconds* duration) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  uint64_t value = 0;
  if (digits == 0 || digits > 9 || !absl::SimpleAtoi(text.substr(0, digits), &value)) return false;
  const std::string unit = text.substr(digits);
  const uint64_t scale = unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" ? 60000 : unit == "h" ? 3600000 : 0;
  if (scale == 0 || value == 0) return false;
  *duration = std::chrono::milliseconds(value * scale);
  return true;
}

CLI::Validator DurationValidator() {
  return CLI::Validator(
      [](std::string& text) {
        std::chrono::milliseconds ignored;
        return ParseDuration(text, &ignored) ? std::string() : "not a duration such as 500ms, 10s, 2m or 1h";
      },
      "DURATION");
}

// TLS and auth from the flags: the web config, or the deprecated
// --basic-auth-file.
// `previous`: the settings in force, whose remembered logins carry over.
absl::StatusOr<std::shared_ptr<const HttpSecurity>> LoadSecurity(const std::string& web_config_file,
                                                                  const std::string& basic_auth_file,
                                                                  const HttpSecurity* previous = nullptr) {
  auto security = std::make_shared<HttpSecurity>();
  if (!web_config_file.empty()) {
    absl::StatusOr<WebConfig> config = LoadWebConfig(web_config_file);
    if (!config.ok()) return config.status();
    if (config->tls.has_value()) {
      auto context = MakeTlsContext(*config->tls);
      if (!context.ok()) return context.status();
      security->tls = *std::move(context);
    }
    security->auth = std::make_shared<BasicAuth>(BasicAuth::FromWebConfig(*config));
    // Without this, a reload would send every client through bcrypt again.
    if (previous != nullptr && previous->auth != nullptr) security->auth->InheritVerified(*previous->auth);
  } else if (!basic_auth_file.empty()) {
    absl::StatusOr<BasicAuth> auth = BasicAuth::FromLegacyFile(basic_auth_file);
    if (!auth.ok()) return auth.status();
    security->auth = std::make_shared<BasicAuth>(*std::move(auth));
  }
  return security;
}

// Every endpoint an address names: itself when it is an IP, every address
// of a host name.
absl::StatusOr<std::vector<tcp::endpoint>> Resolve(const std::vector<std::string>& addresses) {
  std::vector<tcp::endpoint> endpoints;
  auto add = [&](const tcp::endpoint& endpoint) {
    if (std::find(endpoints.begin(), endpoints.end(), endpoint) == endpoints.end()) endpoints.push_back(endpoint);
  };
  for (const std::string& text : addresses) {
    absl::StatusOr<ListenAddress> address = ParseListenAddress(text);
    if (!address.ok()) return address.status();
    if (address->bare_port) {
      Log(LogLevel::kInfo, "a listen address without a host means loopback only",
          {{"address", text}, {"listening", FormatEndpoint(address->host, address->port)},
           {"hint", absl::StrCat("give 0.0.0.0:", address->port, " or [::]:", address->port,
                                 " to listen on every interface")}});
    }
    boost::system::error_code ec;
    const auto ip = boost::asio::ip::make_address(address->host, ec);
    if (!ec) {
      add(tcp::endpoint(ip, address->port));
      continue;
    }
    boost::asio::io_context io;
    tcp::resolver resolver(io);
    const auto results = resolver.resolve(address->host, std::to_string(address->port),
                                          tcp::resolver::passive | tcp::resolver::address_configured, ec);
    if (ec || results.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("listen address \"", text, "\": cannot resolve ",
                                                     address->host, ": ", ec ? ec.message() : "no address"));
    }
    for (const auto& result : results) add(result.endpoint());
  }
  return endpoints;
}

// Idle and slow connections cost a descriptor each: take the hard limit,
// as Go programs do, and keep max_connections below it.
size_t RaiseDescriptorLimit(size_t max_connections) {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return max_connections;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &limit);
    (void)getrlimit(RLIMIT_NOFILE, &limit);
  }
  // Segments, the archive, logs and the listeners need descriptors too.
  constexpr rlim_t kReserved = 256;
  const rlim_t usable = limit.rlim_cur > kReserved * 2 ? limit.rlim_cur - kReserved : limit.rlim_cur / 2;
  if (max_connections > usable) {
    Log(LogLevel::kWarn, "--web.max-connections lowered to fit the descriptor limit",
        {{"max_connections", std::to_string(usable)}, {"nofile", std::to_string(limit.rlim_cur)}});
    return usable;
  }
  return max_connections;
}

void Deprecated(const char* flag, const char* instead) {
  Log(LogLevel::kWarn, absl::StrCat(flag, " is deprecated and goes in the next release; use ", instead));
}

int Run(int argc, char** argv) {
  CLI::App app{"shmetrics-exporter: serves shmetrics segments as Prometheus/OpenMetrics and JSON"};
  app.option_defaults()->always_capture_default();
  app.get_formatter()->column_width(36);
  app.footer(
      "ROUTES\n"
      "  /metrics (text 0.0.4, OpenMetrics 1.0.0 or delimited protobuf by Accept and q-values; gzip; streamed), /api/health,\n"
      "  /api/stats, /api/recent, /api/errors\n"
      "LISTEN ADDRESSES\n"
      "  127.0.0.1:9464, [::1]:9464, localhost:9464 (every address it resolves to), 0.0.0.0:9464 or [::]:9464\n"
      "  (every interface: only when given); :9464 or 9464 mean 127.0.0.1:9464\n"
      "WEB CONFIG (--web.config.file, reread on SIGHUP; a bad one is refused at start and ignored on reload)\n"
      "  tls_server_config: {cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version}\n"
      "  basic_auth_users: {USER: BCRYPT_HASH}          (the exporter-toolkit format; see README)\n"
      "SIGNALS\n"
      "  SIGTERM, SIGINT stop; SIGHUP rereads --web.config.file\n"
      "EXIT STATUS\n"
      "  0 stopped by signal, 2 bad flags or web config, 3 directory unusable (or not writable: --no-retire),\n"
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
  std::vector<std::string> listen_addresses = {"127.0.0.1:9464"};
  std::vector<std::string> legacy_listen;
  bool no_retire = false;
  bool allow_other_owners = false;
  std::vector<uid_t> trusted_uids;
  std::string web_config_file;
  std::string basic_auth_file;
  std::string tls_certificate;
  std::string log_level = "info";
  int threads = 2;
  int legacy_threads = 0;
  size_t max_connections = 1024;
  std::string header_timeout = "10s", idle_timeout = "2m", write_timeout = "1m";
  int min_scan_interval_ms = 100;
  int scan_wait_ms = 1000;
  app.add_option("--dir", directory, "segment directory ($SHMETRICS_DIR, else /dev/shm)");
  app.add_option("--service", service, "serve only this service (default: all)");
  CLI::Option* listen_option =
      app.add_option("--web.listen-address", listen_addresses, "address to listen on, repeatable (see LISTEN ADDRESSES)")
          ->allow_extra_args(false);
  app.add_option("--web.config.file", web_config_file, "TLS and basic auth, exporter-toolkit format (see WEB CONFIG)")
      ->check(CLI::ExistingFile);
  app.add_option("--web.threads", threads, "threads running the HTTP event loop")->check(CLI::Range(1, 64));
  app.add_option("--web.max-connections", max_connections, "connections open at once; beyond, closed at accept")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  app.add_option("--web.read-header-timeout", header_timeout,
                 "a request's header must arrive within this of its first byte")
      ->check(DurationValidator());
  app.add_option("--web.idle-timeout", idle_timeout, "a kept-alive connection idle this long is closed")
      ->check(DurationValidator());
  app.add_option("--web.write-timeout", write_timeout, "a response must be written whole within this (slow readers are cut)")
      ->check(DurationValidator());
  app.add_option("--log.level", log_level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.add_flag("--no-retire", no_retire, "never fold or remove dead writers' segments");
  app.add_flag("--allow-other-owners", allow_other_owners,
               "read segments owned by any user (root included, only this user's are read otherwise; the "
               "archive is always this user's own)");
  app.add_option("--trusted-uids", trusted_uids,
                 "uids whose segments are read besides this user's (comma-separated or repeated)")
      ->delimiter(',')
      ->allow_extra_args(false);
  app.add_option("--min-scan-interval-ms", min_scan_interval_ms, "rescan the directory at most this often")
      ->check(CLI::Range(0, 60000));
  app.add_option("--scan-wait-ms", scan_wait_ms,
                 "a request waits for a scan in progress until it has run this long, then gets the last view "
                 "(0: never waits)")
      ->check(CLI::Range(0, 60000));
  // Deprecated: kept for one release.
  const char* deprecated = "Deprecated (each logs a warning; gone in the next release)";
  app.add_option("--listen", legacy_listen, "--web.listen-address")->allow_extra_args(false)->group(deprecated);
  app.add_option("--basic-auth-file", basic_auth_file,
                 "file of user:password lines: basic_auth_users in --web.config.file")
      ->check(CLI::ExistingFile)
      ->group(deprecated);
  app.add_option("--threads", legacy_threads, "--web.threads")->check(CLI::Range(1, 64))->group(deprecated);
  app.add_option("--tls-cert", tls_certificate, "removed: tls_server_config in --web.config.file")->group(deprecated);
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
  // Signals are taken by the main thread alone (sigwait below), blocked
  // from the start: a SIGHUP sent while the exporter starts (a reload right
  // after a start) must wait, not kill it; every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  LogLevel level = LogLevel::kInfo;
  ParseLogLevel(log_level, &level);
  SetLogLevel(level);
  auto fail = [](int code, absl::string_view message) {
    Log(LogLevel::kError, message);
    return code;
  };

  if (!tls_certificate.empty()) {
    return fail(kBadFlags, "--tls-cert is gone: put tls_server_config (cert_file, key_file) in a file given to "
                           "--web.config.file");
  }
  if (!legacy_listen.empty()) {
    Deprecated("--listen", "--web.listen-address");
    if (listen_option->count() == 0) listen_addresses.clear();  // not the default as well
    listen_addresses.insert(listen_addresses.end(), legacy_listen.begin(), legacy_listen.end());
  }
  if (legacy_threads != 0) {
    Deprecated("--threads", "--web.threads");
    threads = legacy_threads;
  }
  if (!basic_auth_file.empty()) {
    if (!web_config_file.empty()) {
      return fail(kBadFlags, "give --web.config.file or the deprecated --basic-auth-file, not both");
    }
    Deprecated("--basic-auth-file", "basic_auth_users (bcrypt hashes) in --web.config.file");
  }
  HttpServerOptions http;
  http.threads = threads;
  ParseDuration(header_timeout, &http.header_timeout);
  ParseDuration(idle_timeout, &http.idle_timeout);
  ParseDuration(write_timeout, &http.write_timeout);
  absl::StatusOr<std::shared_ptr<const HttpSecurity>> security = LoadSecurity(web_config_file, basic_auth_file);
  if (!security.ok()) return fail(kBadFlags, security.status().message());
  absl::StatusOr<std::vector<tcp::endpoint>> endpoints = Resolve(listen_addresses);
  if (!endpoints.ok()) return fail(kBadFlags, endpoints.status().message());

  reader::CollectorOptions options;
  options.directory = directory;
  options.service_filter = service;
  options.retire_dead = !no_retire;
  options.segment.mapping.allow_other_owners = allow_other_owners;
  options.segment.mapping.trusted_uids = trusted_uids;
  options.log = [](absl::string_view sentence) { Log(LogLevel::kWarn, sentence); };
  auto collector = reader::Collector::Create(options);
  if (!collector.ok()) {
    return fail(collector.status().code() == absl::StatusCode::kFailedPrecondition ? kArchiveLocked : kBadDirectory,
                collector.status().message());
  }
  http.max_connections = RaiseDescriptorLimit(max_connections);

  // Indexes of large directories, and the views slow clients pinned, are
  // freed in big pieces that glibc would otherwise keep: trimmed after a
  // scan at most every 10 s (on the scanner thread).
  auto last_trim = std::chrono::steady_clock::now();
  auto trim = [&last_trim] {
    if (std::chrono::steady_clock::now() - last_trim < std::chrono::seconds(10)) return;
    last_trim = std::chrono::steady_clock::now();
    malloc_trim(0);
  };
  Routes routes(*std::move(collector),
                {.min_interval = std::chrono::milliseconds(min_scan_interval_ms),
                 .scan_wait = std::chrono::milliseconds(scan_wait_ms)},
                http.piece_bytes, trim);
  const bool tls = (*security)->tls != nullptr;
  auto server = HttpServer::Start(*endpoints, http, *security,
                                  [&routes](const HttpRequest& request) { return routes.Handle(request); });
  if (!server.ok()) return fail(kCannotListen, server.status().message());
  routes.SetServer(server->get());
  for (const tcp::endpoint& endpoint : (*server)->LocalEndpoints()) {
    Log(LogLevel::kInfo, "listening",
        {{"address", FormatEndpoint(endpoint.address().to_string(), endpoint.port())},
         {"url", absl::StrCat(tls ? "https://" : "http://", FormatEndpoint(endpoint.address().to_string(),
                                                                          endpoint.port()), "/metrics")},
         {"tls", tls ? "true" : "false"},
         {"basic_auth", (*security)->auth != nullptr && (*security)->auth->enabled() ? "true" : "false"}});
  }
  Log(LogLevel::kInfo, "serving", {{"version", SHMETRICS_VERSION}, {"dir", directory}});

  // The only thread that scans (scan_scheduler.h): at once, then 200 ms
  // after each scan, so dead writers are retired and problems logged while
  // nobody scrapes, and when a request asks. Started after the server: a
  // first scan stuck in the kernel (a hung file system) holds this thread,
  // never the start-up, a handler or a signal; until a scan completes,
  // /metrics and the JSON views answer 503.
  std::atomic<bool> scanner_done{false};
  std::thread scanner([&] {
    routes.scheduler().Run();
    scanner_done.store(true);
  });
  std::shared_ptr<const HttpSecurity> in_force = *security;
  while (true) {
    int signal_number = 0;
    if (sigwait(&signals, &signal_number) != 0) continue;
    if (signal_number != SIGHUP) break;
    if (web_config_file.empty()) {
      Log(LogLevel::kInfo, "SIGHUP: no --web.config.file to reload");
      continue;
    }
    absl::StatusOr<std::shared_ptr<const HttpSecurity>> reloaded =
        LoadSecurity(web_config_file, "", in_force.get());
    if (!reloaded.ok()) {
      Log(LogLevel::kError, "web config not reloaded; the previous one stays in force",
          {{"err", reloaded.status().message()}});
      continue;
    }
    in_force = *std::move(reloaded);
    (*server)->SetSecurity(in_force);
    Log(LogLevel::kInfo, "web config reloaded; new connections use it", {{"file", web_config_file}});
  }
  routes.scheduler().Stop();
  // The scan in progress gets a second to finish; one stuck in the kernel
  // cannot be joined, so then we leave without stopping the server's
  // threads (no handler waits on it: Stop() woke them).
  for (int i = 0; i < 20 && !scanner_done.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!scanner_done.load()) {
    Log(LogLevel::kWarn, "stopped; a scan was still stuck",
        {{"scan_running_seconds", absl::StrCat(std::floor(routes.collector().ScanRunningSeconds() * 10) / 10)}});
    _exit(kOk);  // the stuck thread cannot be joined; nothing is left to flush
  }
  (*server)->Stop();  // prompt: handlers never scan
  scanner.join();
  Log(LogLevel::kInfo, "stopped");
  return kOk;
}

}  // namespace
}  // namespace shmetrics::exporter

int main(int argc, char** argv) { return shmetrics::exporter::Run(argc, argv); }
