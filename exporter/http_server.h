// The exporter's HTTP/1.1 server: Boost.Beast on an Asio event loop run by
// a small, fixed number of threads, so that an idle or slow connection
// costs a socket and a few KiB, never a thread.
//
//   auto server = HttpServer::Start(endpoints, options, security, handler);
//   ...
//   server->SetSecurity(reloaded);   // on SIGHUP: new connections use it
//   server->Stop();
//
// Per connection: TCP_NODELAY; a small response leaves in one write
// (headers and body gathered); a response rendered in pieces is sent with
// chunked transfer encoding, gzip-compressed piece by piece when the
// client accepts it, so memory is bounded per connection, not per body.
//
// Limits (HttpServerOptions): connections beyond max_connections are
// closed at once and counted; a request's header must arrive whole within
// header_timeout of its first byte (slowloris) and within max_header_bytes
// (else 431); a keep-alive connection idle for idle_timeout is closed; a
// response not written whole within write_timeout (a client that stops
// reading, or reads a trickle) is cut and its connection closed. Requests with
// a body are refused (413): every route is GET or HEAD.
//
// With TLS, a connection whose first byte is not a TLS handshake gets a
// 400 ({"error":"Client sent an HTTP request to an HTTPS server."}) and is
// closed. Handlers run on kHandlerThreads threads of their own, off the
// event loop. Basic auth is checked before any route: bcrypt runs on a thread
// of its own, never on the event loop, and credentials verified once are
// remembered (BasicAuth), so a password-guessing client cannot stall
// scrapes or health probes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "basic_auth.h"

namespace shmetrics::exporter {

struct HttpRequest {
  absl::string_view method;           // "GET", "HEAD", ...
  absl::string_view path;             // the target before '?', as sent
  absl::string_view query;            // after '?'
  absl::string_view accept;           // header values; empty when absent
  absl::string_view accept_encoding;
  // An empty string with the capacity of a piece, from the server's pool:
  // a handler that renders a body may take it (std::move) to spare an
  // allocation of a few hundred KiB (and its page faults) per request.
  std::string* spare_body = nullptr;
};

struct HttpResponse {
  unsigned status = 200;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type/Length
  std::string body;  // the whole body, or its first piece when next_piece is set
  // A body rendered in pieces: appends the next one to `out` and returns
  // whether more follow. Called on the connection's thread, only after the
  // previous piece was written; dropped (with whatever it holds) once the
  // response ends or the connection does.
  std::function<bool(std::string* out)> next_piece;
  bool compressible = false;  // gzip it when the client accepts gzip
};

// {"error":"<message>"} with `status`; the message is JSON-escaped (and made
// valid UTF-8) whatever it echoes.
HttpResponse JsonErrorResponse(unsigned status, absl::string_view message);

// Runs on one of the kHandlerThreads handler threads, never on the event
// loop; may take a while (wait for a scan, build a JSON view), but
// next_piece runs on the event loop and must render a piece, not a whole
// large body.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

// Threads that run the handlers (Routes), off the event loop. At most
// ScanScheduler::kMaxWaiters of them wait for a directory scan at once, so
// the rest always serve.
inline constexpr int kHandlerThreads = 4;

struct HttpServerOptions {
  int threads = 2;
  size_t max_connections = 1024;
  std::chrono::milliseconds header_timeout{10'000};  // first byte of a request to the end of its header
  std::chrono::milliseconds idle_timeout{120'000};   // between requests on a kept-alive connection
  std::chrono::milliseconds write_timeout{60'000};   // a whole response, from its first byte to its last
  size_t max_header_bytes = 8192;
  // Pieces of a streamed body, before compression: a body that fits in one
  // (about 2,000 series) leaves in one write with a Content-Length.
  size_t piece_bytes = 256 << 10;
  size_t max_pending_auth = 64;       // bcrypt checks queued; beyond, 503
  size_t max_pending_handlers = 256;  // requests waiting for a handler thread; beyond, 503
};

// What a connection is checked against; swapped whole (SetSecurity).
struct HttpSecurity {
  std::shared_ptr<boost::asio::ssl::context> tls;  // null: plain HTTP
  std::shared_ptr<BasicAuth> auth;                 // null or not enabled(): no auth
};

struct HttpCounters {
  uint64_t connections_open = 0;
  uint64_t connections_accepted_total = 0;
  uint64_t connections_refused_total = 0;   // over max_connections
  uint64_t requests_total = 0;
  uint64_t bad_requests_total = 0;          // malformed, oversized, with a body, timed out mid-header
  uint64_t tls_handshake_failures_total = 0;
  uint64_t auth_failures_total = 0;
  uint64_t busy_total = 0;  // answered 503: max_pending_handlers were waiting
};

class HttpServer {
 public:
  // Binds every endpoint (reuse_address; IPv6 sockets are v6-only, so
  // [::] and 0.0.0.0 can both be given) and starts the threads.
  // Unavailable naming the endpoint and the system's reason.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::vector<boost::asio::ip::tcp::endpoint>& endpoints,
                                                           const HttpServerOptions& options,
                                                           std::shared_ptr<const HttpSecurity> security,
                                                           HttpHandler handler);
  ~HttpServer();  // Stop()

  // Connections accepted from now on use `security`; open ones keep theirs.
  void SetSecurity(std::shared_ptr<const HttpSecurity> security);
  HttpCounters Counters() const;
  // The bound endpoints (port 0 resolved).
  std::vector<boost::asio::ip::tcp::endpoint> LocalEndpoints() const;
  // Closes the listeners and stops the threads; open connections are cut.
  void Stop();

  struct Shared;  // state the connections share; opaque

 private:
  explicit HttpServer(std::shared_ptr<Shared> shared);
  std::shared_ptr<Shared> shared_;
};

}  // namespace shmetrics::exporter
