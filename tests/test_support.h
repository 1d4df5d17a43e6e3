// Helpers shared by the tests: a private segment directory per test, file
// helpers, and reading a whole directory of segments into summed values.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "shmetrics/reader.h"

namespace shmetrics::testing {

// A fresh directory under /dev/shm, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/dev/shm/shmetrics-test-XXXXXX";
    const char* made = mkdtemp(pattern);
    if (made == nullptr) std::abort();
    path_ = made;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::vector<std::string> SegmentPaths() const {
    std::vector<std::string> paths;
    auto entries = reader::ListSegments(path_);
    if (entries.ok()) {
      for (const auto& e : *entries) paths.push_back(e.path);
    }
    return paths;
  }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Exit status of a child, or -signal when it was killed.
inline int WaitChild(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1000;
}

// "name{v1,v2}" -> value summed over every segment given.
struct Totals {
  std::map<std::string, double> scalars;
  std::map<std::string, std::vector<uint64_t>> buckets;  // non-cumulative, +Inf last
  std::map<std::string, double> sums;
};

inline std::string SeriesKey(const reader::FamilyView& f, const reader::SeriesView& s) {
  std::string key = f.name + "{";
  for (size_t i = 0; i < s.label_values.size(); ++i) key += (i ? "," : "") + s.label_values[i];
  return key + "}";
}

inline void AddSegment(const reader::Segment& segment, Totals& totals) {
  for (const auto& s : segment.series()) {
    const auto& f = segment.families()[s.family];
    const std::string key = SeriesKey(f, s);
    if (f.type == shm::MetricType::kHistogram) {
      std::vector<uint64_t> buckets(f.bounds.size() + 1);
      const double sum = segment.HistogramValue(s, buckets.data());
      auto& total = totals.buckets[key];
      total.resize(buckets.size());
      for (size_t b = 0; b < buckets.size(); ++b) total[b] += buckets[b];
      totals.sums[key] += sum;
    } else {
      totals.scalars[key] += segment.ScalarValue(s);
    }
  }
}

}  // namespace shmetrics::testing
