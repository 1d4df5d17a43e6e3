// Real threads and real processes: exact totals, monotonic snapshots,
// kill -9, fork. Parents stay single-threaded when they fork (TSan-safe).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <latch>
#include <map>
#include <thread>
#include <vector>

#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

constexpr int kThreads = 4;

struct Handles {
  Counter ops_a, ops_b;
  Histogram latency;
  Gauge in_flight;
};

Handles Register(Writer& writer) {
  auto ops = writer.AddCounter("ops_total", "Ops.", {"kind"}).value();
  auto latency = writer.AddHistogram("latency_seconds", "L.", {"kind"}, {0.1, 0.2, 0.4}).value();
  auto in_flight = writer.AddGauge("in_flight", "F.").value();
  return {ops.WithLabels({"a"}).value(), ops.WithLabels({"b"}).value(),
          latency.WithLabels({"a"}).value(), in_flight.WithLabels({}).value()};
}

// Observed values cycle over 0.05, 0.15, 0.3, 0.5: one per bucket.
void Work(Handles& h, int iterations) {
  static constexpr double kValues[] = {0.05, 0.15, 0.3, 0.5};
  for (int i = 0; i < iterations; ++i) {
    h.in_flight.inc();
    h.ops_a.inc();
    h.ops_b.add(2);
    h.latency.observe(kValues[i % 4]);
    h.in_flight.dec();
  }
}

testing::Totals Snapshot(const TempDir& dir) {
  testing::Totals totals;
  for (const auto& path : dir.SegmentPaths()) {
    auto segment = reader::Segment::Open(path);
    if (!segment.ok()) continue;  // a child's segment may be mid-creation
    testing::AddSegment(**segment, totals);
  }
  return totals;
}

void CheckNoDecrease(const testing::Totals& before, const testing::Totals& after) {
  for (const auto& [key, value] : before.scalars) {
    if (key.rfind("in_flight", 0) == 0) continue;  // a gauge may go down
    REQUIRE(after.scalars.at(key) >= value);
  }
  for (const auto& [key, buckets] : before.buckets) {
    const auto& later = after.buckets.at(key);
    for (size_t b = 0; b < buckets.size(); ++b) REQUIRE(later[b] >= buckets[b]);
  }
}

TEST_CASE("totals are exact across 4 forked processes x 4 threads, and snapshots never go down") {
  TempDir dir;
  constexpr int kProcesses = 4;
  constexpr int kIterations = 20000;
  WriterOptions options = testing::WriterIn(dir, "multi");
  auto writer = Writer::Create(options).value();
  Handles handles = Register(*writer);  // pre-fork: children inherit the handles

  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t child = testing::Fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&handles] { Work(handles, kIterations); });
      }
      for (auto& thread : threads) thread.join();
      _exit(0);
    }
    children.push_back(child);
  }

  testing::Totals previous = Snapshot(dir);
  int snapshots = 0;
  size_t running = children.size();
  while (running > 0) {
    testing::Totals current = Snapshot(dir);
    CheckNoDecrease(previous, current);
    previous = std::move(current);
    ++snapshots;
    running = 0;
    for (pid_t child : children) running += kill(child, 0) == 0 && waitpid(child, nullptr, WNOHANG) == 0;
  }
  for (pid_t child : children) waitpid(child, nullptr, 0);
  MESSAGE("snapshots taken while writers ran: " << snapshots);

  const testing::Totals totals = Snapshot(dir);
  const double n = double(kProcesses) * kThreads * kIterations;
  CHECK(totals.scalars.at("ops_total{a}") == n);
  CHECK(totals.scalars.at("ops_total{b}") == 2 * n);
  CHECK(totals.scalars.at("in_flight{}") == 0);
  const uint64_t quarter = kProcesses * kThreads * kIterations / 4;
  CHECK(totals.buckets.at("latency_seconds{a}") == std::vector<uint64_t>{quarter, quarter, quarter, quarter});
  CHECK(totals.sums.at("latency_seconds{a}") == doctest::Approx(quarter * (0.05 + 0.15 + 0.3 + 0.5)));
  CHECK(dir.SegmentPaths().size() == kProcesses + 1);  // each child has its own segment
}

TEST_CASE("threads beyond the lane count share a lane with atomic adds, and totals stay exact") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "lanes");
  options.capacities.exclusive_lanes = 2;
  auto writer = Writer::Create(options).value();
  Handles handles = Register(*writer);
  std::vector<std::thread> threads;
  std::latch all_bound(6);  // every thread holds a lane (or the shared one) at once
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&handles, &all_bound] {
      handles.ops_a.add(0);  // binds this thread's lane
      all_bound.arrive_and_wait();
      Work(handles, 10000);
    });
  }
  for (auto& thread : threads) thread.join();
  auto segment = reader::Segment::Open(writer->path()).value();
  testing::Totals totals;
  testing::AddSegment(*segment, totals);
  CHECK(totals.scalars.at("ops_total{a}") == 60000);
  CHECK(totals.scalars.at("in_flight{}") == 0);
  CHECK(totals.buckets.at("latency_seconds{a}") == std::vector<uint64_t>{15000, 15000, 15000, 15000});
  const reader::SegmentInfo info = segment->Info();
  CHECK(info.lane_fallback_count == 4);
  CHECK(info.lanes_in_use == 0);  // every thread gave its lane back on exit
}

TEST_CASE("a lane is reclaimed when its thread exits: waves of threads never fall back") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "waves");
  options.capacities.exclusive_lanes = 2;
  auto writer = Writer::Create(options).value();
  Handles handles = Register(*writer);
  for (int wave = 0; wave < 5; ++wave) {
    std::thread a([&handles] { Work(handles, 1000); });
    std::thread b([&handles] { Work(handles, 1000); });
    a.join();
    b.join();
  }
  auto segment = reader::Segment::Open(writer->path()).value();
  CHECK(segment->Info().lane_fallback_count == 0);
  CHECK(segment->Info().lanes_in_use == 0);
  testing::Totals totals;
  testing::AddSegment(*segment, totals);
  CHECK(totals.scalars.at("ops_total{a}") == 10000);
}

TEST_CASE("kill -9 mid-run: every completed increment is in the segment, and it reads dead") {
  TempDir dir;
  auto* progress = static_cast<std::atomic<uint64_t>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(progress != MAP_FAILED);
  new (progress) std::atomic<uint64_t>(0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    WriterOptions options = testing::WriterIn(dir, "victim");
    auto writer = Writer::Create(options).value();
    auto counter = writer->AddCounter("done_total", "Done.").value().WithLabels({}).value();
    for (uint64_t i = 1;; ++i) {
      counter.inc();
      progress->store(i, std::memory_order_release);
    }
  }
  // Until the child is well into its loop (or, should it die first, not forever).
  for (uint64_t spin = 0; progress->load(std::memory_order_acquire) < 200000; ++spin) {
    siginfo_t info{};
    if (spin % 4096 == 0 && waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid != 0) {
      break;
    }
    std::this_thread::yield();
  }
  REQUIRE(progress->load(std::memory_order_acquire) >= 200000);
  auto live = reader::Segment::Open(dir.SegmentPaths().at(0)).value();
  CHECK(live->WriterAlive());
  kill(child, SIGKILL);
  CHECK(testing::WaitChild(child) == -SIGKILL);
  const uint64_t completed = progress->load(std::memory_order_acquire);

  auto segment = reader::Segment::Open(dir.SegmentPaths().at(0)).value();
  CHECK_FALSE(segment->WriterAlive());
  CHECK(segment->Info().state == shm::SegmentState::kReady);  // never closed
  CHECK(segment->Info().pid == static_cast<uint32_t>(child));
  const double value = segment->ScalarValue(segment->series().at(0));
  // The kill may land between the increment and the progress store.
  CHECK((value == double(completed) || value == double(completed) + 1));

  // A process that reuses the pid is not mistaken for the writer: liveness
  // is the writer's flock, which died with it. Stand in for pid reuse with
  // the dead segment's bytes under a live pid (ours), in its name and its
  // header. The bytes copied unchanged under that name are refused.
  const uint32_t our_pid = static_cast<uint32_t>(getpid());
  const uint64_t our_ticks = shm::ProcessStartTicks(getpid());
  const std::string reused = dir.path() + "/" + shm::SegmentFileName("victim", our_pid, our_ticks, 0);
  std::string bytes = testing::ReadFile(segment->path());
  testing::WriteFile(reused, bytes);
  chmod(reused.c_str(), 0600);
  CHECK(reader::Segment::Open(reused).status().message() ==
        absl::StrCat(reused, ": header names process ", child, " started at tick ", segment->Info().process_start_ticks,
                     " but the file name says ", our_pid, " at tick ", our_ticks, " (a copy of another segment?)"));
  testing::WriteFile(reused, testing::AsWrittenBy(bytes, our_pid, our_ticks));
  auto impostor = reader::Segment::Open(reused).value();
  CHECK_FALSE(impostor->WriterAlive());
  munmap(progress, 4096);
}

TEST_CASE("fork: the child writes into a segment of its own through handles taken before") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "forky");
  auto writer = Writer::Create(options).value();
  auto counter = writer->AddCounter("c_total", "C.", {"k"}).value().WithLabels({"x"}).value();
  counter.add(2);
  const pid_t child = testing::Fork();
  if (child == 0) {
    for (int i = 0; i < 5; ++i) counter.inc();
    const pid_t grandchild = testing::Fork();
    if (grandchild == 0) {
      counter.add(100);
      _exit(0);
    }
    _exit(testing::WaitChild(grandchild));
  }
  REQUIRE(testing::WaitChild(child) == 0);
  counter.inc();

  std::map<uint32_t, std::pair<uint32_t, double>> by_pid;  // pid -> parent pid, value
  for (const auto& path : dir.SegmentPaths()) {
    auto segment = reader::Segment::Open(path).value();
    const auto info = segment->Info();
    REQUIRE(segment->series().size() == 1);
    by_pid[info.pid] = {info.parent_pid, segment->ScalarValue(segment->series()[0])};
  }
  REQUIRE(by_pid.size() == 3);
  const uint32_t me = static_cast<uint32_t>(getpid());
  CHECK(by_pid.at(me) == std::pair<uint32_t, double>{0, 3});
  CHECK(by_pid.at(static_cast<uint32_t>(child)) == std::pair<uint32_t, double>{me, 5});
  int grandchildren = 0;
  for (const auto& [pid, entry] : by_pid) {
    if (entry.first == static_cast<uint32_t>(child)) {
      CHECK(entry.second == 100);
      ++grandchildren;
    }
  }
  CHECK(grandchildren == 1);
}

}  // namespace
}  // namespace shmetrics
