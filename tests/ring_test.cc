// Request and error rings: intact records under a concurrent reader, exact
// conservation, torn slots skipped, and the merged views.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <latch>
#include <regex>
#include <set>
#include <thread>
#include <time.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "shmetrics/collector.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::TempDir;

std::unique_ptr<Writer> MakeWriter(const TempDir& dir, const std::string& service = "ring") {
  WriterOptions options = testing::WriterIn(dir, service);
  return Writer::Create(options).value();
}

// Record k carries k in every field, so a reader can check it is intact.
void RecordNumbered(const RequestLog& log, uint64_t k) {
  const std::string endpoint = absl::StrCat("/e/", k % 1000);
  log.record({"GET", endpoint, static_cast<uint16_t>(k % 600), k, k * 7 + 3, k % 10 == 0, k % 10 == 0 ? "boom" : ""});
}

bool Intact(const reader::RequestRecordView& r) {
  const uint64_t k = r.duration_ns;
  return r.index == k && r.response_bytes == k * 7 + 3 && r.status == k % 600 && r.method == "GET" &&
         r.endpoint == absl::StrCat("/e/", k % 1000) && r.error == (k % 10 == 0) &&
         r.error_message == (k % 10 == 0 ? "boom" : "");
}

TEST_CASE("one producer, a concurrent reader, two million records: every record read is intact and in order, "
          "and read + overwritten == written") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  constexpr uint64_t kRecords = 2'000'000;
  auto segment = reader::Segment::Open(writer->path()).value();
  std::atomic<bool> done{false};
  std::thread producer([&] {
    for (uint64_t k = 0; k < kRecords; ++k) RecordNumbered(log, k);
    done.store(true, std::memory_order_release);
  });
  uint64_t read = 0, overwritten = 0, torn = 0, cursor = 0, last_index = 0;
  bool any = false, all_intact = true, in_order = true;
  auto drain = [&] {
    reader::RingRead batch = segment->ReadRing(0, reader::RingKind::kRequests, cursor);
    cursor = batch.next;
    overwritten += batch.overwritten;
    torn += batch.torn;
    for (const auto& r : batch.records) {
      all_intact &= Intact(r);
      in_order &= !any || r.index > last_index;
      last_index = r.index;
      any = true;
      ++read;
    }
  };
  while (!done.load(std::memory_order_acquire)) drain();
  producer.join();
  drain();
  MESSAGE("records read while written: " << read << ", lost to overwrites: " << overwritten);
  CHECK(all_intact);
  CHECK(in_order);
  CHECK(torn == 0);
  CHECK(read + overwritten == kRecords);
  CHECK(cursor == kRecords);
  CHECK(read >= 64);  // at least the final ring's worth
}

TEST_CASE("the error ring keeps the last errors while successes flood the request ring") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  for (int i = 0; i < 5; ++i) log.record({"POST", "/pay", 502, 1000, 0, true, absl::StrCat("upstream ", i)});
  for (int i = 0; i < 1000; ++i) log.record({"GET", "/ok", 200, 10, 2, false, ""});
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto errors = segment->ReadRing(0, reader::RingKind::kErrors, 0);
  REQUIRE(errors.records.size() == 5);
  CHECK(errors.records[4].error_message == "upstream 4");
  CHECK(errors.records[0].status == 502);
  const auto requests = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  CHECK(requests.records.size() == 64);
  CHECK(requests.overwritten == 1005 - 64);
  CHECK(requests.records.back().endpoint == "/ok");
  const reader::SegmentInfo info = segment->Info();
  CHECK(info.records_written == 1005);
  CHECK(info.records_overwritten == 1005 - 64);
}

TEST_CASE("long fields are cut at a character boundary, and a thread without a ring counts as dropped") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "ring");
  options.capacities.exclusive_lanes = 1;
  auto writer = Writer::Create(options).value();
  const RequestLog log = writer->requests();
  const std::string endpoint = std::string(47, 'a') + "\xc3\xa9";  // 49 bytes: 'é' would be split at 48
  log.record({"OPTIONSXYZ", endpoint, 200, 1, 1, false, ""});
  std::thread([&] { log.record({"GET", "/", 200, 1, 1, false, ""}); }).join();  // the lane is taken
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto read = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  REQUIRE(read.records.size() == 1);
  CHECK(read.records[0].method == "OPTIONSX");
  CHECK(read.records[0].endpoint == std::string(47, 'a'));
  CHECK(segment->Info().records_dropped == 1);
}

// Writes one record and reads it back from the thread's ring.
reader::RequestRecordView RecordAndRead(const RequestLog& log, const reader::Segment& segment, uint64_t k,
                                        const RequestRecordInput& input) {
  log.record(input);
  const auto read = segment.ReadRing(0, reader::RingKind::kRequests, k);
  REQUIRE(read.records.size() == 1);
  return read.records[0];
}

TEST_CASE("every field length, 0 to past its capacity, and every cut inside a 2-, 3- or 4-byte character reads "
          "back exactly") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  auto segment = reader::Segment::Open(writer->path()).value();
  uint64_t k = 0;
  const std::string letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
  for (size_t n = 0; n <= 60; ++n) {
    const std::string text = letters.substr(0, n);
    const auto r = RecordAndRead(log, *segment, k++,
                                 {text.substr(0, std::min<size_t>(n, 12)), text, static_cast<uint16_t>(n), n, n * 3,
                                  n % 2 == 1, text.substr(0, std::min<size_t>(n, 40)), 1000 + n});
    CHECK(r.method == text.substr(0, std::min<size_t>(n, 8)));
    CHECK(r.endpoint == text.substr(0, std::min<size_t>(n, 48)));
    CHECK(r.error_message == text.substr(0, std::min<size_t>(n, 32)));
    CHECK(r.status == n);
    CHECK(r.duration_ns == n);
    CHECK(r.response_bytes == n * 3);
    CHECK(r.error == (n % 2 == 1));
    CHECK(r.timestamp_unix_ns == 1000 + n);
  }
  // A multi-byte character placed across each field's end is left out whole.
  for (const std::string character : {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"}) {
    for (size_t before = 0; before < 4; ++before) {
      const auto across = [&](size_t capacity) {
        // The character starts 1 .. size-1 bytes before the field's end.
        return std::string(capacity - character.size() + 1 + before % (character.size() - 1), 'x') + character + "yz";
      };
      const std::string method = across(8), endpoint = across(48), error = across(32);
      const auto r = RecordAndRead(log, *segment, k++, {method, endpoint, 200, 1, 1, true, error, 1});
      CHECK(r.method == std::string(shm::Utf8Prefix(method, 8)));
      CHECK(r.endpoint == std::string(shm::Utf8Prefix(endpoint, 48)));
      CHECK(r.error_message == std::string(shm::Utf8Prefix(error, 32)));
      CHECK(r.endpoint.size() < 48);
      CHECK(shm::IsValidUtf8(r.endpoint));
    }
  }
  // Whole characters that fit exactly are kept.
  const std::string euros = "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac";  // 18 bytes
  const auto r = RecordAndRead(log, *segment, k++, {"GET", euros + euros + euros + "abc", 200, 1, 1, false, "", 1});
  std::string sixteen_euros;
  for (int i = 0; i < 16; ++i) sixteen_euros += "\xe2\x82\xac";
  CHECK(r.endpoint == sixteen_euros);  // 54 bytes: cut to 48, a boundary
}

TEST_CASE("with error slots only, errors are kept and other requests go nowhere") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "ring");
  options.capacities.ring_slots_per_lane = 0;
  auto writer = Writer::Create(options).value();
  const RequestLog log = writer->requests();
  log.record({"GET", "/ok", 200, 1, 1, false, ""});
  log.record({"POST", "/pay", 502, 7, 9, true, "gateway", 42});
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto errors = segment->ReadRing(0, reader::RingKind::kErrors, 0);
  REQUIRE(errors.records.size() == 1);
  CHECK(errors.records[0].endpoint == "/pay");
  CHECK(errors.records[0].error_message == "gateway");
  CHECK(errors.records[0].timestamp_unix_ns == 42);
  CHECK(segment->ReadRing(0, reader::RingKind::kRequests, 0).next == 0);
  CHECK(segment->Info().records_dropped == 0);
}

uint64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

TEST_CASE("record() given no timestamp reads CLOCK_REALTIME_COARSE by default: each record's time is exactly "
          "between coarse readings taken just before and just after it, and never ahead of CLOCK_REALTIME") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  auto segment = reader::Segment::Open(writer->path()).value();
  timespec resolution;
  REQUIRE(clock_getres(CLOCK_REALTIME_COARSE, &resolution) == 0);
  // Long enough to cross several kernel ticks (1-4 ms each).
  uint64_t outside = 0, ahead = 0, k = 0, distinct = 0, last = 0;
  const uint64_t start = ClockNs(CLOCK_REALTIME);
  while (ClockNs(CLOCK_REALTIME) - start < 20'000'000) {
    const uint64_t before = ClockNs(CLOCK_REALTIME_COARSE);
    log.record({"GET", "/t", 200, 1, 1, false, ""});
    const uint64_t after = ClockNs(CLOCK_REALTIME_COARSE), precise_after = ClockNs(CLOCK_REALTIME);
    const auto read = segment->ReadRing(0, reader::RingKind::kRequests, k++);
    REQUIRE(read.records.size() == 1);
    const uint64_t t = read.records[0].timestamp_unix_ns;
    outside += t < before || t > after;
    ahead += t > precise_after;
    distinct += t != last;
    last = t;
  }
  MESSAGE(k << " records, " << distinct << " distinct times, tick " << resolution.tv_nsec << " ns");
  CHECK(outside == 0);
  CHECK(ahead == 0);
  CHECK(distinct >= 2);  // the clock moved: it is read, not cached once
}

TEST_CASE("with Clock::kPrecise, record() given no timestamp reads CLOCK_REALTIME: each record's time lies between "
          "readings taken just before and just after it") {
  TempDir dir;
  WriterOptions options = testing::WriterIn(dir, "ring");
  options.clock = WriterOptions::Clock::kPrecise;
  auto writer = Writer::Create(options).value();
  const RequestLog log = writer->requests();
  auto segment = reader::Segment::Open(writer->path()).value();
  // Long enough to cross many of the clock's 1 ms windows and re-anchors.
  uint64_t outside = 0, k = 0, distinct = 0, last = 0;
  const uint64_t start = ClockNs(CLOCK_REALTIME);
  while (ClockNs(CLOCK_REALTIME) - start < 20'000'000) {
    const uint64_t before = ClockNs(CLOCK_REALTIME);
    log.record({"GET", "/t", 200, 1, 1, false, ""});
    const uint64_t after = ClockNs(CLOCK_REALTIME);
    const auto read = segment->ReadRing(0, reader::RingKind::kRequests, k++);
    REQUIRE(read.records.size() == 1);
    // The extrapolated time may be off by the rate's error over a window:
    // tens of nanoseconds typically, a few microseconds at worst (see
    // writer/src/realtime_clock.h); the coarse clock would be off by up to
    // a tick (1-4 ms).
    const uint64_t t = read.records[0].timestamp_unix_ns;
    outside += t + 10'000 < before || t > after + 10'000;
    distinct += t != last;
    last = t;
  }
  MESSAGE(k << " records, " << distinct << " distinct times");
  CHECK(outside == 0);
  CHECK(distinct == k);  // nanoseconds: no two records of this loop share a time
}

TEST_CASE("PreciseNowUnixNs() reads CLOCK_REALTIME, and a record given its reading carries exactly that time") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  auto segment = reader::Segment::Open(writer->path()).value();
  uint64_t outside = 0, k = 0, mismatched = 0;
  const uint64_t start = ClockNs(CLOCK_REALTIME);
  while (ClockNs(CLOCK_REALTIME) - start < 20'000'000) {
    const uint64_t before = ClockNs(CLOCK_REALTIME);
    const uint64_t now = PreciseNowUnixNs();
    const uint64_t after = ClockNs(CLOCK_REALTIME);
    outside += now + 10'000 < before || now > after + 10'000;  // the tolerance of the kPrecise test above
    if (k % 64 == 0) {
      log.record({"GET", "/t", 200, 1, 1, false, "", now});
      const auto read = segment->ReadRing(0, reader::RingKind::kRequests, k / 64);
      REQUIRE(read.records.size() == 1);
      mismatched += read.records[0].timestamp_unix_ns != now;
    }
    ++k;
  }
  MESSAGE(k << " readings");
  CHECK(outside == 0);
  CHECK(mismatched == 0);
}

TEST_CASE("an evicted record's text does not linger in the segment: bytes past each field's length are zero") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  log.record({"PROPFIND", "/users/4242/tokens/sk_live_SECRETSECRET42", 402, 1, 1, true,
              "card 4111111111111111 declined!"});
  CHECK(absl::StrContains(testing::ReadFile(writer->path()), "SECRETSECRET42"));
  // Every request and error slot of the ring is replaced by shorter records.
  for (int i = 0; i < 1000; ++i) log.record({"GET", "/u", 500, 1, 1, true, "e"});
  const std::string file = testing::ReadFile(writer->path());
  CHECK_FALSE(absl::StrContains(file, "SECRET"));
  CHECK_FALSE(absl::StrContains(file, "41111111"));
  CHECK_FALSE(absl::StrContains(file, "PROPFIND"));
  CHECK_FALSE(absl::StrContains(file, "declined"));
}

TEST_CASE("forged lengths in a slot (255 each) make the writer zero only inside each field when the slot is reused") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  for (uint64_t k = 0; k < 64; ++k) log.record({"GET", absl::StrCat("/r", k), 200, k, 1, false, ""});
  // Slot 0 (record 0) now claims 255 bytes of method, endpoint and error:
  // more than each field holds, the error's 255 reaching far into slot 1.
  const std::string file = testing::ReadFile(writer->path());
  const auto& header = *reinterpret_cast<const shm::SegmentHeader*>(file.data());
  const uint64_t lengths_at = header.rings_offset + sizeof(shm::RingHeader) + offsetof(shm::RequestRecord, method_length);
  const int fd = open(writer->path().c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const unsigned char forged[3] = {255, 255, 255};
  REQUIRE(pwrite(fd, forged, 3, static_cast<off_t>(lengths_at)) == 3);
  close(fd);
  log.record({"PUT", "/r64", 201, 64, 1, false, ""});  // reuses slot 0
  auto segment = reader::Segment::Open(writer->path()).value();
  const auto read = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  CHECK(read.torn == 0);
  REQUIRE(read.records.size() == 64);  // records 1 .. 64, each intact: slot 1 untouched
  CHECK(read.records.front().endpoint == "/r1");
  CHECK(read.records.front().duration_ns == 1);
  CHECK(read.records.back().endpoint == "/r64");
  CHECK(read.records.back().method == "PUT");
  CHECK(read.records.back().error_message.empty());
}

TEST_CASE("a slot left half-written (a producer killed mid-write) is skipped and counted, never returned") {
  TempDir dir;
  auto writer = MakeWriter(dir);
  const RequestLog log = writer->requests();
  for (uint64_t k = 0; k < 10; ++k) RecordNumbered(log, k);
  std::string bytes = testing::ReadFile(writer->path());
  const auto* header = reinterpret_cast<const shm::SegmentHeader*>(bytes.data());
  // Slot of record 9 in lane 0: sequence odd (2*9+1), payload half new.
  const size_t slot = header->rings_offset + sizeof(shm::RingHeader) + 9 * sizeof(shm::RequestRecord);
  const uint64_t odd = 2 * 9 + 1;
  std::memcpy(bytes.data() + slot, &odd, 8);
  bytes[slot + 48] = 'X';
  const std::string copy = dir.path() + "/shmetrics.ring.1.1.0";
  testing::WriteFile(copy, testing::AsWrittenBy(bytes, 1, 1));
  chmod(copy.c_str(), 0600);
  auto segment = reader::Segment::Open(copy).value();
  const auto read = segment->ReadRing(0, reader::RingKind::kRequests, 0);
  CHECK(read.records.size() == 9);
  CHECK(read.torn == 1);
  for (const auto& r : read.records) CHECK(Intact(r));
}

TEST_CASE("recent records across 2 processes x 2 threads come newest first, each exactly once") {
  TempDir dir;
  std::vector<pid_t> children;
  for (int p = 0; p < 2; ++p) {
    const pid_t child = testing::Fork();
    if (child == 0) {
      auto writer = MakeWriter(dir, "web");
      const RequestLog log = writer->requests();
      std::latch both_bound(2);  // each thread keeps a lane (and ring) of its own
      auto work = [&](int t) {
        for (int i = 0; i < 20; ++i) {
          if (i == 1) both_bound.arrive_and_wait();
          log.record({"GET", absl::StrCat("/p", p, "/t", t, "/", i), static_cast<uint16_t>(i % 2 ? 500 : 200), 5,
                      1, i % 2 == 1, i % 2 ? "odd" : ""});
        }
      };
      std::thread a(work, 0), b(work, 1);
      a.join();
      b.join();
      _exit(0);
    }
    children.push_back(child);
  }
  for (pid_t child : children) REQUIRE(testing::WaitChild(child) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.retire_dead = false;
  auto collector = reader::Collector::Create(options).value();
  REQUIRE(collector->Scan().ok());
  reader::RecentQuery query;
  query.limit = 1000;
  const auto all = collector->Recent(query);
  REQUIRE(all.size() == 80);
  std::set<std::string> endpoints;
  for (size_t i = 0; i < all.size(); ++i) {
    endpoints.insert(all[i].record.endpoint);
    if (i > 0) CHECK(all[i - 1].record.timestamp_unix_ns >= all[i].record.timestamp_unix_ns);
  }
  CHECK(endpoints.size() == 80);
  query.limit = 5;
  const auto newest = collector->Recent(query);
  REQUIRE(newest.size() == 5);
  for (size_t i = 0; i < 5; ++i) CHECK(newest[i].record.endpoint == all[i].record.endpoint);
  query.kind = reader::RingKind::kErrors;
  query.limit = 1000;
  query.status = 500;
  CHECK(collector->Recent(query).size() == 40);
  query.endpoint = "/p1/t0/3";
  const auto one = collector->Recent(query);
  REQUIRE(one.size() == 1);
  CHECK(one[0].record.error_message == "odd");
  CHECK(one[0].service == "web");

  // The CLI's tail prints the newest N, oldest first.
  const auto tail = testing::RunCommand(absl::StrCat(SHMETRICS_CLI_BIN, " --dir ", dir.path(), " tail -n 3"));
  CHECK(tail.exit_code == 0);
  const std::regex line("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{6}Z web [0-9]+ GET /p[01]/t[01]/[0-9]+ (200|500) "
                        "0\\.000ms 1B( error: odd)?\n");
  std::vector<std::string> lines;
  for (absl::string_view l : absl::StrSplit(tail.output, '\n', absl::SkipEmpty())) lines.push_back(std::string(l) + "\n");
  REQUIRE(lines.size() == 3);
  for (const auto& l : lines) CHECK(std::regex_match(l, line));
  CHECK(absl::StrContains(lines[2], all[0].record.endpoint + " "));
}

}  // namespace
}  // namespace shmetrics
