// deploy/: the rules pass promtool's checks and unit tests; the dashboard
// and the rules query only metrics that shmetrics produces; the demo,
// scraped through the exporter, produces every kit family.
#include <doctest/doctest.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "process_support.h"
#include "shmetrics/service_kit.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::RunCommand;
using testing::TempDir;

const std::string kDeploy = SHMETRICS_TESTS_DIR "/../deploy";

TEST_CASE("deploy: promtool checks the rules and their unit tests pass") {
  const auto check = RunCommand("cd " + kDeploy + "/prometheus && promtool check rules rules.yml 2>&1");
  CHECK_MESSAGE(check.exit_code == 0, check.output);
  CHECK(absl::StrContains(check.output, "SUCCESS: 15 rules found"));
  const auto test = RunCommand("cd " + kDeploy + "/prometheus && promtool test rules rules_test.yml 2>&1");
  CHECK_MESSAGE(test.exit_code == 0, test.output);
  const auto config = RunCommand("cd " + kDeploy + "/prometheus && promtool check config prometheus.yml 2>&1");
  CHECK_MESSAGE(config.exit_code == 0, config.output);
}

// Names a scrape of the kit's segment contains: every sample name of its
// families, those the exporter adds about itself and its segments (read
// from a real scrape), and Prometheus's own `up`.
std::set<std::string> KitMetricNames(std::set<std::string>* families) {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "names");
  auto writer = Writer::Create(options).value();
  auto kit = ServiceKit::Create(*writer, {}).value();
  auto segment = reader::Segment::Open(writer->path()).value();
  std::set<std::string> names = {"up"};
  testing::Exporter exporter(dir);
  const auto scrape = testing::HttpGet(exporter.url("/metrics"));
  REQUIRE(scrape.status == 200);
  for (absl::string_view line : absl::StrSplit(scrape.body, '\n', absl::SkipEmpty())) {
    if (!absl::StartsWith(line, "#")) names.emplace(line.substr(0, line.find_first_of("{ ")));
  }
  REQUIRE(names.contains("shmetrics_exporter_segment_series_used"));  // the kit's live segment
  for (const reader::FamilyView& f : segment->families()) {
    // An Info family's samples (and the name a dashboard queries) end in _info.
    const std::string sample = f.type == shm::MetricType::kInfo ? f.name + "_info" : f.name;
    families->insert(sample);
    if (f.type == shm::MetricType::kHistogram) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) names.insert(f.name + suffix);
    } else {
      names.insert(sample);
    }
  }
  return names;
}

std::set<std::string> Queried(const std::string& file) {
  const auto r = RunCommand("/usr/bin/python3 " SHMETRICS_TESTS_DIR "/promql_names.py " + file);
  REQUIRE(r.exit_code == 0);
  std::set<std::string> names;
  for (absl::string_view line : absl::StrSplit(r.output, '\n', absl::SkipEmpty())) names.emplace(line);
  return names;
}

TEST_CASE("deploy: the dashboard and the rules query only metrics the kit produces, and the dashboard shows "
          "every kit family") {
  std::set<std::string> families;
  const std::set<std::string> produced = KitMetricNames(&families);
  REQUIRE(families.size() == 11);
  const auto dashboard = Queried(kDeploy + "/grafana/shmetrics-dashboard.json");
  const auto rules = Queried(kDeploy + "/prometheus/rules.yml");
  for (const auto& name : dashboard) CHECK_MESSAGE(produced.contains(name), name);
  for (const auto& name : rules) CHECK_MESSAGE(produced.contains(name), name);
  for (const auto& family : families) {
    const bool shown = dashboard.contains(family) || dashboard.contains(family + "_bucket");
    CHECK_MESSAGE(shown, family);
  }
}

TEST_CASE("deploy: the demo, scraped through the exporter, has every kit family, non-zero where traffic flowed") {
  TempDir dir;
  const auto demo = RunCommand(absl::StrCat(SHMETRICS_DEMO_BIN, " --dir ", dir.path(),
                                            " --workers 2 --threads 2 --rate 400 --duration 3 2>/dev/null"));
  REQUIRE(demo.exit_code == 0);
  // The workers have exited: the exporter (here `shmetrics dump`, the same
  // rendering) must still show their totals, from the archive once retired.
  const auto gc = RunCommand(absl::StrCat(SHMETRICS_CLI_BIN, " --dir ", dir.path(), " gc --yes"));
  CHECK(gc.exit_code == 0);
  const auto dump = RunCommand(absl::StrCat(SHMETRICS_CLI_BIN, " --dir ", dir.path(), " dump"));
  REQUIRE(dump.exit_code == 0);
  std::map<std::string, double> totals;  // family -> sum of its samples
  for (absl::string_view line : absl::StrSplit(dump.output, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    std::string name(line.substr(0, line.find_first_of("{ ")));
    totals[name] += std::stod(std::string(line.substr(space + 1)));
  }
  for (const char* counter : {"http_requests_total", "http_request_duration_seconds_count",
                              "cache_operations_total", "db_query_duration_seconds_count", "gemini_tokens_total",
                              "gemini_api_cost_dollars_total", "gemini_api_calls_total"}) {
    CHECK_MESSAGE(totals[counter] > 0, counter);
  }
  // Live-sum gauges of processes that have exited are gone: in-progress,
  // connections and users read 0 or are absent, never stale; and so is the
  // Info of processes that are gone (no stale version).
  CHECK(totals["http_requests_in_progress"] == 0);
  CHECK(totals["db_connections_active"] == 0);
  CHECK(totals.count("application_info") == 0);
}

}  // namespace
}  // namespace shmetrics
