#include "http_server.h"

#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>

#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gzip_stream.h"
#include "listen_address.h"
#include "log.h"
#include "negotiation.h"
#include "shmetrics/collector.h"

namespace shmetrics::exporter {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

struct HttpServer::Shared {
  HttpServerOptions options;
  HttpHandler handler;

  std::atomic<uint64_t> connections_open{0};
  std::atomic<uint64_t> connections_accepted_total{0};
  std::atomic<uint64_t> connections_refused_total{0};
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> bad_requests_total{0};
  std::atomic<uint64_t> tls_handshake_failures_total{0};
  std::atomic<uint64_t> auth_failures_total{0};
  std::atomic<size_t> pending_auth{0};
  std::atomic<size_t> pending_handlers{0};
  std::atomic<uint64_t> busy_total{0};

  std::mutex security_mu;
  std::shared_ptr<const HttpSecurity> security;  // guarded by security_mu

  // Piece buffers kept between responses: a few per thread, so that a busy
  // server allocates none and an idle connection holds none.
  std::mutex pool_mu;
  std::vector<std::string> pool;  // guarded by pool_mu

  std::string TakeBuffer() {
    {
      std::lock_guard lock(pool_mu);
      if (!pool.empty()) {
        std::string buffer = std::move(pool.back());
        pool.pop_back();
        return buffer;
      }
    }
    std::string buffer;
    buffer.reserve(options.piece_bytes + (64 << 10));
    return buffer;
  }
  void GiveBuffer(std::string&& buffer) {
    const size_t capacity = buffer.capacity();
    if (capacity < options.piece_bytes || capacity > 4 * options.piece_bytes) return;  // freed
    buffer.clear();
    std::lock_guard lock(pool_mu);
    if (pool.size() < 4 * static_cast<size_t>(options.threads) + 4) pool.push_back(std::move(buffer));
  }

  // Declared after everything a connection touches when it is destroyed:
  // destroying the io_context destroys the connections its queued
  // handlers still hold.
  net::io_context io{1};
  // Before io in destruction order: its queued checks hold connections
  // whose sockets belong to io.
  std::unique_ptr<net::thread_pool> auth_pool = std::make_unique<net::thread_pool>(1);
  // Handlers run here, never on the event loop: a route may wait for a
  // directory scan or build a large JSON view (tens of milliseconds at
  // 100,000 series), and must not hold up other connections' I/O. They never scan;
  // at most two wait for a scan (ScanScheduler), so the others serve.
  std::unique_ptr<net::thread_pool> handler_pool = std::make_unique<net::thread_pool>(kHandlerThreads);
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::thread> threads;
  bool stopped = false;

  std::shared_ptr<const HttpSecurity> Security() {
    std::lock_guard lock(security_mu);
    return security;
  }
};

namespace {

constexpr absl::string_view kHttpToHttpsBody = "{\"error\":\"Client sent an HTTP request to an HTTPS server.\"}\n";

// One of max_connections, held from accept to close (moved along from the
// TLS greeting to its connection).
class ConnectionSlot {
 public:
  explicit ConnectionSlot(HttpServer::Shared* shared) : shared_(shared) {
    shared_->connections_open.fetch_add(1, std::memory_order_relaxed);
  }
  ConnectionSlot(ConnectionSlot&& other) noexcept : shared_(std::exchange(other.shared_, nullptr)) {}
  ConnectionSlot& operator=(ConnectionSlot&&) = delete;
  ~ConnectionSlot() {
    if (shared_ != nullptr) shared_->connections_open.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  HttpServer::Shared* shared_;
};


template <class Stream>
tcp::socket& SocketOf(Stream& stream) {
  return beast::get_lowest_layer(stream).socket();
}

// One connection: reads a request, answers it, and again while kept alive.
// Its operations run one at a time on its strand; it lives as long as an
// operation (or a bcrypt check) holds it.
template <class Stream>
class Connection : public std::enable_shared_from_this<Connection<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  Connection(HttpServer::Shared& shared, ConnectionSlot slot, std::shared_ptr<const HttpSecurity> security,
             Stream stream, beast::flat_buffer buffer)
      : shared_(shared),
        slot_(std::move(slot)),
        security_(std::move(security)),
        stream_(std::move(stream)),
        buffer_(std::move(buffer)) {
    // Bounds what a client can make us buffer: one header and a little of
    // whatever it pipelined after it.
    buffer_.max_size(shared_.options.max_header_bytes + 4096);
  }

  void Start() {
    if constexpr (kTls) {
      beast::get_lowest_layer(stream_).expires_after(shared_.options.header_timeout);
      // The bytes already read (the ClientHello's start) go to OpenSSL first.
      stream_.async_handshake(net::ssl::stream_base::server, buffer_.data(),
                              [self = this->shared_from_this()](beast::error_code ec, size_t used) {
                                self->OnHandshake(ec, used);
                              });
    } else {
      ReadRequest();
    }
  }

 private:
  void OnHandshake(beast::error_code ec, size_t used) {
    if (ec) {
      shared_.tls_handshake_failures_total.fetch_add(1, std::memory_order_relaxed);
      if (LogEnabled(LogLevel::kDebug)) Log(LogLevel::kDebug, "TLS handshake failed", {{"err", ec.message()}});
      return;  // dropped: the socket closes with the last reference
    }
    buffer_.consume(used);
    ReadRequest();
  }

  // The first request of a connection must arrive whole within
  // header_timeout of the connection (one that never speaks is a slowloris
  // too); a later one may wait idle_timeout for its first byte, then gets
  // header_timeout for the rest.
  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(shared_.options.max_header_bytes));
    head_ = false;
    keep_alive_ = false;
    if (buffer_.size() > 0 || requests_read_ == 0) {
      ReadHeader();
      return;
    }
    beast::get_lowest_layer(stream_).expires_after(shared_.options.idle_timeout);
    stream_.async_read_some(buffer_.prepare(1024),
                            [self = this->shared_from_this()](beast::error_code ec, size_t bytes) {
                              if (ec) return self->Close();  // idle timeout, or the client left
                              self->buffer_.commit(bytes);
                              self->ReadHeader();
                            });
  }

  void ReadHeader() {
    beast::get_lowest_layer(stream_).expires_after(shared_.options.header_timeout);
    http::async_read(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->OnRequest(ec);
    });
  }

  void OnRequest(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == http::error::partial_message) return Close();
    if (ec) {
      shared_.bad_requests_total.fetch_add(1, std::memory_order_relaxed);
      keep_alive_ = false;
      if (ec == beast::error::timeout || ec == net::error::eof || ec == net::error::connection_reset) return Close();
      if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
        return SendError(431, "request header larger than the limit");
      }
      if (ec == http::error::unexpected_body) return SendError(413, "requests with a body are not accepted");
      return SendError(400, absl::StrCat("bad request: ", ec.message()));
    }
    shared_.requests_total.fetch_add(1, std::memory_order_relaxed);
    ++requests_read_;
    const auto& message = parser_->get();
    keep_alive_ = message.keep_alive();
    head_ = message.method() == http::verb::head;
    http10_ = message.version() < 11;
    if (!http10_ && message.find(http::field::host) == message.end()) {
      shared_.bad_requests_total.fetch_add(1, std::memory_order_relaxed);
      return SendError(400, "bad request: HTTP/1.1 without a Host header");
    }
    if (security_->auth != nullptr && security_->auth->enabled()) return Authenticate();
    Dispatch();
  }

  void Authenticate() {
    const auto& message = parser_->get();
    const auto header = message.find(http::field::authorization);
    std::optional<Credentials> credentials;
    if (header != message.end()) {
      credentials = ParseBasicAuthorization(absl::string_view(header->value().data(), header->value().size()));
    }
    if (!credentials) return Unauthorized();
    if (security_->auth->VerifiedBefore(*credentials)) return Dispatch();
    // The same wrong credentials again (a misconfigured or hostile client
    // retrying): no bcrypt, so they cannot crowd out other clients' checks.
    if (security_->auth->FailedBefore(*credentials)) return Unauthorized();
    if (shared_.pending_auth.fetch_add(1, std::memory_order_relaxed) >= shared_.options.max_pending_auth) {
      shared_.pending_auth.fetch_sub(1, std::memory_order_relaxed);
      return SendError(503, "too many authentication checks in progress; retry later");
    }
    // bcrypt takes tens of milliseconds by design: off the event loop.
    net::post(*shared_.auth_pool, [self = this->shared_from_this(), credentials = *std::move(credentials)]() {
      const bool verified = self->security_->auth->Verify(credentials);
      self->shared_.pending_auth.fetch_sub(1, std::memory_order_relaxed);
      net::post(self->stream_.get_executor(), [self, verified]() {
        if (verified) return self->Dispatch();
        self->Unauthorized();
      });
    });
  }

  void Unauthorized() {
    shared_.auth_failures_total.fetch_add(1, std::memory_order_relaxed);
    HttpResponse response = JsonErrorResponse(401, "authentication required");
    response.headers.emplace_back("WWW-Authenticate", "Basic realm=\"shmetrics\"");
    Send(std::move(response));
  }

  void Dispatch() {
    if (shared_.pending_handlers.fetch_add(1, std::memory_order_relaxed) >= shared_.options.max_pending_handlers) {
      shared_.pending_handlers.fetch_sub(1, std::memory_order_relaxed);
      shared_.busy_total.fetch_add(1, std::memory_order_relaxed);
      return SendError(503, "too many requests in progress; retry later");
    }
    // The parsed request stays put while the handler runs: this connection
    // reads nothing until it has answered.
    net::post(*shared_.handler_pool, [self = this->shared_from_this()]() {
      HttpResponse response = self->RunHandler();
      self->shared_.pending_handlers.fetch_sub(1, std::memory_order_relaxed);
      net::post(self->stream_.get_executor(),
                [self, response = std::move(response)]() mutable { self->Send(std::move(response)); });
    });
  }

  // On a handler thread.
  HttpResponse RunHandler() {
    const auto& message = parser_->get();
    HttpRequest request;
    request.method = absl::string_view(message.method_string().data(), message.method_string().size());
    absl::string_view target(message.target().data(), message.target().size());
    // The absolute form (RFC 9112 section 3.2.2): the path is what follows
    // the authority.
    if (absl::StartsWithIgnoreCase(target, "http://") || absl::StartsWithIgnoreCase(target, "https://")) {
      const size_t authority = target.find("//") + 2;
      const size_t path = target.find_first_of("/?", authority);
      target = path == absl::string_view::npos ? absl::string_view("/") : target.substr(path);
    }
    const size_t question = target.find('?');
    request.path = target.substr(0, question);
    if (request.path.empty()) request.path = "/";
    if (question != absl::string_view::npos) request.query = target.substr(question + 1);
    auto field = [&](http::field name) {
      const auto it = message.find(name);
      return it == message.end() ? absl::string_view() : absl::string_view(it->value().data(), it->value().size());
    };
    request.accept = field(http::field::accept);
    request.accept_encoding = field(http::field::accept_encoding);
    gzip_accepted_ = AcceptsGzip(request.accept_encoding);
    std::string spare = shared_.TakeBuffer();
    request.spare_body = &spare;
    HttpResponse response = shared_.handler(request);
    shared_.GiveBuffer(std::move(spare));  // back at once when the handler did not take it
    return response;
  }

  void SendError(unsigned status, absl::string_view message) {
    keep_alive_ = false;
    Send(JsonErrorResponse(status, message));
  }

  void Send(HttpResponse response) {
    const bool gzip = response.compressible && gzip_accepted_;
    if (response.compressible && std::none_of(response.headers.begin(), response.headers.end(),
                                              [](const auto& h) { return absl::EqualsIgnoreCase(h.first, "Vary"); })) {
      response.headers.emplace_back("Vary", "Accept-Encoding");
    }
    if (!response.next_piece) {
      small_.emplace(static_cast<http::status>(response.status), 11);
      SetFields(*small_, response, gzip);
      if (gzip) {
        GzipStream compressor;
        std::string compressed;
        if (compressor.Append(response.body, true, &compressed)) {
          shared_.GiveBuffer(std::exchange(response.body, std::move(compressed)));
        } else {
          small_->erase(http::field::content_encoding);
        }
      }
      small_->body() = std::move(response.body);
      small_->prepare_payload();
      small_serializer_.emplace(*small_);
      beast::get_lowest_layer(stream_).expires_after(shared_.options.write_timeout);
      auto done = [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnResponseWritten(ec); };
      // HEAD: the header GET would send, Content-Length included.
      if (head_) return http::async_write_header(stream_, *small_serializer_, std::move(done));
      return http::async_write(stream_, *small_serializer_, std::move(done));
    }
    // HTTP/1.0 has no chunked encoding (RFC 9112 section 7): the body then
    // ends where the connection does.
    if (http10_) keep_alive_ = false;
    streamed_.emplace(static_cast<http::status>(response.status), 11);
    SetFields(*streamed_, response, gzip);
    if (!http10_) streamed_->chunked(true);
    streamed_serializer_.emplace(*streamed_);
    if (head_) {
      beast::get_lowest_layer(stream_).expires_after(shared_.options.write_timeout);
      return http::async_write_header(stream_, *streamed_serializer_,
                                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                                        self->OnResponseWritten(ec);
                                      });
    }
    next_piece_ = std::move(response.next_piece);
    if (gzip) gzip_ = std::make_unique<GzipStream>();
    raw_piece_ = std::move(response.body);
    more_ = true;
    // One deadline for the whole response, not one per piece: a client that
    // reads a trickle must not keep the view it pins (and its memory) for
    // longer than this.
    beast::get_lowest_layer(stream_).expires_after(shared_.options.write_timeout);
    WritePiece();
  }

  template <class Body>
  void SetFields(http::response<Body>& message, const HttpResponse& response, bool gzip) {
    message.keep_alive(keep_alive_);
    message.set(http::field::content_type, response.content_type);
    message.set(http::field::cache_control, "no-store");
    for (const auto& [name, value] : response.headers) message.set(name, value);
    if (gzip) message.set(http::field::content_encoding, "gzip");
  }

  // Sends raw_piece_ (compressed when gzip_ is set) and, while more_, the
  // pieces after it, one write each; the last one carries the final chunk.
  void WritePiece() {
    const size_t piece_bytes = shared_.options.piece_bytes;
    if (gzip_ != nullptr) {
      compressed_piece_.clear();
      // zlib may emit nothing for a while: render on until a fair share
      // of a piece is out, so that chunks are not tiny.
      while (true) {
        if (!gzip_->Append(raw_piece_, !more_, &compressed_piece_)) return Close();
        raw_piece_.clear();
        if (!more_ || compressed_piece_.size() >= piece_bytes / 4) break;
        more_ = next_piece_(&raw_piece_);
      }
    }
    std::string& piece = gzip_ != nullptr ? compressed_piece_ : raw_piece_;
    auto& body = streamed_->body();
    body.data = piece.empty() ? nullptr : piece.data();
    body.size = piece.size();
    body.more = more_;
    http::async_write(stream_, *streamed_serializer_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec == http::error::need_buffer) {
        // The piece is out; render the next.
        self->raw_piece_.clear();
        self->more_ = self->next_piece_(&self->raw_piece_);
        return self->WritePiece();
      }
      self->OnResponseWritten(ec);
    });
  }

  void OnResponseWritten(beast::error_code ec) {
    // Let go of what the response held: its buffers (to the pool) and the
    // view it pinned.
    small_serializer_.reset();
    if (small_.has_value()) shared_.GiveBuffer(std::move(small_->body()));
    small_.reset();
    streamed_serializer_.reset();
    streamed_.reset();
    next_piece_ = nullptr;
    gzip_.reset();
    shared_.GiveBuffer(std::move(raw_piece_));
    shared_.GiveBuffer(std::move(compressed_piece_));
    raw_piece_ = std::string();
    compressed_piece_ = std::string();
    if (ec || !keep_alive_) return Close();
    ReadRequest();
  }

  void Close() {
    beast::error_code ignored;
    if constexpr (kTls) {
      // close_notify, bounded: a client that does not answer is cut.
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(1));
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {
        beast::error_code ignored_too;
        SocketOf(self->stream_).close(ignored_too);
      });
      return;
    } else {
      SocketOf(stream_).shutdown(tcp::socket::shutdown_send, ignored);
      SocketOf(stream_).close(ignored);
    }
  }

  HttpServer::Shared& shared_;
  ConnectionSlot slot_;
  const std::shared_ptr<const HttpSecurity> security_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  bool keep_alive_ = false;
  bool head_ = false;
  bool http10_ = false;
  uint64_t requests_read_ = 0;
  bool gzip_accepted_ = false;

  std::optional<http::response<http::string_body>> small_;
  std::optional<http::response_serializer<http::string_body>> small_serializer_;
  std::optional<http::response<http::buffer_body>> streamed_;
  std::optional<http::response_serializer<http::buffer_body>> streamed_serializer_;
  std::function<bool(std::string*)> next_piece_;
  std::unique_ptr<GzipStream> gzip_;
  std::string raw_piece_, compressed_piece_;
  bool more_ = false;
};

// A TLS listener's first read: a TLS record starts with 0x16 (handshake);
// anything else is most likely plain HTTP, and gets a plain answer.
void GreetTls(HttpServer::Shared& shared, ConnectionSlot slot, std::shared_ptr<const HttpSecurity> security,
              beast::tcp_stream stream) {
  struct Greeting {
    ConnectionSlot slot;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::string answer;
  };
  auto greeting = std::make_shared<Greeting>(Greeting{std::move(slot), std::move(stream), beast::flat_buffer(), {}});
  greeting->stream.expires_after(shared.options.header_timeout);
  greeting->stream.async_read_some(
      greeting->buffer.prepare(1024), [&shared, security, greeting](beast::error_code ec, size_t bytes) {
        if (ec) return;
        greeting->buffer.commit(bytes);
        const auto* first = static_cast<const unsigned char*>(greeting->buffer.data().data());
        if (*first != 0x16) {
          shared.tls_handshake_failures_total.fetch_add(1, std::memory_order_relaxed);
          greeting->answer = absl::StrCat("HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ",
                                          kHttpToHttpsBody.size(), "\r\nConnection: close\r\n\r\n", kHttpToHttpsBody);
          greeting->stream.expires_after(shared.options.write_timeout);
          net::async_write(greeting->stream, net::buffer(greeting->answer),
                           [greeting](beast::error_code, size_t) {
                             beast::error_code ignored;
                             greeting->stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
                           });
          return;
        }
        using TlsStream = beast::ssl_stream<beast::tcp_stream>;
        auto& context = *security->tls;
        std::make_shared<Connection<TlsStream>>(shared, std::move(greeting->slot), security,
                                                TlsStream(std::move(greeting->stream), context),
                                                std::move(greeting->buffer))
            ->Start();
      });
}

void Accept(HttpServer::Shared& shared, tcp::acceptor& acceptor) {
  acceptor.async_accept(net::make_strand(shared.io), [&shared, &acceptor](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;  // Stop()
    if (!ec) {
      shared.connections_accepted_total.fetch_add(1, std::memory_order_relaxed);
      if (shared.connections_open.load(std::memory_order_relaxed) >= shared.options.max_connections) {
        shared.connections_refused_total.fetch_add(1, std::memory_order_relaxed);
        beast::error_code ignored;
        socket.close(ignored);
      } else {
        ConnectionSlot slot(&shared);
        beast::error_code ignored;
        // Headers and a small body leave in one write; the rest must not
        // wait for the peer's delayed ACK (the 40 ms keep-alive stall).
        socket.set_option(tcp::no_delay(true), ignored);
        std::shared_ptr<const HttpSecurity> security = shared.Security();
        beast::tcp_stream stream(std::move(socket));
        if (security->tls != nullptr) {
          GreetTls(shared, std::move(slot), std::move(security), std::move(stream));
        } else {
          std::make_shared<Connection<beast::tcp_stream>>(shared, std::move(slot), std::move(security),
                                                          std::move(stream), beast::flat_buffer())
              ->Start();
        }
      }
    } else if (ec == net::error::no_descriptors) {
      // Out of file descriptors: accepting again at once would spin.
      Log(LogLevel::kWarn, "cannot accept a connection", {{"err", ec.message()}});
      auto timer = std::make_shared<net::steady_timer>(shared.io, std::chrono::milliseconds(100));
      timer->async_wait([&shared, &acceptor, timer](beast::error_code) { Accept(shared, acceptor); });
      return;
    }
    Accept(shared, acceptor);
  });
}

}  // namespace

HttpResponse JsonErrorResponse(unsigned status, absl::string_view message) {
  HttpResponse response;
  response.status = status;
  response.content_type = "application/json";
  response.body = "{\"error\":";
  reader::AppendJsonString(&response.body, message);
  response.body += "}\n";
  return response;
}

HttpServer::HttpServer(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::vector<tcp::endpoint>& endpoints,
                                                              const HttpServerOptions& options,
                                                              std::shared_ptr<const HttpSecurity> security,
                                                              HttpHandler handler) {
  auto shared = std::make_shared<Shared>();
  shared->options = options;
  shared->handler = std::move(handler);
  shared->security = std::move(security);
  for (const tcp::endpoint& endpoint : endpoints) {
    auto acceptor = std::make_unique<tcp::acceptor>(shared->io);
    const std::string name = FormatEndpoint(endpoint.address().to_string(), endpoint.port());
    beast::error_code ec;
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(net::socket_base::reuse_address(true), ec);
    if (!ec && endpoint.address().is_v6()) acceptor->set_option(net::ip::v6_only(true), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", name, ": ", ec.message()));
    shared->acceptors.push_back(std::move(acceptor));
  }
  for (auto& acceptor : shared->acceptors) Accept(*shared, *acceptor);
  for (int i = 0; i < options.threads; ++i) {
    shared->threads.emplace_back([io = &shared->io]() { io->run(); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(shared)));
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::SetSecurity(std::shared_ptr<const HttpSecurity> security) {
  std::lock_guard lock(shared_->security_mu);
  shared_->security = std::move(security);
}

HttpCounters HttpServer::Counters() const {
  const Shared& s = *shared_;
  HttpCounters c;
  c.connections_open = s.connections_open.load(std::memory_order_relaxed);
  c.connections_accepted_total = s.connections_accepted_total.load(std::memory_order_relaxed);
  c.connections_refused_total = s.connections_refused_total.load(std::memory_order_relaxed);
  c.requests_total = s.requests_total.load(std::memory_order_relaxed);
  c.bad_requests_total = s.bad_requests_total.load(std::memory_order_relaxed);
  c.tls_handshake_failures_total = s.tls_handshake_failures_total.load(std::memory_order_relaxed);
  c.auth_failures_total = s.auth_failures_total.load(std::memory_order_relaxed);
  c.busy_total = s.busy_total.load(std::memory_order_relaxed);
  return c;
}

std::vector<tcp::endpoint> HttpServer::LocalEndpoints() const {
  std::vector<tcp::endpoint> result;
  for (const auto& acceptor : shared_->acceptors) {
    beast::error_code ec;
    const tcp::endpoint endpoint = acceptor->local_endpoint(ec);
    if (!ec) result.push_back(endpoint);
  }
  return result;
}

void HttpServer::Stop() {
  Shared& s = *shared_;
  if (s.stopped) return;
  s.stopped = true;
  s.auth_pool->stop();
  s.auth_pool->join();
  s.handler_pool->stop();
  s.handler_pool->join();
  s.io.stop();
  for (std::thread& thread : s.threads) thread.join();
  s.threads.clear();
  for (auto& acceptor : s.acceptors) {
    beast::error_code ignored;
    acceptor->close(ignored);
  }
  s.auth_pool.reset();  // their queued work holds connections: before io goes
  s.handler_pool.reset();
}

}  // namespace shmetrics::exporter
