// Native histograms, units, created timestamps and the protobuf exposition:
// bucket indexing against its definition, exact cells through the writer,
// the reader and the archive, and the three exposition formats compared by
// independent decoders (python3-protobuf against docs/metrics.proto,
// python3-prometheus-client), then a real Prometheus with native histograms.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <map>
#include <set>
#include <chrono>
#include <thread>
#include <atomic>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "process_support.h"
#include "shmetrics/archive.h"
#include "shmetrics/collector.h"
#include "shmetrics/shm/native_buckets.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::Exporter;
using testing::RunCommand;
using testing::TempDir;
using testing::WriterProcess;

int32_t IndexOf(double value, int schema) {
  return shm::NativeBucketIndex(value, schema, shm::NativeSchemaTableFor(schema));
}

TEST_CASE("native bucket index: every value lies above the bound of bucket k-1 and at most at the bound of bucket k, at every schema") {
  CHECK(IndexOf(1.0, 3) == 0);
  CHECK(IndexOf(2.0, 3) == 8);
  CHECK(IndexOf(std::nextafter(1.0, 2.0), 3) == 1);
  CHECK(IndexOf(0.5, 3) == -8);
  CHECK(IndexOf(2.0, 0) == 1);
  CHECK(IndexOf(3.0, 0) == 2);
  CHECK(IndexOf(4.0, 0) == 2);
  CHECK(IndexOf(2.0, -1) == 1);  // (1, 4]
  CHECK(IndexOf(4.0, -1) == 1);
  CHECK(IndexOf(5.0, -1) == 2);
  CHECK(IndexOf(0.25, -1) == -1);
  CHECK(IndexOf(0.2, -1) == -1);  // (1/16, 1/4]
  CHECK(IndexOf(1.0, 8) == 0);
  CHECK(shm::NativeBucketUpperBound(8, 3) == 2.0);
  CHECK(shm::NativeBucketUpperBound(-8, 3) == 0.5);
  CHECK(shm::NativeBucketUpperBound(3, -2) == 4096.0);
  std::mt19937_64 random(7);
  std::uniform_real_distribution<double> exponent(-60, 60);
  for (int schema = shm::kMinNativeSchema; schema <= shm::kMaxNativeSchema; ++schema) {
    int wrong = 0;
    for (int i = 0; i < 20000; ++i) {
      const double value = std::exp2(exponent(random));
      const int32_t k = IndexOf(value, schema);
      if (!(shm::NativeBucketUpperBound(k - 1, schema) < value && value <= shm::NativeBucketUpperBound(k, schema))) {
        ++wrong;
      }
      // A bucket's own upper bound is in it; the next double up is not.
      const double bound = shm::NativeBucketUpperBound(k, schema);
      if (IndexOf(bound, schema) != k || IndexOf(std::nextafter(bound, INFINITY), schema) != k + 1) ++wrong;
    }
    CHECK_MESSAGE(wrong == 0, "schema ", schema);
  }
}

TEST_CASE("native histogram options are checked at registration") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  auto code = [&](NativeHistogramOptions options, const char* name = "lat_seconds") {
    return writer->AddNativeHistogram(name, "h", {}, options).status();
  };
  CHECK(code({.schema = 9}).message() == "family 'lat_seconds': native histogram schema must be -4 to 8, got 9");
  CHECK(code({.min = 0}).code() == absl::StatusCode::kInvalidArgument);
  CHECK(code({.min = 2, .max = 1}).code() == absl::StatusCode::kInvalidArgument);
  CHECK(code({.schema = 8, .min = 1e-9, .max = 1e9}).message() ==
        "family 'lat_seconds': native histogram range [1e-09, 1e+09] at schema 8 needs 15308 buckets per sign; "
        "at most 1024 (narrow the range or lower the schema)");
  CHECK(code({.unit = "bytes"}).message() ==
        "family 'lat_seconds': with unit 'bytes' its name must end in _bytes, as OpenMetrics requires");
  CHECK(code({.unit = "seconds"}).ok());
  CHECK(code({.schema = 2, .unit = "seconds"}).code() == absl::StatusCode::kAlreadyExists);
  CHECK(writer->AddCounter("sent_bytes_total", "h", {}, {.unit = "bytes"}).ok());
  CHECK(writer->AddCounter("sent_total", "h", {}, {.unit = "bytes"}).status().message() ==
        "family 'sent_total': with unit 'bytes' its name must end in _bytes (before _total), as OpenMetrics requires");
  CHECK(writer->AddGauge("temp_celsius", "h", {}, GaugeMerge::kMax, {.unit = "cel sius"}).status().message() ==
        "family 'temp_celsius': invalid unit: must be 1 to 64 of [a-zA-Z0-9_:]");
  CHECK(writer->AddCounter("x_total", "h", {}, {.unit = "total"}).status().message() ==
        "family 'x_total': 'total' is a counter's suffix, not a unit");
  CHECK(writer->AddInfo("build_info", "h", {"v"}).status().message() ==
        "family 'build_info': an info family is named without its _info suffix (the exposition adds it)");
  CHECK(writer->AddStateSet("mode", "h", {}, {}).status().message() == "stateset 'mode' needs 1 to 64 states, got 0");
  CHECK(writer->AddStateSet("mode", "h", {}, {"a", "a"}).status().message() == "stateset 'mode': state 'a' is repeated");
  CHECK(writer->AddStateSet("a:b", "h", {}, {"x"}).status().message() ==
        "family 'a:b': a stateset's name is also its state label's name: it must be a valid label name (no ':')");
  CHECK(writer->AddStateSet("mode", "h", {"mode"}, {"x"}).status().message() ==
        "family 'mode': a stateset's label names cannot include its own name (its state label)");
  CHECK(writer->AddStateSet("mode", "h", {}, {"x", "y"}).ok());
  CHECK(writer->AddStateSet("mode", "h", {}, {"x", "z"}).status().code() == absl::StatusCode::kAlreadyExists);
}

// What the writer must have put in the cells, computed here from the
// definition of the buckets.
struct Expected {
  std::vector<uint64_t> cells;
  double sum = 0;
};

TEST_CASE("native histogram: exact cells from several threads, out-of-range values, negatives, classic buckets, "
          "through the reader and the archive") {
  TempDir dir;
  const NativeHistogramOptions options{
      .schema = 3, .min = 1e-3, .max = 1e3, .negative = true, .classic_bounds = {0.1, 1}, .unit = "seconds"};
  std::vector<double> values;
  // 1.1 ms .. ~1.3 s, multiples of 2^-30: every sum of them is exact in any order.
  for (int i = 0; i < 2000; ++i) values.push_back(std::ldexp(std::round(std::ldexp(0.0011 * std::pow(1.007, i), 30)), -30));
  values.insert(values.end(), {0.0, -0.0, 1e-9, 1e6, -0.5, -2e3, 1.0, 0.1});
  const shm::NativeShape shape{3, true, IndexOf(1e-3, 3), IndexOf(1e3, 3), 0x1p-128, 2};
  Expected expected{std::vector<uint64_t>(shape.cell_count(), 0), 0};
  for (double v : values) {
    const double m = std::fabs(v);
    if (m <= 0x1p-128) {
      ++expected.cells[shm::kNativeZeroCell];
    } else {
      const int32_t k = IndexOf(m, 3);
      const int32_t kept = std::clamp(k, shape.index_min, shape.index_max);
      if (kept != k) ++expected.cells[shm::kNativeOutOfRangeCell];
      const uint32_t base = v < 0 ? shape.negative_first_cell() : shm::kNativeFirstBucketCell;
      ++expected.cells[base + (kept - shape.index_min)];
    }
    ++expected.cells[shape.classic_first_cell() + (v <= 0.1 ? 0 : v <= 1 ? 1 : 2)];
  }
  constexpr int kThreads = 4;
  {
    auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
    auto family = writer->AddNativeHistogram("lat_seconds", "Latency.", {"route"}, options).value();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        const NativeHistogram h = family.WithLabels({"/a"}).value();
        for (double v : values) h.observe(v);
      });
    }
    for (auto& thread : threads) thread.join();
    for (double v : values) expected.sum += v;  // the sum of one thread's lane, times kThreads below

    reader::CollectorOptions collector_options;
    collector_options.directory = dir.path();
    collector_options.retire_dead = false;
    auto collector = reader::Collector::Create(collector_options).value();
    REQUIRE(collector->Scan().ok());
    const std::vector<reader::AggregatedSeries> snapshot = collector->Snapshot();
    REQUIRE(snapshot.size() == 1);
    const reader::AggregatedSeries& s = snapshot[0];
    CHECK(s.native);
    std::vector<uint64_t> want = expected.cells;
    for (uint64_t& c : want) c *= kThreads;
    CHECK(s.native_cells == want);
    CHECK(s.sum == expected.sum * kThreads);
    CHECK(s.buckets == std::vector<uint64_t>{want[shape.classic_first_cell()], want[shape.classic_first_cell() + 1],
                                             want[shape.classic_first_cell() + 2]});
    CHECK(s.created_unix_ns != 0);
    writer->Close();
  }
  // Retired into the archive, saved and loaded: the same cells and creation time.
  reader::CollectorOptions retiring;
  retiring.directory = dir.path();
  auto collector = reader::Collector::Create(retiring).value();
  REQUIRE(collector->Scan().ok());
  CHECK(collector->Counters().segments_retired_total == 1);
  auto archive = reader::Archive::Load(dir.path() + "/shmetrics-archive").value();
  REQUIRE(archive.series().size() == 1);
  const reader::ArchivedSeries& a = archive.series().begin()->second;
  CHECK(a.shape.native);
  CHECK(a.shape.unit == "seconds");
  CHECK(a.native_cells.size() == shape.cell_count());
  CHECK(a.created_unix_ns != 0);
  std::vector<uint64_t> want = expected.cells;
  for (uint64_t& c : want) c *= kThreads;
  want[shm::kNativeSumCell] = 0;
  CHECK(a.native_cells == want);
  const reader::AggregatedSeries s = collector->Snapshot().at(0);
  CHECK(s.native_cells == want);
  CHECK(s.created_unix_ns == a.created_unix_ns);
  // The service restarts: the series is created again, later; _created
  // stays the first creation, kept by the archive.
  auto restarted = Writer::Create(testing::WriterIn(dir, "svc")).value();
  restarted->AddNativeHistogram("lat_seconds", "Latency.", {"route"}, options).value().WithLabels({"/a"}).value().observe(1);
  REQUIRE(collector->Scan().ok());
  const reader::AggregatedSeries after = collector->Snapshot().at(0);
  CHECK(after.created_unix_ns == a.created_unix_ns);
  CHECK(reader::Segment::Open(restarted->path()).value()->series().at(0).created_unix_ns > a.created_unix_ns);
}

TEST_CASE("a foreign native histogram descriptor is refused: bad schema, range or flags") {
  TempDir dir;
  std::string path;
  {
    auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
    REQUIRE(writer->AddNativeHistogram("lat_seconds", "h", {}).ok());
    path = writer->path();
    writer->Close();
    std::string good = testing::ReadFile(path);
    const uint64_t families = *reinterpret_cast<const uint64_t*>(good.data() + 152);
    auto expect = [&](size_t offset, std::string bytes, const std::string& error) {
      std::string forged = good;
      forged.replace(families + offset, bytes.size(), bytes);
      testing::WriteFile(path, forged);
      auto segment = reader::Segment::Open(path);
      REQUIRE(!segment.ok());
      CHECK(segment.status().message() == path + ": corrupt segment: family 0 " + error);
    };
    const std::string invalid = "has an invalid native histogram schema, bucket range or zero threshold";
    expect(28, std::string(1, char(9)), invalid);                       // schema 9
    expect(29, std::string(1, char(0x05)), invalid);                    // an unknown flag
    expect(112, std::string("\x00\x00\x00\x80", 4), invalid);           // index_min far below index_max
    expect(29, std::string(1, char(0)),
           "has native histogram fields but is not a native histogram");  // flags cleared, fields left
    expect(16, std::string(1, char(1)), "has native histogram flags but is not a native histogram");
  }
}

// The delimited protobuf body of `url`, decoded by tests/proto_samples.py
// (python3-protobuf, docs/metrics.proto); `flags` are its options.
std::set<std::string> ProtobufSamples(const TempDir& dir, const std::string& url, const std::string& flags = "") {
  const std::string file = dir.path() + "/metrics.pb";
  const auto fetched = RunCommand(
      "curl -sf -o " + file +
      " -H 'Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited' " +
      url);
  REQUIRE(fetched.exit_code == 0);
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/proto_samples.py " + file + " " + flags);
  std::filesystem::remove(file);
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  std::set<std::string> lines;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) lines.emplace(line);
  return lines;
}

std::set<std::string> TextSamples(const TempDir& dir, const std::string& body, const std::string& kind,
                                  const std::string& flags = "") {
  const std::string file = dir.path() + "/metrics.txt";
  testing::WriteFile(file, body);
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/expo.py samples " + file + " " + kind + " " + flags);
  std::filesystem::remove(file);
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  std::set<std::string> lines;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) lines.emplace(line);
  return lines;
}

// The sum of the values of the sample lines that begin with `prefix`.
double SumOf(const std::set<std::string>& lines, const std::string& prefix) {
  double sum = 0;
  for (const std::string& line : lines) {
    if (absl::StartsWith(line, prefix)) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// The services' samples only: the exporter's own change between scrapes.
std::set<std::string> ServiceSamples(const std::set<std::string>& lines) {
  std::set<std::string> kept;
  for (const std::string& line : lines) {
    if (!absl::StartsWith(line, "shmetrics_exporter_") && !absl::StartsWith(line, "process_")) kept.insert(line);
  }
  return kept;
}

void MixedFamilies(Writer& writer) {
  auto requests = writer.AddCounter("http_requests_total", "Requests.", {"code"}).value();
  requests.WithLabels({"200"}).value().inc(41);
  requests.WithLabels({"500"}).value().inc(1);
  writer.AddCounter("sent_bytes_total", "Bytes \"sent\".", {}, {.unit = "bytes"}).value().WithLabels({}).value().add(2.5);
  writer.AddGauge("temperature_celsius", "T.", {"room"}, GaugeMerge::kMax, {.unit = "celsius"})
      .value().WithLabels({"a\"b\\c"}).value().set(-1.5);
  auto classic = writer.AddHistogram("size_bytes", "S.", {}, {10, 100, 1000}, {.unit = "bytes"}).value();
  for (double v : {5.0, 50.0, 500.0, 5000.0}) classic.WithLabels({}).value().observe(v);
  auto native = writer.AddNativeHistogram("lat_seconds", "L.", {"route"},
                                          {.min = 1e-3, .max = 10, .negative = true, .classic_bounds = {0.25, 1},
                                           .unit = "seconds"}).value();
  for (double v : {0.0, 0.002, 0.003, 0.5, 0.5, 2.0, -0.01, 100.0}) native.WithLabels({"/x"}).value().observe(v);
  auto bare = writer.AddNativeHistogram("wait_seconds", "W.", {}, {.schema = 0, .min = 1, .max = 64}).value();
  bare.WithLabels({}).value().observe(3);
  writer.AddNativeHistogram("idle_seconds", "never observed", {}, {}).value().WithLabels({}).value();
  REQUIRE(writer.AddInfo("application", "The build.", {"version", "commit"}).value().Add({"1.2.3", "abc"}).ok());
  const StateSet mode =
      writer.AddStateSet("mode", "Serving mode.", {"pool"}, {"starting", "serving", "draining"}).value()
          .WithLabels({"p1"}).value();
  mode.set(1);
  mode.set(7);  // no such state: ignored
}

TEST_CASE("the three formats agree: protobuf decoded by python3-protobuf gives exactly the text samples, "
          "OpenMetrics with units and _created parses") {
  TempDir dir;
  WriterProcess a(dir.path(), "svc", MixedFamilies);
  WriterProcess b(dir.path(), "svc", MixedFamilies);
  Exporter exporter(dir);
  const std::string url = exporter.url("/metrics");
  const testing::HttpResponse text = testing::HttpGet(url);
  REQUIRE(text.status == 200);
  const std::set<std::string> from_text = ServiceSamples(TextSamples(dir, text.body, "text"));
  const std::set<std::string> from_protobuf = ServiceSamples(ProtobufSamples(dir, url));
  CHECK(from_protobuf == from_text);
  CHECK(from_text.count(R"(lat_seconds_bucket{le="0.25",route="/x",service="svc"} 8.0)") == 1);
  CHECK(from_text.count(R"(wait_seconds_bucket{le="+Inf",service="svc"} 2.0)") == 1);
  CHECK(from_text.count(R"(idle_seconds_count{service="svc"} 0.0)") == 1);
  // 100 is above lat_seconds' max, once per process.
  CHECK(SumOf(TextSamples(dir, text.body, "text"), "shmetrics_exporter_segment_native_out_of_range_total{") == 2);
  CHECK(from_text.count(R"(application_info{commit="abc",service="svc",version="1.2.3"} 1.0)") == 1);
  CHECK(from_text.count(R"(mode{mode="serving",pool="p1",service="svc"} 1.0)") == 1);
  CHECK(from_text.count(R"(mode{mode="draining",pool="p1",service="svc"} 0.0)") == 1);
  CHECK(absl::StrContains(text.body, "# TYPE application_info gauge\n"));

  // The native buckets, as decoded: two processes, each 0 -> zero bucket,
  // 0.002 -> 2^(-72/8) .. at index -71, ..., 100 -> clamped to the top
  // (index of 10), -0.01 -> negative index -53.
  const std::set<std::string> native = ProtobufSamples(dir, url, "--native");
  std::map<int32_t, int> positive;
  for (double v : {0.002, 0.003, 0.5, 0.5, 2.0}) positive[IndexOf(v, 3)] += 2;
  positive[IndexOf(10, 3)] += 2;  // 100, out of range
  std::string positive_text;
  for (const auto& [k, n] : positive) absl::StrAppend(&positive_text, positive_text.empty() ? "" : ",", k, ":", n, ".0");
  std::string sum_text;  // as the text format gave it
  for (const std::string& line : from_text) {
    if (absl::StartsWith(line, "lat_seconds_sum{")) sum_text = line.substr(line.rfind(' ') + 1);
  }
  const std::string want = absl::StrCat("lat_seconds{route=\"/x\",service=\"svc\"} native schema=3 "
                                        "zero_threshold=2.938735877055719e-39 zero_count=2.0 count=16.0 sum=",
                                        sum_text, " positive=[", positive_text, "] negative=[", IndexOf(0.01, 3),
                                        ":2.0]");
  CHECK_MESSAGE(native.count(want) == 1, want);
  CHECK(native.count(R"(wait_seconds{service="svc"} native schema=0 zero_threshold=2.938735877055719e-39 zero_count=0.0 count=2.0 sum=6.0 positive=[2:2.0] negative=[])") == 1);
  CHECK(native.count(R"(idle_seconds{service="svc"} native schema=3 zero_threshold=2.938735877055719e-39 zero_count=0.0 count=0.0 sum=0.0 positive=[] negative=[])") == 1);

  // OpenMetrics: # UNIT lines, _created beside counters and histograms,
  // accepted by python-prometheus-client's OpenMetrics parser.
  const testing::HttpResponse om = testing::HttpGet(url, "--accept application/openmetrics-text");
  REQUIRE(om.status == 200);
  CHECK(absl::StrContains(om.body, "# TYPE sent_bytes counter\n# UNIT sent_bytes bytes\n"));
  CHECK(absl::StrContains(om.body, "# UNIT lat_seconds seconds\n"));
  CHECK(absl::StrContains(om.body, "\nsent_bytes_created{service=\"svc\"} "));
  CHECK(absl::StrContains(om.body, "\nlat_seconds_created{route=\"/x\",service=\"svc\"} "));
  const std::set<std::string> from_om = TextSamples(dir, om.body, "openmetrics", "--created");
  CHECK(from_om.count(R"(lat_seconds_count{route="/x",service="svc"} 16.0)") == 1);
  CHECK(absl::StrContains(om.body, "# TYPE application info\napplication_info{version=\"1.2.3\",commit=\"abc\",service=\"svc\"} 1\n"));
  CHECK(absl::StrContains(om.body, "# TYPE mode stateset\n"));
  CHECK(from_om.count(R"(application_info{commit="abc",service="svc",version="1.2.3"} 1.0)") == 1);
  CHECK(from_om.count(R"(mode{mode="serving",pool="p1",service="svc"} 1.0)") == 1);
  CHECK(from_om.count(R"(mode{mode="starting",pool="p1",service="svc"} 0.0)") == 1);
  const std::set<std::string> created = ProtobufSamples(dir, url, "--created");
  size_t created_lines = 0;
  for (const std::string& line : created) {
    if (line.find("_created{") == std::string::npos) continue;
    ++created_lines;
    CHECK_MESSAGE(from_om.count(line) == 1, line);  // the same creation time in both formats
  }
  CHECK(created_lines == 7);  // 2 + 1 counters, 1 classic + 3 native histograms
}

TEST_CASE("a real Prometheus with native histograms scrapes protobuf: histogram_count and histogram_sum are exact, "
          "histogram_quantile is within a bucket") {
  if (RunCommand("command -v prometheus").exit_code != 0) {
    FAIL("Debian's prometheus is not installed (the README's test command installs it)");
  }
  TempDir dir;
  // Three processes write 1000 known values each, 1 ms growing by 0.7%.
  std::vector<double> values;
  for (int i = 0; i < 1000; ++i) values.push_back(0.001 * std::pow(1.007, i));
  auto work = [&](Writer& writer) {
    auto h = writer.AddNativeHistogram("job_seconds", "Job time.", {}, {.min = 1e-4, .max = 100}).value();
    for (double v : values) h.WithLabels({}).value().observe(v);
  };
  WriterProcess w1(dir.path(), "batch", work), w2(dir.path(), "batch", work), w3(dir.path(), "batch", work);
  // And one that keeps writing the same distribution, 1000 values a round,
  // for rate(): its rate over a minute has the same percentiles.
  auto live_writer = Writer::Create(testing::WriterIn(dir, "batch")).value();
  // With exemplars: Prometheus 2.42 must take a protobuf Histogram that carries them.
  const NativeHistogram live =
      live_writer->AddNativeHistogram("job_live_seconds", "Job time.", {}, {.min = 1e-4, .max = 100, .exemplars = true})
          .value().WithLabels({}).value();
  std::atomic<bool> stop_live{false};
  std::thread live_thread([&] {
    while (!stop_live.load()) {
      for (double v : values) live.observe(v);
      live.observe(values[500], Exemplar({{"trace_id", "live"}}));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  Exporter exporter(dir);
  testing::PrometheusServer prometheus(dir, exporter, "native-histograms");
  const std::string count = prometheus.QueryUntil("histogram_count(job_seconds)", "\"result\":[{");
  CHECK_MESSAGE(absl::StrContains(count, "\"3000\"]"), count);
  // The sum Prometheus stored is the exporter's, to the last digit.
  const double exporter_sum =
      SumOf(TextSamples(dir, testing::HttpGet(exporter.url("/metrics")).body, "text"), "job_seconds_sum{");
  REQUIRE(exporter_sum > 0);
  const std::string sum = prometheus.Query("histogram_sum(job_seconds)");
  CHECK_MESSAGE(testing::QueryValue(sum) == exporter_sum, sum, " vs ", exporter_sum);
  // The true 99th percentile: the 2970th of the 3000 values (each value 3 times).
  const double truth = values[989];
  auto within_a_bucket = [&](double estimate) { return std::fabs(estimate - truth) / truth <= std::exp2(1.0 / 8) - 1; };
  const std::string p99 = prometheus.Query("histogram_quantile(0.99%2Cjob_seconds)");
  REQUIRE_MESSAGE(!std::isnan(testing::QueryValue(p99)), p99);
  CHECK_MESSAGE(within_a_bucket(testing::QueryValue(p99)), p99, " truth ", truth);
  // rate() over the live writer's native histogram: the same 99th percentile,
  // once a few scrapes are in.
  const std::string rate_p99 = testing::PrometheusServer::PollUntil(
      [&] { return prometheus.Query("histogram_quantile(0.99%2Crate(job_live_seconds%5B1m%5D))"); },
      [&](const std::string& body) {
        return std::isfinite(testing::QueryValue(body)) &&
               testing::QueryValue(prometheus.Query("count_over_time(job_live_seconds%5B1m%5D)")) >= 5;
      });
  stop_live.store(true);
  live_thread.join();
  REQUIRE_MESSAGE(!std::isnan(testing::QueryValue(rate_p99)), rate_p99);
  CHECK_MESSAGE(within_a_bucket(testing::QueryValue(rate_p99)), rate_p99, " truth ", truth);
  CHECK(prometheus.Stop() == 0);
  // /api/stats estimates at the native resolution too.
  const std::string stats = testing::HttpGet(exporter.url("/api/stats")).body;
  const size_t family = stats.find("{\"name\":\"job_seconds\"");
  REQUIRE_MESSAGE(family != std::string::npos, stats);
  CHECK(absl::StrContains(stats.substr(family), "\"count\":3000,"));
  const size_t p99_at = stats.find("\"p99\":", family);
  CHECK_MESSAGE(within_a_bucket(std::stod(stats.substr(p99_at + 6))), stats);
}

TEST_CASE("shmetrics check, dump and top read native histograms") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  auto h = writer->AddNativeHistogram("lat_seconds", "L.", {}, {.classic_bounds = {0.5}}).value().WithLabels({}).value();
  for (double v : {0.1, 0.2, 0.4, 0.8}) h.observe(v);
  const auto check = RunCommand(std::string(SHMETRICS_CLI_BIN) + " --dir " + dir.path() + " check 2>&1");
  CHECK_MESSAGE(check.exit_code == 0, check.output);
  const auto dump = RunCommand(std::string(SHMETRICS_CLI_BIN) + " --dir " + dir.path() + " dump 2>&1");
  CHECK_MESSAGE(absl::StrContains(dump.output, "lat_seconds_bucket{service=\"svc\",le=\"0.5\"} 3\n"), dump.output);
  CHECK(absl::StrContains(dump.output, "lat_seconds_count{service=\"svc\"} 4\n"));
}

// Exemplars: what the writers attached, read back in OpenMetrics and in
// protobuf by independent parsers, exactly.
void ExemplarFamilies(Writer& writer) {
  auto requests = writer.AddCounter("orders_total", "Orders.", {"shop"}, {.exemplars = true}).value();
  requests.WithLabels({"a"}).value().inc(3, Exemplar({{"trace_id", "4bf92f3577b34da6"}}, 1764201600123000000));
  auto latency = writer.AddHistogram("checkout_seconds", "Checkout.", {}, {0.1, 1}, {.exemplars = true}).value();
  const Histogram h = latency.WithLabels({}).value();
  h.observe(0.05, Exemplar({{"trace_id", "aaaa"}}, 1764201600200000000));
  h.observe(0.5, Exemplar({{"trace_id", "bbbb"}, {"user", "\u00e9l\u00e8ve"}}, 1764201600300000000));
  h.observe(7, Exemplar({{"trace_id", "cccc"}}, 1764201600400000000));
  auto native = writer.AddNativeHistogram("render_seconds", "Render.", {}, {.exemplars = true}).value();
  native.WithLabels({}).value().observe(0.25, Exemplar({{"trace_id", "dddd"}}, 1764201600500000000));
  // Rules: a bad label name, more than 128 characters: dropped, counted.
  requests.WithLabels({"b"}).value().inc(1, Exemplar({{"0bad", "x"}}));
  requests.WithLabels({"b"}).value().inc(1, Exemplar({{"trace_id", std::string(130, 'x')}}));
}

TEST_CASE("exemplars reach OpenMetrics and protobuf exactly as the writers attached them, newest across processes") {
  TempDir dir;
  WriterProcess a(dir.path(), "shop", ExemplarFamilies);
  // A second process attaches a newer exemplar to the same counter series.
  WriterProcess b(dir.path(), "shop", [](Writer& writer) {
    auto requests = writer.AddCounter("orders_total", "Orders.", {"shop"}, {.exemplars = true}).value();
    requests.WithLabels({"a"}).value().inc(2, Exemplar({{"trace_id", "newer"}}, 1764201601000000000));
  });
  Exporter exporter(dir);
  const std::string url = exporter.url("/metrics");
  const testing::HttpResponse om = testing::HttpGet(url, "--accept application/openmetrics-text");
  REQUIRE(om.status == 200);
  CHECK(absl::StrContains(om.body, "orders_total{shop=\"a\",service=\"shop\"} 5 # {trace_id=\"newer\"} 2 1764201601.000\n"));
  std::set<std::string> from_om, from_protobuf;
  for (const std::string& line : TextSamples(dir, om.body, "openmetrics", "--exemplars")) {
    if (absl::StrContains(line, " exemplar ")) from_om.insert(line);
  }
  for (const std::string& line : ProtobufSamples(dir, url, "--exemplars")) {
    if (absl::StrContains(line, " exemplar ")) from_protobuf.insert(line);
  }
  const std::set<std::string> want = {
      R"(orders_total{service="shop",shop="a"} exemplar {trace_id="newer"} 2.0 1764201601.000)",
      R"(checkout_seconds_bucket{le="0.1",service="shop"} exemplar {trace_id="aaaa"} 0.05 1764201600.200)",
      "checkout_seconds_bucket{le=\"1\",service=\"shop\"} exemplar {trace_id=\"bbbb\",user=\"\u00e9l\u00e8ve\"} 0.5 "
      "1764201600.300",
      R"(checkout_seconds_bucket{le="+Inf",service="shop"} exemplar {trace_id="cccc"} 7.0 1764201600.400)",
      R"(render_seconds_bucket{le="+Inf",service="shop"} exemplar {trace_id="dddd"} 0.25 1764201600.500)",
  };
  CHECK(from_om == want);
  // Protobuf also carries a native histogram's exemplars in Histogram.exemplars.
  std::set<std::string> want_protobuf = want;
  want_protobuf.insert(R"(render_seconds_native_exemplar{service="shop"} exemplar {trace_id="dddd"} 0.25 1764201600.500)");
  CHECK(from_protobuf == want_protobuf);
  // The two broken exemplars were counted, not kept, and the exporter says so.
  CHECK(SumOf(TextSamples(dir, testing::HttpGet(url).body, "text"),
              "shmetrics_exporter_segment_exemplars_dropped_total{") == 2);
}

TEST_CASE("forged exemplars: a label twice is skipped, slots claimed by two series make the segment corrupt") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  auto family = writer->AddCounter("hits_total", "H.", {"k"}, {.exemplars = true}).value();
  const Counter a = family.WithLabels({"a"}).value(), b = family.WithLabels({"b"}).value();
  a.inc(1, Exemplar({{"trace_id", "x1"}}, 1000));
  b.inc(1, Exemplar({{"trace_id", "x2"}}, 2000));
  b.inc(1, Exemplar({{"id", "1"}, {"id", "2"}}, 3000));  // refused by the writer: counted, b keeps x2
  writer->Close();
  const std::string path = writer->path();
  const std::string good = testing::ReadFile(path);
  const auto& header = *reinterpret_cast<const shm::SegmentHeader*>(good.data());
  CHECK(header.exemplars_dropped == 1);
  auto segment = reader::Segment::Open(path).value();
  REQUIRE(segment->series().size() == 2);
  const reader::SeriesView* a_view = &segment->series()[0];
  const reader::SeriesView* b_view = &segment->series()[1];
  REQUIRE(a_view->label_values == std::vector<std::string>{"a"});
  {
    reader::ExemplarView view;
    REQUIRE(segment->NewestExemplar(b_view->cells(), 0, &view));
    CHECK(view.timestamp_unix_ns == 2000);
  }
  // Series b's slot rewritten with the label "trace_id" twice: skipped.
  std::string forged = good;
  const uint64_t slot = header.exemplars_offset + uint64_t{b_view->first_exemplar} * sizeof(shm::ExemplarSlot);
  const char labels[] = "\x08trace_id\x01" "1" "\x08trace_id\x01" "2";
  const uint16_t length = sizeof labels - 1;
  forged.replace(slot + offsetof(shm::ExemplarSlot, labels_length), 2, reinterpret_cast<const char*>(&length), 2);
  forged[slot + offsetof(shm::ExemplarSlot, label_count)] = 2;
  forged.replace(slot + offsetof(shm::ExemplarSlot, labels), length, labels, length);
  testing::WriteFile(path, forged);
  {
    auto reopened = reader::Segment::Open(path).value();
    reader::ExemplarView view;
    CHECK_FALSE(reopened->NewestExemplar(b_view->cells(), 0, &view));
  }
  // Series b claims series a's slot.
  forged = good;
  const uint64_t b_descriptor = header.series_table_offset + 1 * sizeof(shm::SeriesDescriptor);
  const uint32_t a_slot = a_view->first_exemplar;
  forged.replace(b_descriptor + offsetof(shm::SeriesDescriptor, first_exemplar), 4,
                 reinterpret_cast<const char*>(&a_slot), 4);
  testing::WriteFile(path, forged);
  auto refused = reader::Segment::Open(path);
  REQUIRE(!refused.ok());
  CHECK(refused.status().message() ==
        path + ": corrupt segment: series 1 claims the exemplar slots of another series");
}

TEST_CASE("exemplar labels of every length reach the slot byte for byte, and label names are checked by content "
          "every time (a name rewritten in place is checked again)") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  const Counter hits = writer->AddCounter("hits_total", "H.", {}, {.exemplars = true}).value().WithLabels({}).value();
  hits.inc(1, Exemplar({{"first", "1"}}, 1));  // binds this thread's lane before the reader opens the segment
  auto segment = reader::Segment::Open(writer->path()).value();
  REQUIRE(segment->series().size() == 1);
  const auto cells = segment->series()[0].cells();
  auto labels_of = [&](const reader::ExemplarView& view) {
    std::string out;
    view.ForEachLabel([&](absl::string_view name, absl::string_view value) { absl::StrAppend(&out, name, "=", value, ";"); });
    return out;
  };
  // Every name length 1..40 and value length 0..70: the slot holds exactly
  // those bytes (the packer's word boundaries fall everywhere).
  uint64_t ts = 1;
  for (size_t name_bytes = 1; name_bytes <= 40; ++name_bytes) {
    for (size_t value_bytes = 0; value_bytes + name_bytes <= 110; value_bytes += 7) {
      std::string name(name_bytes, 'n'), value(value_bytes, 'v');
      for (size_t i = 0; i < name.size(); ++i) name[i] = static_cast<char>('a' + (i * 7 + name_bytes) % 26);
      for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>('0' + (i * 3 + value_bytes) % 10);
      hits.inc(1, Exemplar({{name, value}, {"z", "q"}}, ++ts));
      reader::ExemplarView view;
      REQUIRE(segment->NewestExemplar(cells, 0, &view));
      REQUIRE(view.timestamp_unix_ns == ts);
      REQUIRE(labels_of(view) == absl::StrCat(name, "=", value, ";z=q;"));
      REQUIRE(view.labels_length == 2 + name_bytes + value_bytes + 4);
    }
  }
  CHECK(segment->Info().exemplars_dropped == 0);
  // The same buffer holds a valid name, then an invalid one of the same
  // length, then the valid one again: only the invalid one is refused.
  std::string name = "trace_id";
  hits.inc(1, Exemplar({{name, "a"}}, ++ts));
  name[5] = '-';  // "trace-id"
  hits.inc(1, Exemplar({{name, "b"}}, ++ts));
  CHECK(segment->Info().exemplars_dropped == 1);
  name = "9race_id";  // a digit first
  hits.inc(1, Exemplar({{name, "c"}}, ++ts));
  name = "__race_id";
  hits.inc(1, Exemplar({{name, "d"}}, ++ts));
  name = "trace_id_with_more_than_16_bytes";
  hits.inc(1, Exemplar({{name, "e"}}, ++ts));
  name = "trace_id_with_more_than_16 bytes";
  hits.inc(1, Exemplar({{name, "f"}}, ++ts));
  CHECK(segment->Info().exemplars_dropped == 4);
  name = "trace_id";
  hits.inc(1, Exemplar({{name, "g"}}, ++ts));
  reader::ExemplarView view;
  REQUIRE(segment->NewestExemplar(cells, 0, &view));
  CHECK(labels_of(view) == "trace_id=g;");
  CHECK(segment->Info().exemplars_dropped == 4);
  // A long trace id replaced by a short one leaves no byte of it in the file.
  hits.inc(1, Exemplar({{"trace_id", "5ec2e75ec2e75ec2e75ec2e75ec2e7ff"}}, ++ts));
  CHECK(absl::StrContains(testing::ReadFile(writer->path()), "5ec2e75ec2e7"));
  hits.inc(1, Exemplar({{"t", "1"}}, ++ts));
  CHECK_FALSE(absl::StrContains(testing::ReadFile(writer->path()), "5ec2e7"));
}

TEST_CASE("the newest exemplar across threads is the one written last, with the default clock (exemplars read "
          "the precise one)") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  const Counter hits = writer->AddCounter("hits_total", "H.", {}, {.exemplars = true}).value().WithLabels({}).value();
  // Two threads, each on its own lane, take turns: `turn` says who writes
  // next (0 or 1), and 2 hands back to the main thread for a check.
  std::atomic<int> turn{-1}, round_done{0};
  std::atomic<bool> stop{false};
  auto worker = [&](int me, const char* who) {
    hits.inc(1, Exemplar({{"who", who}}));  // binds its lane
    round_done.fetch_add(1);
    while (!stop.load()) {
      if (turn.load() != me) {
        std::this_thread::yield();
        continue;
      }
      hits.inc(1, Exemplar({{"who", who}}));
      turn.store(2);
    }
  };
  std::thread a(worker, 0, "a"), b(worker, 1, "b");
  while (round_done.load() < 2) std::this_thread::yield();
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto cells = segment->series()[0].cells();
  auto run = [&](int who) {
    turn.store(who);
    while (turn.load() != 2) std::this_thread::yield();
    // Spacing, not a timing check: two threads' TSC-anchored clocks agree
    // to about a microsecond (each measures the TSC's rate on its own; a
    // few at worst, see writer/src/realtime_clock.h), so writes closer
    // together than that may come out in either order.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  };
  int wrong = 0;
  for (int round = 0; round < 400; ++round) {
    const int first = round % 2, second = 1 - first;
    run(first);
    run(second);
    reader::ExemplarView view;
    REQUIRE(segment->NewestExemplar(cells, 0, &view));
    std::string who;
    view.ForEachLabel([&](absl::string_view, absl::string_view value) { who = std::string(value); });
    wrong += who != (second == 0 ? "a" : "b");
  }
  stop.store(true);
  a.join();
  b.join();
  CHECK(wrong == 0);
}

TEST_CASE("exemplars across fork(): the child's go to its own segment, the parent's stay in the parent's") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  const Counter counter =
      writer->AddCounter("jobs_total", "J.", {}, {.exemplars = true}).value().WithLabels({}).value();
  counter.inc(1, Exemplar({{"trace_id", "parent"}}, 1000));
  const std::string parent_path = writer->path();
  const pid_t child = testing::Fork();
  if (child == 0) {
    counter.inc(1, Exemplar({{"trace_id", "child"}}, 2000));
    _exit(writer->path() != parent_path ? 0 : 1);
  }
  REQUIRE(testing::WaitChild(child) == 0);
  counter.inc(1, Exemplar({{"trace_id", "parent-after"}}, 3000));
  std::map<std::string, std::string> trace_by_file;
  const std::vector<reader::DirectoryEntry> entries = reader::ListSegments(dir.path()).value();
  for (const auto& entry : entries) {
    auto segment = reader::Segment::Open(entry.path).value();
    reader::ExemplarView view;
    REQUIRE(segment->NewestExemplar(segment->series().at(0).cells(), 0, &view));
    view.ForEachLabel([&](absl::string_view, absl::string_view value) { trace_by_file[entry.path] = std::string(value); });
  }
  REQUIRE(trace_by_file.size() == 2);
  CHECK(trace_by_file.at(parent_path) == "parent-after");
  for (const auto& [path, trace] : trace_by_file) {
    if (path != parent_path) CHECK(trace == "child");
  }
}

TEST_CASE("torn exemplars: millions of writes under a concurrent reader, never a mixed exemplar") {
  TempDir dir;
  auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
  const Counter counter =
      writer->AddCounter("events_total", "E.", {}, {.exemplars = true}).value().WithLabels({}).value();
  std::atomic<bool> done{false};
  constexpr uint64_t kWrites = 2'000'000;
  std::thread producer([&] {
    char digits[64];
    for (uint64_t i = 1; i <= kWrites; ++i) {
      // The label is the value's digits repeated (1 to 4 times): any mix of
      // two writes shows as a value and a label that disagree.
      const std::string one = std::to_string(i);
      std::string label;
      for (uint64_t r = 0; r <= i % 4; ++r) label += one;
      std::memcpy(digits, label.data(), label.size());
      counter.inc(i, Exemplar({{"n", absl::string_view(digits, label.size())}}, i));
    }
    done.store(true);
  });
  auto segment = reader::Segment::Open(writer->path()).value();
  uint64_t reads = 0, mixed = 0, last = 0, backwards = 0;
  while (!done.load()) {
    if (!segment->Refresh().ok()) break;
    if (segment->series().empty()) continue;
    reader::ExemplarView view;
    if (!segment->NewestExemplar(segment->series()[0].cells(), 0, &view)) continue;
    ++reads;
    std::string label;
    view.ForEachLabel([&](absl::string_view, absl::string_view value) { label = std::string(value); });
    const uint64_t value = static_cast<uint64_t>(view.value);
    std::string expected;
    for (uint64_t r = 0; r <= value % 4; ++r) expected += std::to_string(value);
    if (label != expected || view.timestamp_unix_ns != value) ++mixed;
    if (value < last) ++backwards;
    last = value;
  }
  producer.join();
  CHECK(mixed == 0);
  CHECK(backwards == 0);
  CHECK(reads > 0);
  reader::ExemplarView final_view;
  REQUIRE(segment->NewestExemplar(segment->series()[0].cells(), 0, &final_view));
  CHECK(final_view.value == double(kWrites));
}

TEST_CASE("a real Prometheus with exemplar storage scrapes OpenMetrics and returns the writers' trace ids") {
  if (RunCommand("command -v prometheus").exit_code != 0) {
    FAIL("Debian's prometheus is not installed (the README's test command installs it)");
  }
  TempDir dir;
  WriterProcess w(dir.path(), "shop", ExemplarFamilies);
  Exporter exporter(dir);
  testing::PrometheusServer prometheus(dir, exporter, "exemplar-storage");
  const std::string exemplars = testing::PrometheusServer::PollUntil(
      [&] { return prometheus.Get("/api/v1/query_exemplars?query=checkout_seconds_bucket&start=1764201500&end=1764201700"); },
      [](const std::string& body) { return absl::StrContains(body, "cccc"); });
  CHECK_MESSAGE(absl::StrContains(exemplars, "{\"trace_id\":\"aaaa\"},\"value\":\"0.05\",\"timestamp\":1764201600.200}"),
                exemplars);
  CHECK(absl::StrContains(exemplars, "{\"trace_id\":\"cccc\"},\"value\":\"7\",\"timestamp\":1764201600.400}"));
  const std::string counter =
      prometheus.Get("/api/v1/query_exemplars?query=orders_total&start=1764201500&end=1764201700");
  CHECK_MESSAGE(absl::StrContains(counter, "{\"trace_id\":\"4bf92f3577b34da6\"},\"value\":\"3\""), counter);
  CHECK(prometheus.Stop() == 0);
}

}  // namespace
}  // namespace shmetrics
