// shmetrics-bench: writer contention and scrape cost, each case next to its
// baselines in the same run, reported as ns/op and as a ratio.
//
//   shmetrics-bench [--threads 1,2,4,8,16] [--ms 200] [--reps 3]
//                   [--series 1000,10000,100000] [--smoke]
//
// Writer cases: every thread hammers one shared handle (or, for the limit
// and the hand-written histogram, its own padded slot) for --ms; a case's
// figure is the median over --reps of the mean per-thread ns/op.
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include <algorithm>
#include <bit>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "shmetrics/collector.h"
#include "shmetrics/writer.h"
#include "http_client.h"  // tests/: a plain HTTP/1.1 client on one socket

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kCacheLine = 64;
constexpr int kValueCount = 1024;  // power of two
const std::vector<double> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

// Pre-generated observation values: the loop pays one load, not an RNG.
std::vector<double> MakeValues() {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> dist(0, 6);
  std::vector<double> values(kValueCount);
  for (double& v : values) v = dist(rng) * dist(rng) / 6;
  return values;
}
const std::vector<double> g_values = MakeValues();

// A per-thread operation: called with (thread index, iteration).
using Op = std::function<void(int thread)>;

// Runs `body(thread, stop)` on `threads` threads for `ms`; returns the mean
// per-thread ns per operation. `body` returns how many operations it did.
template <typename Body>
double RunThreads(int threads, int ms, Body body) {
  std::atomic<bool> stop{false};
  std::vector<uint64_t> ops(threads);
  std::vector<double> seconds(threads);
  std::barrier start(threads + 1);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      start.arrive_and_wait();
      const auto begin = Clock::now();
      ops[t] = body(t, stop);
      seconds[t] = std::chrono::duration<double>(Clock::now() - begin).count();
    });
  }
  start.arrive_and_wait();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  stop.store(true, std::memory_order_relaxed);
  for (auto& th : pool) th.join();
  double total = 0;
  for (int t = 0; t < threads; ++t) total += seconds[t] * 1e9 / double(std::max<uint64_t>(ops[t], 1));
  return total / threads;
}

// The loop shape shared by every case: 256 operations between looks at the flag.
template <typename F>
uint64_t Loop(std::atomic<bool>& stop, F&& f) {
  uint64_t n = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    for (int i = 0; i < 256; ++i) f(n + i);
    n += 256;
  }
  return n;
}

struct alignas(kCacheLine) PaddedSlot {
  uint64_t value = 0;
};

struct alignas(kCacheLine) HandHistogram {  // per-thread buckets, plain stores
  uint64_t buckets[16] = {};
  double sum = 0;
};

// requests().record() as it was before issue 12 ("v1"), kept as the
// baseline of the current one: a 128-byte record staged on the stack by
// three memcpy + memset calls, then copied word by word into the ring slot.
// It writes into a ring of the same layout that each thread owns here,
// instead of the segment's (the same kind of memory, cached alike).
namespace v1 {
using shmetrics::shm::RequestRecord;
using shmetrics::shm::RingHeader;

uint8_t CopyTruncated(char* field, size_t capacity, absl::string_view text) {
  size_t n = std::min(capacity, text.size());
  if (n < text.size()) {
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  }
  std::memcpy(field, text.data(), n);
  std::memset(field + n, 0, capacity - n);
  return static_cast<uint8_t>(n);
}

void WriteRecord(std::byte* slots, uint32_t slot_count, uint64_t* write_index, const RequestRecord& record) {
  const uint64_t k = std::atomic_ref<uint64_t>(*write_index).load(std::memory_order_relaxed);
  auto* words = reinterpret_cast<uint64_t*>(slots + (k & (slot_count - 1)) * sizeof(RequestRecord));
  std::atomic_ref<uint64_t>(words[0]).store(2 * k + 1, std::memory_order_relaxed);
  const auto* source = reinterpret_cast<const uint64_t*>(&record);
  for (size_t w = 1; w < sizeof(RequestRecord) / 8; ++w) {
    std::atomic_ref<uint64_t>(words[w]).store(source[w], std::memory_order_release);
  }
  std::atomic_ref<uint64_t>(words[0]).store(2 * k + 2, std::memory_order_release);
  std::atomic_ref<uint64_t>(*write_index).store(k + 1, std::memory_order_release);
}

constexpr uint32_t kRequestSlots = 64, kErrorSlots = 16;
struct alignas(64) Ring {
  RingHeader header;
  RequestRecord slots[kRequestSlots + kErrorSlots];
};
// Rings handed out to threads in turn (a bench never runs 256 at once). Not
// thread_local storage: 10 KiB more of TLS moves every other thread_local,
// the writer's lane table included, and that alone changed counter.inc()
// by 0.15 ns here.
Ring g_rings[256];
std::atomic<uint32_t> g_next_ring{0};
thread_local Ring* t_ring = nullptr;  // v1 looked its ring up per call, and bound it on first use

__attribute__((noinline)) void Record(const shmetrics::RequestRecordInput& request) {
  std::byte* ring = reinterpret_cast<std::byte*>(t_ring);
  if (ring == nullptr) {
    t_ring = &g_rings[g_next_ring.fetch_add(1, std::memory_order_relaxed) % 256];
    ring = reinterpret_cast<std::byte*>(t_ring);
  }
  RequestRecord record;
  uint64_t timestamp = request.timestamp_unix_ns;
  if (timestamp == 0) {
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    timestamp = uint64_t(now.tv_sec) * 1000000000u + uint64_t(now.tv_nsec);
  }
  record.sequence = 0;
  record.timestamp_unix_ns = timestamp;
  record.duration_ns = request.duration_ns;
  record.response_bytes = request.response_bytes;
  record.status = request.status;
  record.flags = request.error ? shmetrics::shm::kRecordFlagError : 0;
  record.reserved[0] = record.reserved[1] = 0;
  record.method_length = CopyTruncated(record.method, sizeof record.method, request.method);
  record.endpoint_length = CopyTruncated(record.endpoint, sizeof record.endpoint, request.endpoint);
  record.error_length = CopyTruncated(record.error, sizeof record.error, request.error_message);
  auto* header = reinterpret_cast<RingHeader*>(ring);
  std::byte* request_slots = ring + sizeof(RingHeader);
  WriteRecord(request_slots, kRequestSlots, &header->request_write_index, record);
  if (request.error) {
    WriteRecord(request_slots + uint64_t{kRequestSlots} * sizeof(RequestRecord), kErrorSlots,
                &header->error_write_index, record);
  }
}
}  // namespace v1

struct Case {
  std::string name;
  std::string baseline;  // the case it is compared with ("" for none)
  std::function<double(int threads, int ms)> run;
};

// `precise_writer` is configured as `writer` but with Clock::kPrecise.
std::vector<Case> WriterCases(shmetrics::Writer& writer, shmetrics::Writer& precise_writer,
                              prometheus::Registry& registry) {
  auto counter = writer.AddCounter("bench_ops_total", "Ops.").value().WithLabels({}).value();
  auto gauge = writer.AddGauge("bench_in_progress", "In progress.").value().WithLabels({}).value();
  auto histogram = writer.AddHistogram("bench_latency_seconds", "Latency.", {}, kBounds).value().WithLabels({}).value();
  auto& pc_counter = prometheus::BuildCounter().Name("pc_ops_total").Register(registry).Add({});
  auto& pc_gauge = prometheus::BuildGauge().Name("pc_in_progress").Register(registry).Add({});
  auto& pc_histogram = prometheus::BuildHistogram().Name("pc_latency_seconds").Register(registry).Add(
      {}, prometheus::Histogram::BucketBoundaries(kBounds));
  static std::atomic<uint64_t> shared_atomic{0};
  static PaddedSlot slots[256];
  static HandHistogram hand[256];
  static std::mutex old_mutex;
  static std::map<std::string, std::vector<double>> old_durations;
  static std::deque<std::pair<std::string, double>> old_recent;

  std::vector<Case> cases;
  cases.push_back({"limit: thread-owned store", "", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int t, std::atomic<bool>& stop) {
      std::atomic_ref<uint64_t> slot(slots[t].value);
      return Loop(stop, [&](uint64_t) { slot.store(slot.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); });
    });
  }});
  cases.push_back({"shared std::atomic fetch_add", "limit: thread-owned store", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int, std::atomic<bool>& stop) {
      return Loop(stop, [](uint64_t) { shared_atomic.fetch_add(1, std::memory_order_relaxed); });
    });
  }});
  cases.push_back({"prometheus-cpp Counter::Increment", "limit: thread-owned store", [&pc_counter](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) { return Loop(stop, [&](uint64_t) { pc_counter.Increment(); }); });
  }});
  cases.push_back({"shmetrics counter.inc()", "limit: thread-owned store", [counter](int threads, int ms) mutable {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      shmetrics::Counter c = counter;
      return Loop(stop, [&](uint64_t) { c.inc(); });
    });
  }});
  cases.push_back({"prometheus-cpp Gauge::Increment+Decrement", "limit: thread-owned store", [&pc_gauge](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      return Loop(stop, [&](uint64_t i) { if (i & 1) pc_gauge.Decrement(); else pc_gauge.Increment(); });
    });
  }});
  cases.push_back({"shmetrics gauge.inc()/dec()", "limit: thread-owned store", [gauge](int threads, int ms) mutable {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      shmetrics::Gauge g = gauge;
      return Loop(stop, [&](uint64_t i) { if (i & 1) g.dec(); else g.inc(); });
    });
  }});
  cases.push_back({"hand-written histogram, plain stores", "", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int t, std::atomic<bool>& stop) {
      HandHistogram& h = hand[t];
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) {
        const double v = values[i & (kValueCount - 1)];
        uint32_t index = 0;
        for (double bound : kBounds) index += bound < v;
        std::atomic_ref<uint64_t> bucket(h.buckets[index]);
        bucket.store(bucket.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        std::atomic_ref<double> sum(h.sum);
        sum.store(sum.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
      });
    });
  }});
  cases.push_back({"prometheus-cpp Histogram::Observe", "hand-written histogram, plain stores", [&pc_histogram](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) { pc_histogram.Observe(values[i & (kValueCount - 1)]); });
    });
  }});
  cases.push_back({"shmetrics histogram.observe()", "hand-written histogram, plain stores", [histogram](int threads, int ms) mutable {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      shmetrics::Histogram h = histogram;
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) { h.observe(values[i & (kValueCount - 1)]); });
    });
  }});
  // Native histograms: ours (the thread's own lane, plain stores) next to
  // the classic one and next to the Go client's design, one structure
  // shared by every thread with an atomic add per bucket, count and sum.
  auto native = writer.AddNativeHistogram("bench_native_seconds", "Latency.", {}, {.schema = 3, .min = 1e-4, .max = 100})
                    .value().WithLabels({}).value();
  cases.push_back({"shmetrics native.observe() (schema 3)", "shmetrics histogram.observe()", [native](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const shmetrics::NativeHistogram h = native;
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) { h.observe(values[i & (kValueCount - 1)]); });
    });
  }});
  // Exemplars: a 32-hex-digit trace id per operation (from a table: the
  // loop pays a load, not a formatter), timestamp read inside.
  static const std::vector<std::string> trace_ids = [] {
    std::vector<std::string> ids;
    std::mt19937_64 rng(7);
    for (int i = 0; i < kValueCount; ++i) ids.push_back(absl::StrFormat("%016x%016x", rng(), rng()));
    return ids;
  }();
  auto exemplar_counter = writer.AddCounter("bench_ex_total", "Ops.", {}, {.exemplars = true}).value().WithLabels({}).value();
  auto exemplar_histogram = writer.AddHistogram("bench_ex_seconds", "Latency.", {}, kBounds, {.exemplars = true})
                                .value().WithLabels({}).value();
  cases.push_back({"shmetrics counter.inc(1, exemplar)", "shmetrics counter.inc()", [exemplar_counter](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const shmetrics::Counter c = exemplar_counter;
      return Loop(stop, [&](uint64_t i) {
        c.inc(1, shmetrics::Exemplar({{"trace_id", trace_ids[i & (kValueCount - 1)]}}));
      });
    });
  }});
  cases.push_back({"shmetrics histogram.observe(v, exemplar)", "shmetrics histogram.observe()",
                   [exemplar_histogram](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const shmetrics::Histogram h = exemplar_histogram;
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) {
        h.observe(values[i & (kValueCount - 1)], shmetrics::Exemplar({{"trace_id", trace_ids[i & (kValueCount - 1)]}}));
      });
    });
  }});
  // The same with the timestamp given (a request handler that read the
  // clock once for its record passes it on): the exemplar path without a
  // clock reading, which costs 17 ns on the 16-vCPU Xeon (docs/benchmarks.md).
  cases.push_back({"shmetrics histogram.observe(v, exemplar), timestamp given", "shmetrics histogram.observe(v, exemplar)",
                   [exemplar_histogram](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const shmetrics::Histogram h = exemplar_histogram;
      const double* values = g_values.data();
      constexpr uint64_t kSomeTimeUnixNs = 1'800'000'000'000'000'000;
      return Loop(stop, [&](uint64_t i) {
        h.observe(values[i & (kValueCount - 1)],
                  shmetrics::Exemplar({{"trace_id", trace_ids[i & (kValueCount - 1)]}}, kSomeTimeUnixNs + i));
      });
    });
  }});
  // The same with each trace id in a flat 32-byte buffer, as a request's
  // span context holds it in hex, rather than in a heap std::string of a
  // 4,096-entry table (a session-5 probe put that at 6-9 ns on the 2-core
  // EPYC; this row shows no difference there: docs/benchmarks.md).
  static const std::vector<std::array<char, 32>> flat_trace_ids = [] {
    std::vector<std::array<char, 32>> ids(kValueCount);
    for (int i = 0; i < kValueCount; ++i) std::memcpy(ids[i].data(), trace_ids[i].data(), 32);
    return ids;
  }();
  cases.push_back({"shmetrics histogram.observe(v, exemplar), trace id in a flat buffer",
                   "shmetrics histogram.observe(v, exemplar)", [exemplar_histogram](int threads, int ms) {
    return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
      const shmetrics::Histogram h = exemplar_histogram;
      const double* values = g_values.data();
      const std::array<char, 32>* ids = flat_trace_ids.data();
      return Loop(stop, [&](uint64_t i) {
        const std::array<char, 32>& id = ids[i & (kValueCount - 1)];
        h.observe(values[i & (kValueCount - 1)],
                  shmetrics::Exemplar({{"trace_id", absl::string_view(id.data(), id.size())}}));
      });
    });
  }});
  struct GoStyleNative {
    std::atomic<uint64_t> count{0};
    std::atomic<uint64_t> sum_bits{0};
    std::atomic<uint64_t> zero{0};
    std::atomic<uint64_t> buckets[256] = {};
  };
  static GoStyleNative go_native;
  cases.push_back({"Go-style native histogram, shared atomics", "shmetrics native.observe() (schema 3)", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int, std::atomic<bool>& stop) {
      const double* values = g_values.data();
      const shmetrics::shm::NativeSchemaTable* table = shmetrics::shm::NativeSchemaTableFor(3);
      const int32_t low = shmetrics::shm::NativeBucketIndex(1e-4, 3, table);
      return Loop(stop, [&](uint64_t i) {
        const double v = values[i & (kValueCount - 1)];
        go_native.count.fetch_add(1, std::memory_order_relaxed);
        if (v <= 0x1p-128) {
          go_native.zero.fetch_add(1, std::memory_order_relaxed);
        } else {
          const int32_t k = std::clamp(shmetrics::shm::NativeBucketIndex(v, 3, table) - low, 0, 255);
          go_native.buckets[k].fetch_add(1, std::memory_order_relaxed);
        }
        uint64_t old = go_native.sum_bits.load(std::memory_order_relaxed);
        while (!go_native.sum_bits.compare_exchange_weak(old, std::bit_cast<uint64_t>(std::bit_cast<double>(old) + v),
                                                        std::memory_order_relaxed)) {
        }
      });
    });
  }});
  const shmetrics::RequestLog log = writer.requests();
  static std::mutex recent_mutex;
  static std::deque<std::tuple<uint64_t, std::string, std::string, int, double>> recent;
  cases.push_back({"old design: deque of 100 requests under a mutex", "", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int, std::atomic<bool>& stop) {
      const double* values = g_values.data();
      return Loop(stop, [&](uint64_t i) {
        std::lock_guard<std::mutex> lock(recent_mutex);
        recent.emplace_back(i, "GET", "/api/users", 200, values[i & (kValueCount - 1)]);
        if (recent.size() > 100) recent.pop_front();
      });
    });
  }});
  // The request log: v1 (the code before issue 12) and the current one, with
  // the timestamp given and with the clock read inside, on the same inputs.
  const shmetrics::RequestLog precise_log = precise_writer.requests();
  auto record_case = [&cases](const std::string& name, const std::string& baseline, bool v1_path, bool clock_inside,
                              const shmetrics::RequestLog& log) {
    cases.push_back({name, baseline, [log, v1_path, clock_inside](int threads, int ms) {
      return RunThreads(threads, ms, [&](int, std::atomic<bool>& stop) {
        const double* values = g_values.data();
        return Loop(stop, [&](uint64_t i) {
          const shmetrics::RequestRecordInput input{"GET", "/api/users", 200,
                                                    static_cast<uint64_t>(values[i & (kValueCount - 1)] * 1e9), 512,
                                                    false, "", clock_inside ? 0 : 1764201600000000000ull + i};
          if (v1_path) v1::Record(input);
          else log.record(input);
        });
      });
    }});
  };
  record_case("record (v1 copy), timestamp given", "old design: deque of 100 requests under a mutex", true, false, log);
  record_case("shmetrics requests().record(), timestamp given", "record (v1 copy), timestamp given", false, false, log);
  record_case("record (v1 copy), clock read inside", "old design: deque of 100 requests under a mutex", true, true, log);
  // Clock read inside: the default clock (coarse), then Clock::kPrecise.
  record_case("shmetrics requests().record(), clock read inside", "record (v1 copy), clock read inside", false, true,
              log);
  record_case("shmetrics requests().record(), precise clock inside", "record (v1 copy), clock read inside", false,
              true, precise_log);
  cases.push_back({"old design: mutex + map of vectors + deque", "limit: thread-owned store", [](int threads, int ms) {
    return RunThreads(threads, ms, [](int, std::atomic<bool>& stop) {
      const double* values = g_values.data();
      uint64_t n = 0;
      static const std::string key = "GET /api/users 200";
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; ++i) {
          std::lock_guard<std::mutex> lock(old_mutex);
          auto& durations = old_durations[key];
          durations.push_back(values[(n + i) & (kValueCount - 1)]);
          if (durations.size() > 100000) durations.clear();  // the original leaked; keep the bench bounded
          old_recent.emplace_back(key, values[(n + i) & (kValueCount - 1)]);
          if (old_recent.size() > 100) old_recent.pop_front();
        }
        n += 256;
      }
      return n;
    });
  }});
  return cases;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::FILE* g_csv = nullptr;  // --csv: case,threads,ns_per_op

void WriterTable(const std::vector<int>& thread_counts, int ms, int reps, const std::string& directory) {
  shmetrics::WriterOptions options;
  options.service = "bench";
  options.directory = directory;
  options.capacities.exclusive_lanes = 64;
  auto writer = shmetrics::Writer::Create(options).value();
  options.service = "bench-precise";  // the same, with nanosecond timestamps
  options.clock = shmetrics::WriterOptions::Clock::kPrecise;
  auto precise_writer = shmetrics::Writer::Create(options).value();
  prometheus::Registry registry;
  std::vector<Case> cases = WriterCases(*writer, *precise_writer, registry);
  std::map<std::string, std::vector<double>> results;
  for (const Case& c : cases) {
    for (int threads : thread_counts) {
      std::vector<double> samples;
      for (int r = 0; r < reps; ++r) samples.push_back(c.run(threads, ms));
      results[c.name].push_back(Median(samples));
      if (g_csv != nullptr) std::fprintf(g_csv, "\"%s\",%d,%.3f\n", c.name.c_str(), threads, results[c.name].back());
    }
  }
  std::printf("\n### Writer: per-thread ns/op (ratio to its baseline in this run)\n\n| case | baseline |");
  for (int t : thread_counts) std::printf(" %d thr |", t);
  std::printf("\n|---|---|");
  for (size_t i = 0; i < thread_counts.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const Case& c : cases) {
    std::printf("| %s | %s |", c.name.c_str(), c.baseline.empty() ? "–" : c.baseline.c_str());
    for (size_t i = 0; i < thread_counts.size(); ++i) {
      const double ns = results[c.name][i];
      if (c.baseline.empty()) std::printf(" %.2f |", ns);
      else std::printf(" %.2f (%.1fx) |", ns, ns / results[c.baseline][i]);
    }
    std::printf("\n");
  }
  std::printf("\nAggregate throughput, million ops/s (all threads):\n\n| case |");
  for (int t : thread_counts) std::printf(" %d thr |", t);
  std::printf("\n|---|");
  for (size_t i = 0; i < thread_counts.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const Case& c : cases) {
    std::printf("| %s |", c.name.c_str());
    for (size_t i = 0; i < thread_counts.size(); ++i) std::printf(" %.1f |", thread_counts[i] * 1e3 / results[c.name][i]);
    std::printf("\n");
  }
  std::fflush(stdout);
}

// Real HTTP scrapes through exporter programs, side by side in one run:
// --exporter "NAME=PATH [ARGS...]", repeatable (for example the civetweb
// exporter of an older commit next to this one). Each cell starts a fresh
// exporter on the same directory, so its RSS high-water is its own.
std::vector<std::string> g_exporters;

struct ExporterUnderTest {
  std::string name, path;
  std::vector<std::string> args;
};

ExporterUnderTest ParseExporter(const std::string& spec) {
  ExporterUnderTest e;
  std::vector<std::string> words = absl::StrSplit(spec, ' ', absl::SkipEmpty());
  const size_t equals = words.at(0).find('=');
  e.name = equals == std::string::npos ? "exporter" : words[0].substr(0, equals);
  e.path = equals == std::string::npos ? words[0] : words[0].substr(equals + 1);
  e.args.assign(words.begin() + 1, words.end());
  return e;
}

uint64_t StatusKiB(pid_t pid, const char* field) {
  std::FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/status").c_str(), "r");
  uint64_t kib = 0;
  if (f != nullptr) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::strncmp(line, field, std::strlen(field)) == 0) kib = std::strtoull(line + std::strlen(field), nullptr, 10);
    }
    std::fclose(f);
  }
  return kib;
}

struct HttpCell {
  double p50_ms = 0, p99_ms = 0, scrapes_per_second = 0, idle_mib = 0, peak_mib = 0, body_bytes = 0;
  int errors = 0;
};

HttpCell RunHttpCell(const ExporterUnderTest& e, const std::string& dir, int clients, bool keep_alive, bool gzip,
                     double seconds) {
  static int next_port = 20000 + getpid() % 20000;
  const int port = next_port++;
  // posix_spawn, not fork: a forked child of this process (which holds
  // writers) would get segments of its own, copies of every series, and
  // each later exporter would read those too. Rescans at most once a
  // second: the rows measure rendering (give this tree's exporter
  // --scan-wait-ms 0 too, or each scrape waits for a scan).
  std::vector<std::string> argv = {e.path, "--dir", dir, "--listen", absl::StrCat("127.0.0.1:", port),
                                   "--no-retire", "--min-scan-interval-ms", "1000"};
  argv.insert(argv.end(), e.args.begin(), e.args.end());
  std::vector<char*> raw;
  for (std::string& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  if (posix_spawn(&pid, raw[0], &actions, nullptr, raw.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  HttpCell cell;
  if (pid <= 0) {
    cell.errors = -1;  // could not start it
    return cell;
  }
  const std::string headers = absl::StrCat(gzip ? "Accept-Encoding: gzip\r\n" : "",
                                           keep_alive ? "" : "Connection: close\r\n");
  for (int i = 0; i < 400; ++i) {
    shmetrics::testing::HttpConnection probe(port, false, 30);
    const auto r = probe.Request("/metrics", headers);
    if (r.status == 200) {
      cell.body_bytes = static_cast<double>(r.body.size());
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  cell.idle_mib = StatusKiB(pid, "VmRSS:") / 1024.0;
  std::vector<std::vector<double>> latencies(clients);
  std::atomic<int> errors{0};
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::thread> threads;
  const auto begin = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::unique_ptr<shmetrics::testing::HttpConnection> connection;
      do {
        const auto start = Clock::now();
        if (connection == nullptr) connection = std::make_unique<shmetrics::testing::HttpConnection>(port, false, 60);
        const auto r = connection->Request("/metrics", headers);
        if (r.status != 200) {
          ++errors;
          connection.reset();
          continue;
        }
        if (!keep_alive) connection.reset();
        latencies[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
      } while (Clock::now() < until);
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - begin).count();
  cell.peak_mib = StatusKiB(pid, "VmHWM:") / 1024.0;
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  if (!all.empty()) {
    cell.p50_ms = all[all.size() / 2];
    cell.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  cell.scrapes_per_second = all.size() / elapsed;
  cell.errors = errors.load();
  return cell;
}

// One table row per exporter and case, for the directory of `series`
// series; render_ms is the in-process render of the same series.
std::string HttpRows(const std::string& dir, int series, double render_ms, bool smoke) {
  std::string rows;
  for (const std::string& spec : g_exporters) {
    const ExporterUnderTest e = ParseExporter(spec);
    for (int clients : {1, 16}) {
      for (bool keep_alive : {true, false}) {
        for (bool gzip : {false, true}) {
          const HttpCell c = RunHttpCell(e, dir, clients, keep_alive, gzip, smoke ? 0.2 : 2.0);
          rows += absl::StrFormat("| %s | %d | %d | %s | %s | %.0f | %.2f | %.2f | %.1f | %.2f | %d | %.1f | %.1f |\n",
                                  e.name, series, clients, keep_alive ? "yes" : "no", gzip ? "on" : "off",
                                  c.body_bytes, c.p50_ms, c.p99_ms, c.scrapes_per_second, c.p50_ms / render_ms,
                                  c.errors, c.idle_mib, c.peak_mib);
          std::fflush(stdout);
        }
      }
    }
  }
  return rows;
}

// Scrape: N series (10/11 counters, 1/11 histograms with 8 bounds) spread
// over 4 segments, rendered by the collector, next to prometheus-cpp's
// Collect + TextSerializer for the same series.
void ScrapeTable(const std::vector<int>& sizes, int reps, const std::string& directory) {
  std::printf("\n### Scrape: render time for the same series\n\n"
              "| series | bytes | rescan ms | shmetrics render ms | ns/series | prometheus-cpp ms | ns/series | speed-up |\n"
              "|---|---|---|---|---|---|---|---|\n");
  const std::vector<double> bounds = {0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10};
  std::string http_rows, protobuf_rows;
  for (int n : sizes) {
    const std::string dir = absl::StrCat(directory, "/scrape-", n);
    std::filesystem::create_directories(dir);
    constexpr int kSegments = 4;
    std::vector<std::unique_ptr<shmetrics::Writer>> writers;
    prometheus::Registry registry;
    auto& pc_counters = prometheus::BuildCounter().Name("requests_total").Help("Requests.").Register(registry);
    auto& pc_histograms = prometheus::BuildHistogram().Name("latency_seconds").Help("Latency.").Register(registry);
    const int histograms = n / 11, counters = n - histograms;
    for (int s = 0; s < kSegments; ++s) {
      shmetrics::WriterOptions options;
      options.service = "scrape";
      options.directory = dir;
      options.capacities.exclusive_lanes = 2;
      options.capacities.series = n / kSegments + 16;
      options.capacities.cells_per_lane = (n / kSegments) * 2 + histograms / kSegments * 10 + 64;
      options.capacities.string_arena_bytes = (n / kSegments) * 32 + 4096;
      writers.push_back(shmetrics::Writer::Create(options).value());
    }
    std::vector<shmetrics::CounterFamily> counter_families;
    std::vector<shmetrics::HistogramFamily> histogram_families;
    for (auto& w : writers) {
      counter_families.push_back(w->AddCounter("requests_total", "Requests.", {"path", "code"}).value());
      histogram_families.push_back(w->AddHistogram("latency_seconds", "Latency.", {"path"}, bounds).value());
    }
    for (int i = 0; i < counters; ++i) {
      const std::string path = absl::StrCat("/api/v1/item", i / 4);
      const std::string code = absl::StrCat(200 + i % 4);
      counter_families[i % kSegments].WithLabels({path, code}).value().add(i);
      pc_counters.Add({{"path", path}, {"code", code}}).Increment(i);
    }
    for (int i = 0; i < histograms; ++i) {
      const std::string path = absl::StrCat("/api/v1/item", i);
      histogram_families[i % kSegments].WithLabels({path}).value().observe(i % 7 * 0.3);
      pc_histograms.Add({{"path", path}}, bounds).Observe(i % 7 * 0.3);
    }
    shmetrics::reader::CollectorOptions collector_options;
    collector_options.directory = dir;
    collector_options.retire_dead = false;
    auto collector = shmetrics::reader::Collector::Create(collector_options).value();
    (void)collector->Scan();
    std::vector<double> ours, theirs, scans, protobuf;
    size_t bytes = 0;
    std::string out;
    for (int r = 0; r < reps; ++r) {
      auto begin = Clock::now();
      (void)collector->Scan();
      scans.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
      out.clear();  // the exporter reuses its buffer's capacity in the same way
      begin = Clock::now();
      collector->Render(shmetrics::reader::ExpositionFormat::kPrometheusText, &out);
      ours.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
      bytes = out.size();
      out.clear();
      begin = Clock::now();
      collector->Render(shmetrics::reader::ExpositionFormat::kProtobuf, &out);
      protobuf.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
      begin = Clock::now();
      const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
      theirs.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
    }
    const double our_ms = Median(ours), their_ms = Median(theirs);
    std::printf("| %d | %zu | %.3f | %.2f | %.0f | %.2f | %.0f | %.1fx |\n", n, bytes, Median(scans), our_ms,
                our_ms * 1e6 / n, their_ms, their_ms * 1e6 / n, their_ms / our_ms);
    std::fflush(stdout);
    protobuf_rows += absl::StrFormat("| %d | %.3f | %.3f | %.2fx |\n", n, our_ms, Median(protobuf), Median(protobuf) / our_ms);
    if (!g_exporters.empty()) http_rows += HttpRows(dir, n, our_ms, reps == 1);
    writers.clear();
    std::filesystem::remove_all(dir);
  }
  std::printf("\n### Protobuf render next to the text render of the same series (same run)\n\n"
              "| series | text ms | protobuf ms | protobuf / text |\n|---|---|---|---|\n%s",
              protobuf_rows.c_str());
  if (!http_rows.empty()) {
    std::printf("\n### HTTP scrapes through the exporters (loopback; 2 s per cell)\n\n"
                "| exporter | series | clients | keep-alive | gzip | body bytes | p50 ms | p99 ms | scrapes/s | "
                "p50 / render | errors | idle RSS MiB | RSS high-water MiB |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n%s",
                http_rows.c_str());
  }
}

// Multi-process: P forked writer processes of one service, one thread each,
// every process incrementing the same series (in its own segment), next to
// the thread-owned-store limit measured in the same processes.
void MultiProcessTable(const std::vector<int>& process_counts, int ms, const std::string& directory) {
  std::printf("\n### Multi-process: per-process ns/op, one thread per process, one service\n\n"
              "| processes | limit | counter.inc() | ratio | histogram.observe() |\n|---|---|---|---|---|\n");
  for (int processes : process_counts) {
    const std::string dir = absl::StrCat(directory, "/procs-", processes);
    std::filesystem::create_directories(dir);
    shmetrics::WriterOptions options;
    options.service = "procs";
    options.directory = dir;
    auto writer = shmetrics::Writer::Create(options).value();
    auto counter = writer->AddCounter("ops_total", "Ops.").value().WithLabels({}).value();
    auto histogram = writer->AddHistogram("latency_seconds", "Latency.", {}, kBounds).value().WithLabels({}).value();
    std::vector<std::array<int, 2>> pipes(processes);
    std::vector<pid_t> children;
    for (int p = 0; p < processes; ++p) {
      if (pipe(pipes[p].data()) != 0) return;
      const pid_t child = fork();
      if (child == 0) {
        const double limit = RunThreads(1, ms, [](int, std::atomic<bool>& stop) {
          PaddedSlot slot;
          std::atomic_ref<uint64_t> ref(slot.value);
          return Loop(stop, [&](uint64_t) { ref.store(ref.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed); });
        });
        const double inc = RunThreads(1, ms, [&](int, std::atomic<bool>& stop) {
          return Loop(stop, [&](uint64_t) { counter.inc(); });
        });
        const double observe = RunThreads(1, ms, [&](int, std::atomic<bool>& stop) {
          const double* values = g_values.data();
          return Loop(stop, [&](uint64_t i) { histogram.observe(values[i & (kValueCount - 1)]); });
        });
        const double result[3] = {limit, inc, observe};
        if (write(pipes[p][1], result, sizeof result) != sizeof result) _exit(1);
        _exit(0);
      }
      close(pipes[p][1]);
      children.push_back(child);
    }
    double limit = 0, inc = 0, observe = 0;
    for (int p = 0; p < processes; ++p) {
      double result[3] = {};
      if (read(pipes[p][0], result, sizeof result) == sizeof result) {
        limit += result[0] / processes;
        inc += result[1] / processes;
        observe += result[2] / processes;
      }
      close(pipes[p][0]);
    }
    for (pid_t child : children) waitpid(child, nullptr, 0);
    std::printf("| %d | %.2f | %.2f | %.1fx | %.2f |\n", processes, limit, inc, inc / limit, observe);
    std::fflush(stdout);
    writer.reset();
    std::filesystem::remove_all(dir);
  }
}

// Churn: K writer processes of one service come and go (20 series each,
// like the Python comparison), beside 4 live ones. With retirement the dead
// are folded into the archive and the scrape costs what the live series
// cost; without it (--no-retire, or Python's multiprocess mode) every dead
// writer's file is read on every scrape.
void ChurnTable(const std::vector<int>& dead_counts, int reps, const std::string& directory) {
  std::printf("\n### Writer churn: scrape (rescan + render) after K writers came and went\n\n"
              "| dead writers K | segments left, retiring | scrape ms, retiring | segments, not retiring | "
              "scrape ms, not retiring |\n|---|---|---|---|---|\n");
  auto write_series = [](shmetrics::Writer& writer, int value) {
    auto family = writer.AddCounter("requests_total", "Requests.", {"path"}).value();
    auto latency = writer.AddHistogram("latency_seconds", "Latency.", {"path"}, {0.01, 0.1, 1}).value();
    for (int i = 0; i < 10; ++i) {
      family.WithLabels({absl::StrCat("/p", i)}).value().inc(value);
      latency.WithLabels({absl::StrCat("/p", i)}).value().observe(0.05);
    }
  };
  for (int dead : dead_counts) {
    double scrape_ms[2] = {};
    size_t segments[2] = {};
    for (int retire = 1; retire >= 0; --retire) {
      const std::string dir = absl::StrCat(directory, "/churn-", dead, "-", retire);
      std::filesystem::create_directories(dir);
      shmetrics::WriterOptions options;
      options.service = "churn";
      options.directory = dir;
      options.capacities.exclusive_lanes = 2;
      options.capacities.series = 64;
      options.capacities.cells_per_lane = 256;
      options.capacities.string_arena_bytes = 4096;
      options.capacities.ring_slots_per_lane = 0;
      options.capacities.error_ring_slots_per_lane = 0;
      for (int d = 0; d < dead; ++d) {
        const pid_t child = fork();
        if (child == 0) {
          auto writer = shmetrics::Writer::Create(options).value();
          write_series(*writer, 1);
          _exit(0);  // dies without closing: a crash, as far as anyone can tell
        }
        waitpid(child, nullptr, 0);
      }
      // The live writers come after the forks, so no child copies them.
      std::vector<std::unique_ptr<shmetrics::Writer>> live;
      for (int l = 0; l < 4; ++l) {
        live.push_back(shmetrics::Writer::Create(options).value());
        write_series(*live.back(), 1);
      }
      shmetrics::reader::CollectorOptions collector_options;
      collector_options.directory = dir;
      collector_options.retire_dead = retire == 1;
      auto collector = shmetrics::reader::Collector::Create(collector_options).value();
      (void)collector->Scan();  // the first scan retires (or opens) the dead
      std::vector<double> times;
      std::string out;
      for (int r = 0; r < reps; ++r) {
        const auto begin = Clock::now();
        out.clear();
        (void)collector->Scan();
        collector->Render(shmetrics::reader::ExpositionFormat::kPrometheusText, &out);
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
      }
      scrape_ms[retire] = Median(times);
      segments[retire] = collector->Segments().size();
      live.clear();
      collector.reset();
      std::filesystem::remove_all(dir);
    }
    std::printf("| %d | %zu | %.3f | %zu | %.3f |\n", dead, segments[1], scrape_ms[1], segments[0], scrape_ms[0]);
    std::fflush(stdout);
  }
}

uint64_t RssBytes() { return StatusKiB(getpid(), "VmRSS:") * 1024; }

// Writer memory is the segment: RSS and segment size after 10^4 and after
// 10^8 operations are the same.
void MemoryTable(const std::string& directory, uint64_t big) {
  shmetrics::WriterOptions options;
  options.service = "memory";
  options.directory = directory;
  auto writer = shmetrics::Writer::Create(options).value();
  auto counter = writer->AddCounter("ops_total", "Ops.", {"k"}).value().WithLabels({"a"}).value();
  auto histogram = writer->AddHistogram("latency_seconds", "Latency.", {}, kBounds).value().WithLabels({}).value();
  const shmetrics::RequestLog log = writer->requests();
  auto run = [&](uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
      counter.inc();
      histogram.observe(g_values[i & (kValueCount - 1)]);
      if ((i & 1023) == 0) log.record({"GET", "/x", 200, i, 1, false, "", 1});
    }
  };
  run(10'000);
  const uint64_t rss_small = RssBytes(), size_small = std::filesystem::file_size(writer->path());
  run(big);
  const uint64_t rss_big = RssBytes(), size_big = std::filesystem::file_size(writer->path());
  std::printf("\n### Memory\n\n| after | writer RSS | segment size |\n|---|---|---|\n"
              "| 10^4 operations | %.2f MiB | %llu bytes |\n| %.0e operations | %.2f MiB | %llu bytes |\n",
              rss_small / 1048576.0, static_cast<unsigned long long>(size_small), double(big), rss_big / 1048576.0,
              static_cast<unsigned long long>(size_big));
}

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> values;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = text.find(',', start);
    values.push_back(std::stoi(text.substr(start, comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return values;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmetrics-bench: writer contention and scrape cost against baselines"};
  std::string threads = "1,2";
  std::string series = "1000,10000,100000";
  int ms = 200, reps = 3;
  bool smoke = false;
  std::string directory = "/dev/shm";
  std::string processes = "1,2";
  std::string churn = "0,100,400";
  std::string csv;
  std::string tables = "writer,processes,memory,scrape,churn";
  double big_ops = 1e8;
  app.add_option("--threads", threads, "thread counts, comma separated");
  app.add_option("--series", series, "scrape sizes, comma separated");
  app.add_option("--ms", ms, "duration of one writer measurement")->check(CLI::Range(1, 60000));
  app.add_option("--reps", reps, "repetitions (the median is reported)")->check(CLI::Range(1, 100));
  app.add_option("--dir", directory, "where the bench's segments live (removed after)");
  app.add_flag("--smoke", smoke, "tiny run, for CI: proves the bench still works");
  app.add_option("--processes", processes, "writer process counts, comma separated");
  app.add_option("--churn", churn, "dead writer counts for the churn table, comma separated");
  app.add_option("--exporter", g_exporters,
                 "\"NAME=PATH [ARGS...]\" of an exporter: also time real HTTP scrapes (repeatable: side by side)");
  app.add_option("--tables", tables, "which tables to run, comma separated (writer,processes,memory,scrape,churn)");
  app.add_option("--csv", csv, "also write the writer results as CSV (case,threads,ns_per_op)");
  app.add_option("--memory-ops", big_ops, "operations for the memory table")->check(CLI::Range(1e4, 1e10));
  CLI11_PARSE(app, argc, argv);
  if (smoke) {
    threads = "1,2";
    series = "1000";
    ms = 5;
    reps = 1;
    processes = "1,2";
    big_ops = 1e5;
    churn = "0,4";
  }
  if (!csv.empty()) {
    g_csv = std::fopen(csv.c_str(), "w");
    if (g_csv == nullptr) {
      std::fprintf(stderr, "shmetrics-bench: cannot write %s\n", csv.c_str());
      return 2;
    }
    std::fprintf(g_csv, "case,threads,ns_per_op\n");
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::string cpu = "unknown CPU";
  if (std::FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::strncmp(line, "model name", 10) == 0) {
        cpu = std::string(std::strchr(line, ':') + 2);
        cpu.pop_back();
        break;
      }
    }
    std::fclose(f);
  }
  std::printf("## shmetrics-bench on %s: %s, %u hardware threads\n", host, cpu.c_str(),
              std::thread::hardware_concurrency());
  const std::string dir = absl::StrCat(directory, "/shmetrics-bench-", getpid());
  std::filesystem::create_directories(dir);
  signal(SIGPIPE, SIG_IGN);
  const std::vector<std::string> chosen = absl::StrSplit(tables, ',');
  auto wanted = [&](const char* table) { return std::find(chosen.begin(), chosen.end(), table) != chosen.end(); };
  if (wanted("writer")) WriterTable(ParseList(threads), ms, reps, dir);
  if (g_csv != nullptr) std::fclose(g_csv);
  if (wanted("processes")) MultiProcessTable(ParseList(processes), ms, dir);
  if (wanted("memory")) MemoryTable(dir, static_cast<uint64_t>(big_ops));
  if (wanted("scrape")) ScrapeTable(ParseList(series), smoke ? 1 : std::max(reps, 5), dir);
  if (wanted("churn")) ChurnTable(ParseList(churn), smoke ? 1 : std::max(reps, 5), dir);
  std::filesystem::remove_all(dir);
  return 0;
}
