// The writer's contract: values, validation errors, capacity behaviour,
// file safety. Each check reads back through the real reader.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>
#include <thread>

#include "absl/strings/match.h"

#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

std::unique_ptr<Writer> MakeWriter(const TempDir& dir, shm::Capacities capacities = {},
                                   WriterOptions::OnFull on_full = WriterOptions::OnFull::kOverflowSeries) {
  WriterOptions options = testing::WriterIn(dir, "unit");
  options.capacities = capacities;
  options.on_full = on_full;
  auto writer = Writer::Create(options);
  REQUIRE(writer.ok());
  return *std::move(writer);
}

testing::Totals ReadAll(const TempDir& dir) {
  testing::Totals totals;
  for (const auto& path : dir.SegmentPaths()) {
    auto segment = reader::Segment::Open(path);
    REQUIRE(segment.ok());
    testing::AddSegment(**segment, totals);
  }
  return totals;
}

TEST_CASE("counter, gauge and histogram values read back exactly") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  auto requests = writer->AddCounter("http_requests_total", "Requests.", {"method", "status"}).value();
  auto get_ok = requests.WithLabels({"GET", "200"}).value();
  auto post_err = requests.WithLabels({"POST", "500"}).value();
  for (int i = 0; i < 1000; ++i) get_ok.inc();
  post_err.add(2.5);
  post_err.add(-7);  // ignored: counters never go down
  auto in_progress = writer->AddGauge("in_progress", "In progress.").value().WithLabels({}).value();
  in_progress.inc();
  in_progress.inc();
  in_progress.dec();
  auto temperature = writer->AddGauge("temperature", "T.").value().WithLabels({}).value();
  temperature.inc(5);
  temperature.set(3.25);
  auto latency = writer->AddHistogram("latency_seconds", "L.", {}, {0.1, 0.5, 1}).value()
                     .WithLabels({}).value();
  for (double v : {0.05, 0.1, 0.2, 0.5, 0.7, 2.0, 100.0}) latency.observe(v);

  auto totals = ReadAll(dir);
  CHECK(totals.scalars["http_requests_total{GET,200}"] == 1000);
  CHECK(totals.scalars["http_requests_total{POST,500}"] == 2.5);
  CHECK(totals.scalars["in_progress{}"] == 1);
  CHECK(totals.scalars["temperature{}"] == 3.25);
  // le=0.1 holds 0.05 and 0.1 (bounds are inclusive), le=0.5: 0.2, 0.5; le=1: 0.7; +Inf: 2, 100.
  CHECK(totals.buckets["latency_seconds{}"] == std::vector<uint64_t>{2, 2, 1, 2});
  CHECK(totals.sums["latency_seconds{}"] == doctest::Approx(103.55));
}

TEST_CASE("the same labels give the same series, and a second thread adds to it") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  auto family = writer->AddCounter("c_total", "C.", {"k"}).value();
  auto a = family.WithLabels({"x"}).value();
  std::thread([&] {
    auto b = family.WithLabels({"x"}).value();
    for (int i = 0; i < 10; ++i) b.inc();
  }).join();
  a.inc();
  CHECK(writer->series_count() == 1);
  CHECK(ReadAll(dir).scalars["c_total{x}"] == 11);
}

TEST_CASE("invalid names, labels and bounds get their documented errors") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  auto bad_name = writer->AddCounter("1bad", "h");
  CHECK(bad_name.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(bad_name.status().message() ==
        "invalid metric name '1bad': must match [a-zA-Z_:][a-zA-Z0-9_:]* (at most 200 bytes)");
  auto bad_label = writer->AddCounter("ok_total", "h", {"__reserved"});
  CHECK(bad_label.status().message() ==
        "family 'ok_total': invalid label name '__reserved': must match [a-zA-Z_][a-zA-Z0-9_]* without a __ prefix");
  CHECK(writer->AddCounter("ok_total", "h", {"a", "a"}).status().message() ==
        "family 'ok_total': duplicate label name 'a'");
  CHECK(writer->AddHistogram("h", "h", {"le"}, {1}).status().message() ==
        "family 'h': label name 'le' is reserved for histogram buckets");
  CHECK(writer->AddHistogram("h", "h", {}, {2, 1}).status().message() ==
        "histogram bounds must be finite and strictly increasing (+Inf is implicit)");
  CHECK(writer->AddHistogram("h", "h", {}, {}).status().message() ==
        "a histogram needs 1 to 64 bucket bounds, got 0");
  CHECK(writer->AddCounter("x", "bad \xff help").status().code() == absl::StatusCode::kInvalidArgument);

  auto family = writer->AddCounter("ok_total", "h", {"a"}).value();
  CHECK(family.WithLabels({"1", "2"}).status().message() ==
        "family 'ok_total' with labels [a] needs 1 label values, got 2");
  CHECK(family.WithLabels({"\xc3\x28"}).status().message() ==
        "label value must be UTF-8, at most 256 bytes");
  CHECK(family.WithLabels({std::string(257, 'v')}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(family.WithLabels({"caf\xc3\xa9 \"quoted\"\n"}).ok());
}

TEST_CASE("the writer refuses what would break the exposition: reserved labels and prefixes, clashing names") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  CHECK(writer->AddCounter("jobs_total", "h", {"service"}).status().message() ==
        "family 'jobs_total': label name 'service' is reserved: the exporter adds it to every series");
  CHECK(writer->AddGauge("workers", "h", {"pid"}, GaugeMerge::kPerProcess).status().message() ==
        "family 'workers': label name 'pid' is reserved in a per-process gauge: the exporter adds it");
  CHECK(writer->AddGauge("workers", "h", {"pid"}, GaugeMerge::kLiveSum).ok());  // only per-process adds pid
  CHECK(writer->AddGauge("shmetrics_exporter_series", "h").status().message() ==
        "family 'shmetrics_exporter_series': names beginning with shmetrics_exporter_ are reserved for the "
        "exporter's own metrics");
  CHECK(writer->AddCounter("_total", "h").status().message() ==
        "family '_total': a counter needs a name before its _total suffix");

  REQUIRE(writer->AddCounter("requests", "h").ok());
  auto twin = writer->AddCounter("requests_total", "h");
  CHECK(twin.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(twin.status().message() ==
        "metric 'requests_total' (counter) cannot be exported beside the counter 'requests': both would use "
        "the name 'requests'");
  REQUIRE(writer->AddHistogram("latency", "h", {}, {1}).ok());
  CHECK(writer->AddGauge("latency_count", "h").status().message() ==
        "metric 'latency_count' (gauge) cannot be exported beside the histogram 'latency': both would use the "
        "name 'latency_count'");
  CHECK(writer->AddGauge("latency_created", "h").status().code() == absl::StatusCode::kAlreadyExists);
  REQUIRE(writer->AddCounter("bytes_total", "h").ok());
  CHECK(writer->AddGauge("bytes", "h").status().message() ==
        "metric 'bytes' (gauge) cannot be exported beside the counter 'bytes_total': both would use the name "
        "'bytes'");
  CHECK(writer->AddGauge("bytes_in_flight", "h").ok());  // a prefix alone is no clash
}

TEST_CASE("registering a name twice: same shape returns the family, another shape is AlreadyExists") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  auto first = writer->AddCounter("jobs_total", "Jobs.", {"queue"}).value();
  auto again = writer->AddCounter("jobs_total", "Jobs.", {"queue"}).value();
  first.WithLabels({"a"}).value().inc();
  again.WithLabels({"a"}).value().inc();
  CHECK(ReadAll(dir).scalars["jobs_total{a}"] == 2);
  CHECK(writer->AddGauge("jobs_total", "Jobs.", {"queue"}).status().message() ==
        "metric 'jobs_total' is already registered as a counter with labels [queue]");
  CHECK(writer->AddCounter("jobs_total", "Jobs.", {"other"}).status().code() ==
        absl::StatusCode::kAlreadyExists);
  writer->AddHistogram("h", "H.", {}, {1, 2}).value();
  CHECK(writer->AddHistogram("h", "H.", {}, {1, 3}).status().message() ==
        "metric 'h' is already registered as a histogram with labels [] and other bounds or options");
}

TEST_CASE("a full segment sends new series to the overflow series, once reported, never corrupt") {
  TempDir dir;
  shm::Capacities small;
  small.series = 4;
  auto writer = MakeWriter(dir, small);
  auto family = writer->AddCounter("requests_total", "R.", {"path"}).value();  // reserves 1
  for (int i = 0; i < 3; ++i) family.WithLabels({std::to_string(i)}).value().inc();
  auto extra1 = family.WithLabels({"/user/1"});
  auto extra2 = family.WithLabels({"/user/2"});
  REQUIRE(extra1.ok());
  REQUIRE(extra2.ok());
  extra1->inc();
  extra2->add(2);
  CHECK(writer->series_overflow_count() == 2);
  auto totals = ReadAll(dir);
  CHECK(totals.scalars["requests_total{shmetrics_overflow}"] == 3);
  CHECK(totals.scalars["requests_total{0}"] == 1);
  CHECK(totals.scalars.size() == 4);
  auto segment = reader::Segment::Open(dir.SegmentPaths()[0]).value();
  CHECK(segment->series().back().overflow);
  CHECK(segment->Info().series_overflow_count == 2);
}

TEST_CASE("with OnFull::kError a full segment is ResourceExhausted naming the segment") {
  TempDir dir;
  shm::Capacities small;
  small.series = 2;
  auto writer = MakeWriter(dir, small, WriterOptions::OnFull::kError);
  auto family = writer->AddCounter("requests_total", "R.", {"path"}).value();
  REQUIRE(family.WithLabels({"a"}).ok());
  auto full = family.WithLabels({"b"});
  CHECK(full.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(full.status().message() ==
        "series capacity exhausted in segment " + writer->path() +
            " (1 series of 2, 2 cells of 8192, arena 39 of 262144 bytes)");
  small.families = 1;
  TempDir dir2;
  auto writer2 = MakeWriter(dir2, small);
  REQUIRE(writer2->AddCounter("a_total", "A.").ok());
  CHECK(writer2->AddCounter("b_total", "B.").status().message() ==
        "family capacity 1 exhausted in segment " + writer2->path());
}

TEST_CASE("segment files are 0600, exclusive, and named service.pid.start_ticks") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  struct stat st {};
  REQUIRE(stat(writer->path().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const auto id = shm::ParseSegmentFileName(std::filesystem::path(writer->path()).filename().string());
  REQUIRE(id.has_value());
  CHECK(id->service == "unit");
  CHECK(id->pid == static_cast<uint32_t>(getpid()));
  CHECK(id->start_ticks == shm::ProcessStartTicks(getpid()));

  WriterOptions options = testing::WriterIn(dir, "bad name");
  CHECK(Writer::Create(options).status().message() ==
        "invalid service name 'bad name': use 1-48 of [A-Za-z0-9_-]");
  options.service = "unit";
  options.directory = dir.path() + "/missing";
  CHECK(Writer::Create(options).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("a symlink or file planted at the segment's names is passed over, not followed, not replaced") {
  TempDir dir;
  const pid_t pid = getpid();
  const uint64_t ticks = shm::OwnStartTicks();
  const std::string target = dir.path() + "/target";
  testing::WriteFile(target, "precious");
  // Writers of one process are numbered: plant a file at the next number's
  // temporary name (creation passes over it), and a link at the final name
  // of the one after (publication passes over that).
  const uint32_t next_instance =
      shm::ParseSegmentFileName(std::filesystem::path(MakeWriter(dir)->path()).filename().string())->instance + 1;
  const std::string temp = dir.path() + "/" + shm::TempSegmentFileName("unit", pid, ticks, next_instance);
  testing::WriteFile(temp, "planted");
  const std::string link = dir.path() + "/" + shm::SegmentFileName("unit", pid, ticks, next_instance + 1);
  REQUIRE(symlink(target.c_str(), link.c_str()) == 0);
  auto writer = Writer::Create(testing::WriterIn(dir, "unit")).value();
  CHECK(writer->path() == dir.path() + "/" + shm::SegmentFileName("unit", pid, ticks, next_instance + 2));
  writer->AddCounter("jobs_total", "J.").value().WithLabels({}).value().inc(4);
  auto segment = reader::Segment::Open(writer->path()).value();  // its header says instance next + 2
  CHECK(segment->ScalarValue(segment->series().at(0)) == 4);
  CHECK(testing::ReadFile(target) == "precious");
  CHECK(testing::ReadFile(temp) == "planted");
  CHECK(std::filesystem::is_symlink(link));
}

TEST_CASE("no room for the file is a clear error at creation, not a SIGBUS later") {
  TempDir dir;
  // A child with a 1 MiB file size limit stands in for a full tmpfs:
  // posix_fallocate fails up front and Create reports it.
  const pid_t child = testing::Fork();
  if (child == 0) {
    signal(SIGXFSZ, SIG_IGN);
    rlimit limit{1 << 20, 1 << 20};
    setrlimit(RLIMIT_FSIZE, &limit);
    WriterOptions options = testing::WriterIn(dir, "big");
    auto writer = Writer::Create(options);  // 3.4 MiB by default
    const bool ok = !writer.ok() && writer.status().code() == absl::StatusCode::kInternal &&
                    absl::StrContains(writer.status().message(), "File too large");
    _exit(ok && dir.SegmentPaths().empty() ? 0 : 1);
  }
  CHECK(testing::WaitChild(child) == 0);
}

TEST_CASE("writer memory is the segment: a million more operations allocate nothing") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  auto counter = writer->AddCounter("ops_total", "Ops.").value().WithLabels({}).value();
  auto histogram = writer->AddHistogram("h", "H.", {}, DefaultBuckets()).value().WithLabels({}).value();
  const auto size_before = std::filesystem::file_size(writer->path());
  for (int i = 0; i < 1000000; ++i) {
    counter.inc();
    histogram.observe(i * 1e-6);
  }
  CHECK(std::filesystem::file_size(writer->path()) == size_before);
  CHECK(ReadAll(dir).scalars["ops_total{}"] == 1000000);
}

TEST_CASE("close marks the segment closed and dead, with values kept") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  writer->AddCounter("c_total", "C.").value().WithLabels({}).value().add(7);
  auto segment = reader::Segment::Open(writer->path()).value();
  CHECK(segment->WriterAlive());
  writer->Close();
  CHECK_FALSE(segment->WriterAlive());
  CHECK(segment->Info().state == shm::SegmentState::kClosed);
  CHECK(segment->ScalarValue(segment->series()[0]) == 7);
}

}  // namespace
}  // namespace shmetrics
