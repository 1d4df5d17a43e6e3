// Gauge merge modes across processes, before and after a writer dies.
#include <doctest/doctest.h>
#include <signal.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "shmetrics/collector.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

// A writer process that sets one gauge of each merge mode to `value`,
// then idles until killed.
pid_t GaugeWriter(const TempDir& dir, double value) {
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    auto writer = Writer::Create(testing::WriterIn(dir, "svc")).value();
    const std::pair<const char*, GaugeMerge> modes[] = {{"live_sum", GaugeMerge::kLiveSum},
                                                        {"sum", GaugeMerge::kSum},
                                                        {"max", GaugeMerge::kMax},
                                                        {"min", GaugeMerge::kMin},
                                                        {"per_process", GaugeMerge::kPerProcess}};
    for (const auto& [name, merge] : modes) {
      writer->AddGauge(absl::StrCat("g_", name), "G.", {}, merge).value().WithLabels({}).value().set(value);
    }
    if (write(ready[1], "r", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char byte;
  REQUIRE(read(ready[0], &byte, 1) == 1);
  close(ready[0]);
  return child;
}


TEST_CASE("gauge merge modes: live sum, sum, max, min and per process, before and after a writer dies") {
  TempDir dir;
  const pid_t three = GaugeWriter(dir, 3);
  const pid_t seven = GaugeWriter(dir, 7);
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  const std::string both = testing::ScanAndRender(*collector);
  CHECK(absl::StrContains(both, "g_live_sum{service=\"svc\"} 10\n"));
  CHECK(absl::StrContains(both, "g_sum{service=\"svc\"} 10\n"));
  CHECK(absl::StrContains(both, "g_max{service=\"svc\"} 7\n"));
  CHECK(absl::StrContains(both, "g_min{service=\"svc\"} 3\n"));
  CHECK(absl::StrContains(both, absl::StrCat("g_per_process{service=\"svc\",pid=\"", three, "\"} 3\n")));
  CHECK(absl::StrContains(both, absl::StrCat("g_per_process{service=\"svc\",pid=\"", seven, "\"} 7\n")));

  kill(seven, SIGKILL);
  testing::WaitChild(seven);
  const std::string after = testing::ScanAndRender(*collector);  // retires the dead writer
  CHECK(collector->Counters().segments_retired_total == 1);
  CHECK(absl::StrContains(after, "g_live_sum{service=\"svc\"} 3\n"));  // the dead no longer count
  CHECK(absl::StrContains(after, "g_sum{service=\"svc\"} 10\n"));      // kept through the archive
  CHECK(absl::StrContains(after, "g_max{service=\"svc\"} 7\n"));
  CHECK(absl::StrContains(after, "g_min{service=\"svc\"} 3\n"));
  CHECK(absl::StrContains(after, absl::StrCat("g_per_process{service=\"svc\",pid=\"", three, "\"} 3\n")));
  CHECK_FALSE(absl::StrContains(after, absl::StrCat("pid=\"", seven, "\"")));
  kill(three, SIGKILL);
  testing::WaitChild(three);
}

}  // namespace
}  // namespace shmetrics
