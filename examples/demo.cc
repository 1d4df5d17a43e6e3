// shmetrics-demo: a simulated web back end writing live metrics.
//
// A parent registers the metric families, then forks --workers processes
// (the pre-fork server model); each runs --threads threads that serve
// simulated requests through the service kit: endpoints with their own
// latency and error rates, a cache, database queries and paid LLM calls
// with tokens and cost (chat latency also in a native histogram, with a
// trace id exemplar per call). Every
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
#include "shmetrics/service_kit.h"

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

// One simulated request: the kit's request scope measures it for real (the
// handler sleeps a twentieth of the simulated latency), records the count,
// the duration, in-progress and a record in the recent-requests ring.
void Serve(shmetrics::ServiceKit& kit, const shmetrics::NativeHistogramFamily& chat_latency, unsigned seed,
           double requests_per_second) {
  const shmetrics::NativeHistogram flash = chat_latency.WithLabels({"gemini-1.5-flash"}).value();
  const shmetrics::NativeHistogram pro = chat_latency.WithLabels({"gemini-1.5-pro"}).value();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0, 1);
  std::normal_distribution<double> normal(0, 0.6);
  std::vector<double> weights;
  for (const Endpoint& e : kEndpoints) weights.push_back(e.weight);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  const auto pause = std::chrono::microseconds(static_cast<int64_t>(1e6 / requests_per_second));
  while (!g_stop.load(std::memory_order_relaxed)) {
    const Endpoint& e = kEndpoints[pick(rng)];
    {
      auto request = kit.StartRequest(e.method, e.path);
      double seconds = e.median_seconds * std::exp(normal(rng));
      if (e.uses_cache) {
        const bool hit = uniform(rng) < 0.8;
        kit.record_cache_event(hit);
        if (hit) seconds *= 0.3;
      }
      if (e.uses_db) {
        kit.db_connections_active().inc();
        kit.record_db_query(e.method[0] == 'G' ? "select" : "insert",
                            0.004 * std::exp(normal(rng)) * (uniform(rng) < 0.02 ? 40 : 1));
        kit.db_connections_active().dec();
      }
      const bool failed = uniform(rng) < e.error_rate;
      if (e.uses_llm) {
        const bool is_flash = uniform(rng) < 0.7;
        const char* model = is_flash ? "gemini-1.5-flash" : "gemini-1.5-pro";
        kit.record_llm_usage(e.path, model, 200 + static_cast<uint64_t>(uniform(rng) * 1800), std::nullopt,
                             failed ? "error" : "success");
        char trace_id[33];
        std::snprintf(trace_id, sizeof trace_id, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                      static_cast<unsigned long long>(rng()));
        (is_flash ? flash : pro).observe(seconds, shmetrics::Exemplar({{"trace_id", trace_id}}));
      }
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds / 20));
      request.set_response_bytes(200 + static_cast<uint64_t>(uniform(rng) * 4000));
      if (failed) {
        request.set_status(500);
        request.set_error(e.uses_llm ? "LLM API: upstream timeout" : "database: deadlock detected");
      } else if (uniform(rng) < 0.03) {
        request.set_status(404);
      }
    }
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
  shmetrics::ServiceKitOptions kit_options;
  kit_options.app_name = "shmetrics-demo";
  kit_options.version = "0.1.0";
  kit_options.environment = "demo";
  kit_options.llm_price_per_1k_tokens = {{"gemini-1.5-flash", 0.00035}, {"gemini-1.5-pro", 0.0035}};
  auto kit = shmetrics::ServiceKit::Create(**writer, kit_options);
  if (!kit.ok()) {
    std::fprintf(stderr, "shmetrics-demo: %s\n", std::string(kit.status().message()).c_str());
    return 1;
  }
  shmetrics::NativeHistogramOptions chat_options;
  chat_options.min = 1e-3;
  chat_options.max = 120;
  chat_options.unit = "seconds";
  chat_options.exemplars = true;
  auto chat_latency = (*writer)->AddNativeHistogram(
      "demo_chat_duration_seconds", "Chat latency by model (a native histogram, with trace id exemplars).",
      {"model"}, chat_options);
  if (!chat_latency.ok()) {
    std::fprintf(stderr, "shmetrics-demo: %s\n", std::string(chat_latency.status().message()).c_str());
    return 1;
  }
  signal(SIGINT, &OnSignal);
  signal(SIGTERM, &OnSignal);
  std::vector<pid_t> children;
  for (int w = 0; w < workers; ++w) {
    const pid_t child = fork();
    if (child == 0) {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back(Serve, std::ref(**kit), std::cref(*chat_latency), unsigned(w * 100 + t), rate);
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
    (*kit)->concurrent_users().set(100 + rng() % 50);  // the parent tracks sessions
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
