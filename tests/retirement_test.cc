// Retirement stays exact however many segments are retired at once and
// wherever the retirer crashes.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "shmetrics/archive.h"
#include "shmetrics/collector.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

double Total(reader::Collector& collector) {
  REQUIRE(collector.Scan().ok());
  double total = 0;
  for (const auto& series : collector.Snapshot()) total += series.value;
  return total;
}

TEST_CASE("5,000 segments retired at once, crash before the unlinks: totals exact after restart") {
  TempDir dir;
  // One real, closed, small segment, copied under 5,000 writers' names.
  WriterOptions options = testing::WriterIn(dir, "batch");
  options.capacities = {.families = 1, .series = 1, .exclusive_lanes = 1, .cells_per_lane = 8,
                        .string_arena_bytes = 64, .bounds = 0, .ring_slots_per_lane = 0,
                        .error_ring_slots_per_lane = 0};
  std::string bytes;
  {
    auto writer = Writer::Create(options).value();
    writer->AddCounter("jobs_total", "J.").value().WithLabels({}).value().add(3);
    writer->Close();
    bytes = testing::ReadFile(writer->path());
    std::filesystem::remove(writer->path());
  }
  constexpr int kSegments = 5000;
  auto plant_all = [&] {
    for (int i = 0; i < kSegments; ++i) {
      const std::string path = absl::StrCat(dir.path(), "/shmetrics.batch.", 100000 + i, ".1.0");
      if (std::filesystem::exists(path)) continue;
      testing::WriteFile(path, testing::AsWrittenBy(bytes, 100000 + i, 1));
      chmod(path.c_str(), 0600);
    }
  };
  plant_all();
  reader::CollectorOptions collector_options;
  collector_options.directory = dir.path();
  {
    auto retirer = reader::Collector::Create(collector_options).value();
    CHECK(Total(*retirer) == 3.0 * kSegments);
    CHECK(retirer->Counters().segments_retired_total == kSegments);
  }
  CHECK(dir.SegmentPaths().empty());
  // The crash: the archive was saved, the files were never unlinked.
  plant_all();
  auto restarted = reader::Collector::Create(collector_options).value();
  CHECK(Total(*restarted) == 3.0 * kSegments);  // none folded twice
  CHECK(restarted->Counters().segments_retired_total == 0);
  CHECK(dir.SegmentPaths().empty());
  // Names of files that are gone are forgotten, and only those.
  CHECK(Total(*restarted) == 3.0 * kSegments);
  const auto archive = reader::Archive::Load(dir.path() + "/shmetrics-archive").value();
  CHECK(archive.folded().empty());
  CHECK(archive.series().size() == 1);
}

}  // namespace
}  // namespace shmetrics
