// shmetrics-demo: a simulated web back end writing live metrics.
//
// A parent registers the metric families, then forks --workers processes
// (the pre-fork server model); each runs --threads threads that serve
// simulated requests: endpoints with their own latency and error rates, a
// cache, database queries and paid LLM calls with tokens and cost. Every
// worker writes its own segment; run shmetrics-exporter beside it to see
// them aggregated at http://127.0.0.1:9464/metrics.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "shmetrics/writer.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

struct Endpoint {
  const char* method;
  const char* path;
  double median_seconds;  // lognormal latency
  double error_rate;      // 5xx
  double weight;          // share of traffic
  bool uses_cache, uses_db, uses_llm;
};

constexpr Endpoint kEndpoints[] = {
    {"GET", "/api/users", 0.020, 0.002, 0.35, true, true, false},
    {"POST", "/api/orders", 0.060, 0.010, 0.15, false, true, false},
    {"GET", "/api/search", 0.120, 0.005, 0.25, true, true, false},
    {"POST", "/api/chat", 0.900, 0.030, 0.10, false, false, true},
    {"GET", "/health", 0.001, 0.0, 0.15, false, false, false},
};

struct Metrics {
  shmetrics::CounterFamily requests;
  shmetrics::HistogramFamily duration;
  shmetrics::GaugeFamily in_progress;
  shmetrics::CounterFamily cache;
  shmetrics::HistogramFamily db_duration;
  shmetrics::Gauge db_connections;
  shmetrics::CounterFamily tokens, cost, llm_calls;
  shmetrics::Gauge users;
};

Metrics Register(shmetrics::Writer& w) {
  Metrics m{
      w.AddCounter("http_requests_total", "HTTP requests served.", {"method", "endpoint", "status"}).value(),
      w.AddHistogram("http_request_duration_seconds", "HTTP request latency.", {"method", "endpoint"},
                     {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}).value(),
      w.AddGauge("http_requests_in_progress", "HTTP requests being served.", {"method", "endpoint"}).value(),
      w.AddCounter("cache_operations_total", "Cache lookups.", {"operation", "result"}).value(),
      w.AddHistogram("db_query_duration_seconds", "Database query latency.", {"query_type"},
                     {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}).value(),
      w.AddGauge("db_connections_active", "Open database connections.").value().WithLabels({}).value(),
      w.AddCounter("gemini_tokens_total", "LLM tokens used.", {"endpoint", "model"}).value(),
      w.AddCounter("gemini_api_cost_dollars_total", "LLM API cost in US dollars.", {"endpoint", "model"}).value(),
      w.AddCounter("gemini_api_calls_total", "LLM API calls.", {"endpoint", "model", "status"}).value(),
      w.AddGauge("concurrent_users", "Users with an open session.").value().WithLabels({}).value(),
  };
  w.AddGauge("application_info", "Application build information.", {"name", "version", "environment"},
             shmetrics::GaugeMerge::kMax)
      .value()
      .WithLabels({"shmetrics-demo", "0.1.0", "demo"})
      .value()
      .set(1);
  return m;
}

// Handles are looked up once (the cold path); the request loop only uses them.
struct EndpointHandles {
  shmetrics::Counter ok, not_found, failed;
  shmetrics::Histogram duration;
  shmetrics::Gauge in_progress;
  shmetrics::Histogram db_query;
};

void Serve(Metrics& m, const shmetrics::RequestLog& log, unsigned seed, double requests_per_second) {
  std::vector<EndpointHandles> handles;
  for (const Endpoint& e : kEndpoints) {
    handles.push_back({m.requests.WithLabels({e.method, e.path, "200"}).value(),
                       m.requests.WithLabels({e.method, e.path, "404"}).value(),
                       m.requests.WithLabels({e.method, e.path, "500"}).value(),
                       m.duration.WithLabels({e.method, e.path}).value(),
                       m.in_progress.WithLabels({e.method, e.path}).value(),
                       m.db_duration.WithLabels({e.method[0] == 'G' ? "select" : "insert"}).value()});
  }
  const shmetrics::Counter cache_hit = m.cache.WithLabels({"get", "hit"}).value();
  const shmetrics::Counter cache_miss = m.cache.WithLabels({"get", "miss"}).value();
  struct Model {
    const char* name;
    double dollars_per_1k_tokens;
    shmetrics::Counter tokens, cost, ok, failed;
  };
  std::vector<Model> models;
  for (auto [name, price] : {std::pair{"gemini-1.5-flash", 0.00035}, std::pair{"gemini-1.5-pro", 0.0035}}) {
    models.push_back({name, price, m.tokens.WithLabels({"/api/chat", name}).value(),
                      m.cost.WithLabels({"/api/chat", name}).value(),
                      m.llm_calls.WithLabels({"/api/chat", name, "success"}).value(),
                      m.llm_calls.WithLabels({"/api/chat", name, "error"}).value()});
  }

  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0, 1);
  std::normal_distribution<double> normal(0, 0.6);
  std::vector<double> weights;
  for (const Endpoint& e : kEndpoints) weights.push_back(e.weight);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  const auto pause = std::chrono::microseconds(static_cast<int64_t>(1e6 / requests_per_second));
  while (!g_stop.load(std::memory_order_relaxed)) {
    const int index = pick(rng);
    const Endpoint& e = kEndpoints[index];
    EndpointHandles& h = handles[index];
    h.in_progress.inc();
    double seconds = e.median_seconds * std::exp(normal(rng));
    if (e.uses_cache) {
      const bool hit = uniform(rng) < 0.8;
      (hit ? cache_hit : cache_miss).inc();
      if (hit) seconds *= 0.3;
    }
    if (e.uses_db) {
      m.db_connections.inc();
      h.db_query.observe(0.004 * std::exp(normal(rng)) * (uniform(rng) < 0.02 ? 40 : 1));
      m.db_connections.dec();
    }
    const bool failed = uniform(rng) < e.error_rate;
    if (e.uses_llm) {
      Model& model = models[uniform(rng) < 0.7 ? 0 : 1];
      const uint64_t tokens = 200 + static_cast<uint64_t>(uniform(rng) * 1800);
      model.tokens.inc(tokens);
      model.cost.add(tokens / 1000.0 * model.dollars_per_1k_tokens);
      (failed ? model.failed : model.ok).inc();
    }
    const bool not_found = !failed && uniform(rng) < 0.03;
    (failed ? h.failed : not_found ? h.not_found : h.ok).inc();
    h.duration.observe(seconds);
    log.record({e.method, e.path, static_cast<uint16_t>(failed ? 500 : not_found ? 404 : 200),
                static_cast<uint64_t>(seconds * 1e9), 200 + static_cast<uint64_t>(uniform(rng) * 4000), failed,
                failed ? (e.uses_llm ? "LLM API: upstream timeout" : "database: deadlock detected") : ""});
    h.in_progress.dec();
    std::this_thread::sleep_for(pause);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmetrics-demo: a simulated web back end writing live shmetrics"};
  std::string service = "demo";
  std::string directory;
  int workers = 2, threads = 4;
  double duration_seconds = 0, rate = 200;
  app.add_option("--service", service, "service name");
  app.add_option("--dir", directory, "segment directory (default $SHMETRICS_DIR or /dev/shm)");
  app.add_option("--workers", workers, "worker processes")->check(CLI::Range(1, 64));
  app.add_option("--threads", threads, "threads per worker")->check(CLI::Range(1, 64));
  app.add_option("--rate", rate, "requests per second per thread")->check(CLI::Range(1.0, 1e6));
  app.add_option("--duration", duration_seconds, "seconds to run (0: until Ctrl-C)")->check(CLI::Range(0.0, 1e7));
  CLI11_PARSE(app, argc, argv);

  shmetrics::WriterOptions options;
  options.service = service;
  options.directory = directory;
  auto writer = shmetrics::Writer::Create(options);
  if (!writer.ok()) {
    std::fprintf(stderr, "shmetrics-demo: %s\n", std::string(writer.status().message()).c_str());
    return 1;
  }
  Metrics metrics = Register(**writer);
  signal(SIGINT, &OnSignal);
  signal(SIGTERM, &OnSignal);
  std::vector<pid_t> children;
  for (int w = 0; w < workers; ++w) {
    const pid_t child = fork();
    if (child == 0) {
      std::vector<std::thread> pool;
      const shmetrics::RequestLog log = (*writer)->requests();
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back(Serve, std::ref(metrics), std::cref(log), unsigned(w * 100 + t), rate);
      }
      for (auto& thread : pool) thread.join();
      _exit(0);
    }
    children.push_back(child);
  }
  std::fprintf(stderr, "shmetrics-demo: service '%s', %d workers x %d threads, segments in %s\n",
               service.c_str(), workers, threads, (*writer)->path().substr(0, (*writer)->path().rfind('/')).c_str());
  std::mt19937 rng(7);
  const auto start = std::chrono::steady_clock::now();
  while (!g_stop.load()) {
    metrics.users.set(100 + rng() % 50);  // the parent tracks sessions
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (duration_seconds > 0 &&
        std::chrono::steady_clock::now() - start > std::chrono::duration<double>(duration_seconds)) {
      break;
    }
  }
  for (pid_t child : children) kill(child, SIGTERM);
  for (pid_t child : children) waitpid(child, nullptr, 0);
  (*writer)->Close();
  return 0;
}
