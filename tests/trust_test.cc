// What the collector trusts: a planted archive or lock, another user's
// segments (root included), and read-only views that must never lose a
// segment another collector retires.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "shmetrics/archive.h"
#include "shmetrics/collector.h"
#include "shmetrics/writer.h"
#include "process_support.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::RunCommand;
using testing::ShellQuote;
using testing::TempDir;
using testing::WriterProcess;

constexpr uid_t kNobody = 65534;

void Jobs(Writer& writer) { writer.AddCounter("jobs_total", "Jobs.").value().WithLabels({}).value().add(100); }


double JobsTotal(const reader::Collector& collector) {
  for (const auto& series : collector.Snapshot()) {
    if (series.family == "jobs_total" && series.service == "batch") return series.value;
  }
  return -1;
}

// An archive that forges a series and claims the live segment was folded.
std::string ForgedArchive(const std::string& live_file_name) {
  return absl::StrCat("shmetrics-archive\t1\nF\t", live_file_name,
                      "\nS\tbatch\tforged_total\t1\t0\tForged.\t0\t0\t999\t0\n");
}

TEST_CASE("a planted archive (symlink, FIFO, mode 0644, another owner) is never read, followed or obeyed") {
  struct Plant {
    const char* what;
    std::function<void(const std::string& path, const std::string& text, const TempDir& dir)> make;
    const char* error;  // after "<path>: untrusted archive: "
    bool needs_root;
  };
  const std::vector<Plant> plants = {
      {"symlink",
       [](const std::string& path, const std::string& text, const TempDir& dir) {
         const std::string target = dir.path() + "/elsewhere";
         testing::WriteFile(target, text);
         chmod(target.c_str(), 0600);
         REQUIRE(symlink(target.c_str(), path.c_str()) == 0);
       },
       "a symbolic link", false},
      {"fifo", [](const std::string& path, const std::string&, const TempDir&) { REQUIRE(mkfifo(path.c_str(), 0600) == 0); },
       "not a regular file", false},
      {"socket", [](const std::string& path, const std::string&, const TempDir&) { REQUIRE(testing::MakeUnixSocket(path)); },
       "not a regular file", false},
      {"mode 0644",
       [](const std::string& path, const std::string& text, const TempDir&) {
         testing::WriteFile(path, text);
         REQUIRE(chmod(path.c_str(), 0644) == 0);
       },
       "mode 0644, not 0600", false},
      {"other owner",
       [](const std::string& path, const std::string& text, const TempDir&) {
         testing::WriteFile(path, text);
         REQUIRE(chmod(path.c_str(), 0600) == 0);
         REQUIRE(chown(path.c_str(), kNobody, kNobody) == 0);
       },
       "owned by uid 65534, not by this user (uid 0)", true},
  };
  for (const Plant& plant : plants) {
    CAPTURE(plant.what);
    if (plant.needs_root && geteuid() != 0) {
      MESSAGE("skipped: needs root to plant a file owned by another uid");
      continue;
    }
    TempDir dir;
    WriterProcess writer(dir.path(), "batch", Jobs);
    const std::string segment = dir.SegmentPaths().at(0);
    const std::string archive = dir.path() + "/shmetrics-archive";
    plant.make(archive, ForgedArchive(segment.substr(segment.rfind('/') + 1)), dir);

    // A read-only view reports it and reads live values only.
    reader::CollectorOptions options;
    options.directory = dir.path();
    options.retire_dead = false;
    auto viewer = reader::Collector::Create(options).value();
    const std::string seen = testing::ScanAndRender(*viewer);
    CHECK(absl::StrContains(seen, "jobs_total{service=\"batch\"} 100\n"));
    CHECK_FALSE(absl::StrContains(seen, "forged_total"));
    auto problems = viewer->Problems();
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].kind == reader::ProblemKind::kUntrusted);
    CHECK(problems[0].error == archive + ": untrusted archive: " + plant.error + "; not read");

    // A retiring collector sets it aside (it may: the directory is ours),
    // never unlinks the live segment it names, and serves no forged value.
    options.retire_dead = true;
    auto retirer = reader::Collector::Create(options).value();
    const std::string served = testing::ScanAndRender(*retirer);
    CHECK(absl::StrContains(served, "jobs_total{service=\"batch\"} 100\n"));
    CHECK_FALSE(absl::StrContains(served, "forged_total"));
    CHECK(std::filesystem::exists(segment));
    problems = retirer->Problems();
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].kind == reader::ProblemKind::kUntrusted);
    CHECK(absl::StartsWith(problems[0].error, archive + ": untrusted archive: " + plant.error + "; set aside as " +
                                                  archive + ".untrusted-"));
    CHECK(retirer->Counters().retiring);
    // And it retires into a fresh archive of its own.
    writer.Kill9();
    CHECK(absl::StrContains(testing::ScanAndRender(*retirer), "jobs_total{service=\"batch\"} 100\n"));
    CHECK_FALSE(std::filesystem::exists(segment));
    struct stat st {};
    REQUIRE(lstat(archive.c_str(), &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(st.st_uid == geteuid());
  }
}

TEST_CASE("an archive owned by a uid trusted for segments is still not trusted") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root to plant a file owned by another uid");
    return;
  }
  TempDir dir;
  WriterProcess writer(dir.path(), "batch", Jobs);
  const std::string segment = dir.SegmentPaths().at(0);
  const std::string archive = dir.path() + "/shmetrics-archive";
  testing::WriteFile(archive, ForgedArchive(segment.substr(segment.rfind('/') + 1)));
  REQUIRE(chmod(archive.c_str(), 0600) == 0);
  REQUIRE(chown(archive.c_str(), kNobody, kNobody) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.retire_dead = false;
  options.segment.mapping.trusted_uids = {kNobody};
  auto viewer = reader::Collector::Create(options).value();
  const std::string seen = testing::ScanAndRender(*viewer);
  CHECK(absl::StrContains(seen, "jobs_total{service=\"batch\"} 100\n"));  // the live segment is not dropped
  CHECK_FALSE(absl::StrContains(seen, "forged_total"));
  REQUIRE(viewer->Problems().size() == 1);
  CHECK(viewer->Problems()[0].error ==
        archive + ": untrusted archive: owned by uid 65534, not by this user (uid 0); not read");
}

TEST_CASE("a retirer whose lock file is removed stops retiring: a second one never races it") {
  TempDir dir;
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto first = reader::Collector::Create(options).value();
  REQUIRE(first->Counters().retiring);
  REQUIRE(std::filesystem::remove(dir.path() + "/shmetrics-archive.lock"));
  auto second = reader::Collector::Create(options).value();  // takes a new lock file
  REQUIRE(second->Counters().retiring);
  REQUIRE(first->Scan().ok());
  CHECK_FALSE(first->Counters().retiring);
  const auto problems = first->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].error == dir.path() + "/shmetrics-archive.lock: removed or replaced while this collector held "
                                          "it; dead writers are not retired by it any more (restart it to take the "
                                          "lock again)");
  {
    WriterProcess writer(dir.path(), "batch", Jobs);
    writer.Kill9();
  }
  REQUIRE(first->Scan().ok());
  CHECK(first->Counters().segments_retired_total == 0);
  REQUIRE(second->Scan().ok());
  CHECK(second->Counters().segments_retired_total == 1);
  CHECK(JobsTotal(*second) == 100);
}

TEST_CASE("a planted lock file turns retirement off: segments are served and never removed") {
  TempDir dir;
  WriterProcess writer(dir.path(), "batch", Jobs);
  const std::string lock = dir.path() + "/shmetrics-archive.lock";
  REQUIRE(symlink("/etc/passwd", lock.c_str()) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  auto collector = reader::Collector::Create(options).value();
  CHECK_FALSE(collector->Counters().retiring);
  writer.Kill9();
  CHECK(absl::StrContains(testing::ScanAndRender(*collector), "jobs_total{service=\"batch\"} 100\n"));
  CHECK(dir.SegmentPaths().size() == 1);  // dead, but not removed
  const auto problems = collector->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].kind == reader::ProblemKind::kUntrusted);
  CHECK(problems[0].error == "untrusted lock file: " + lock +
                                 ": is a symbolic link; dead writers are not retired until it is removed");
}

TEST_CASE("a segment owned by another uid is refused by every reader, root included, unless trusted") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root to give a segment to another uid");
    return;
  }
  TempDir dir;
  WriterProcess writer(dir.path(), "batch", Jobs);
  const std::string segment = dir.SegmentPaths().at(0);
  REQUIRE(chown(segment.c_str(), kNobody, kNobody) == 0);
  reader::CollectorOptions options;
  options.directory = dir.path();
  options.retire_dead = false;
  auto strict = reader::Collector::Create(options).value();
  CHECK_FALSE(absl::StrContains(testing::ScanAndRender(*strict), "jobs_total"));
  const auto problems = strict->Problems();
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].kind == reader::ProblemKind::kUntrusted);
  CHECK(problems[0].error == segment + ": owned by uid 65534, not by this user (uid 0) or a trusted uid");

  options.segment.mapping.trusted_uids = {kNobody};
  auto trusting = reader::Collector::Create(options).value();
  CHECK(absl::StrContains(testing::ScanAndRender(*trusting), "jobs_total{service=\"batch\"} 100\n"));
  CHECK(trusting->Problems().empty());

  // The CLI says "untrusted" and exits 4, not "corrupt" and 5.
  const std::string cli = std::string(SHMETRICS_CLI_BIN) + " --dir " + ShellQuote(dir.path());
  const auto ls = RunCommand(cli + " ls 2>&1");
  CHECK(ls.exit_code == 0);
  CHECK(absl::StrContains(ls.output, "untrusted"));
  CHECK(RunCommand(cli + " dump " + ShellQuote(segment) + " 2>/dev/null").exit_code == 4);
  CHECK(RunCommand(cli + " check 2>/dev/null").exit_code == 4);
  const auto trusted = RunCommand(cli + " dump --trusted-uids 65534 " + ShellQuote(segment));
  CHECK(trusted.exit_code == 0);
  CHECK(absl::StrContains(trusted.output, "jobs_total{service=\"batch\"} 100\n"));
}

TEST_CASE("an exporter that cannot write the directory exits 3 and says --no-retire would work") {
  if (geteuid() != 0) {
    MESSAGE("skipped: needs root to run the exporter as another uid");
    return;
  }
  TempDir dir;
  REQUIRE(chmod(dir.path().c_str(), 0755) == 0);
  const std::string setpriv = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  const auto refused = RunCommand(setpriv + SHMETRICS_EXPORTER_BIN " --dir " + ShellQuote(dir.path()) +
                                  " --web.listen-address 127.0.0.1:1 2>&1");
  CHECK(refused.exit_code == 3);
  CHECK(absl::StrContains(refused.output, "level=error msg=\"cannot retire dead writers' segments: " + dir.path() +
                                              " is not writable by uid 65534; run read-only (--no-retire) to serve it "
                                              "anyway\"\n"));
}

TEST_CASE("read-only views never lose a dead writer's counter when another collector retires it") {
  TempDir dir;
  reader::CollectorOptions read_only;
  read_only.directory = dir.path();
  read_only.retire_dead = false;
  auto viewer = reader::Collector::Create(read_only).value();
  reader::CollectorOptions retiring;
  retiring.directory = dir.path();
  auto retirer = reader::Collector::Create(retiring).value();

  // `top` runs throughout, as a process, printing every 0.2 s.
  const std::string top_log = dir.path() + "/../" + std::filesystem::path(dir.path()).filename().string() + ".top";
  testing::Subprocess top({SHMETRICS_CLI_BIN, "top", "--dir", dir.path(), "--interval", "0.2", "--service", "batch"},
                          top_log);
  double expected = 0;
  for (int round = 0; round < 8; ++round) {
    WriterProcess writer(dir.path(), "batch", Jobs);
    expected += 100;
    REQUIRE(viewer->Scan().ok());
    CHECK(JobsTotal(*viewer) == expected);
    writer.Kill9();
    // A dump racing the retirement: every one of them sees the counter.
    std::atomic<bool> retired{false};
    std::thread retire([&] {
      REQUIRE(retirer->Scan().ok());
      retired = true;
    });
    int dumps = 0;
    while (!retired.load() || dumps < 3) {
      auto dump = reader::Collector::Create(read_only).value();
      REQUIRE(dump->Scan().ok());
      CHECK(JobsTotal(*dump) == expected);
      ++dumps;
    }
    retire.join();
    CHECK(dir.SegmentPaths().empty());
    REQUIRE(viewer->Scan().ok());
    CHECK(JobsTotal(*viewer) == expected);  // now from the archive it reloaded
  }
  // top refreshes every 0.2 s: wait for a refresh that shows the total.
  auto last_total_line = [&] {
    std::string last_line;
    for (absl::string_view line : absl::StrSplit(testing::ReadFile(top_log), '\n')) {
      if (absl::StrContains(line, "jobs_total{service=batch}")) last_line = std::string(line);
    }
    return last_line;
  };
  const std::string expected_total = absl::StrCat(" ", expected, " ");
  for (int i = 0; i < 300 && !absl::StrContains(last_total_line(), expected_total); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  top.Stop();
  // Every refresh of top showed the running total, never less than before.
  double last = 0;
  int refreshes = 0;
  for (absl::string_view line : absl::StrSplit(testing::ReadFile(top_log), '\n')) {
    if (!absl::StrContains(line, "jobs_total{service=batch}")) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    REQUIRE(fields.size() >= 3);
    const double total = std::stod(std::string(fields[1]));
    CHECK(total >= last);
    last = total;
    ++refreshes;
  }
  CHECK(refreshes > 0);
  CHECK(last == expected);
  std::filesystem::remove(top_log);
}

TEST_CASE("the CLI shows the archive, checks it, and drops a service's history on purpose") {
  TempDir dir;
  {
    WriterProcess old_service(dir.path(), "legacy", Jobs);
    old_service.Kill9();
  }
  WriterProcess live(dir.path(), "batch", Jobs);
  const std::string cli = std::string(SHMETRICS_CLI_BIN) + " --dir " + ShellQuote(dir.path());
  REQUIRE(RunCommand(cli + " gc --yes").exit_code == 0);
  const std::string archive = dir.path() + "/shmetrics-archive";

  const auto shown = RunCommand(cli + " archive");
  CHECK(shown.exit_code == 0);
  CHECK(shown.output == "archive " + archive + ": 1 series of 1 service(s), 1 folded segment name(s) kept\n"
                        "service legacy: 1 series\n"
                        "  jobs_total{service=\"legacy\"} 100\n" +
                            shown.output.substr(shown.output.rfind("\nfolded ") + 1));
  const auto json = RunCommand(cli + " archive --json");
  CHECK(absl::StartsWith(json.output, "{\"path\":\"" + archive + "\",\"services\":{\"legacy\":1},\"series\":[{"
                                      "\"service\":\"legacy\",\"family\":\"jobs_total\",\"type\":\"counter\","
                                      "\"labels\":{},\"value\":100}],\"folded\":[\""));

  // dump of one segment: that segment alone, not the archive's history.
  const std::string segment = dir.SegmentPaths().at(0);
  const auto one = RunCommand(cli + " dump " + ShellQuote(segment));
  CHECK(one.exit_code == 0);
  CHECK(one.output == "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{service=\"batch\"} 100\n");
  CHECK(absl::StrContains(RunCommand(cli + " dump").output, "jobs_total{service=\"legacy\"} 100\n"));
  const auto archived = RunCommand(cli + " dump shmetrics-archive");  // the archive alone
  CHECK(archived.exit_code == 0);
  CHECK(archived.output == "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{service=\"legacy\"} 100\n");

  // check covers the archive: fine, then corrupt (exit 5), then planted (exit 4).
  CHECK(absl::StrContains(RunCommand(cli + " check").output, "ok       " + archive + "\n"));
  const std::string saved = testing::ReadFile(archive);
  testing::WriteFile(archive, "shmetrics-archive\t1\nS\tbroken\n");
  const auto corrupt = RunCommand(cli + " check");
  CHECK(corrupt.exit_code == 5);
  CHECK(absl::StrContains(corrupt.output, "PROBLEM  " + archive + ": unreadable archive: line 2\n"));
  testing::WriteFile(archive, saved);
  chmod(archive.c_str(), 0644);
  CHECK(RunCommand(cli + " check").exit_code == 4);
  chmod(archive.c_str(), 0600);

  // Dropping a service's history asks, and needs --yes without a terminal.
  CHECK(RunCommand(cli + " archive --drop-service legacy < /dev/null 2>/dev/null").exit_code == 1);
  CHECK(RunCommand(cli + " archive --drop-service nosuch --yes 2>/dev/null").exit_code == 3);
  const auto dropped = RunCommand(cli + " archive --drop-service legacy --yes");
  CHECK(dropped.exit_code == 0);
  CHECK(absl::StrContains(dropped.output, "dropped 1 series of service legacy\n"));
  CHECK_FALSE(absl::StrContains(RunCommand(cli + " dump").output, "legacy"));
}

}  // namespace
}  // namespace shmetrics
