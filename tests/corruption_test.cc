// The reader trusts nothing: forged headers get exact errors, and thousands
// of random corruptions and truncations of a real segment either read or
// fail with a status. None may crash or read outside the mapping.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <cstring>
#include <random>

#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

shm::Capacities SmallCapacities() {
  shm::Capacities c;
  c.families = 8;
  c.series = 32;
  c.exclusive_lanes = 2;
  c.cells_per_lane = 256;
  c.string_arena_bytes = 4096;
  c.bounds = 64;
  return c;
}

// A real segment with every metric type, some values, and a closed state.
std::string MakeSegmentBytes(const TempDir& dir) {
  WriterOptions options = testing::WriterIn(dir, "victim");
  options.capacities = SmallCapacities();
  auto writer = Writer::Create(options).value();
  auto requests = writer->AddCounter("http_requests_total", "Requests \"served\"\n.", {"method", "code"}).value();
  requests.WithLabels({"GET", "200"}).value().add(41);
  requests.WithLabels({"POST", "500"}).value().inc();
  writer->AddGauge("in_progress", "In progress.").value().WithLabels({}).value().set(3);
  auto latency = writer->AddHistogram("latency_seconds", "Latency.", {"endpoint"}, {0.1, 1, 10}).value();
  latency.WithLabels({"/api"}).value().observe(0.5);
  latency.WithLabels({"/health"}).value().observe(20);
  const std::string path = writer->path();
  writer->Close();
  std::string bytes = testing::ReadFile(path);
  std::filesystem::remove(path);
  return testing::AsWrittenBy(bytes, 1, 1);  // the process that Place()'s name says
}

// Opens, refreshes and reads every value; returns the status.
absl::Status ReadEverything(const std::string& path) {
  auto segment = reader::Segment::Open(path);
  if (!segment.ok()) return segment.status();
  reader::Segment& s = **segment;
  if (absl::Status status = s.Refresh(); !status.ok()) return status;
  double total = 0;
  for (const auto& series : s.series()) {
    const auto& family = s.families().at(series.family);
    if (family.type == shm::MetricType::kHistogram) {
      std::vector<uint64_t> buckets(family.bounds.size() + 1);
      total += s.HistogramValue(series, buckets.data());
    } else {
      total += s.ScalarValue(series);
    }
  }
  (void)s.Info();
  (void)s.WriterAlive();
  (void)total;
  return absl::OkStatus();
}

std::string Place(const TempDir& dir, const std::string& bytes, const char* name = "shmetrics.victim.1.1.0") {
  const std::string path = dir.path() + "/" + name;
  testing::WriteFile(path, bytes);
  chmod(path.c_str(), 0600);
  return path;
}

template <typename T>
void Poke(std::string& bytes, size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

TEST_CASE("an intact segment reads") {
  TempDir dir;
  const std::string bytes = MakeSegmentBytes(dir);
  CHECK(ReadEverything(Place(dir, bytes)).ok());
}

TEST_CASE("forged headers get exact errors") {
  TempDir dir;
  const std::string good = MakeSegmentBytes(dir);
  const std::string path = dir.path() + "/shmetrics.victim.1.1.0";
  auto expect = [&](std::string bytes, absl::StatusCode code, const std::string& message) {
    Place(dir, bytes);
    const absl::Status status = ReadEverything(path);
    CHECK(status.code() == code);
    CHECK(status.message() == message);
  };
  std::string bytes = good;
  Poke<uint64_t>(bytes, 0, 0x1122334455667788ull);
  expect(bytes, absl::StatusCode::kFailedPrecondition, path + ": not a shmetrics segment (bad magic)");
  bytes = good;
  Poke<uint32_t>(bytes, 8, 3);
  expect(bytes, absl::StatusCode::kFailedPrecondition,
         path + ": layout version 3 is not supported (this reader reads versions 1 to 2)");
  bytes = good;
  Poke<uint32_t>(bytes, 8, 0);
  expect(bytes, absl::StatusCode::kFailedPrecondition,
         path + ": layout version 0 is not supported (this reader reads versions 1 to 2)");
  bytes = good;
  Poke<uint32_t>(bytes, 24, 0x04030201);
  expect(bytes, absl::StatusCode::kFailedPrecondition, path + ": written on a machine of other byte order");
  expect(good.substr(0, 100), absl::StatusCode::kDataLoss,
         path + ": truncated: 100 bytes, smaller than a segment header");
  expect(good.substr(0, 8192), absl::StatusCode::kDataLoss,
         path + ": corrupt segment: truncated or extended: file has 8192 bytes, header says " +
             std::to_string(good.size()));
  bytes = good;
  Poke<uint32_t>(bytes, offsetof(shm::SegmentHeader, series_count), 1000000);
  expect(bytes, absl::StatusCode::kDataLoss,
         path + ": corrupt segment: series count 1000000 above capacity 32");
  bytes = good;
  Poke<uint64_t>(bytes, offsetof(shm::SegmentHeader, lanes_offset), 1ull << 40);
  expect(bytes, absl::StatusCode::kDataLoss,
         path + ": corrupt segment: region offsets do not match the capacities");
  bytes = good;
  Poke<uint32_t>(bytes, offsetof(shm::SegmentHeader, cells_per_lane), 0);
  expect(bytes, absl::StatusCode::kDataLoss,
         path + ": corrupt segment: capacity out of range: cells_per_lane (1 .. 2^24)");
  bytes = good;
  Poke<uint32_t>(bytes, offsetof(shm::SegmentHeader, state), 7);
  expect(bytes, absl::StatusCode::kDataLoss, path + ": corrupt segment: unknown state 7");

  // Descriptors: a series whose cells run past its lane, a name out of the arena.
  const auto* header = reinterpret_cast<const shm::SegmentHeader*>(good.data());
  bytes = good;
  Poke<uint32_t>(bytes, header->series_table_offset + offsetof(shm::SeriesDescriptor, first_cell), 256);
  expect(bytes, absl::StatusCode::kDataLoss, path + ": corrupt segment: series 0 has cells outside the lane");
  bytes = good;
  Poke<uint32_t>(bytes, header->family_table_offset + 4, 0xffffffffu);  // name length
  expect(bytes, absl::StatusCode::kDataLoss,
         path + ": corrupt segment: family 0 name points outside the string arena");
  bytes = good;
  Poke<uint8_t>(bytes, header->family_table_offset + offsetof(shm::FamilyDescriptor, type), 9);
  expect(bytes, absl::StatusCode::kDataLoss, path + ": corrupt segment: family 0 has unknown type 9");
  bytes = good;
  bytes[header->string_arena_offset + header->string_arena_used - 1] = '\xff';  // last label value
  expect(bytes, absl::StatusCode::kDataLoss,
         path + ": corrupt segment: series 4 label value is not UTF-8");
  // A name that breaks an exposition rule costs that family, not the segment.
  bytes = good;  // the name "http_requests_total" becomes "http requests_total"
  bytes[header->string_arena_offset + 18 + 4] = ' ';
  Place(dir, bytes);
  auto segment = reader::Segment::Open(path);
  REQUIRE(segment.ok());
  CHECK((*segment)->families()[0].rejected ==
        "family 'http requests_total': invalid metric name: must match [a-zA-Z_:][a-zA-Z0-9_:]*, at most 200 bytes");
  CHECK((*segment)->families()[1].rejected.empty());
}

TEST_CASE("a header still initializing is 'not ready yet' while young, broken when old") {
  TempDir dir;
  std::string bytes = MakeSegmentBytes(dir);
  Poke<uint32_t>(bytes, offsetof(shm::SegmentHeader, state), 0);
  const std::string path = Place(dir, bytes);
  auto young = reader::Segment::Open(path);
  CHECK(young.status().code() == absl::StatusCode::kUnavailable);
  CHECK(young.status().message() == path + ": not ready yet (being initialized)");
  reader::Segment::Options options;
  options.initializing_grace_seconds = -1;  // as if it had been created long ago
  auto old = reader::Segment::Open(path, options);
  CHECK(old.status().code() == absl::StatusCode::kDataLoss);
  CHECK(old.status().message() ==
        path + ": corrupt segment: still initializing after -1 s (its creator probably died during setup)");
  // An all-zero file (created, not yet written) is "not ready yet" too.
  const std::string zeros = Place(dir, std::string(bytes.size(), '\0'), "shmetrics.victim.2.2.0");
  CHECK(reader::Segment::Open(zeros).status().code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("thousands of random corruptions and truncations never crash the reader") {
  TempDir dir;
  const std::string good = MakeSegmentBytes(dir);
  const auto* header = reinterpret_cast<const shm::SegmentHeader*>(good.data());
  const size_t metadata_end = header->lane_owner_offset;  // where pointers and counts live
  std::mt19937_64 rng(20261126);
  const std::string path = dir.path() + "/shmetrics.victim.1.1.0";
  int read_ok = 0, refused = 0;
  const std::vector<size_t> boundaries = {
      0, 1, 8, 16, 28, 56, 120, 216, 511, 512, header->family_table_offset, header->series_table_offset,
      header->string_arena_offset, header->bounds_offset, header->lane_owner_offset,
      header->lanes_offset, good.size() - 1};
  for (size_t cut : boundaries) {
    Place(dir, good.substr(0, cut));
    CHECK_FALSE(ReadEverything(path).ok());
  }
  for (int round = 0; round < 4000; ++round) {
    std::string bytes = good;
    switch (round % 4) {
      case 0:  // flip a few bytes anywhere in the metadata
        for (int i = 0; i < 1 + int(rng() % 8); ++i) bytes[rng() % metadata_end] ^= char(1 + rng() % 255);
        break;
      case 1:  // a huge or random 32-bit field
        Poke<uint32_t>(bytes, (rng() % (metadata_end / 4)) * 4,
                       rng() % 2 ? uint32_t(rng()) : 0xffffffffu - uint32_t(rng() % 4));
        break;
      case 2:  // a random 64-bit field in the header
        Poke<uint64_t>(bytes, (rng() % 64) * 8, rng() % 2 ? rng() : (1ull << (rng() % 64)));
        break;
      case 3:  // truncate anywhere, sometimes also flipping a byte
        bytes.resize(rng() % bytes.size());
        if (!bytes.empty() && rng() % 2) bytes[rng() % bytes.size()] ^= 0x5a;
        break;
    }
    Place(dir, bytes);
    const absl::Status status = ReadEverything(path);
    if (status.ok()) {
      ++read_ok;
    } else {
      ++refused;
      REQUIRE_FALSE(status.message().empty());
      REQUIRE((status.code() == absl::StatusCode::kDataLoss ||
               status.code() == absl::StatusCode::kFailedPrecondition ||
               status.code() == absl::StatusCode::kUnavailable));
    }
  }
  MESSAGE("random corruptions: " << read_ok << " still read, " << refused << " refused");
  CHECK(read_ok + refused == 4000);
}

TEST_CASE("a symlink, a directory or another user's file is refused with a clear error") {
  TempDir dir;
  const std::string real = Place(dir, MakeSegmentBytes(dir), "real");
  const std::string link = dir.path() + "/shmetrics.victim.9.9.0";
  REQUIRE(symlink(real.c_str(), link.c_str()) == 0);
  auto opened = reader::Segment::Open(link);
  CHECK(opened.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(opened.status().message() == link + ": is a symbolic link, not read");
  CHECK(reader::Segment::Open(dir.path()).status().message() == dir.path() + ": not a regular file, not read");
  const std::string socket_path = dir.path() + "/shmetrics.sock.9.9.0";
  REQUIRE(testing::MakeUnixSocket(socket_path));
  CHECK(reader::Segment::Open(socket_path).status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(reader::Segment::Open(socket_path).status().message() == socket_path + ": not a regular file, not read");
  CHECK(reader::Segment::Open(dir.path() + "/none").status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace shmetrics
