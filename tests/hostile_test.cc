// A directory that changes under the reader: files truncated while mapped,
// FIFOs swapped in, sparse segments that claim gigabytes, strings that
// would drive a terminal. No signal, no hang, bounded cost.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/collector.h"
#include "shmetrics/shm/fault_guard.h"
#include "shmetrics/shm/segment_file.h"
#include "shmetrics/writer.h"
#include "process_support.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::CurlStatus;
using testing::Exporter;
using testing::RunCommand;
using testing::ShellQuote;
using testing::TempDir;
using testing::WriterProcess;

void Steady(Writer& writer) {
  writer.AddCounter("steady_total", "S.").value().WithLabels({}).value().add(5);
}
RequestRecordInput Get(absl::string_view endpoint) {
  RequestRecordInput record;
  record.method = "GET";
  record.endpoint = endpoint;
  record.status = 200;
  return record;
}

void Victim(Writer& writer) {
  writer.AddCounter("victim_total", "V.").value().WithLabels({}).value().add(7);
  for (int i = 0; i < 10; ++i) writer.requests().record(Get("/v"));
}

std::string PathOf(const TempDir& dir, const std::string& service) {
  for (const std::string& path : dir.SegmentPaths()) {
    if (absl::StrContains(path, "/shmetrics." + service + ".")) return path;
  }
  return "";
}

void Truncate(const std::string& path, off_t size) {
  const int fd = open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, size) == 0);
  close(fd);
}

// GET with curl, which gives up after `seconds`: "200", or "000" for no answer.
TEST_CASE("a segment truncated after it was mapped: the render that hits it completes without it, no SIGBUS") {
  TempDir dir;
  WriterProcess steady(dir.path(), "steady", Steady);
  WriterProcess victim(dir.path(), "victim", Victim);
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.retire_dead = false;
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  std::string before;
  collector->Render(reader::ExpositionFormat::kPrometheusText, &before);
  CHECK(absl::StrContains(before, "victim_total{service=\"victim\"} 7\n"));

  const std::string victim_path = PathOf(dir, "victim");
  Truncate(victim_path, 4096);  // the header stays, the lanes are gone
  const uint64_t faults = shm::GuardedFaultCount();
  std::string during;
  collector->Render(reader::ExpositionFormat::kPrometheusText, &during);  // same view: reads the lost pages
  CHECK(shm::GuardedFaultCount() > faults);
  CHECK(absl::StrContains(during, "steady_total{service=\"steady\"} 5\n"));
  CHECK_FALSE(absl::StrContains(during, "victim_total{"));  // no sample (its HELP may stay)
  CHECK(collector->Recent({}).empty());  // the victim's rings read as zeros: nothing intact
  std::string again;  // same view, no scan yet: still no zeros served as its value
  collector->Render(reader::ExpositionFormat::kPrometheusText, &again);
  CHECK_FALSE(absl::StrContains(again, "victim_total{"));
  CHECK(absl::StrContains(again, "steady_total{service=\"steady\"} 5\n"));

  REQUIRE(collector->Scan().ok());  // now reported and dropped
  const auto problems = collector->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].kind == reader::ProblemKind::kCorrupt);
  CHECK(problems[0].error == victim_path + ": corrupt segment: the file shrank after it was mapped");
  std::string after;
  collector->Render(reader::ExpositionFormat::kPrometheusText, &after);
  CHECK(absl::StrContains(after, "steady_total{service=\"steady\"} 5\n"));
}

TEST_CASE("a SIGBUS outside any reader mapping still reaches the program's own handler") {
  TempDir dir;
  const pid_t child = testing::Fork();
  if (child == 0) {
    static sigjmp_buf jump;
    struct sigaction host {};
    host.sa_handler = [](int) { siglongjmp(jump, 1); };
    sigemptyset(&host.sa_mask);
    sigaction(SIGBUS, &host, nullptr);
    auto writer = Writer::Create(testing::WriterIn(dir, "chain")).value();
    auto segment = reader::Segment::Open(writer->path()).value();  // installs the guard, chained
    // A mapping of the program's own, truncated under it.
    const std::string own = dir.path() + "/own";
    const int fd = open(own.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 8192) != 0) _exit(2);
    auto* page = static_cast<volatile char*>(mmap(nullptr, 8192, PROT_READ, MAP_SHARED, fd, 0));
    if (ftruncate(fd, 0) != 0) _exit(3);
    if (sigsetjmp(jump, 1) == 0) {
      (void)page[4096];
      _exit(4);  // no fault at all
    }
    _exit(0);  // the host's handler ran
  }
  CHECK(testing::WaitChild(child) == 0);
}

TEST_CASE("the exporter and tail -f survive a segment truncated again and again while they read it") {
  TempDir dir;
  WriterProcess steady(dir.path(), "steady", Steady);
  std::unique_ptr<WriterProcess> victim = std::make_unique<WriterProcess>(dir.path(), "victim", Victim);
  Exporter exporter(dir, {"--no-retire"});
  const std::string tail_log = dir.path() + "/../" + std::filesystem::path(dir.path()).filename().string() + ".tail";
  testing::Subprocess tail({SHMETRICS_CLI_BIN, "tail", "-f", "--dir", dir.path(), "--poll", "0.01"}, tail_log);
  for (int round = 0; round < 20; ++round) {
    const std::string victim_path = PathOf(dir, "victim");
    REQUIRE(!victim_path.empty());
    CHECK(CurlStatus(exporter.url("/metrics")) == "200");
    Truncate(victim_path, 4096);
    for (int scrape = 0; scrape < 3; ++scrape) {
      const auto metrics = testing::HttpGet(exporter.url("/metrics"));
      CHECK(metrics.status == 200);
      CHECK(absl::StrContains(metrics.body, "steady_total{service=\"steady\"} 5\n"));
      CHECK(CurlStatus(exporter.url("/api/recent")) == "200");
    }
    victim->Kill9();
    std::filesystem::remove(victim_path);
    victim = std::make_unique<WriterProcess>(dir.path(), "victim", Victim);
  }
  const auto health = testing::HttpGet(exporter.url("/api/health"));
  CHECK(health.status != 0);
  CHECK(exporter.Stop() == 0);  // exited by SIGTERM's handler, not killed by a signal
  CHECK(tail.Stop() == 0);
  std::filesystem::remove(tail_log);
}

// renameat2(RENAME_EXCHANGE): swaps two names atomically.
bool Exchange(const std::string& a, const std::string& b) {
  return renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
}

TEST_CASE("FIFOs swapped in for a segment and for the archive: every scrape answers, SIGTERM stops, the CLI returns") {
  TempDir dir;
  WriterProcess steady(dir.path(), "steady", Steady);
  {
    WriterProcess gone(dir.path(), "gone", Steady);
    gone.Kill9();
  }
  const std::string cli = std::string(SHMETRICS_CLI_BIN) + " --dir " + ShellQuote(dir.path());
  REQUIRE(RunCommand(cli + " gc --yes >/dev/null").exit_code == 0);  // an archive exists
  Exporter exporter(dir, {"--no-retire"});
  const std::string segment = PathOf(dir, "steady");
  const std::string archive = dir.path() + "/shmetrics-archive";
  const std::string fifo = dir.path() + "/fifo";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  for (int round = 0; round < 30; ++round) {
    // A FIFO under a new segment name: the exporter's next scan opens it.
    const std::string planted = absl::StrCat(dir.path(), "/shmetrics.planted.", round, ".1.0");
    REQUIRE(mkfifo(planted.c_str(), 0600) == 0);
    const std::string& target = round % 2 == 0 ? segment : archive;
    REQUIRE(Exchange(fifo, target));  // the FIFO now has the target's name
    CHECK(CurlStatus(exporter.url("/metrics"), "", 10) == "200");  // answers; how fast is the bench's business
    CHECK(CurlStatus(exporter.url("/api/health"), "", 10) == "200");
    if (round < 4) {
      for (const char* command : {" ls", " dump", " tail", " check"}) {
        CAPTURE(command);
        CHECK(RunCommand("timeout 10 " + cli + command + " >/dev/null 2>&1").exit_code != 124);
      }
    }
    REQUIRE(Exchange(fifo, target));
  }
  const auto health = testing::HttpGet(exporter.url("/api/health"));
  CHECK(absl::StrContains(health.body, "shmetrics.planted.29.1.0: not a regular file, not read"));
  CHECK(exporter.Stop() == 0);
}

// A sparse file laid out like a segment of `capacities`, with the tables of
// a real small segment, and every ring claiming `written` records.
std::string SparseSegment(const TempDir& dir, const shm::Capacities& capacities, uint64_t written) {
  WriterOptions small = testing::WriterIn(dir, "huge");
  small.capacities = {.families = 4, .series = 4, .exclusive_lanes = 1, .cells_per_lane = 64,
                      .string_arena_bytes = 256, .bounds = 0, .ring_slots_per_lane = 0,
                      .error_ring_slots_per_lane = 0};
  std::string bytes, path;
  {
    auto writer = Writer::Create(small).value();
    writer->AddCounter("huge_total", "H.").value().WithLabels({}).value().add(1);
    writer->Close();
    bytes = testing::ReadFile(writer->path());
    path = writer->path();
    std::filesystem::remove(path);
  }
  const auto& old_header = *reinterpret_cast<const shm::SegmentHeader*>(bytes.data());
  const shm::RegionPlan plan = shm::PlanRegions(capacities);
  shm::SegmentHeader header = old_header;
  header.total_size_bytes = plan.total_size_bytes;
  header.family_capacity = capacities.families;
  header.series_capacity = capacities.series;
  header.lane_count = plan.lane_count;
  header.cells_per_lane = capacities.cells_per_lane;
  header.string_arena_bytes = capacities.string_arena_bytes;
  header.bounds_capacity = capacities.bounds;
  header.ring_slots_per_lane = capacities.ring_slots_per_lane;
  header.error_ring_slots_per_lane = capacities.error_ring_slots_per_lane;
  header.ring_slot_bytes = sizeof(shm::RequestRecord);
  header.family_table_offset = plan.family_table_offset;
  header.series_table_offset = plan.series_table_offset;
  header.string_arena_offset = plan.string_arena_offset;
  header.bounds_offset = plan.bounds_offset;
  header.lane_owner_offset = plan.lane_owner_offset;
  header.lanes_offset = plan.lanes_offset;
  header.rings_offset = plan.rings_offset;
  header.rings_size_bytes = plan.rings_size_bytes;
  header.exemplars_offset = plan.exemplars_offset;
  header.exemplar_slots_per_lane = capacities.exemplar_slots_per_lane;
  header.lanes_high_water = plan.lane_count - 1;
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, static_cast<off_t>(plan.total_size_bytes)) == 0);
  auto put = [&](uint64_t offset, const void* data, size_t size) {
    REQUIRE(pwrite(fd, data, size, static_cast<off_t>(offset)) == static_cast<ssize_t>(size));
  };
  put(0, &header, sizeof header);
  put(plan.family_table_offset, bytes.data() + old_header.family_table_offset,
      old_header.family_count * sizeof(shm::FamilyDescriptor));
  put(plan.series_table_offset, bytes.data() + old_header.series_table_offset,
      old_header.series_count * sizeof(shm::SeriesDescriptor));
  put(plan.string_arena_offset, bytes.data() + old_header.string_arena_offset, old_header.string_arena_used);
  const uint64_t ring_stride = shm::RingStrideBytes(capacities);
  for (uint32_t lane = 0; lane + 1 < plan.lane_count && ring_stride > 0; ++lane) {
    const shm::RingHeader ring{written, written, {}};
    put(plan.rings_offset + lane * ring_stride, &ring, sizeof ring);
  }
  close(fd);
  return path;
}

TEST_CASE("a sparse segment at the reader's caps costs a bounded read, and one over them is refused") {
  TempDir dir;
  WriterProcess steady(dir.path(), "steady", Steady);
  // 1,024 lanes with 2,048 + 2,048 slots: 512 MiB of rings, a few KiB on disk,
  // every ring claiming 10^12 records (all slots torn).
  const shm::Capacities at_caps{.families = 4, .series = 4, .exclusive_lanes = 1024, .cells_per_lane = 64,
                                .string_arena_bytes = 256, .bounds = 0, .ring_slots_per_lane = 2048,
                                .error_ring_slots_per_lane = 2048};
  REQUIRE(shm::ValidateCapacities(at_caps).ok());
  const std::string huge = SparseSegment(dir, at_caps, 1000000000000ull);
  Exporter exporter(dir, {"--no-retire"});
  // Warm up, then measure what the requests add.
  REQUIRE(CurlStatus(exporter.url("/metrics")) == "200");
  const uint64_t rss_before = testing::ProcStatusKiB(exporter.pid(), "VmRSS:");
  CHECK(CurlStatus(exporter.url("/api/recent")) == "200");
  CHECK(CurlStatus(exporter.url("/api/errors?limit=10000")) == "200");
  const auto metrics = testing::HttpGet(exporter.url("/metrics"));
  CHECK(absl::StrContains(metrics.body, "huge_total{service=\"huge\"} 0\n"));  // its lanes were not copied
  const uint64_t rss_after = testing::ProcStatusKiB(exporter.pid(), "VmRSS:");
#ifdef __SANITIZE_THREAD__
  // TSan's shadow memory grows with every page read: RSS says nothing here.
  MESSAGE("TSan build: RSS ", rss_before, " KiB -> ", rss_after, " KiB, not checked");
#else
  CHECK_MESSAGE(rss_after < rss_before + 64 * 1024, "RSS ", rss_before, " KiB -> ", rss_after, " KiB");
#endif
  const std::string cli = std::string(SHMETRICS_CLI_BIN) + " --dir " + ShellQuote(dir.path());
  const auto tail = RunCommand("timeout 10 " + cli + " tail 2>/dev/null");
  CHECK(tail.exit_code == 0);
  std::filesystem::remove(huge);

  // 1,024 lanes with 8,192 + 8,192 slots: 2 GiB, over the 1 GiB cap.
  shm::Capacities over = at_caps;
  over.ring_slots_per_lane = over.error_ring_slots_per_lane = 8192;
  const std::string refused = SparseSegment(dir, over, 1000000000000ull);
  auto opened = reader::Segment::Open(refused);
  CHECK(opened.status().code() == absl::StatusCode::kDataLoss);
  CHECK(opened.status().message() == refused + ": corrupt segment: capacity out of range: total size above 1 GiB");
  std::filesystem::remove(refused);
}

TEST_CASE("control characters from a segment print escaped in tail, top and dump") {
  TempDir dir;
  const std::string evil = "/x\n\x1b[31mRED\x1b]0;pwned\x07\xc2\x9b";
  WriterProcess writer(dir.path(), "evil", [&](Writer& w) {
    w.AddCounter("evil_total", "E.", {"path"}).value().WithLabels({evil}).value().add(3);
    w.requests().record(Get(evil));
  });
  const std::string escaped = "/x\\n\\x1b[31mRED\\x1b]0;pwned\\x07\\u009b";
  const std::string cli = std::string(SHMETRICS_CLI_BIN) + " --dir " + ShellQuote(dir.path());
  const auto tail = RunCommand(cli + " tail");
  CHECK(absl::StrContains(tail.output, " GET " + escaped + " 200 "));
  CHECK_FALSE(absl::StrContains(tail.output, "\x1b"));
  const auto top = RunCommand(cli + " top --iterations 1");
  CHECK(absl::StrContains(top.output, "evil_total{path=" + escaped + ",service=evil}"));
  CHECK_FALSE(absl::StrContains(top.output, "\x1b"));
  // dump on a terminal (script gives it a pty): the exposition's escapes,
  // plus the control characters made visible.
  const std::string out = dir.path() + "/../" + std::filesystem::path(dir.path()).filename().string() + ".dump";
  REQUIRE(RunCommand("script -qec " + ShellQuote(cli + " dump") + " " + ShellQuote(out) + " >/dev/null").exit_code == 0);
  const std::string shown = testing::ReadFile(out);
  std::filesystem::remove(out);
  CHECK(absl::StrContains(shown, "evil_total{path=\"/x\\n\\x1b[31mRED\\x1b]0;pwned\\x07\\u009b\",service=\"evil\"} 3"));
  CHECK_FALSE(absl::StrContains(shown, "\x1b]0"));
  // Piped, dump stays the exposition, byte for byte.
  CHECK(absl::StrContains(RunCommand(cli + " dump").output, "path=\"/x\\n\x1b[31mRED\x1b]0;pwned\x07\xc2\x9b\""));
}

}  // namespace
}  // namespace shmetrics

namespace shmetrics {
namespace {

// The errors of the collector's problems, in its order.
std::vector<std::string> ProblemErrors(const reader::Collector& collector) {
  std::vector<std::string> errors;
  for (const reader::Problem& problem : collector.Problems()) errors.push_back(problem.error);
  return errors;
}

// Counts the opens of files in a directory (inotify IN_OPEN): what a scan
// opened, read after it returned (the kernel queues the event at the open).
class OpenWatch {
 public:
  explicit OpenWatch(const std::string& directory) : fd_(inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
    REQUIRE(fd_ >= 0);
    REQUIRE(inotify_add_watch(fd_, directory.c_str(), IN_OPEN) >= 0);
  }
  ~OpenWatch() { close(fd_); }
  // Opens of `name` since the last call.
  int Opens(const std::string& name) {
    alignas(inotify_event) char buffer[8192];
    ssize_t n;
    while ((n = read(fd_, buffer, sizeof buffer)) > 0) {
      for (ssize_t at = 0; at < n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
        if (event->len > 0) ++opens_[event->name];
        at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
      }
    }
    return std::exchange(opens_[name], 0);
  }

 private:
  int fd_;
  std::map<std::string, int> opens_;
};

TEST_CASE("a refused file is not opened again by every scan, only once it changes, and is reported at every scan") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "api")).value();
  writer->AddCounter("hits_total", "H.", {}).value().WithLabels({}).value().inc(3);
  std::string bytes = testing::ReadFile(dir.SegmentPaths().at(0));
  bytes[0] = 'X';
  const std::string junk_name = "shmetrics.api.99999998.7.0", junk = dir.path() + "/" + junk_name;
  testing::WriteFile(junk, bytes);
  REQUIRE(chmod(junk.c_str(), 0600) == 0);
  OpenWatch watch(dir.path());
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  auto scan = [&] {
    CHECK(absl::StrContains(testing::ScanAndRender(*collector), "hits_total{service=\"api\"} 3\n"));
    return ProblemErrors(*collector);
  };
  const std::vector<std::string> bad_magic = {junk + ": not a shmetrics segment (bad magic)"};
  for (int i = 0; i < 5; ++i) CHECK(scan() == bad_magic);
  CHECK(watch.Opens(junk_name) == 1);
  // Its bytes change (size and mtime): read again, once.
  testing::WriteFile(junk, bytes.substr(0, 4096));
  watch.Opens(junk_name);  // the test's own
  CHECK(scan() == std::vector<std::string>{junk + ": not a shmetrics segment (bad magic)"});
  CHECK(scan() == bad_magic);
  CHECK(watch.Opens(junk_name) == 1);
  // Its mode changes (the ctime only): read again, once.
  REQUIRE(chmod(junk.c_str(), 0640) == 0);
  CHECK(scan() == bad_magic);
  CHECK(scan() == bad_magic);
  CHECK(watch.Opens(junk_name) == 1);
  // Replaced by another file under its name (a new inode): read again.
  REQUIRE(chmod(junk.c_str(), 0600) == 0);
  testing::WriteFile(junk + ".new", bytes);
  REQUIRE(chmod((junk + ".new").c_str(), 0600) == 0);
  REQUIRE(rename((junk + ".new").c_str(), junk.c_str()) == 0);
  CHECK(scan() == bad_magic);
  CHECK(watch.Opens(junk_name) == 1);
  // Removed: forgotten, nothing reported.
  REQUIRE(unlink(junk.c_str()) == 0);
  CHECK(scan().empty());
  CHECK(watch.Opens(junk_name) == 0);
}

TEST_CASE("a copy of a live segment under another process's name is refused, not counted twice") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "api")).value();
  writer->AddCounter("hits_total", "H.", {}).value().WithLabels({}).value().inc(3);
  const uint32_t pid = static_cast<uint32_t>(getpid());
  const uint64_t ticks = shm::ProcessStartTicks(getpid());
  const std::string copy = absl::StrCat(dir.path(), "/shmetrics.api.99999997.", ticks, ".0");
  testing::WriteFile(copy, testing::ReadFile(writer->path()));
  REQUIRE(chmod(copy.c_str(), 0600) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.retire_dead = false;
  auto collector = reader::Collector::Create(options).value();
  CHECK(absl::StrContains(testing::ScanAndRender(*collector), "hits_total{service=\"api\"} 3\n"));
  const std::vector<reader::Problem> problems = collector->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].error == absl::StrCat(copy, ": header names process ", pid, " started at tick ", ticks,
                                          " but the file name says 99999997 at tick ", ticks,
                                          " (a copy of another segment?)"));
  // The same process and start, another instance: refused too. Other
  // spellings of the writer's own name (a leading zero, a sign) are not
  // segment names at all: not listed, not read.
  const auto id = shm::ParseSegmentFileName(std::filesystem::path(writer->path()).filename().string()).value();
  REQUIRE(unlink(copy.c_str()) == 0);
  const std::string other_instance = dir.path() + "/" + shm::SegmentFileName("api", pid, ticks, id.instance + 1);
  for (const std::string& name :
       {other_instance, absl::StrCat(dir.path(), "/shmetrics.api.0", pid, ".", ticks, ".", id.instance),
        absl::StrCat(dir.path(), "/shmetrics.api.+", pid, ".", ticks, ".", id.instance),
        absl::StrCat(dir.path(), "/shmetrics.api.", pid, ".0", ticks, ".", id.instance)}) {
    testing::WriteFile(name, testing::ReadFile(writer->path()));
    REQUIRE(chmod(name.c_str(), 0600) == 0);
  }
  CHECK(absl::StrContains(testing::ScanAndRender(*collector), "hits_total{service=\"api\"} 3\n"));
  CHECK(collector->Counters().segments_alive == 1);
  const std::vector<reader::Problem> now = collector->Problems();
  REQUIRE(now.size() == 1);
  CHECK(now[0].error == absl::StrCat(other_instance, ": header names writer instance ", id.instance,
                                     " but the file name says ", id.instance + 1, " (a copy of another segment?)"));
}

TEST_CASE("junk moved over a live segment's name is read and reported, and never removed when the writer ends") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "api")).value();
  writer->AddCounter("hits_total", "H.", {}).value().WithLabels({}).value().inc(3);
  const std::string path = writer->path();
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  auto render = [&] { return testing::ScanAndRender(*collector); };
  CHECK(absl::StrContains(render(), "hits_total{service=\"api\"} 3\n"));
  testing::WriteFile(dir.path() + "/junk", std::string(8192, 'X'));
  REQUIRE(chmod((dir.path() + "/junk").c_str(), 0600) == 0);
  REQUIRE(rename((dir.path() + "/junk").c_str(), path.c_str()) == 0);
  // Read as what it is now, as if the segment had been removed.
  CHECK(!absl::StrContains(render(), "hits_total"));
  const std::vector<std::string> bad_magic = {path + ": not a shmetrics segment (bad magic)"};
  auto errors = [&] { return ProblemErrors(*collector); };
  CHECK(errors() == bad_magic);
  CHECK(collector->Counters().segments_alive == 0);
  writer->Close();
  writer.reset();
  render();
  CHECK(errors() == bad_magic);
  CHECK(testing::ReadFile(path) == std::string(8192, 'X'));  // still there, unchanged
  CHECK(collector->Counters().segments_retired_total == 0);
}

TEST_CASE("a refused file that becomes a segment being made is not refused any more") {
  TempDir dir;
  const std::string junk = dir.path() + "/shmetrics.zz.4242.1.0";
  testing::WriteFile(junk, std::string(4096, 'X'));
  REQUIRE(chmod(junk.c_str(), 0600) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  CHECK(collector->Problems().size() == 1);
  testing::WriteFile(junk, std::string(4096, '\0'));  // a writer's file before its header: not ready yet
  REQUIRE(collector->Scan().ok());
  CHECK(collector->Problems().empty());
  CHECK(collector->Counters().segments_not_ready == 1);
}

TEST_CASE("150 junk files: health lists the first 100 problems and counts all, the problems gauge counts all") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "api")).value();
  writer->AddCounter("hits_total", "H.", {}).value().WithLabels({}).value().inc(3);
  for (int i = 0; i < 150; ++i) {
    const std::string junk = absl::StrCat(dir.path(), "/shmetrics.api.", 90000000 + i, ".1.0");
    testing::WriteFile(junk, std::string(4096, 'X'));
    REQUIRE(chmod(junk.c_str(), 0600) == 0);
  }
  testing::Exporter exporter(dir);
  for (int round = 0; round < 2; ++round) {  // the second from the refused-file cache
    const auto health = testing::HttpGet(exporter.url("/api/health"));
    CHECK(health.status == 503);  // corrupt files of this user's
    CHECK(absl::StrContains(health.body, "\"problems_total\":150,\"problems\":["));
    const std::string listed = health.body.substr(health.body.find("\"problems\":["));
    const std::vector<absl::string_view> pieces = absl::StrSplit(listed, "{\"path\":");
    CHECK(pieces.size() == 101);  // 100 problems
    CHECK(absl::StrContains(listed, "shmetrics.api.90000099.1.0: not a shmetrics segment (bad magic)"));
    CHECK(!absl::StrContains(listed, "shmetrics.api.90000100.1.0"));
    const std::string metrics = testing::HttpGet(exporter.url("/metrics")).body;
    CHECK(absl::StrContains(metrics, "shmetrics_exporter_problems{kind=\"corrupt\"} 150\n"));
    CHECK(absl::StrContains(metrics, "hits_total{service=\"api\"} 3\n"));
  }
  CHECK(exporter.Stop() == 0);
}

}  // namespace
}  // namespace shmetrics
