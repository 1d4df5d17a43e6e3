// The exporter's metrics about itself: its process statistics (/proc, as
// the Prometheus client libraries read them), checked against what the
// kernel says by other means, and the per-segment capacity and loss
// metrics, checked exactly against a writer that overflows.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "process_metrics.h"
#include "process_support.h"
#include "shmetrics/collector.h"
#include "shmetrics/shm/segment_file.h"
#include "shmetrics/version.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using exporter::ParseBootTime;
using exporter::ParseProcStat;
using exporter::ProcessStats;
using exporter::ReadProcessStats;
using testing::Exporter;
using testing::HttpGet;
using testing::RunCommand;
using testing::TempDir;
using testing::WriterProcess;

ProcessStats Read() {
  absl::StatusOr<ProcessStats> stats = ReadProcessStats();
  REQUIRE_MESSAGE(stats.ok(), stats.status().ToString());
  return *stats;
}

uint64_t BootTime() {
  const absl::StatusOr<uint64_t> boot = ParseBootTime(testing::ReadFile("/proc/stat"));
  REQUIRE(boot.ok());
  return *boot;
}

// Descriptors open in this process, asked of the kernel one by one.
uint64_t OpenFdsByFcntl() {
  uint64_t open = 0;
  for (int fd = 0; fd < (1 << 16); ++fd) open += fcntl(fd, F_GETFD) != -1;
  return open;
}

double CpuSecondsByRusage() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);  // cannot fail for RUSAGE_SELF
  return double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

TEST_CASE("process stats: open fds is exact and rises by one per open file") {
  const ProcessStats before = Read();
  CHECK(before.open_fds == OpenFdsByFcntl());
  const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(Read().open_fds == before.open_fds + 1);
  close(fd);
  CHECK(Read().open_fds == before.open_fds);
}

TEST_CASE("process stats: max fds is the soft RLIMIT_NOFILE and follows it") {
  rlimit original{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &original) == 0);
  CHECK(Read().max_fds == (original.rlim_cur == RLIM_INFINITY ? UINT64_MAX : original.rlim_cur));
  rlimit lower = original;
  lower.rlim_cur = original.rlim_cur == RLIM_INFINITY ? 1000 : original.rlim_cur - 1;  // lowering is allowed
  REQUIRE(setrlimit(RLIMIT_NOFILE, &lower) == 0);
  CHECK(Read().max_fds == lower.rlim_cur);
  REQUIRE(setrlimit(RLIMIT_NOFILE, &original) == 0);
}

TEST_CASE("process stats: start time lies in the boot window and a child forked now starts now") {
  const double boot = double(BootTime());
  const double now = shm::NowUnixNs() * 1e-9;
  const ProcessStats self = Read();
  CHECK(self.start_time_seconds >= boot);
  CHECK(self.start_time_seconds <= now);
  // btime is whole seconds and the clock may have been slewed since boot:
  // a process started now reads as now within 2 s.
  int result[2];
  REQUIRE(pipe(result) == 0);
  const double fork_time = shm::NowUnixNs() * 1e-9;
  const pid_t child = testing::Fork();
  if (child == 0) {
    const absl::StatusOr<ProcessStats> stats = ReadProcessStats();
    const double start = stats.ok() ? stats->start_time_seconds : -1;
    _exit(write(result[1], &start, sizeof start) == sizeof start ? 0 : 1);
  }
  double child_start = 0;
  REQUIRE(read(result[0], &child_start, sizeof child_start) == sizeof child_start);
  CHECK(testing::WaitChild(child) == 0);
  close(result[0]);
  close(result[1]);
  CHECK(child_start >= self.start_time_seconds);
  CHECK(child_start > fork_time - 2);
  CHECK(child_start < fork_time + 2);
}

TEST_CASE("process stats: CPU seconds agree with getrusage to the clock tick") {
  // Burn some CPU so the value is not trivially 0.
  volatile uint64_t spin = 0;
  const double until = CpuSecondsByRusage() + 0.05;
  while (CpuSecondsByRusage() < until) spin = spin + 1;
  const double tick = 1.0 / double(sysconf(_SC_CLK_TCK));
  const double before = CpuSecondsByRusage();
  const double cpu = Read().cpu_seconds_total;
  const double after = CpuSecondsByRusage();
  // /proc truncates user and system time to ticks separately.
  CHECK(cpu >= before - 2 * tick);
  CHECK(cpu <= after + 1e-9);
  CHECK(cpu > 0);
}

TEST_CASE("process stats: resident and virtual memory grow by a 64 MiB populated mapping") {
  constexpr uint64_t kBytes = uint64_t{64} << 20;
  const ProcessStats before = Read();
  CHECK(before.resident_memory_bytes > 0);
  CHECK(before.virtual_memory_bytes >= before.resident_memory_bytes);
  void* area = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  REQUIRE(area != MAP_FAILED);
  const ProcessStats during = Read();
  munmap(area, kBytes);
  CHECK(during.virtual_memory_bytes >= before.virtual_memory_bytes + kBytes);
  CHECK(during.virtual_memory_bytes <= before.virtual_memory_bytes + kBytes + (4 << 20));
  // The kernel's RSS counters are batched per thread or CPU (off by up to
  // a few dozen pages either way), vsize is exact.
  constexpr uint64_t kRssSlack = 1 << 20;
  CHECK(during.resident_memory_bytes >= before.resident_memory_bytes + kBytes - kRssSlack);
  CHECK(during.resident_memory_bytes <= before.resident_memory_bytes + kBytes + (4 << 20));
}

TEST_CASE("process stats: a command name with spaces and parentheses does not shift the fields") {
  // Forged lines: the fields come after the last ')'.
  const std::string tail =
      " S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17 18 333 4444 55 18446744073709551615 0 0\n";
  for (const std::string comm : {"(x)", "(a) b (c) 1 2 3)", "(\n) ) )", "()"}) {
    const auto fields = ParseProcStat("4242 " + comm + tail);
    REQUIRE_MESSAGE(fields.ok(), comm);
    CHECK(fields->utime_ticks == 111);
    CHECK(fields->stime_ticks == 222);
    CHECK(fields->start_ticks == 333);
    CHECK(fields->vsize_bytes == 4444);
    CHECK(fields->rss_pages == 55);
  }
  CHECK(ParseProcStat("4242 x S 1 2").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseProcStat("4242 (x) S 1 2 3").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseProcStat("4242 (x) S 1 2 3 4 5 6 7 8 9 10 -1 222 13 14 15 16 17 18 333 4444 55")
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
  CHECK(*ParseBootTime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n") == 1700000000);
  CHECK(ParseBootTime("cpu  1 2 3\n").status().code() == absl::StatusCode::kInvalidArgument);

  // The real kernel's line, with this process named so.
  char name[17] = {};
  REQUIRE(prctl(PR_GET_NAME, name) == 0);
  const auto plain = ParseProcStat(testing::ReadFile("/proc/self/stat"));
  REQUIRE(plain.ok());
  REQUIRE(prctl(PR_SET_NAME, ") 1 2 (x) 3") == 0);
  const std::string renamed = testing::ReadFile("/proc/self/stat");
  const auto parsed = ParseProcStat(renamed);
  const absl::StatusOr<ProcessStats> stats = ReadProcessStats();
  REQUIRE(prctl(PR_SET_NAME, name) == 0);
  CHECK(absl::StrContains(renamed, "() 1 2 (x) 3)"));
  REQUIRE(parsed.ok());
  CHECK(parsed->start_ticks == plain->start_ticks);
  REQUIRE(stats.ok());
  CHECK(stats->start_time_seconds ==
        double(plain->start_ticks) / double(sysconf(_SC_CLK_TCK)) + double(BootTime()));
}

TEST_CASE("the writer refuses the names of the exporter's process metrics but not other process_ names") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "procnames")).value();
  CHECK(writer->AddGauge("process_open_fds", "h").status().message() ==
        "family 'process_open_fds': the name 'process_open_fds' is reserved for the exporter's own process metrics "
        "(process_cpu_seconds_total, process_open_fds, process_max_fds, process_virtual_memory_bytes, "
        "process_resident_memory_bytes, process_start_time_seconds)");
  CHECK(writer->AddCounter("process_cpu_seconds_total", "h").status().code() == absl::StatusCode::kInvalidArgument);
  // OpenMetrics would name this counter's family process_cpu_seconds too.
  CHECK(writer->AddCounter("process_cpu_seconds", "h").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(writer->AddGauge("process_cpu_seconds", "h").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(writer->AddHistogram("process_max_fds", "h", {}, {1}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(writer->AddCounter("process_jobs_total", "h").ok());
  CHECK(writer->AddGauge("process_open_fds_limit", "h").ok());
}

// Sample lines of `body` parsed by python3-prometheus-client ("text" or
// "openmetrics"), the exporter's own included: name{k="v",...} value.
std::set<std::string> AllSamples(const TempDir& dir, const std::string& body, const std::string& kind) {
  const std::string file = dir.path() + "/exposition.txt";
  testing::WriteFile(file, body);
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/expo.py samples " + file + " " + kind);
  std::filesystem::remove(file);
  REQUIRE(r.exit_code == 0);
  std::set<std::string> lines;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) lines.emplace(line);
  return lines;
}

// A writer of 4 series slots and 1 exclusive lane: 3 series fit beside the
// slot kept for the family's overflow series, the 7 label sets after them
// overflow; a second thread finds the lane taken and drops its 3 records.
void Overflow(Writer& writer) {
  auto jobs = writer.AddCounter("jobs_total", "Jobs.", {"queue"}).value();
  for (int i = 0; i < 10; ++i) jobs.WithLabels({absl::StrCat("q", i)}).value().inc();
  std::thread([&] {
    jobs.WithLabels({"q0"}).value().inc();
    RequestRecordInput request;
    request.method = "GET";
    request.endpoint = "/";
    request.status = 200;
    for (int i = 0; i < 3; ++i) writer.requests().record(request);
  }).join();
}

TEST_CASE("a writer that overflows its series: the exporter shows its exact counts and the output still parses") {
  TempDir dir;
  WriterProcess writer(dir.path(), "tiny", Overflow, [](WriterOptions& options) {
    options.capacities.series = 4;
    options.capacities.exclusive_lanes = 1;
  });
  // The exporter starts below its hard descriptor limit (and raises it).
  struct SoftLimitBelowHard {
    rlimit original{};
    SoftLimitBelowHard() {
      getrlimit(RLIMIT_NOFILE, &original);
      rlimit lower = original;
      if (lower.rlim_max != RLIM_INFINITY && lower.rlim_max > 1024) lower.rlim_cur = lower.rlim_max - 1;
      setrlimit(RLIMIT_NOFILE, &lower);
    }
    ~SoftLimitBelowHard() { setrlimit(RLIMIT_NOFILE, &original); }
  } soft_limit_below_hard;
  Exporter exporter(dir);
  const std::string pid = absl::StrCat(writer.pid());

  const auto text = HttpGet(exporter.url("/metrics"));
  REQUIRE(text.status == 200);
  const std::string labels = absl::StrCat("{service=\"tiny\",pid=\"", pid, "\"}");
  for (const auto& [name, value] : std::vector<std::pair<std::string, int>>{
           {"shmetrics_exporter_segment_families_used", 1},
           {"shmetrics_exporter_segment_families_capacity", 256},
           {"shmetrics_exporter_segment_series_used", 4},  // 3 series + the overflow series
           {"shmetrics_exporter_segment_series_capacity", 4},
           {"shmetrics_exporter_segment_cells_used", 8},  // a counter takes 2 cells
           {"shmetrics_exporter_segment_cells_capacity", 8192},
           {"shmetrics_exporter_segment_lanes_used", 1},  // the writer's main thread
           {"shmetrics_exporter_segment_lanes_capacity", 1},
           {"shmetrics_exporter_segment_series_overflows_total", 7},
           {"shmetrics_exporter_segment_lane_fallbacks_total", 1},
           {"shmetrics_exporter_segment_records_dropped_total", 3},
           {"shmetrics_exporter_segment_exemplars_dropped_total", 0},
           {"shmetrics_exporter_segment_native_out_of_range_total", 0}}) {
    CHECK_MESSAGE(absl::StrContains(text.body, absl::StrCat("\n", name, labels, " ", value, "\n")), name);
  }
  // The overflowed label sets went to the overflow series: 7 + 1 from the thread on q0.
  CHECK(absl::StrContains(text.body, "jobs_total{queue=\"shmetrics_overflow\",service=\"tiny\"} 7\n"));
  CHECK(absl::StrContains(text.body, "jobs_total{queue=\"q0\",service=\"tiny\"} 2\n"));
  CHECK(absl::StrContains(text.body, "# TYPE shmetrics_exporter_segment_series_overflows_total counter\n"));
  CHECK(absl::StrContains(text.body, "# TYPE process_cpu_seconds_total counter\n"));
  CHECK(absl::StrContains(
      text.body, absl::StrCat("shmetrics_exporter_build_info{version=\"", SHMETRICS_VERSION, "\",revision=\"",
                              SHMETRICS_GIT_COMMIT, "\",commit=\"", SHMETRICS_GIT_COMMIT, "\",")));

  const std::string file = dir.path() + "/metrics.txt";
  testing::WriteFile(file, text.body);
  const auto promtool = RunCommand("promtool check metrics < " + file + " 2>&1");
  std::filesystem::remove(file);
  CHECK_MESSAGE(promtool.exit_code == 0, promtool.output);

  const std::string sorted_labels = absl::StrCat("{pid=\"", pid, "\",service=\"tiny\"}");
  const std::set<std::string> samples = AllSamples(dir, text.body, "text");
  CHECK(samples.contains("shmetrics_exporter_segment_series_used" + sorted_labels + " 4.0"));
  CHECK(samples.contains("shmetrics_exporter_segment_series_capacity" + sorted_labels + " 4.0"));
  CHECK(samples.contains("shmetrics_exporter_segment_series_overflows_total" + sorted_labels + " 7.0"));

  const auto om = HttpGet(exporter.url("/metrics"), "--accept application/openmetrics-text");
  REQUIRE(om.status == 200);
  CHECK(absl::StrContains(om.body, "# TYPE shmetrics_exporter_segment_series_overflows counter\n"));
  CHECK(absl::StrContains(om.body, "# TYPE process_cpu_seconds counter\n"));
  const std::set<std::string> om_samples = AllSamples(dir, om.body, "openmetrics");
  CHECK(om_samples.contains("shmetrics_exporter_segment_series_overflows_total" + sorted_labels + " 7.0"));
  CHECK(om_samples.contains("shmetrics_exporter_segment_lane_fallbacks_total" + sorted_labels + " 1.0"));
  CHECK(om_samples.contains("shmetrics_exporter_segment_records_dropped_total" + sorted_labels + " 3.0"));
  CHECK(om_samples.contains("shmetrics_exporter_segment_series_used" + sorted_labels + " 4.0"));

  // The exporter's own process: its descriptor limit (it raises the soft
  // one to the hard one) and start time are what the kernel says of it.
  std::string soft_limit;
  for (absl::string_view line :
       absl::StrSplit(testing::ReadFile(absl::StrCat("/proc/", exporter.pid(), "/limits")), '\n')) {
    if (!absl::ConsumePrefix(&line, "Max open files")) continue;
    const std::vector<absl::string_view> columns = absl::StrSplit(line, ' ', absl::SkipEmpty());
    REQUIRE(!columns.empty());
    soft_limit = std::string(columns[0]);
  }
  CHECK(samples.contains(absl::StrCat("process_max_fds{} ", soft_limit, ".0")));  // Python's repr()
  const auto exporter_stat = ParseProcStat(testing::ReadFile(absl::StrCat("/proc/", exporter.pid(), "/stat")));
  REQUIRE(exporter_stat.ok());
  std::string start;
  reader::AppendDouble(&start,
                       double(exporter_stat->start_ticks) / double(sysconf(_SC_CLK_TCK)) + double(BootTime()));
  CHECK(absl::StrContains(text.body, "\nprocess_start_time_seconds " + start + "\n"));
  for (const char* name : {"process_cpu_seconds_total{} ", "process_open_fds{} ", "process_resident_memory_bytes{} ",
                           "process_virtual_memory_bytes{} "}) {
    bool found = false;
    for (const std::string& sample : om_samples) found |= absl::StartsWith(sample, name);
    CHECK_MESSAGE(found, name);
  }

  // Once the writer is gone, its segment's series are gone from the next
  // scrape: a scrape that arrives during a background scan waits for it
  // and scans again.
  writer.Stop();
  const std::string after = HttpGet(exporter.url("/metrics")).body;
  CHECK_FALSE(absl::StrContains(after, "shmetrics_exporter_segment_"));
  CHECK(absl::StrContains(after, "jobs_total{queue=\"shmetrics_overflow\",service=\"tiny\"} 7\n"));  // archived
}

}  // namespace
}  // namespace shmetrics
