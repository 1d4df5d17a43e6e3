// libFuzzer target: any bytes as the text of an archive file. Parsing
// never crashes or hangs, and what it accepts keeps the archive's
// invariants.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "shmetrics/archive.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto archive = shmetrics::reader::Archive::Parse(text, "fuzz");
  if (!archive.ok()) return 0;
  for (const auto& [key, series] : archive->series()) {
    if (series.shape.type == shmetrics::shm::MetricType::kHistogram &&
        series.buckets.size() != series.shape.bounds.size() + 1) {
      abort();  // a parsed histogram always has its +Inf bucket
    }
  }
  return 0;
}
