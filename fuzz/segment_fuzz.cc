// libFuzzer target: any bytes as a segment file, opened and read in full
// (descriptors, every value, every ring, Info). Must never crash, hang or
// read outside the mapping (ASan + UBSan).
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "shmetrics/reader.h"

namespace {

// Never destroyed: the atexit handler that removes it runs after static
// destructors that were registered later.
const std::string& Directory() {
  static const std::string* made = [] {
    char pattern[] = "/dev/shm/shmetrics-fuzz-XXXXXX";
    const char* dir = mkdtemp(pattern);
    if (dir == nullptr) abort();
    auto* path = new std::string(dir);
    atexit([] { std::filesystem::remove_all(Directory()); });
    return path;
  }();
  return *made;
}

// The file is named after the process that the input's header names (pid
// at offset 40, start ticks at 48), as a writer names it; the service must
// match the seeds' ("fuzz"). A name that disagrees stops the reader at the
// header, short of everything the fuzzer is here to reach.
std::string SegmentPath(const uint8_t* data, size_t size) {
  uint32_t pid = 0;
  uint64_t start_ticks = 0;
  if (size >= 56) {
    std::memcpy(&pid, data + 40, sizeof pid);
    std::memcpy(&start_ticks, data + 48, sizeof start_ticks);
  }
  return Directory() + "/shmetrics.fuzz." + std::to_string(pid) + "." + std::to_string(start_ticks) + ".0";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = SegmentPath(data, size);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) abort();
  if (write(fd, data, size) != static_cast<ssize_t>(size)) abort();
  close(fd);
  struct Unlink {  // one file at a time; a mapping outlives its name
    const std::string& path;
    ~Unlink() { unlink(path.c_str()); }
  } unlink_after{path};
  shmetrics::reader::Segment::Options options;
  options.initializing_grace_seconds = -1;  // never "not ready yet": judge the bytes
  auto segment = shmetrics::reader::Segment::Open(path, options);
  if (!segment.ok()) return 0;
  shmetrics::reader::Segment& s = **segment;
  (void)s.Refresh();
  double total = 0;
  std::vector<uint64_t> buckets(shmetrics::shm::kMaxBuckets + 1);
  std::vector<uint64_t> native_cells;
  shmetrics::reader::ExemplarView exemplar;
  for (const auto& series : s.series()) {
    const auto& family = s.families()[series.family];
    if (family.type == shmetrics::shm::MetricType::kHistogram) {
      total += s.HistogramValue(series, buckets.data());  // a native one's classic buckets
      if (family.native) {
        native_cells.assign(family.native_shape.cell_count(), 0);
        total += s.AddNativeCells(series.cells(), family.native_shape, native_cells.data());
      }
    } else {
      total += s.ScalarValue(series);
    }
    for (uint32_t e = 0; e < series.exemplar_count; ++e) {
      if (s.NewestExemplar(series.cells(), e, &exemplar)) total += exemplar.value;
    }
  }
  for (uint32_t lane = 0; lane < s.ring_count(); ++lane) {
    for (auto kind : {shmetrics::reader::RingKind::kRequests, shmetrics::reader::RingKind::kErrors}) {
      total += static_cast<double>(s.ReadRing(lane, kind, 0, 4096).records.size());
    }
  }
  (void)s.Info();
  (void)s.WriterAlive();
  (void)total;
  return 0;
}
