#include "shmetrics/service_kit.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "shmetrics/shm/layout.h"

namespace shmetrics {

struct RequestScope::EndpointHandles {
  std::string method;
  std::string endpoint;
  Gauge in_progress;
  Histogram duration;
};

struct ServiceKit::Families {
  CounterFamily requests;
  HistogramFamily duration;
  GaugeFamily in_progress;
  CounterFamily cache;
  HistogramFamily db;
  CounterFamily tokens, cost, calls;
  // Cold-path state; std::mutex (TSan sees it; Debian's Abseil is not annotated).
  std::mutex mu;
  absl::flat_hash_map<std::string, std::unique_ptr<RequestScope::EndpointHandles>> endpoints;  // guarded by mu
  absl::flat_hash_set<std::string> seen_endpoints, seen_models;                                // guarded by mu
};

namespace {
std::atomic<uint64_t> g_next_kit_id{1};

// Per-thread caches of handles, keyed by kit id and labels: after a
// thread's first request on a label set, no lock is taken.
template <typename Handle>
absl::flat_hash_map<std::string, Handle>& ThreadCache() {
  thread_local absl::flat_hash_map<std::string, Handle> cache;
  return cache;
}

// Builds a cache key in a per-thread buffer (no allocation once warm).
template <typename... Parts>
const std::string& Key(uint64_t kit, const Parts&... parts) {
  thread_local std::string key;
  key.clear();
  absl::StrAppend(&key, kit);
  ((key.push_back('\x1f'), key.append(parts.data(), parts.size())), ...);
  return key;
}

template <typename Handle, typename Make>
Handle Cached(const std::string& key, Make make) {
  auto& cache = ThreadCache<Handle>();
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  Handle handle = make();
  cache.emplace(key, handle);
  return handle;
}

// A label value as the kit records it: cut to the longest a segment takes,
// at a character boundary.
absl::string_view LabelValue(absl::string_view text) { return shm::Utf8Prefix(text, shm::kMaxLabelValueBytes); }

absl::string_view StatusText(uint16_t status, char (&buffer)[8]) {
  const int n = std::snprintf(buffer, sizeof buffer, "%u", status);
  return absl::string_view(buffer, static_cast<size_t>(n));
}
}  // namespace

absl::StatusOr<std::unique_ptr<ServiceKit>> ServiceKit::Create(Writer& writer, ServiceKitOptions options) {
  std::unique_ptr<ServiceKit> kit(new ServiceKit());
  auto families = std::make_unique<Families>();
  const std::string& llm = options.llm_prefix;
#define SHMETRICS_ASSIGN(target, expression)   \
  do {                                         \
    auto result = (expression);                \
    if (!result.ok()) return result.status();  \
    target = *std::move(result);               \
  } while (0)
  SHMETRICS_ASSIGN(families->requests, writer.AddCounter("http_requests_total", "HTTP requests served.",
                                                         {"method", "endpoint", "status"}));
  SHMETRICS_ASSIGN(families->duration,
                   writer.AddHistogram("http_request_duration_seconds", "HTTP request latency in seconds.",
                                       {"method", "endpoint"}, options.request_buckets));
  SHMETRICS_ASSIGN(families->in_progress, writer.AddGauge("http_requests_in_progress", "HTTP requests being served.",
                                                          {"method", "endpoint"}, GaugeMerge::kLiveSum));
  SHMETRICS_ASSIGN(families->cache, writer.AddCounter("cache_operations_total", "Cache operations by result.",
                                                      {"operation", "result"}));
  SHMETRICS_ASSIGN(families->db, writer.AddHistogram("db_query_duration_seconds", "Database query time in seconds.",
                                                     {"query_type"}, options.db_buckets));
  SHMETRICS_ASSIGN(families->tokens, writer.AddCounter(llm + "_tokens_total", "LLM tokens used.", {"endpoint", "model"}));
  SHMETRICS_ASSIGN(families->cost, writer.AddCounter(llm + "_api_cost_dollars_total", "LLM API cost in US dollars.",
                                                     {"endpoint", "model"}));
  SHMETRICS_ASSIGN(families->calls, writer.AddCounter(llm + "_api_calls_total", "LLM API calls.",
                                                      {"endpoint", "model", "status"}));
  GaugeFamily connections, users;
  InfoFamily info;
  SHMETRICS_ASSIGN(connections, writer.AddGauge("db_connections_active", "Open database connections."));
  SHMETRICS_ASSIGN(users, writer.AddGauge("concurrent_users", "Users with an active session."));
  SHMETRICS_ASSIGN(info, writer.AddInfo("application", "Application name, version and environment.",
                                        {"name", "version", "environment"}));
  SHMETRICS_ASSIGN(kit->db_connections_, connections.WithLabels({}));
  SHMETRICS_ASSIGN(kit->concurrent_users_, users.WithLabels({}));
  if (absl::Status added = info.Add({options.app_name, options.version, options.environment}); !added.ok()) {
    return added;
  }
#undef SHMETRICS_ASSIGN
  kit->families_ = std::move(families);
  kit->options_ = std::move(options);
  kit->log_ = writer.requests();
  kit->id_ = g_next_kit_id.fetch_add(1);
  return kit;
}

ServiceKit::~ServiceKit() = default;

size_t ServiceKit::thread_cached_endpoints() const {
  const std::string prefix = absl::StrCat(id_, "\x1f");
  size_t count = 0;
  for (const auto& [key, handles] : ThreadCache<RequestScope::EndpointHandles*>()) {
    count += absl::StartsWith(key, prefix);
  }
  return count;
}

std::string ServiceKit::GuardedEndpoint(absl::string_view endpoint) {
  std::lock_guard lock(families_->mu);
  auto& seen = families_->seen_endpoints;
  if (seen.contains(endpoint)) return std::string(endpoint);
  if (seen.size() >= options_.max_endpoints) return "other";
  seen.emplace(endpoint);
  return std::string(endpoint);
}

std::string ServiceKit::GuardedModel(absl::string_view model) {
  std::lock_guard lock(families_->mu);
  auto& seen = families_->seen_models;
  if (seen.contains(model)) return std::string(model);
  if (seen.size() >= options_.max_models) return "other";
  seen.emplace(model);
  return std::string(model);
}

RequestScope::EndpointHandles* ServiceKit::Endpoint(absl::string_view raw_method, absl::string_view raw_endpoint) {
  const absl::string_view method = LabelValue(raw_method);
  const absl::string_view endpoint = LabelValue(raw_endpoint);
  auto& cache = ThreadCache<RequestScope::EndpointHandles*>();
  if (auto it = cache.find(Key(id_, method, endpoint)); it != cache.end()) return it->second;
  // Not met on this thread yet. The guard runs first: an endpoint beyond
  // the limit becomes "other" before this thread keeps anything for it.
  const std::string guarded = GuardedEndpoint(endpoint);
  return Cached<RequestScope::EndpointHandles*>(Key(id_, method, guarded), [&] {
    std::lock_guard lock(families_->mu);
    auto& slot = families_->endpoints[absl::StrCat(method, "\x1f", guarded)];
    if (slot == nullptr) {
      slot = std::make_unique<RequestScope::EndpointHandles>();
      slot->method = std::string(method);
      slot->endpoint = guarded;
      // Label values that fail validation (not UTF-8) leave invalid
      // handles, which record nothing.
      slot->in_progress = families_->in_progress.WithLabels({method, guarded}).value_or(Gauge());
      slot->duration = families_->duration.WithLabels({method, guarded}).value_or(Histogram());
    }
    return slot.get();
  });
}

Counter ServiceKit::RequestCounter(RequestScope::EndpointHandles* handles, uint16_t status) {
  char buffer[8];
  const absl::string_view status_text = StatusText(status, buffer);
  return Cached<Counter>(Key(id_, handles->method, handles->endpoint, status_text), [&] {
    return families_->requests.WithLabels({handles->method, handles->endpoint, status_text}).value_or(Counter());
  });
}

RequestScope ServiceKit::StartRequest(absl::string_view method, absl::string_view endpoint) {
  return RequestScope(this, Endpoint(method, endpoint));
}

RequestScope::RequestScope(ServiceKit* kit, EndpointHandles* handles)
    : kit_(kit), handles_(handles), start_(std::chrono::steady_clock::now()),
      uncaught_at_start_(std::uncaught_exceptions()) {
  if (handles_->in_progress.valid()) handles_->in_progress.inc();
}

RequestScope::RequestScope(RequestScope&& other) noexcept
    : kit_(other.kit_), handles_(other.handles_), start_(other.start_), uncaught_at_start_(other.uncaught_at_start_),
      status_(other.status_), error_(other.error_), error_length_(other.error_length_),
      response_bytes_(other.response_bytes_) {
  std::memcpy(error_message_, other.error_message_, sizeof error_message_);
  other.kit_ = nullptr;  // the moved-from scope records nothing
}

void RequestScope::set_error(absl::string_view message) {
  error_ = true;
  const absl::string_view kept = shm::Utf8Prefix(message, sizeof error_message_);
  error_length_ = static_cast<uint8_t>(kept.size());
  std::memcpy(error_message_, kept.data(), kept.size());
}

RequestScope::~RequestScope() {
  if (kit_ == nullptr) return;
  const auto elapsed = std::chrono::steady_clock::now() - start_;
  if (std::uncaught_exceptions() > uncaught_at_start_ && status_ == 0) {
    status_ = 500;
    if (!error_) set_error("unhandled exception");
  }
  if (status_ == 0) status_ = 200;
  if (status_ >= 500) error_ = true;
  const uint64_t duration_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  if (handles_->in_progress.valid()) handles_->in_progress.dec();
  if (handles_->duration.valid()) handles_->duration.observe(duration_ns * 1e-9);
  const Counter counter = kit_->RequestCounter(handles_, status_);
  if (counter.valid()) counter.inc();
  kit_->log_.record({handles_->method, handles_->endpoint, status_, duration_ns, response_bytes_, error_,
                     absl::string_view(error_message_, error_length_)});
}

void ServiceKit::record_cache_event(bool hit, absl::string_view raw_operation) {
  const absl::string_view operation = LabelValue(raw_operation);
  const absl::string_view result = hit ? "hit" : "miss";
  Cached<Counter>(Key(id_, absl::string_view("cache"), operation, result), [&] {
    return families_->cache.WithLabels({operation, result}).value_or(Counter());
  }).inc();
}

void ServiceKit::record_db_query(absl::string_view raw_query_type, double seconds) {
  const absl::string_view query_type = LabelValue(raw_query_type);
  const Histogram histogram = Cached<Histogram>(Key(id_, absl::string_view("db"), query_type), [&] {
    return families_->db.WithLabels({query_type}).value_or(Histogram());
  });
  if (histogram.valid()) histogram.observe(seconds);
}

DbQueryTimer ServiceKit::TimeDbQuery(absl::string_view raw_query_type) {
  const absl::string_view query_type = LabelValue(raw_query_type);
  return DbQueryTimer(Cached<Histogram>(Key(id_, absl::string_view("db"), query_type), [&] {
    return families_->db.WithLabels({query_type}).value_or(Histogram());
  }));
}

DbQueryTimer::~DbQueryTimer() {
  if (histogram_.valid()) {
    histogram_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
}

void ServiceKit::record_llm_usage(absl::string_view raw_endpoint, absl::string_view raw_model, uint64_t tokens,
                                  std::optional<double> cost_usd, absl::string_view raw_status) {
  const absl::string_view model = raw_model;  // the price table is keyed by the full name
  const absl::string_view status = LabelValue(raw_status);
  const std::string guarded_endpoint = GuardedEndpoint(LabelValue(raw_endpoint));
  const std::string guarded_model = GuardedModel(LabelValue(model));
  const absl::string_view e = guarded_endpoint, m = guarded_model;
  double cost = 0;
  if (cost_usd.has_value()) {
    cost = *cost_usd;
  } else if (auto it = options_.llm_price_per_1k_tokens.find(model); it != options_.llm_price_per_1k_tokens.end()) {
    cost = static_cast<double>(tokens) / 1000.0 * it->second;
  }
  const Counter token_counter = Cached<Counter>(Key(id_, absl::string_view("tokens"), e, m), [&] {
    return families_->tokens.WithLabels({e, m}).value_or(Counter());
  });
  const Counter cost_counter = Cached<Counter>(Key(id_, absl::string_view("cost"), e, m), [&] {
    return families_->cost.WithLabels({e, m}).value_or(Counter());
  });
  const Counter calls = Cached<Counter>(Key(id_, absl::string_view("calls"), e, m, status), [&] {
    return families_->calls.WithLabels({e, m, status}).value_or(Counter());
  });
  if (token_counter.valid()) token_counter.inc(tokens);
  if (cost_counter.valid()) cost_counter.add(cost);
  if (calls.valid()) calls.inc();
}

}  // namespace shmetrics
