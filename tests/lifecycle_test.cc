// The edges of a writer's life: fork() while another thread registers,
// creation killed half-way, a fork child that cannot create its segment, a
// dead but unreaped writer, thread_local destructors that use metrics,
// default-constructed handles, handles used after Close(), and the service
// kit's bounded per-thread state. Each case reads back through the real
// reader and asserts exact values.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shmetrics/collector.h"
#include "shmetrics/service_kit.h"
#include "shmetrics/shm/segment_file.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // fork() and threads cost much more: fewer rounds
#else
constexpr bool kSanitized = false;
#endif
#if defined(__SANITIZE_ADDRESS__)
// GCC 12's libasan does not hold its allocator's locks across fork(): a
// child that allocates (the writer's fork handler does) deadlocks when
// another thread was inside malloc at the fork (seen in CI, a child stuck
// in SizeClassAllocator64::GetFromAllocator). glibc's malloc does hold
// them, so this is the sanitizer's, not production's.
constexpr bool kAllocatorForkSafe = false;
#else
constexpr bool kAllocatorForkSafe = true;
#endif

std::vector<std::string> FamilyNames(const reader::Segment& segment) {
  std::vector<std::string> names;
  for (const auto& family : segment.families()) names.push_back(family.name);
  return names;
}

std::vector<std::string> DirectoryEntries(const std::string& directory) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(directory)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// ------------------------------------------------------------------- fork()

// In a fork child: registers f_0 .. f_{last} (those the parent had at the
// fork return the inherited family, the rest are new in the child), then
// checks the child's own segment. Returns the exit code: 0 when right.
int CheckForkChild(Writer& writer, int known_at_fork, int last, uint32_t parent_pid,
                   const std::string& parent_path) {
  for (int k = 0; k <= last; ++k) {
    auto family = writer.AddCounter(absl::StrCat("f_", k), "F.");
    if (!family.ok()) {
      std::fprintf(stderr, "child %d: f_%d: %s\n", getpid(), k, family.status().ToString().c_str());
      return 3;
    }
    if (k == last) family->WithLabels({}).value().inc(1);
  }
  auto segment = reader::Segment::Open(writer.path());
  if (!segment.ok()) {
    std::fprintf(stderr, "child %d (knew %d): %s\n", getpid(), known_at_fork, segment.status().ToString().c_str());
    return 1;
  }
  std::vector<std::string> expected = {"base_total"};
  for (int k = 0; k <= last; ++k) expected.push_back(absl::StrCat("f_", k));
  if (FamilyNames(**segment) != expected) {
    std::fprintf(stderr, "child %d (knew %d): families %zu, expected %zu\n", getpid(), known_at_fork,
                 (*segment)->families().size(), expected.size());
    return 2;
  }
  const reader::SegmentInfo info = (*segment)->Info();
  if (info.pid != static_cast<uint32_t>(getpid()) || info.parent_pid != parent_pid ||
      info.process_start_ticks != shm::ProcessStartTicks(getpid()) || info.state != shm::SegmentState::kReady) {
    return 4;
  }
  // Values start at zero in a child; the one increment above is there.
  if ((*segment)->ScalarValue((*segment)->series().at(0)) != 0 ||
      (*segment)->ScalarValue((*segment)->series().back()) != 1) {
    return 5;
  }
  writer.Close();  // remove_on_close: removes the child's file, never the parent's
  if (access(writer.path().c_str(), F_OK) == 0 || access(parent_path.c_str(), F_OK) != 0) return 6;
  return 0;
}

TEST_CASE("fork while another thread registers families: every child's segment opens and holds exactly the "
          "families it registered, and no child crashes") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "forkrace");
  options.remove_on_close = true;
  options.capacities.families = 4096;
  options.capacities.series = 64;
  options.capacities.cells_per_lane = 256;
  options.capacities.bounds = 16;
  options.capacities.exclusive_lanes = 2;
  options.capacities.ring_slots_per_lane = 0;
  options.capacities.error_ring_slots_per_lane = 0;
  auto writer = Writer::Create(options).value();
  const std::string parent_path = writer->path();
  writer->AddCounter("base_total", "Base.").value().WithLabels({}).value().inc(3);

  const int forks = kSanitized ? 100 : 400;
  constexpr int kPerFork = 4;  // families the registrar adds each time the main thread forks
  std::atomic<int> registered{0};  // f_0 .. f_{registered-1} are registered in the parent
  std::atomic<int> generation{0};
  std::atomic<bool> stop{false};
  auto register_more = [&] {
    for (int i = 0; i < kPerFork; ++i) {
      const int k = registered.load(std::memory_order_relaxed);
      writer->AddCounter(absl::StrCat("f_", k), "F.").value();
      registered.store(k + 1, std::memory_order_release);
    }
  };
  if (!kAllocatorForkSafe) {
    MESSAGE("ASan build: families are registered between the forks, not during them (libasan's allocator is not "
            "fork-safe); the race itself runs in the release and TSan builds");
  }
  std::thread registrar([&] {
    int seen = 0;
    while (kAllocatorForkSafe && !stop.load(std::memory_order_relaxed)) {
      const int now = generation.load(std::memory_order_acquire);
      if (now == seen) {
        std::this_thread::yield();
        continue;
      }
      seen = now;
      register_more();
    }
  });
  std::map<int, int> exit_codes;  // code -> children
  for (int i = 0; i < forks; ++i) {
    if (!kAllocatorForkSafe) register_more();
    generation.fetch_add(1, std::memory_order_release);  // the registrar races this fork
    const pid_t child = testing::Fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // `registered` was copied at the fork: the parent had at most one
      // more family (registered, not yet counted). Register a few beyond.
      const int known = registered.load(std::memory_order_acquire);
      _exit(CheckForkChild(*writer, known, known + kPerFork, static_cast<uint32_t>(getppid()), parent_path));
    }
    ++exit_codes[testing::WaitChild(child)];
  }
  stop.store(true);
  registrar.join();
  CHECK(exit_codes == std::map<int, int>{{0, forks}});

  // The parent's segment: its own families, in its order, and its value.
  REQUIRE(dir.SegmentPaths() == std::vector<std::string>{parent_path});
  auto segment = reader::Segment::Open(parent_path).value();
  std::vector<std::string> expected = {"base_total"};
  for (int k = 0; k < registered.load(); ++k) expected.push_back(absl::StrCat("f_", k));
  CHECK(FamilyNames(*segment) == expected);
  CHECK(segment->ScalarValue(segment->series().at(0)) == 3);
  CHECK(DirectoryEntries(dir.path()) == std::vector<std::string>{std::filesystem::path(parent_path).filename()});
}

TEST_CASE("a fork child's segment is its own from the first moment: its identity, state ready, per-process "
          "counters at zero") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "identity");
  options.capacities.exclusive_lanes = 1;
  options.capacities.series = 3;
  auto writer = Writer::Create(options).value();
  auto family = writer->AddCounter("c_total", "C.", {"k"}).value();  // reserves its overflow series
  family.WithLabels({"a"}).value().inc();
  family.WithLabels({"b"}).value().inc();  // the last free series
  family.WithLabels({"c"}).value().inc();  // to the overflow series
  const RequestLog log = writer->requests();
  log.record({"GET", "/", 200, 1, 1, false, ""});                                  // takes the one lane
  std::thread([&] { log.record({"GET", "/", 200, 1, 1, false, ""}); }).join();  // shared lane: dropped
  const reader::SegmentInfo parent = reader::Segment::Open(writer->path()).value()->Info();
  CHECK(parent.series_overflow_count == 1);
  CHECK(parent.lane_fallback_count == 1);
  CHECK(parent.records_dropped == 1);
  CHECK(parent.lanes_in_use == 1);

  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    const std::string path = writer->path();  // the child's own
    const bool written = write(pipe_fds[1], path.data(), path.size()) == static_cast<ssize_t>(path.size());
    _exit(written ? 0 : 1);
  }
  close(pipe_fds[1]);
  char buffer[4096];
  const ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
  close(pipe_fds[0]);
  REQUIRE(testing::WaitChild(child) == 0);
  REQUIRE(n > 0);
  const std::string child_path(buffer, static_cast<size_t>(n));
  CHECK(child_path != writer->path());
  auto segment = reader::Segment::Open(child_path).value();
  const reader::SegmentInfo info = segment->Info();
  CHECK(info.pid == static_cast<uint32_t>(child));
  CHECK(info.parent_pid == static_cast<uint32_t>(getpid()));
  CHECK(info.process_start_ticks == shm::ParseSegmentFileName(std::filesystem::path(child_path).filename().string())->start_ticks);
  CHECK(info.state == shm::SegmentState::kReady);
  CHECK(info.closed_unix_ns == 0);
  CHECK(info.series_overflow_count == 0);
  CHECK(info.lane_fallback_count == 0);
  CHECK(info.records_dropped == 0);
  CHECK(info.lanes_in_use == 0);
  CHECK(info.records_written == 0);
  CHECK(info.series_count == parent.series_count);  // the parent's series, without their values
  CHECK(segment->ScalarValue(segment->series().at(0)) == 0);
}

// ---------------------------------------------------------------- creation

TEST_CASE("writers killed at random points while creating their segment leave no half-made segment, and their "
          "temporary files are removed once their creator is gone") {
  TempDir dir;
  const int writers = kSanitized ? 100 : 300;
  std::mt19937 rng(20240612);  // fixed: a failure can be replayed
  std::uniform_int_distribution<int> delay_us(0, 6000);
  std::map<int, int> exit_codes;
  for (int i = 0; i < writers; ++i) {
    const pid_t child = testing::Fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // Creates segments back to back until killed, so the kill lands
      // anywhere in Create (or in Close, which removes the file).
      WriterOptions options = testing::WriterIn(dir, "doomed");
      options.remove_on_close = true;
      for (;;) {
        auto writer = Writer::Create(options);
        if (!writer.ok()) _exit(1);
        (*writer)->Close();
      }
    }
    usleep(static_cast<useconds_t>(delay_us(rng)));
    kill(child, SIGKILL);
    ++exit_codes[testing::WaitChild(child)];
  }
  CHECK(exit_codes == std::map<int, int>{{-SIGKILL, writers}});

  // Every file under a segment name is a whole segment (a dead writer's,
  // ready or closed): none is empty, none still initializing.
  std::vector<std::string> broken;
  int published = 0;
  for (const std::string& path : dir.SegmentPaths()) {
    auto segment = reader::Segment::Open(path);
    if (!segment.ok()) {
      broken.push_back(segment.status().ToString());
      continue;
    }
    ++published;
    CHECK((*segment)->Info().state != shm::SegmentState::kInitializing);
    CHECK_FALSE((*segment)->WriterAlive());
  }
  CHECK(broken == std::vector<std::string>{});
  MESSAGE(published << " complete segments left by writers killed after publishing");
  size_t temporary = 0;
  for (const std::string& name : DirectoryEntries(dir.path())) {
    if (shm::IsTempSegmentFileName(name)) ++temporary;
  }

  // One scan of a retiring collector past the grace period: the complete
  // segments are retired, the temporary files removed, nothing reported.
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.abandoned_temp_grace_seconds = 0;
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  CHECK(collector->Problems().empty());
  CHECK(collector->Counters().segments_retired_total == static_cast<uint64_t>(published));
  CHECK(collector->Counters().abandoned_removed_total == temporary);
  std::vector<std::string> left_over;  // the archive exists only if something was retired
  for (const std::string& name : DirectoryEntries(dir.path())) {
    if (name != "shmetrics-archive" && name != "shmetrics-archive.lock") left_over.push_back(name);
  }
  CHECK(left_over == std::vector<std::string>{});
  MESSAGE(temporary << " temporary files of killed creators removed");
}

TEST_CASE("RemoveAbandonedTempFiles leaves alone a live creator's file, young files, symlinks, other names and "
          "segments") {
  TempDir dir;
  const std::string d = dir.path();
  const std::string dead = shm::TempSegmentFileName("svc", 1, 2, 0);
  const std::string held = shm::TempSegmentFileName("svc", 1, 2, 1);
  testing::WriteFile(d + "/" + dead, "x");
  testing::WriteFile(d + "/" + held, "x");
  testing::WriteFile(d + "/.shmetrics-tmp.svc.01.2.0", "x");  // not a name we make
  testing::WriteFile(d + "/.shmetrics-tmp.bad name.1.2.0", "x");
  testing::WriteFile(d + "/shmetrics-archive.tmp", "x");
  testing::WriteFile(d + "/target", "precious");
  const std::string link = shm::TempSegmentFileName("svc", 1, 2, 2);
  REQUIRE(symlink((d + "/target").c_str(), (d + "/" + link).c_str()) == 0);
  const int lock_fd = open((d + "/" + held).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(lock_fd >= 0);
  REQUIRE(flock(lock_fd, LOCK_EX) == 0);  // a creator still at work

  // Young files are kept (a creator between open() and flock()).
  CHECK(shm::RemoveAbandonedTempFiles(d, 3600).value() == std::vector<std::string>{});
  CHECK(shm::RemoveAbandonedTempFiles(d, 0).value() == std::vector<std::string>{d + "/" + dead});
  CHECK(DirectoryEntries(d) == std::vector<std::string>{".shmetrics-tmp.bad name.1.2.0", ".shmetrics-tmp.svc.01.2.0",
                                                        held, link, "shmetrics-archive.tmp", "target"});
  close(lock_fd);
  CHECK(shm::RemoveAbandonedTempFiles(d, 0).value() == std::vector<std::string>{d + "/" + held});
  CHECK(testing::ReadFile(d + "/target") == "precious");
  CHECK(shm::RemoveAbandonedTempFiles(d + "/missing", 0).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a fork child that cannot create its segment never touches its parent's file and says what failed") {
  TempDir dir;
  TempDir logs;
  const std::string stderr_path = logs.path() + "/stderr";
  const std::string result_path = logs.path() + "/child";
  // The helper process is the parent of the story: the file size limit
  // must not reach the test runner.
  const pid_t helper = testing::Fork();
  if (helper == 0) {
    const int err = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    dup2(err, 2);
    WriterOptions options = testing::WriterIn(dir, "parent");
    options.remove_on_close = true;
    auto writer = Writer::Create(options).value();
    auto jobs = writer->AddCounter("jobs_total", "Jobs.").value();
    auto counter = jobs.WithLabels({}).value();
    counter.inc(5);
    signal(SIGXFSZ, SIG_IGN);
    rlimit limit{1 << 20, RLIM_INFINITY};  // the child's 3.4 MiB segment does not fit
    setrlimit(RLIMIT_FSIZE, &limit);
    const pid_t child = testing::Fork();
    if (child == 0) {
      counter.inc(100);  // lands nowhere: the child has no segment
      const std::string family_error(writer->AddCounter("more_total", "More.").status().ToString());
      const std::string series_error(jobs.WithLabels({}).status().ToString());
      writer->Close();  // remove_on_close: the child has no file of its own to remove
      testing::WriteFile(result_path, absl::StrCat(getpid(), "\n", shm::ProcessStartTicks(getpid()), "\n",
                                                   family_error, "\n", series_error));
      _exit(0);
    }
    const int status = testing::WaitChild(child);
    counter.inc(2);
    _exit(status);  // without Close(): the segment stays for the test to read
  }
  REQUIRE(testing::WaitChild(helper) == 0);

  // The parent's segment is there, alone, with the parent's counts only.
  const std::vector<std::string> paths = dir.SegmentPaths();
  REQUIRE(paths.size() == 1);
  CHECK(DirectoryEntries(dir.path()) == std::vector<std::string>{std::filesystem::path(paths[0]).filename()});
  auto segment = reader::Segment::Open(paths[0]).value();
  CHECK(segment->Info().pid == static_cast<uint32_t>(helper));
  CHECK(segment->Info().state == shm::SegmentState::kReady);
  CHECK(segment->ScalarValue(segment->series().at(0)) == 7);

  // The child's messages name its own file and the real errno.
  const std::string result = testing::ReadFile(result_path);
  std::vector<std::string> lines;
  for (size_t start = 0; start <= result.size();) {
    const size_t end = std::min(result.find('\n', start), result.size());
    lines.push_back(result.substr(start, end - start));
    start = end + 1;
  }
  REQUIRE(lines.size() == 4);
  const std::string child_pid = lines[0];
  const uint32_t instance = shm::ParseSegmentFileName(std::filesystem::path(paths[0]).filename().string())->instance;
  const std::string child_file =
      dir.path() + "/" + shm::TempSegmentFileName("parent", std::stoul(child_pid), std::stoull(lines[1]), instance);
  const std::string why = "create child segment " + child_file + ": File too large";
  CHECK(testing::ReadFile(stderr_path) == "shmetrics: fork child " + child_pid +
                                              " has no segment of its own, its metrics are dropped: INTERNAL: " +
                                              why + "\n");
  CHECK(lines[2] == "FAILED_PRECONDITION: fork child " + child_pid + " has no segment of its own: " + why);
  CHECK(lines[3] == lines[2]);
}

// ---------------------------------------------------------------- liveness

// A forked process whose writer is ready and that then only waits to be killed.
pid_t IdleWriter(const TempDir& dir, const char* service) {
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    auto writer = Writer::Create(testing::WriterIn(dir, service)).value();
    if (write(ready[1], "x", 1) != 1) _exit(1);
    for (;;) pause();
  }
  char byte = 0;
  REQUIRE(read(ready[0], &byte, 1) == 1);
  close(ready[0]);
  close(ready[1]);
  return child;
}

TEST_CASE("a killed writer that is not reaped yet (a zombie) is not running") {
  TempDir dir;
  const pid_t child = IdleWriter(dir, "zombie");
  auto segment = reader::Segment::Open(dir.SegmentPaths().at(0)).value();
  const reader::SegmentInfo info = segment->Info();
  CHECK(info.pid == static_cast<uint32_t>(child));
  CHECK(shm::ProcessRunning(info.pid, info.process_start_ticks));
  CHECK(segment->WriterAlive());

  kill(child, SIGKILL);
  siginfo_t exited{};
  REQUIRE(waitid(P_PID, static_cast<id_t>(child), &exited, WEXITED | WNOWAIT) == 0);  // dead, not reaped
  CHECK(exited.si_code == CLD_KILLED);
  CHECK(shm::ProcessStartTicks(child) == info.process_start_ticks);  // still listed, as a zombie
  CHECK_FALSE(shm::ProcessRunning(info.pid, info.process_start_ticks));
  CHECK_FALSE(segment->WriterAlive());  // its flock went when it died

  CHECK(testing::WaitChild(child) == -SIGKILL);
  CHECK_FALSE(shm::ProcessRunning(info.pid, info.process_start_ticks));
  CHECK(shm::ProcessRunning(static_cast<uint32_t>(getpid()), shm::ProcessStartTicks(getpid())));
  CHECK_FALSE(shm::ProcessRunning(static_cast<uint32_t>(getpid()), shm::ProcessStartTicks(getpid()) + 1));
  CHECK_FALSE(shm::ProcessRunning(0, 0));
}

TEST_CASE("reader::WriterRunning says a zombie writer is dead") {
  TempDir dir;
  const pid_t child = IdleWriter(dir, "zombie");
  auto segment = reader::Segment::Open(dir.SegmentPaths().at(0)).value();
  CHECK(reader::WriterRunning(*segment));
  kill(child, SIGKILL);
  siginfo_t exited{};
  REQUIRE(waitid(P_PID, static_cast<id_t>(child), &exited, WEXITED | WNOWAIT) == 0);
  const bool running_as_zombie = reader::WriterRunning(*segment);
  // One scan of the exporter's collector retires it, still unreaped.
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  const uint64_t retired_as_zombie = collector->Counters().segments_retired_total;
  CHECK(testing::WaitChild(child) == -SIGKILL);
  CHECK_FALSE(running_as_zombie);
  CHECK(retired_as_zombie == 1);
}

// ------------------------------------------------------------------- lanes

Counter g_exit_counter;  // set by the test below before its threads start

// A thread_local whose destructor uses a metric. When it is constructed
// before the thread's first metric operation, it is destroyed after the
// writer's lane releaser.
struct IncrementsOnExit {
  ~IncrementsOnExit() { g_exit_counter.inc(); }
  void Touch() {}
};
thread_local IncrementsOnExit t_increments_on_exit;

TEST_CASE("threads whose thread_local destructors use a metric give every lane back, and every increment counts") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "exits")).value();  // 32 exclusive lanes
  g_exit_counter = writer->AddCounter("exits_total", "Exits.").value().WithLabels({}).value();
  constexpr int kThreads = 1000;
  for (int i = 0; i < kThreads; ++i) {
    std::thread([i] {
      t_increments_on_exit.Touch();
      // Half the threads use the metric first (their lane releaser is then
      // destroyed before the destructor above runs); the other half use it
      // for the first time in that destructor.
      if (i % 2 == 0) g_exit_counter.inc();
    }).join();
  }
  auto segment = reader::Segment::Open(writer->path()).value();
  const reader::SegmentInfo info = segment->Info();
  CHECK(info.lanes_in_use == 0);
  CHECK(info.lane_fallback_count == 0);
  CHECK(segment->ScalarValue(segment->series().at(0)) == kThreads + kThreads / 2);
  // A new thread still gets a lane of its own (and a ring).
  std::thread([&] { writer->requests().record({"GET", "/", 200, 1, 1, false, ""}); }).join();
  CHECK(segment->Info().records_dropped == 0);
  g_exit_counter = Counter();
}

// ------------------------------------------------------------------- handles

TEST_CASE("default-constructed handles change nothing, in any writer") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "unset")).value();
  auto counter = writer->AddCounter("first_total", "First.").value().WithLabels({}).value();
  auto gauge = writer->AddGauge("level", "Level.").value().WithLabels({}).value();
  auto histogram = writer->AddHistogram("latency_seconds", "L.", {}, {0.1, 1}).value().WithLabels({}).value();
  const RequestLog log = writer->requests();
  counter.inc(7);
  gauge.set(2);
  histogram.observe(0.5);
  log.record({"GET", "/real", 200, 1, 1, false, ""});

  auto use_unset_handles = [] {
    Counter unset_counter;
    Gauge unset_gauge;
    Histogram unset_histogram;
    RequestLog unset_log;
    CHECK_FALSE(unset_counter.valid());
    CHECK_FALSE(unset_gauge.valid());
    CHECK_FALSE(unset_histogram.valid());
    unset_counter.inc(5);
    unset_counter.add(1.5);
    unset_gauge.inc(3);
    unset_gauge.dec(1);
    unset_gauge.add(2.5);
    unset_gauge.set(9);
    unset_histogram.observe(0.05);
    unset_histogram.observe(1e9);
    unset_log.record({"GET", "/unset", 500, 1, 1, true, "unset"});
  };
  use_unset_handles();                  // a thread bound to the writer
  std::thread(use_unset_handles).join();  // a thread bound to nothing

  auto segment = reader::Segment::Open(writer->path()).value();
  testing::Totals totals;
  testing::AddSegment(*segment, totals);
  CHECK(totals.scalars == std::map<std::string, double>{{"first_total{}", 7}, {"level{}", 2}});
  CHECK(totals.buckets.at("latency_seconds{}") == std::vector<uint64_t>{0, 1, 0});
  CHECK(totals.sums.at("latency_seconds{}") == 0.5);
  const auto records = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  REQUIRE(records.records.size() == 1);
  CHECK(records.records[0].endpoint == "/real");
  CHECK(segment->ReadRing(0, reader::RingKind::kErrors, 0).next == 0);
  CHECK(segment->Info().records_dropped == 0);
  CHECK(segment->Info().lanes_in_use == 1);  // this thread's; the unset handles bound nothing
}

TEST_CASE("after Close() handles change nothing: the closed segment's values are final, in threads and fork "
          "children too") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "closing")).value();
  auto counter = writer->AddCounter("done_total", "Done.").value().WithLabels({}).value();
  auto gauge = writer->AddGauge("level", "Level.").value().WithLabels({}).value();
  auto histogram = writer->AddHistogram("latency_seconds", "L.", {}, {0.1, 1}).value().WithLabels({}).value();
  const RequestLog log = writer->requests();
  counter.inc(3);
  gauge.set(4);
  histogram.observe(0.5);
  log.record({"GET", "/before", 200, 1, 1, true, "before"});
  writer->Close();

  auto use_handles = [&] {
    counter.inc(100);
    counter.add(0.5);
    gauge.inc(10);
    gauge.set(50);
    histogram.observe(0.05);
    log.record({"GET", "/after", 500, 1, 1, true, "after"});
  };
  use_handles();                  // this thread, bound before Close()
  std::thread(use_handles).join();  // a thread that binds after Close()
  const pid_t child = testing::Fork();
  if (child == 0) {
    use_handles();
    _exit(0);
  }
  REQUIRE(testing::WaitChild(child) == 0);

  REQUIRE(dir.SegmentPaths().size() == 1);  // the child of a closed writer makes no segment
  auto segment = reader::Segment::Open(writer->path()).value();
  CHECK(segment->Info().state == shm::SegmentState::kClosed);
  testing::Totals totals;
  testing::AddSegment(*segment, totals);
  CHECK(totals.scalars == std::map<std::string, double>{{"done_total{}", 3}, {"level{}", 4}});
  CHECK(totals.buckets.at("latency_seconds{}") == std::vector<uint64_t>{0, 1, 0});
  const auto requests = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  REQUIRE(requests.records.size() == 1);
  CHECK(requests.records[0].endpoint == "/before");
  CHECK(segment->ReadRing(0, reader::RingKind::kErrors, 0).next == 1);
  CHECK(segment->Info().records_dropped == 0);
  CHECK(segment->Info().lane_fallback_count == 0);
}

// ---------------------------------------------------------------- the kit

TEST_CASE("kit: an error message cut at 32 bytes keeps whole characters, so the record is kept") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "kit")).value();
  auto kit = ServiceKit::Create(*writer, {}).value();
  std::string accents;
  for (int i = 0; i < 20; ++i) accents += "\xc3\xa9";  // é, 2 bytes each
  {
    auto request = kit->StartRequest("GET", "/x");
    request.set_error("a" + accents);  // 41 bytes: byte 32 is the middle of an é
  }
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto errors = segment->ReadRing(0, reader::RingKind::kErrors, 0);
  CHECK(errors.torn == 0);
  REQUIRE(errors.records.size() == 1);
  CHECK(errors.records[0].error_message == "a" + accents.substr(0, 30));
  CHECK(errors.records[0].status == 200);
  CHECK(errors.records[0].error);
}

TEST_CASE("kit: 300,000 distinct endpoints on one thread keep the handle cache at max_endpoints + 1 entries") {
  TempDir dir;
  WriterOptions writer_options = testing::WriterIn(dir, "kit");
  writer_options.capacities.ring_slots_per_lane = 0;  // records are not what this test is about
  writer_options.capacities.error_ring_slots_per_lane = 0;
  auto writer = Writer::Create(writer_options).value();
  ServiceKitOptions options;
  options.max_endpoints = 100;
  auto kit = ServiceKit::Create(*writer, options).value();
  const int requests = kSanitized ? 100'000 : 300'000;
  for (int i = 0; i < requests; ++i) kit->StartRequest("GET", absl::StrCat("/item/", i));
  CHECK(kit->thread_cached_endpoints() == 101);
  testing::Totals totals;
  testing::AddSegment(*reader::Segment::Open(writer->path()).value(), totals);
  CHECK(totals.scalars.at("http_requests_total{GET,/item/0,200}") == 1);
  CHECK(totals.scalars.at("http_requests_total{GET,/item/99,200}") == 1);
  CHECK_FALSE(totals.scalars.contains("http_requests_total{GET,/item/100,200}"));
  CHECK(totals.scalars.at("http_requests_total{GET,other,200}") == requests - 100);
  CHECK(totals.scalars.at("http_requests_in_progress{GET,other}") == 0);
}

TEST_CASE("kit: default request buckets run from 0.25 ms to 10 s") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "kit")).value();
  auto kit = ServiceKit::Create(*writer, {}).value();
  auto segment = reader::Segment::Open(writer->path()).value();
  const std::vector<double> expected = {0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,     0.25,   0.5,   1,      2.5,    5,    10};
  bool found = false;
  for (const auto& family : segment->families()) {
    if (family.name != "http_request_duration_seconds") continue;
    found = true;
    CHECK(family.bounds == expected);
  }
  CHECK(found);
  CHECK(ServiceKitOptions().request_buckets == expected);
}

}  // namespace
}  // namespace shmetrics

namespace shmetrics {
namespace {

TEST_CASE("without /proc (no descriptor left), a writer's start ticks are the ticks since boot, never 0") {
  int result[2];
  REQUIRE(pipe(result) == 0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    // Every descriptor taken (of 64 at most): /proc/self/stat cannot be opened.
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_cur, 64);
    setrlimit(RLIMIT_NOFILE, &limit);
    while (open("/dev/null", O_RDONLY | O_CLOEXEC) >= 0) {
    }
    const uint64_t answers[2] = {shm::ProcessStartTicks(getpid()), shm::OwnStartTicks()};
    _exit(write(result[1], answers, sizeof answers) == sizeof answers ? 0 : 1);
  }
  close(result[1]);
  uint64_t answers[2] = {1, 0};
  CHECK(read(result[0], answers, sizeof answers) == sizeof answers);
  close(result[0]);
  CHECK(testing::WaitChild(child) == 0);
  CHECK(answers[0] == 0);  // /proc could not tell
  timespec boot{};
  clock_gettime(CLOCK_BOOTTIME, &boot);
  const uint64_t now_ticks = static_cast<uint64_t>(boot.tv_sec) * static_cast<uint64_t>(sysconf(_SC_CLK_TCK));
  CHECK(answers[1] > 0);
  CHECK(answers[1] <= now_ticks + static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
  CHECK(answers[1] >= shm::ProcessStartTicks(getpid()));  // the child began after us
}

}  // namespace
}  // namespace shmetrics

namespace shmetrics {
namespace {

TEST_CASE("in a pid namespace whose /proc is the outer one, a writer does not take the outer pid 1's start") {
  if (geteuid() != 0) {
    MESSAGE("not root: no pid namespace to make; skipped");
    return;
  }
  int result[2];
  REQUIRE(pipe(result) == 0);
  const pid_t helper = testing::Fork();
  if (helper == 0) {
    if (unshare(CLONE_NEWPID) != 0) _exit(3);
    const pid_t inner = fork();  // pid 1 of the new namespace; /proc is still ours, the outer one
    if (inner == 0) {
      const uint64_t answers[2] = {static_cast<uint64_t>(getpid()), shm::OwnStartTicks()};
      _exit(write(result[1], answers, sizeof answers) == sizeof answers ? 0 : 1);
    }
    int status = 0;
    waitpid(inner, &status, 0);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 2);
  }
  close(result[1]);
  uint64_t answers[2] = {0, 0};
  const bool read_all = read(result[0], answers, sizeof answers) == sizeof answers;
  close(result[0]);
  const int exit_code = testing::WaitChild(helper);
  if (exit_code == 3) {
    MESSAGE("unshare(CLONE_NEWPID) refused here; skipped");
    return;
  }
  CHECK(exit_code == 0);
  REQUIRE(read_all);
  CHECK(answers[0] == 1);
  CHECK(answers[1] != shm::ProcessStartTicks(1));        // not the outer init's
  CHECK(answers[1] >= shm::ProcessStartTicks(getpid()));  // ticks since boot, after ours
}

}  // namespace
}  // namespace shmetrics
