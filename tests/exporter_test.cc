// The exporter as a real process, against real writer processes, checked
// by independent peers: promtool, python3-prometheus-client, prometheus-cpp
// and a real Prometheus server.
#include <doctest/doctest.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <functional>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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
using testing::Subprocess;
using testing::TempDir;
using testing::WriterProcess;

const std::vector<double> kLatencyBounds = {0.01, 0.05, 0.1, 0.5, 1};
const double kLatencies[] = {0.004, 0.02, 0.07, 0.3, 0.8, 3};
const std::string kOddEndpoint = "/q\"uote\\back\nline";

// Deterministic traffic; every process of the service does the same.
void WebTraffic(Writer& writer) {
  auto requests = writer.AddCounter("http_requests_total", "Requests served,\nby \\ status.",
                                    {"method", "endpoint", "status"}).value();
  auto duration = writer.AddHistogram("http_request_duration_seconds", "Request latency.",
                                      {"method", "endpoint"}, kLatencyBounds).value();
  auto in_progress = writer.AddGauge("http_requests_in_progress", "In flight.").value();
  auto cache = writer.AddCounter("cache_operations_total", "Cache.", {"operation", "result"}).value();
  for (int i = 0; i < 120; ++i) requests.WithLabels({"GET", "/api", "200"}).value().inc();
  for (int i = 0; i < 3; ++i) requests.WithLabels({"POST", "/api", "500"}).value().inc();
  requests.WithLabels({"GET", kOddEndpoint, "404"}).value().inc();
  auto api = duration.WithLabels({"GET", "/api"}).value();
  for (int i = 0; i < 120; ++i) api.observe(kLatencies[i % 6]);
  in_progress.WithLabels({}).value().inc(2);
  cache.WithLabels({"get", "hit"}).value().add(30);
  cache.WithLabels({"get", "miss"}).value().add(10);
}

TEST_CASE("exporter output of a multi-process run passes promtool and both python parsers") {
  TempDir dir;
  WriterProcess a(dir.path(), "web", WebTraffic);
  WriterProcess b(dir.path(), "web", WebTraffic);
  Exporter exporter(dir);
  const auto text = HttpGet(exporter.url("/metrics"));
  REQUIRE(text.status == 200);
  CHECK(text.content_type == "text/plain; version=0.0.4; charset=utf-8");
  const std::string file = dir.path() + "/metrics.txt";
  testing::WriteFile(file, text.body);
  const auto promtool = RunCommand("promtool check metrics < " + file + " 2>&1");
  CHECK_MESSAGE(promtool.exit_code == 0, promtool.output);

  const auto samples = ParsedSamples(dir, text.body, "text");
  const std::set<std::string> got(samples.begin(), samples.end());
  // Two processes, summed.
  CHECK(got.contains("http_requests_total{endpoint=\"/api\",method=\"GET\",service=\"web\",status=\"200\"} 240.0"));
  CHECK(got.contains("http_requests_total{endpoint=\"/api\",method=\"POST\",service=\"web\",status=\"500\"} 6.0"));
  CHECK(got.contains("http_requests_total{endpoint=\"/q\\\"uote\\\\back\\nline\",method=\"GET\",service=\"web\",status=\"404\"} 2.0"));
  CHECK(got.contains("http_request_duration_seconds_bucket{endpoint=\"/api\",le=\"0.01\",method=\"GET\",service=\"web\"} 40.0"));
  CHECK(got.contains("http_request_duration_seconds_bucket{endpoint=\"/api\",le=\"+Inf\",method=\"GET\",service=\"web\"} 240.0"));
  CHECK(got.contains("http_request_duration_seconds_count{endpoint=\"/api\",method=\"GET\",service=\"web\"} 240.0"));
  CHECK(got.contains("http_requests_in_progress{service=\"web\"} 4.0"));
  CHECK(got.contains("cache_operations_total{operation=\"get\",result=\"hit\",service=\"web\"} 60.0"));
  CHECK(absl::StrContains(text.body, "# HELP http_requests_total Requests served,\\nby \\\\ status.\n"));

  const auto om = HttpGet(exporter.url("/metrics"), "--accept application/openmetrics-text");
  REQUIRE(om.status == 200);
  CHECK(om.content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8");
  CHECK(absl::EndsWith(om.body, "# EOF\n"));
  CHECK(absl::StrContains(om.body, "# TYPE http_requests counter\n"));
  const auto om_samples = ParsedSamples(dir, om.body, "openmetrics");
  CHECK(std::set<std::string>(om_samples.begin(), om_samples.end()).contains(
      "http_requests_total{endpoint=\"/api\",method=\"GET\",service=\"web\",status=\"200\"} 240.0"));
  CHECK(om_samples.size() == samples.size());

  const auto gz = HttpGet(exporter.url("/metrics"), "--gzip");
  CHECK(gz.encoding == "gzip");
  CHECK(ParsedSamples(dir, gz.body, "text").size() == samples.size());
}

TEST_CASE("the exporter gives the same samples as prometheus-cpp's TextSerializer for the same metrics") {
  TempDir dir;
  WriterProcess a(dir.path(), "web", WebTraffic);
  Exporter exporter(dir);
  const auto ours = HttpGet(exporter.url("/metrics"));
  REQUIRE(ours.status == 200);

  prometheus::Registry registry;
  auto& requests = prometheus::BuildCounter().Name("http_requests_total").Help("Requests served,\nby \\ status.").Register(registry);
  auto& duration = prometheus::BuildHistogram().Name("http_request_duration_seconds").Help("Request latency.").Register(registry);
  auto& in_progress = prometheus::BuildGauge().Name("http_requests_in_progress").Help("In flight.").Register(registry);
  auto& cache = prometheus::BuildCounter().Name("cache_operations_total").Help("Cache.").Register(registry);
  requests.Add({{"method", "GET"}, {"endpoint", "/api"}, {"status", "200"}}).Increment(120);
  requests.Add({{"method", "POST"}, {"endpoint", "/api"}, {"status", "500"}}).Increment(3);
  requests.Add({{"method", "GET"}, {"endpoint", kOddEndpoint}, {"status", "404"}}).Increment();
  auto& api = duration.Add({{"method", "GET"}, {"endpoint", "/api"}}, kLatencyBounds);
  for (int i = 0; i < 120; ++i) api.Observe(kLatencies[i % 6]);
  in_progress.Add({}).Set(2);
  cache.Add({{"operation", "get"}, {"result", "hit"}}).Increment(30);
  cache.Add({{"operation", "get"}, {"result", "miss"}}).Increment(10);
  // prometheus-cpp 1.0.1 leaves HELP unescaped (a newline breaks its
  // output), so its HELP lines are not compared: samples are.
  const std::string reference = prometheus::TextSerializer().Serialize(registry.Collect());
  std::string reference_without_help;
  for (absl::string_view line : absl::StrSplit(reference, '\n')) {
    if (!absl::StartsWith(line, "# TYPE") && !absl::StartsWith(line, "http_") && !absl::StartsWith(line, "cache_")) continue;
    absl::StrAppend(&reference_without_help, line, "\n");
  }
  const auto theirs = ParsedSamples(dir, reference_without_help, "text");
  const auto mine = ParsedSamples(dir, ours.body, "text", /*drop_service=*/true);
  CHECK(mine == theirs);
  CHECK(mine.size() == 14);
}

TEST_CASE("a writer killed with -9 and restarted: the exported counter never decreases and its segment is retired") {
  TempDir dir;
  Exporter exporter(dir);
  auto value_of = [&](const std::string& sample_prefix) {
    const auto r = HttpGet(exporter.url("/metrics"));
    for (absl::string_view line : absl::StrSplit(r.body, '\n')) {
      if (absl::StartsWith(line, sample_prefix)) return std::stod(std::string(line.substr(sample_prefix.size())));
    }
    return -1.0;
  };
  const std::string sample = "jobs_total{service=\"batch\"} ";
  auto work = [](int n) {
    return [n](Writer& w) { w.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(n); };
  };
  auto first = std::make_unique<WriterProcess>(dir.path(), "batch", work(100));
  CHECK(value_of(sample) == 100);
  const std::string first_segment = dir.SegmentPaths().at(0);
  first->Kill9();
  CHECK(value_of(sample) == 100);  // folded into the archive, not lost
  CHECK_FALSE(std::filesystem::exists(first_segment));
  CHECK(std::filesystem::exists(dir.path() + "/shmetrics-archive"));
  WriterProcess second(dir.path(), "batch", work(5));
  CHECK(value_of(sample) == 105);
  CHECK(absl::StrContains(HttpGet(exporter.url("/metrics")).body, "shmetrics_exporter_segments_retired_total 1\n"));

  // The archive survives an exporter restart.
  CHECK(exporter.Stop() == 0);
  Exporter again(dir);
  const auto r = HttpGet(again.url("/metrics"));
  CHECK(absl::StrContains(r.body, sample + "105\n"));
}

TEST_CASE("scrapes that arrive during a background scan wait for it: each new writer is in the next two scrapes") {
  TempDir dir;
  // 3,000 foreign files make every scan take a while, so the exporter's
  // background scan (every 200 ms) is often running when a scrape arrives.
  for (int i = 0; i < 3000; ++i) {
    const std::string junk = absl::StrCat(dir.path(), "/shmetrics.junk.", 100000 + i, ".1.0");
    testing::WriteFile(junk, std::string(64, 'x'));
  }
  // A wait long enough for any scan under a sanitizer on a busy machine.
  Exporter exporter(dir, {"--scan-wait-ms", "60000"});
  for (int round = 1; round <= 12; ++round) {
    WriterProcess writer(dir.path(), absl::StrCat("svc", round),
                         [](Writer& w) { w.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(1); });
    // Two at once: the second waits for the scan the first started (or
    // for the background one and then the first's).
    std::string bodies[2];
    std::thread other([&] { bodies[1] = HttpGet(exporter.url("/metrics")).body; });
    bodies[0] = HttpGet(exporter.url("/metrics")).body;
    other.join();
    for (const std::string& body : bodies) {
      CHECK_MESSAGE(absl::StrContains(body, absl::StrCat("jobs_total{service=\"svc", round, "\"} 1\n")), round);
    }
  }
}

TEST_CASE("with the default --min-scan-interval-ms (100), each new writer is in the very next scrape too") {
  TempDir dir;
  Exporter exporter(dir, {"--min-scan-interval-ms", "100"});
  for (int round = 1; round <= 6; ++round) {
    // Right after a scrape: the interval has not passed, so this scrape
    // waits for the next scan rather than take the last view.
    REQUIRE(HttpGet(exporter.url("/metrics")).status == 200);
    WriterProcess writer(dir.path(), absl::StrCat("svc", round),
                         [](Writer& w) { w.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(1); });
    const std::string body = HttpGet(exporter.url("/metrics")).body;
    CHECK_MESSAGE(absl::StrContains(body, absl::StrCat("jobs_total{service=\"svc", round, "\"} 1\n")), round);
    CHECK(absl::StrContains(body, "shmetrics_exporter_stale_views_total{reason=\"busy\"} 0\n"));
    CHECK(absl::StrContains(body, "shmetrics_exporter_stale_views_total{reason=\"scan_wait\"} 0\n"));
  }
}

// The exporter's environment for tests/stall_open_shim.cc: opening a
// shmetrics.stall.* file blocks while `stall_while` exists.
std::vector<std::string> StallEnvironment(const std::string& stall_while) {
  const char* asan = getenv("ASAN_OPTIONS");
  const std::string asan_options = asan != nullptr && *asan != '\0' ? std::string(asan) + ":" : "";
  return {std::string("LD_PRELOAD=") + SHMETRICS_STALL_SHIM, "SHMETRICS_TEST_STALL_WHILE=" + stall_while,
          // ASan wants its runtime first; the shim comes before it.
          "ASAN_OPTIONS=" + asan_options + "verify_asan_link_order=0"};
}

// A number from /api/health (which never waits for a scan), -1 if absent.
double HealthNumber(const Exporter& exporter, const std::string& field) {
  const std::string health = HttpGet(exporter.url("/api/health")).body;
  const std::string key = "\"" + field + "\":";
  const size_t at = health.find(key);
  return at == std::string::npos ? -1 : std::stod(health.substr(at + key.size()));
}

// Whether a scan blocked in the shim within 10 s.
bool ScanStalled(const std::string& stall_while) {
  for (int i = 0; i < 400 && !std::filesystem::exists(stall_while + ".entered"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return std::filesystem::exists(stall_while + ".entered");
}

TEST_CASE("a first scan stuck at start-up: the exporter listens, answers 503 then, and SIGTERM still stops it") {
  TempDir dir;
  WriterProcess web(dir.path(), "web", WebTraffic);
  const std::string stall_while = dir.path() + "/stall-while";
  testing::WriteFile(stall_while, "");
  testing::WriteFile(dir.path() + "/shmetrics.stall.4242.1.0", std::string(64, 'x'));
  Exporter exporter(dir, {}, StallEnvironment(stall_while), /*wait_ready=*/false);
  REQUIRE(ScanStalled(stall_while));
  const auto health = HttpGet(exporter.url("/api/health"));
  CHECK(health.status == 200);
  CHECK(absl::StrContains(health.body, "\"ready\":false"));
  const auto metrics = HttpGet(exporter.url("/metrics"));  // after --scan-wait-ms (1 s)
  CHECK(metrics.status == 503);
  CHECK(metrics.body == "{\"error\":\"the exporter's first directory scan has not completed yet\"}\n");
  CHECK(HttpGet(exporter.url("/api/stats")).status == 503);
  // SIGTERM: the scan cannot be joined, so it leaves at once, with 0.
  CHECK(exporter.Stop() == 0);
  CHECK(absl::StrContains(exporter.Log(), "msg=\"stopped; a scan was still stuck\""));
  std::filesystem::remove(stall_while);
}

TEST_CASE("a directory moved away under the exporter: scans fail, health says so, the last good view is served") {
  TempDir dir;
  WriterProcess web(dir.path(), "web", WebTraffic);
  Exporter exporter(dir);
  const std::string web_sample = "http_requests_total{method=\"GET\",endpoint=\"/api\",status=\"200\",service=\"web\"} 120\n";
  REQUIRE(absl::StrContains(HttpGet(exporter.url("/metrics")).body, web_sample));
  const std::string away = dir.path() + ".away";
  REQUIRE(rename(dir.path().c_str(), away.c_str()) == 0);
  std::string health;
  for (int i = 0; i < 200 && !absl::StrContains(health, "\"scan failing\""); ++i) {
    health = HttpGet(exporter.url("/api/health")).body;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  CHECK(absl::StrContains(health, "\"status\":\"degraded\",\"reasons\":[\"scan failing\"]"));
  const std::string metrics = HttpGet(exporter.url("/metrics")).body;  // waits for a scan, which fails
  CHECK(absl::StrContains(metrics, web_sample));
  CHECK(absl::StrContains(metrics, "shmetrics_exporter_stale_views_total{reason=\"scan_failed\"} 1\n"));
  REQUIRE(rename(away.c_str(), dir.path().c_str()) == 0);
  for (int i = 0; i < 200 && absl::StrContains(health, "\"scan failing\""); ++i) {
    health = HttpGet(exporter.url("/api/health")).body;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  CHECK(absl::StrContains(health, "\"status\":\"ok\",\"reasons\":[]"));
  CHECK(absl::StrContains(exporter.Log(), "level=error msg=\"scan failed\""));
}

TEST_CASE("a scan stuck in open() (a hung file system): requests get the last view instead of waiting on it") {
  TempDir dir;
  WriterProcess web(dir.path(), "web", WebTraffic);
  const std::string stall_while = dir.path() + "/stall-while";  // not a segment's name: never opened by a scan
  Exporter exporter(dir, {}, StallEnvironment(stall_while));
  const std::string web_sample = "http_requests_total{method=\"GET\",endpoint=\"/api\",status=\"200\",service=\"web\"} 120\n";
  REQUIRE(absl::StrContains(HttpGet(exporter.url("/metrics")).body, web_sample));
  auto scan_running_seconds = [&] { return HealthNumber(exporter, "scan_running_seconds"); };

  testing::WriteFile(stall_while, "");
  testing::WriteFile(dir.path() + "/shmetrics.stall.4242.1.0", std::string(64, 'x'));
  // The scanner thread (the only one that scans) blocks on that file; once
  // the scan has run past --scan-wait-ms (1 s), no request waits on it.
  REQUIRE(ScanStalled(stall_while));
  double running_seconds = 0;
  for (int i = 0; i < 200 && (running_seconds = scan_running_seconds()) < 1.5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(running_seconds >= 1.5);

  // A writer that starts now is not in the view until the scan ends: the
  // scrape is answered from the last view, not held up by the stuck scan.
  WriterProcess late(dir.path(), "late",
                     [](Writer& w) { w.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(3); });
  const auto during = HttpGet(exporter.url("/metrics"));
  CHECK(during.status == 200);
  CHECK(absl::StrContains(during.body, web_sample));
  CHECK_FALSE(absl::StrContains(during.body, "jobs_total{service=\"late\"}"));

  // Unstuck: once the scan has ended, the next scrape scans again.
  std::filesystem::remove(stall_while);
  for (int i = 0; i < 200 && (running_seconds = scan_running_seconds()) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(running_seconds == 0);
  const auto after = HttpGet(exporter.url("/metrics"));
  CHECK(absl::StrContains(after.body, web_sample));
  CHECK(absl::StrContains(after.body, "jobs_total{service=\"late\"} 3\n"));
  CHECK(absl::StrContains(after.body, "shmetrics_exporter_segments{state=\"corrupt\"} 1\n"));  // the stall file
  CHECK(absl::StrContains(after.body, "shmetrics_exporter_stale_views_total{reason=\"scan_wait\"} 1\n"));  // `during`
  CHECK(absl::StrContains(after.body, "shmetrics_exporter_stale_views_total{reason=\"busy\"} 0\n"));
}

TEST_CASE("at most two requests wait for a scan, JSON views in one place only: the rest get the last view, counted") {
  TempDir dir;
  WriterProcess web(dir.path(), "web", WebTraffic);
  const std::string stall_while = dir.path() + "/stall-while";
  Exporter exporter(dir, {"--scan-wait-ms", "60000"}, StallEnvironment(stall_while));
  auto waiting = [&] { return static_cast<int>(HealthNumber(exporter, "requests_waiting_for_scan")); };
  auto wait_until_waiting = [&](int n) {
    int now = -1;
    for (int i = 0; i < 400 && (now = waiting()) != n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    return now;
  };
  testing::WriteFile(stall_while, "");
  testing::WriteFile(dir.path() + "/shmetrics.stall.4242.1.0", std::string(64, 'x'));
  REQUIRE(ScanStalled(stall_while));
  // Started before the threads below: Fork() flushes every stdio stream,
  // and a thread's HttpGet holds its pipe's stream locked while it waits.
  WriterProcess late(dir.path(), "late",
                     [](Writer& w) { w.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(3); });

  // A JSON view waits (the scan began before it came)...
  testing::HttpResponse stats_waited;
  std::thread first_view([&] { stats_waited = HttpGet(exporter.url("/api/stats")); });
  REQUIRE(wait_until_waiting(1) == 1);
  // ...a second one may not: the other place is kept for scrapes.
  CHECK(HttpGet(exporter.url("/api/stats")).status == 200);
  testing::HttpResponse scrape_waited;
  std::thread first_scrape([&] { scrape_waited = HttpGet(exporter.url("/metrics")); });
  REQUIRE(wait_until_waiting(2) == 2);
  // Both places taken: a third request gets the last view at once.
  const auto busy = HttpGet(exporter.url("/metrics"));
  CHECK(busy.status == 200);
  CHECK_FALSE(absl::StrContains(busy.body, "jobs_total{service=\"late\"}"));
  CHECK(absl::StrContains(busy.body, "shmetrics_exporter_requests_waiting_for_scan 2\n"));

  std::filesystem::remove(stall_while);
  std::filesystem::remove(stall_while + ".entered");
  first_view.join();
  first_scrape.join();
  CHECK(stats_waited.status == 200);
  CHECK(scrape_waited.status == 200);
  CHECK(absl::StrContains(scrape_waited.body, "jobs_total{service=\"late\"} 3\n"));  // waited: the new writer is in
  CHECK(absl::StrContains(scrape_waited.body, "shmetrics_exporter_stale_views_total{reason=\"busy\"} 2\n"));
  CHECK(absl::StrContains(scrape_waited.body, "shmetrics_exporter_stale_views_total{reason=\"scan_wait\"} 0\n"));
  CHECK(waiting() == 0);
}

TEST_CASE("a corrupt segment next to good ones: the good ones are served, health says what is wrong") {
  TempDir dir;
  WriterProcess a(dir.path(), "web", WebTraffic);
  const std::string bad = dir.path() + "/shmetrics.web.4242.1.0";
  testing::WriteFile(bad, std::string(8192, 'x'));
  chmod(bad.c_str(), 0600);
  Exporter exporter(dir);
  const auto metrics = HttpGet(exporter.url("/metrics"));
  CHECK(metrics.status == 200);
  CHECK(absl::StrContains(metrics.body, "http_requests_total{method=\"GET\",endpoint=\"/api\",status=\"200\",service=\"web\"} 120\n"));
  CHECK(absl::StrContains(metrics.body, "shmetrics_exporter_segments{state=\"corrupt\"} 1\n"));
  const auto health = HttpGet(exporter.url("/api/health"));
  CHECK(health.status == 503);
  CHECK(absl::StrContains(health.body, "\"status\":\"degraded\""));
  CHECK(absl::StrContains(health.body, "\"reasons\":[\"corrupt segment\"]"));
  CHECK(absl::StrContains(health.body, "{\"path\":\"" + bad + "\",\"kind\":\"corrupt\",\"error\":\"" + bad +
                                           ": not a shmetrics segment (bad magic)\"}"));
  CHECK(absl::StrContains(exporter.Log(),
                          "level=warn msg=\"skipping (corrupt) " + bad + ": not a shmetrics segment (bad magic)\""));
  CHECK(std::filesystem::exists(bad));  // never removed: it is not ours to judge
}

TEST_CASE("HTTP: unknown paths 404, wrong methods 405, HEAD, reserved routes, stats and health JSON") {
  TempDir dir;
  WriterProcess a(dir.path(), "web", WebTraffic);
  Exporter exporter(dir);
  CHECK(HttpGet(exporter.url("/nope")).status == 404);
  CHECK(HttpGet(exporter.url("/nope")).body == "{\"error\":\"not found: /nope\"}\n");
  const auto post = HttpGet(exporter.url("/metrics"), "--method POST");
  CHECK(post.status == 405);
  CHECK(post.body == "{\"error\":\"method POST not allowed; use GET\"}\n");
  CHECK(HttpGet(exporter.url("/metrics"), "--method HEAD").status == 200);
  CHECK(HttpGet(exporter.url("/api/recent")).body == "{\"records\":[]}\n");
  const auto bad_limit = HttpGet(exporter.url("/api/recent?limit=0"));
  CHECK(bad_limit.status == 400);
  CHECK(bad_limit.body == "{\"error\":\"limit must be an integer from 1 to 10000\"}\n");
  CHECK(HttpGet(exporter.url("/api/errors?colour=red")).body ==
        "{\"error\":\"unknown query parameter 'colour'; use limit, service, endpoint or status\"}\n");
  const auto health = HttpGet(exporter.url("/api/health"));
  CHECK(health.status == 200);
  CHECK(absl::StrContains(health.body, "\"status\":\"ok\",\"reasons\":[],\"retiring\":true,\"scan_running_seconds\":"));
  CHECK(absl::StrContains(health.body, absl::StrCat("\"service\":\"web\",\"pid\":", a.pid(), ",\"alive\":true")));
  const auto stats = HttpGet(exporter.url("/api/stats"));
  CHECK(stats.status == 200);
  // 120 GET /api: 20 each of 0.004, 0.02, 0.07, 0.3, 0.8 and 3 s.
  // p50: rank 60 falls in (0.1, 0.5] holding 20 after 60 below -> 0.1.
  CHECK(absl::StrContains(stats.body,
      "{\"method\":\"GET\",\"endpoint\":\"/api\",\"requests\":120,\"errors\":0,\"error_rate\":0,"
      "\"p50\":0.1,\"p95\":1,\"p99\":1}"));
  CHECK(absl::StrContains(stats.body, "{\"method\":\"POST\",\"endpoint\":\"/api\",\"requests\":3,\"errors\":3,\"error_rate\":1}"));
  CHECK(absl::StrContains(stats.body, "\"cache\":{\"hits\":30,\"misses\":10,\"hit_rate\":0.75}"));
  // A raw, malformed request gets an error response, and the server lives on.
  const auto raw = RunCommand(absl::StrCat("printf 'GARBAGE\\r\\n\\r\\n' | timeout 5 bash -c 'cat > /dev/tcp/127.0.0.1/",
                                           exporter.port(), "' ; echo done"));
  CHECK(raw.output == "done\n");
  CHECK(HttpGet(exporter.url("/metrics")).status == 200);
}

TEST_CASE("16 concurrent scrapes while writers write: every one succeeds and parses") {
  TempDir dir;
  std::atomic<bool>* stop = static_cast<std::atomic<bool>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (stop) std::atomic<bool>(false);
  WriterProcess busy(dir.path(), "web", [stop](Writer& w) {
    WebTraffic(w);
    auto counter = w.AddCounter("busy_total", "Busy.").value().WithLabels({}).value();
    if (testing::Fork() == 0) {  // keeps writing after the parent reports ready
      while (!stop->load()) counter.inc();
      _exit(0);
    }
  });
  Exporter exporter(dir);
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/expo.py burst " + exporter.url("/metrics") + " 16");
  stop->store(true);
  CHECK(r.exit_code == 0);
  CHECK(r.output == "16\n");
  munmap(stop, 4096);
}

TEST_CASE("basic auth: no or wrong credentials get 401, right ones 200") {
  TempDir dir;
  const std::string credentials = dir.path() + "/credentials";
  testing::WriteFile(credentials, "# user:password\nprom:s3cret\n");
  Exporter exporter(dir, {"--basic-auth-file", credentials});
  CHECK(HttpGet(exporter.url("/metrics")).status == 401);
  CHECK(HttpGet(exporter.url("/metrics"), "--auth prom:wrong").status == 401);
  CHECK(HttpGet(exporter.url("/metrics"), "--auth prom:s3cret").status == 200);
}

TEST_CASE("bad flags and an unusable directory get their exit codes") {
  TempDir dir;
  auto run = [&](const std::string& args) {
    return RunCommand(std::string(SHMETRICS_EXPORTER_BIN) + " " + args + " 2>&1").exit_code;
  };
  CHECK(run("--no-such-flag") == 2);
  CHECK(run("--threads 0") == 2);
  CHECK(run("--tls-cert /dev/null --dir " + dir.path()) == 2);  // refused, not a crash on the first request
  CHECK(run("--dir " + dir.path() + "/missing --listen 127.0.0.1:1") == 3);
  Exporter first(dir);
  const auto second = RunCommand(absl::StrCat(SHMETRICS_EXPORTER_BIN, " --dir ", dir.path(),
                                              " --listen 127.0.0.1:", testing::FreePort(), " 2>&1"));
  CHECK(second.exit_code == 5);
  CHECK(absl::StrContains(second.output, "another exporter (or shmetrics gc) already retires segments in " + dir.path()));
  CHECK(RunCommand(absl::StrCat(SHMETRICS_EXPORTER_BIN, " --no-retire --dir ", dir.path(), " --listen 127.0.0.1:",
                                first.port(), " 2>&1")).exit_code == 4);
}

TEST_CASE("a real Prometheus server scrapes the exporter and PromQL returns what the writers produced") {
  if (RunCommand("command -v prometheus").exit_code != 0) {
    FAIL("Debian's prometheus is not installed (the README's test command installs it)");
  }
  TempDir dir;
  WriterProcess a(dir.path(), "web", WebTraffic);
  WriterProcess b(dir.path(), "web", WebTraffic);
  Exporter exporter(dir);
  testing::PrometheusServer prometheus(dir, exporter);
  auto query = [&](const std::string& promql) { return prometheus.Query(promql); };
  const std::string total =
      prometheus.QueryUntil("sum(http_requests_total%7Bstatus%3D%22200%22%2Cendpoint%3D%22%2Fapi%22%7D)", "\"result\":[{");
  CHECK_MESSAGE(absl::StrContains(total, "\"240\"]"), total);
  // 240 observations, 40 in each of the 6 buckets; PromQL must agree with EstimateQuantile.
  const std::string p50 = query("histogram_quantile(0.5%2Csum%20by%20(le)(http_request_duration_seconds_bucket))");
  const std::vector<uint64_t> buckets = {40, 40, 40, 40, 40, 40};
  const double estimate = reader::EstimateQuantile(kLatencyBounds, buckets, 0.5);
  std::string estimate_text;
  reader::AppendDouble(&estimate_text, estimate);
  CHECK_MESSAGE(absl::StrContains(p50, "\"" + estimate_text + "\"]"), p50);
  const std::string rate = query("sum(rate(http_requests_total%5B1m%5D))");
  CHECK_MESSAGE(absl::StrContains(rate, "\"status\":\"success\""), rate);
  CHECK(prometheus.Stop() == 0);
}

}  // namespace
}  // namespace shmetrics
