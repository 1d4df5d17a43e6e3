// The service metrics kit: the production metrics of a web back end with
// one include, named as Prometheus users (and the original service's
// dashboards) expect:
//
//   http_requests_total{method,endpoint,status}        counter
//   http_request_duration_seconds{method,endpoint}     histogram, 0.25 ms .. 10 s
//   http_requests_in_progress{method,endpoint}         gauge (live sum)
//   cache_operations_total{operation,result}           counter (result: hit, miss)
//   db_query_duration_seconds{query_type}              histogram, 1 ms .. 1 s
//   db_connections_active                              gauge (live sum)
//   <llm>_tokens_total{endpoint,model}                 counter  (<llm> = "gemini" by default)
//   <llm>_api_cost_dollars_total{endpoint,model}       counter
//   <llm>_api_calls_total{endpoint,model,status}       counter
//   concurrent_users                                   gauge (live sum)
//   application_info{name,version,environment}        info (a gauge, always 1, in text 0.0.4)
//
//   auto kit = shmetrics::ServiceKit::Create(*writer, {.app_name = "shop"}).value();
//   {
//     auto request = kit->StartRequest("GET", "/api/users");   // in progress + 1
//     ...
//     request.set_status(200);
//   }   // count, duration, in progress - 1, and a record in the recent-requests ring
//
// Cardinality guard: at most max_endpoints distinct endpoints (and
// max_models models) per kit; any further value is recorded as "other", so a
// URL with ids in it cannot fill the segment, nor the memory: an endpoint is
// mapped to "other" before any per-endpoint state (series, cache entry) is
// made, so each thread's handle cache holds at most max_endpoints + 1
// endpoints per method.
//
// Strings: label values longer than 256 bytes are cut to 256, error
// messages to 32 (the error field of a request record), always at a UTF-8
// character boundary.
//
// Thread safety: thread-safe. Each thread keeps its own cache of handles, so
// a request costs a couple of hash lookups and the handles' stores; the
// kit's mutex is taken the first time a thread meets a label set, and on
// each request to an endpoint beyond max_endpoints (to find it is not one
// of the admitted ones).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "shmetrics/writer.h"

namespace shmetrics {

struct ServiceKitOptions {
  std::string app_name = "app";
  std::string version = "0.0.0";
  std::string environment = "production";
  std::string llm_prefix = "gemini";  // metric name prefix of the LLM families
  // Request latency bounds, in seconds: 0.25 ms to 10 s (15 bounds), so that
  // sub-millisecond requests, a cached page say, are told apart.
  std::vector<double> request_buckets = {0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,     0.25,   0.5,   1,      2.5,    5,    10};
  std::vector<double> db_buckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  uint32_t max_endpoints = 100;
  uint32_t max_models = 20;
  // US dollars per 1000 tokens, by model: used when record_llm_usage gets no cost.
  absl::flat_hash_map<std::string, double> llm_price_per_1k_tokens;
};

class ServiceKit;

// RAII scope of one request: created at its start, records on destruction.
// If it is destroyed by an exception and no status was set, the request
// counts as 500 with the error "unhandled exception". Movable, not copyable.
class RequestScope {
 public:
  RequestScope(RequestScope&& other) noexcept;
  RequestScope& operator=(RequestScope&&) = delete;
  RequestScope(const RequestScope&) = delete;
  ~RequestScope();

  void set_status(uint16_t status) { status_ = status; }
  // Marks the request failed (5xx or not); the message goes to the error
  // ring, cut to 32 bytes at a character boundary.
  void set_error(absl::string_view message);
  void set_response_bytes(uint64_t bytes) { response_bytes_ = bytes; }

 private:
  friend class ServiceKit;
  struct EndpointHandles;
  RequestScope(ServiceKit* kit, EndpointHandles* handles);
  ServiceKit* kit_;
  EndpointHandles* handles_;
  std::chrono::steady_clock::time_point start_;
  int uncaught_at_start_;
  uint16_t status_ = 0;
  bool error_ = false;
  char error_message_[32] = {};
  uint8_t error_length_ = 0;
  uint64_t response_bytes_ = 0;
};

// Times a database query from construction to destruction.
class DbQueryTimer {
 public:
  ~DbQueryTimer();
  DbQueryTimer(DbQueryTimer&&) = delete;

 private:
  friend class ServiceKit;
  explicit DbQueryTimer(Histogram histogram) : histogram_(histogram), start_(std::chrono::steady_clock::now()) {}
  Histogram histogram_;
  std::chrono::steady_clock::time_point start_;
};

class ServiceKit {
 public:
  // Registers every family in `writer`. Errors: those of Writer::Add*.
  static absl::StatusOr<std::unique_ptr<ServiceKit>> Create(Writer& writer, ServiceKitOptions options);
  ~ServiceKit();

  RequestScope StartRequest(absl::string_view method, absl::string_view endpoint);

  void record_cache_event(bool hit, absl::string_view operation = "get");
  void record_db_query(absl::string_view query_type, double seconds);
  DbQueryTimer TimeDbQuery(absl::string_view query_type);
  Gauge db_connections_active() const { return db_connections_; }

  // Tokens, cost and one call. Without `cost_usd`, the cost comes from the
  // price table (0 for a model that is not in it).
  void record_llm_usage(absl::string_view endpoint, absl::string_view model, uint64_t tokens,
                        std::optional<double> cost_usd, absl::string_view status);

  Gauge concurrent_users() const { return concurrent_users_; }

  // Entries this kit holds in the calling thread's endpoint handle cache
  // (for tests and diagnostics): at most max_endpoints + 1 per method.
  size_t thread_cached_endpoints() const;

  struct Families;  // opaque

 private:
  friend class RequestScope;
  ServiceKit() = default;
  // Cold path: finds or creates handles, applying the cardinality guard.
  RequestScope::EndpointHandles* Endpoint(absl::string_view method, absl::string_view endpoint);
  Counter RequestCounter(RequestScope::EndpointHandles* handles, uint16_t status);
  std::string GuardedEndpoint(absl::string_view endpoint);
  std::string GuardedModel(absl::string_view model);

  std::unique_ptr<Families> families_;
  ServiceKitOptions options_;
  RequestLog log_;
  Gauge db_connections_;
  Gauge concurrent_users_;
  uint64_t id_ = 0;  // tells apart kits in the per-thread caches
};

}  // namespace shmetrics
