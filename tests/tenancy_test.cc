// One exporter for many services and users: services never hide, spoil or
// impersonate each other; forged segments cost only their own families;
// planted archives and other users' files are never trusted.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cstddef>

#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "shmetrics/archive.h"
#include "shmetrics/collector.h"
#include "shmetrics/writer.h"
#include "process_support.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::Exporter;
using testing::HttpGet;
using testing::ParsedSamples;
using testing::RunCommand;
using testing::TempDir;
using testing::WriterProcess;

std::set<std::string> Samples(const TempDir& dir, const std::string& body, const std::string& kind) {
  const std::vector<std::string> lines = ParsedSamples(dir, body, kind);
  return std::set<std::string>(lines.begin(), lines.end());
}

// promtool and both python parsers accept `body` (text 0.0.4 or OpenMetrics).
void CheckValid(const TempDir& dir, const Exporter& exporter) {
  const auto text = HttpGet(exporter.url("/metrics"));
  REQUIRE(text.status == 200);
  const std::string file = dir.path() + "/metrics.txt";
  testing::WriteFile(file, text.body);
  const auto promtool = RunCommand("promtool check metrics < " + file + " 2>&1");
  std::filesystem::remove(file);
  // Exit 3 is promtool's lint (not a parse error); the one lint accepted
  // is a writer's counter named without _total, which is its choice.
  bool lint_only = promtool.exit_code == 3;
  for (absl::string_view line : absl::StrSplit(promtool.output, '\n', absl::SkipEmpty())) {
    lint_only &= absl::StrContains(line, "counter metrics should have \"_total\" suffix");
  }
  CHECK_MESSAGE((promtool.exit_code == 0 || lint_only), promtool.output);
  (void)Samples(dir, text.body, "text");  // REQUIREs a clean parse
  const auto om = HttpGet(exporter.url("/metrics"), "--accept application/openmetrics-text");
  REQUIRE(om.status == 200);
  (void)Samples(dir, om.body, "openmetrics");
}

// Two services' idea of the same metric names: other label names, other buckets.
void ApiTraffic(Writer& writer) {
  auto requests = writer.AddCounter("http_requests_total", "Requests.", {"method", "status"}).value();
  requests.WithLabels({"GET", "200"}).value().add(7);
  auto latency = writer.AddHistogram("http_request_duration_seconds", "Latency.", {"method"}, {0.1, 1}).value();
  latency.WithLabels({"GET"}).value().observe(0.05);
  latency.WithLabels({"GET"}).value().observe(0.5);
}
void WorkerTraffic(Writer& writer) {
  auto requests = writer.AddCounter("http_requests_total", "Jobs taken.", {"queue"}).value();
  requests.WithLabels({"mail"}).value().add(3);
  auto latency =
      writer.AddHistogram("http_request_duration_seconds", "Job time.", {}, {0.005, 0.01, 0.025, 0.05}).value();
  latency.WithLabels({}).value().observe(0.02);
}

TEST_CASE("two services with the same family names but other labels and buckets are both exported, exactly") {
  TempDir dir;
  auto api = std::make_unique<WriterProcess>(dir.path(), "api", ApiTraffic);
  auto worker = std::make_unique<WriterProcess>(dir.path(), "worker", WorkerTraffic);
  Exporter exporter(dir);
  const std::set<std::string> expected = {
      "http_requests_total{method=\"GET\",service=\"api\",status=\"200\"} 7.0",
      "http_requests_total{queue=\"mail\",service=\"worker\"} 3.0",
      "http_request_duration_seconds_bucket{le=\"0.1\",method=\"GET\",service=\"api\"} 1.0",
      "http_request_duration_seconds_bucket{le=\"1\",method=\"GET\",service=\"api\"} 2.0",
      "http_request_duration_seconds_bucket{le=\"+Inf\",method=\"GET\",service=\"api\"} 2.0",
      "http_request_duration_seconds_count{method=\"GET\",service=\"api\"} 2.0",
      "http_request_duration_seconds_sum{method=\"GET\",service=\"api\"} 0.55",
      "http_request_duration_seconds_bucket{le=\"0.005\",service=\"worker\"} 0.0",
      "http_request_duration_seconds_bucket{le=\"0.01\",service=\"worker\"} 0.0",
      "http_request_duration_seconds_bucket{le=\"0.025\",service=\"worker\"} 1.0",
      "http_request_duration_seconds_bucket{le=\"0.05\",service=\"worker\"} 1.0",
      "http_request_duration_seconds_bucket{le=\"+Inf\",service=\"worker\"} 1.0",
      "http_request_duration_seconds_count{service=\"worker\"} 1.0",
      "http_request_duration_seconds_sum{service=\"worker\"} 0.02",
  };
  auto check_all = [&] {
    const auto text = HttpGet(exporter.url("/metrics"));
    CHECK(absl::StrJoin(Samples(dir, text.body, "text"), "\n") == absl::StrJoin(expected, "\n"));
    const auto om = HttpGet(exporter.url("/metrics"), "--accept application/openmetrics-text");
    CHECK(absl::StrJoin(Samples(dir, om.body, "openmetrics"), "\n") == absl::StrJoin(expected, "\n"));
    const auto health = HttpGet(exporter.url("/api/health"));
    CHECK(health.status == 200);
    CHECK(absl::StrContains(health.body, "\"status\":\"ok\",\"reasons\":[]"));
    CheckValid(dir, exporter);
  };
  check_all();
  api->Kill9();  // retired into the archive at the next scrape
  check_all();
  CHECK(dir.SegmentPaths().size() == 1);
  worker->Stop();
  check_all();
  CHECK(dir.SegmentPaths().empty());
}

TEST_CASE("a gauge in one service and a counter of that name in another: only one family of one service is skipped") {
  TempDir dir;
  WriterProcess alpha(dir.path(), "alpha", [](Writer& w) {
    w.AddGauge("queue_depth", "Alpha measures.").value().WithLabels({}).value().set(9);
    w.AddCounter("alpha_jobs_total", "Jobs.").value().WithLabels({}).value().add(1);
  });
  WriterProcess beta(dir.path(), "beta", [](Writer& w) {
    w.AddCounter("queue_depth", "Beta counts.").value().WithLabels({}).value().add(5);
    w.AddGauge("beta_load", "Load.").value().WithLabels({}).value().set(2);
  });
  Exporter exporter(dir);
  const auto text = HttpGet(exporter.url("/metrics"));
  const std::set<std::string> samples = Samples(dir, text.body, "text");
  // The family registered first keeps the name: alpha's gauge.
  CHECK(absl::StrJoin(samples, "\n") == "alpha_jobs_total{service=\"alpha\"} 1.0\n"
                                        "beta_load{service=\"beta\"} 2.0\n"
                                        "queue_depth{service=\"alpha\"} 9.0");
  CHECK(absl::StrContains(text.body, "# TYPE queue_depth gauge\n"));
  CHECK(absl::StrContains(text.body, "shmetrics_exporter_problems{kind=\"conflict\"} 1\n"));
  CHECK(absl::StrContains(text.body, "shmetrics_exporter_segments{state=\"corrupt\"} 0\n"));
  const auto health = HttpGet(exporter.url("/api/health"));
  CHECK(health.status == 200);
  CHECK(absl::StrContains(health.body, "\"status\":\"degraded\",\"reasons\":[\"configuration conflict\"]"));
  CHECK(absl::StrContains(health.body, "\"kind\":\"conflict\",\"family\":\"queue_depth\",\"error\":\"family "
                                       "queue_depth (counter) of service beta cannot be exported beside the gauge "
                                       "queue_depth of another service or process, registered before it; it is "
                                       "skipped"));
  CHECK(absl::StrContains(exporter.Log(), "level=warn msg=\"skipping (conflict) family queue_depth (counter) of service beta"));
  CheckValid(dir, exporter);
}

TEST_CASE("a newcomer cannot take a family's name, and a family only the archive remembers gives way to a live one") {
  TempDir dir;
  auto web = std::make_unique<WriterProcess>(dir.path(), "web", [](Writer& w) {
    w.AddCounter("http_requests_total", "Web.").value().WithLabels({}).value().add(9);
  });
  // "api2" sorts before "web" and registers a gauge that takes the OpenMetrics name.
  auto api2 = std::make_unique<WriterProcess>(dir.path(), "api2", [](Writer& w) {
    w.AddGauge("http_requests", "Hijack.", {}, GaugeMerge::kSum).value().WithLabels({}).value().set(3);
  });
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  auto families = [&] {
    REQUIRE(collector->Scan().ok());
    std::string seen;
    for (const auto& series : collector->Snapshot()) absl::StrAppend(&seen, series.service, ":", series.family, " ");
    return seen;
  };
  CHECK(families() == "web:http_requests_total ");
  api2->Kill9();  // its sum gauge goes to the archive
  CHECK(families() == "web:http_requests_total ");
  web->Kill9();   // now both live only in the archive: name and service order
  CHECK(families() == "api2:http_requests ");
}

TEST_CASE("processes of one service that disagree on a family's buckets: the disagreeing segment's family is skipped") {
  TempDir dir;
  WriterProcess old_build(dir.path(), "api", [](Writer& w) {
    w.AddHistogram("latency_seconds", "L.", {}, {1, 2}).value().WithLabels({}).value().observe(1.5);
  });
  WriterProcess new_build(dir.path(), "api", [](Writer& w) {
    w.AddHistogram("latency_seconds", "L.", {}, {1, 2, 4}).value().WithLabels({}).value().observe(3);
    w.AddCounter("ok_total", "ok").value().WithLabels({}).value().inc();
  });
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  const auto snapshot = collector->Snapshot();
  REQUIRE(snapshot.size() == 2);
  CHECK(snapshot[0].family == "latency_seconds");
  CHECK(snapshot[0].bounds.size() + 1 == snapshot[0].buckets.size());
  CHECK(snapshot[1].family == "ok_total");
  const auto problems = collector->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].kind == reader::ProblemKind::kConflict);
  CHECK(problems[0].family == "latency_seconds");
  // The segment whose file name sorts first is the reference.
  const std::vector<std::string> paths = dir.SegmentPaths();
  CHECK(problems[0].path == paths[1]);
  CHECK(problems[0].error == paths[1] + ": family latency_seconds of service api is a histogram with other labels "
                                        "or buckets than in " + paths[0] + "; its series here are skipped");
}

TEST_CASE("a segment whose header names another service than its file name is refused") {
  TempDir dir;
  WriterProcess victim(dir.path(), "payments", [](Writer& w) {
    w.AddCounter("charges_total", "C.").value().WithLabels({}).value().add(10);
  });
  WriterProcess impostor(dir.path(), "paymentz", [](Writer& w) {
    w.AddCounter("charges_total", "C.").value().WithLabels({}).value().add(1000000);
  });
  std::string forged;
  for (const std::string& path : dir.SegmentPaths()) {
    if (absl::StrContains(path, "/shmetrics.paymentz.")) forged = path;
  }
  REQUIRE(!forged.empty());
  const int fd = open(forged.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, "payments", 8, offsetof(shm::SegmentHeader, service_name)) == 8);
  close(fd);
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  const auto snapshot = collector->Snapshot();
  REQUIRE(snapshot.size() == 1);
  CHECK(snapshot[0].service == "payments");
  CHECK(snapshot[0].value == 10);
  const auto problems = collector->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].kind == reader::ProblemKind::kCorrupt);
  CHECK(problems[0].error == forged + ": header names service 'payments' but the file name says 'paymentz'");
}

// Replaces the one occurrence of `from` in the file's bytes by `to` (same
// length): a real segment, forged the way a hostile writer would.
void Forge(const std::string& path, const std::string& from, const std::string& to) {
  REQUIRE(from.size() == to.size());
  std::string bytes = testing::ReadFile(path);
  const size_t at = bytes.find(from);
  REQUIRE(at != std::string::npos);
  REQUIRE(bytes.find(from, at + 1) == std::string::npos);
  const int fd = open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, to.data(), to.size(), static_cast<off_t>(at)) == static_cast<ssize_t>(to.size()));
  close(fd);
}

TEST_CASE("forged segments, one per exposition rule: the forged family is reported, everything else is served") {
  TempDir dir;
  WriterProcess good(dir.path(), "good", [](Writer& w) {
    w.AddCounter("good_total", "Good.").value().WithLabels({}).value().add(42);
  });
  struct Case {
    const char* service;
    std::function<void(Writer&)> work;
    const char* from;
    const char* to;
    const char* family;           // the family reported
    reader::ProblemKind kind;
  };
  const std::vector<Case> cases = {
      {"duplabel", [](Writer& w) { w.AddCounter("dup_total", "D.", {"dupx_one", "dupx_two"}).value().WithLabels({"a", "b"}).value().inc(); },
       "dupx_two", "dupx_one", "dup_total", reader::ProblemKind::kInvalidFamily},
      {"pidlabel", [](Writer& w) { w.AddGauge("workers_now", "W.", {"piq"}, GaugeMerge::kPerProcess).value().WithLabels({"1"}).value().set(1); },
       "piq", "pid", "workers_now", reader::ProblemKind::kInvalidFamily},
      {"impostor", [](Writer& w) { w.AddCounter("paid_total", "P.", {"servicq"}).value().WithLabels({"good"}).value().add(1000); },
       "servicq", "service", "paid_total", reader::ProblemKind::kInvalidFamily},
      {"selfname", [](Writer& w) { w.AddCounter("shmetrics_exporteq_scrapes_total", "S.").value().WithLabels({}).value().inc(); },
       "shmetrics_exporteq_scrapes_total", "shmetrics_exporter_scrapes_total", "shmetrics_exporter_scrapes_total",
       reader::ProblemKind::kInvalidFamily},
      {"histcount", [](Writer& w) { w.AddHistogram("hc_lat", "H.", {}, {1}).value().WithLabels({}).value().observe(0.5);
                                    w.AddGauge("hc_lat_counq", "G.").value().WithLabels({}).value().set(1); },
       "hc_lat_counq", "hc_lat_count", "hc_lat_count", reader::ProblemKind::kConflict},
      {"histsum", [](Writer& w) { w.AddHistogram("hs_lat", "H.", {}, {1}).value().WithLabels({}).value().observe(0.5);
                                  w.AddGauge("hs_lat_suq", "G.").value().WithLabels({}).value().set(1); },
       "hs_lat_suq", "hs_lat_sum", "hs_lat_sum", reader::ProblemKind::kConflict},
      {"histbucket", [](Writer& w) { w.AddHistogram("hb_lat", "H.", {}, {1}).value().WithLabels({}).value().observe(0.5);
                                     w.AddGauge("hb_lat_buckeq", "G.").value().WithLabels({}).value().set(1); },
       "hb_lat_buckeq", "hb_lat_bucket", "hb_lat_bucket", reader::ProblemKind::kConflict},
      {"histcreated", [](Writer& w) { w.AddHistogram("hk_lat", "H.", {}, {1}).value().WithLabels({}).value().observe(0.5);
                                      w.AddGauge("hk_lat_createq", "G.").value().WithLabels({}).value().set(1); },
       "hk_lat_createq", "hk_lat_created", "hk_lat_created", reader::ProblemKind::kConflict},
      {"totalbeside", [](Writer& w) { w.AddCounter("tb_foo_total", "C.").value().WithLabels({}).value().inc();
                                      w.AddGauge("tb_foq", "G.").value().WithLabels({}).value().set(1); },
       "tb_foq", "tb_foo", "tb_foo", reader::ProblemKind::kConflict},  // the counter was registered first
      {"twocounters", [](Writer& w) { w.AddCounter("tc_req", "C.").value().WithLabels({}).value().inc();
                                      w.AddCounter("tc_req_totaq", "C.").value().WithLabels({}).value().inc(); },
       "tc_req_totaq", "tc_req_total", "tc_req_total", reader::ProblemKind::kConflict},
      {"samename", [](Writer& w) { w.AddCounter("sn_one_total", "C.").value().WithLabels({}).value().inc();
                                   w.AddCounter("sn_onf_total", "C.").value().WithLabels({}).value().inc(); },
       "sn_onf_total", "sn_one_total", "sn_one_total", reader::ProblemKind::kInvalidFamily},
  };
  std::vector<std::unique_ptr<WriterProcess>> forgers;
  for (const Case& c : cases) {
    forgers.push_back(std::make_unique<WriterProcess>(dir.path(), c.service, c.work));
    const std::vector<reader::DirectoryEntry> entries = *reader::ListSegments(dir.path());
    for (const auto& entry : entries) {
      if (entry.id.service == c.service) Forge(entry.path, c.from, c.to);
    }
  }
  Exporter exporter(dir);
  CheckValid(dir, exporter);
  const auto text = HttpGet(exporter.url("/metrics"));
  const std::set<std::string> samples = Samples(dir, text.body, "text");
  std::set<std::string> served;
  for (const std::string& sample : samples) {
    if (!absl::StartsWith(sample, "shmetrics_exporter_")) served.insert(sample.substr(0, sample.find('{')));
  }
  CHECK(absl::StrJoin(served, ",") ==
        "good_total,hb_lat_bucket,hb_lat_count,hb_lat_sum,hc_lat_bucket,hc_lat_count,hc_lat_sum,hk_lat_bucket,"
        "hk_lat_count,hk_lat_sum,hs_lat_bucket,hs_lat_count,hs_lat_sum,sn_one_total,tb_foo_total,tc_req_total");  // python names the counter tc_req's sample tc_req_total
  CHECK(samples.contains("good_total{service=\"good\"} 42.0"));
  CHECK_FALSE(absl::StrContains(text.body, "paid_total"));
  // The exporter's own family is there once, with one HELP line.
  CHECK(absl::StrContains(text.body, "# HELP shmetrics_exporter_scrapes_total Scrapes of /metrics served.\n"));
  CHECK(text.body.find("# HELP shmetrics_exporter_scrapes_total") ==
        text.body.rfind("# HELP shmetrics_exporter_scrapes_total"));

  const auto health = HttpGet(exporter.url("/api/health"));
  CHECK(health.status == 200);
  CHECK(absl::StrContains(health.body, "\"reasons\":[\"configuration conflict\",\"invalid family\"]"));
  for (const Case& c : cases) {
    CAPTURE(c.service);
    CHECK(absl::StrContains(health.body, absl::StrCat("\"kind\":\"", reader::ProblemKindName(c.kind),
                                                      "\",\"family\":\"", c.family, "\"")));
  }
  CHECK(absl::StrContains(health.body,
                          "family 'paid_total': label name 'service' is reserved: the exporter adds it to every "
                          "series; skipped"));
  CHECK(absl::StrContains(text.body, "shmetrics_exporter_problems{kind=\"invalid_family\"} 5\n"));
  CHECK(absl::StrContains(text.body, "shmetrics_exporter_problems{kind=\"conflict\"} 6\n"));
}

}  // namespace
}  // namespace shmetrics
