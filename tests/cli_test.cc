// The CLI run as a process against real segments written by forked writers.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "shmetrics/writer.h"
#include "test_support.h"

namespace shmetrics {
namespace {
using testing::RunCommand;
using testing::TempDir;

std::string Cli(const TempDir& dir, const std::string& args) {
  return absl::StrCat(SHMETRICS_CLI_BIN, " --dir ", dir.path(), " ", args);
}

// A writer in a child process that registers a known set of metrics, then
// either idles until killed or keeps counting `busy_total`.
pid_t StartWriter(const TempDir& dir, const std::string& service, bool busy) {
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  const pid_t child = testing::Fork();
  if (child == 0) {
    close(ready[0]);
    WriterOptions options = testing::WriterIn(dir, service);
    auto writer = Writer::Create(options).value();
    auto requests = writer->AddCounter("requests_total", "Requests.", {"code"}).value();
    requests.WithLabels({"200"}).value().inc(41);
    requests.WithLabels({"500"}).value().inc(1);
    writer->AddGauge("workers", "Workers.").value().WithLabels({}).value().set(4);
    auto latency = writer->AddHistogram("latency_seconds", "Latency.", {}, {0.1, 1}).value().WithLabels({}).value();
    latency.observe(0.05);
    latency.observe(0.5);
    latency.observe(5);
    auto busy_counter = writer->AddCounter("busy_total", "Busy.").value().WithLabels({}).value();
    if (write(ready[1], "r", 1) != 1) _exit(1);
    for (;;) {
      if (busy) busy_counter.inc();
      else pause();
    }
  }
  close(ready[1]);
  char byte;
  REQUIRE(read(ready[0], &byte, 1) == 1);
  close(ready[0]);
  return child;
}

void Kill(pid_t pid) {
  kill(pid, SIGKILL);
  testing::WaitChild(pid);
}

TEST_CASE("cli ls --json lists each segment with its state and use of capacity") {
  TempDir dir;
  const pid_t alive = StartWriter(dir, "api", false);
  const pid_t dead = StartWriter(dir, "api", false);
  Kill(dead);
  const auto r = RunCommand(Cli(dir, "ls --json"));
  CHECK(r.exit_code == 0);
  const std::string normalized = std::regex_replace(
      std::regex_replace(r.output, std::regex("\"age_seconds\":[0-9]+"), "\"age_seconds\":A"),
      std::regex("shmetrics\\.api\\.[0-9]+\\.[0-9]+\\.0"), "FILE");
  auto line = [](pid_t pid, const char* state, int lanes) {
    return absl::StrCat("{\"file\":\"FILE\",\"service\":\"api\",\"pid\":", pid, ",\"state\":\"", state,
                        "\",\"age_seconds\":A,\"size_bytes\":3592192,\"families\":4,\"family_capacity\":256,"
                        "\"series\":5,\"series_capacity\":4096,\"lanes_in_use\":", lanes,
                        ",\"exclusive_lanes\":32,\"series_overflow\":0}");
  };
  // Sorted by file name; the pids decide the order.
  const std::string first = alive < dead ? line(alive, "alive", 1) : line(dead, "dead", 1);
  const std::string second = alive < dead ? line(dead, "dead", 1) : line(alive, "alive", 1);
  if (std::to_string(alive).size() == std::to_string(dead).size()) {
    CHECK(normalized == "[\n  " + first + ",\n  " + second + "\n]\n");
  } else {
    CHECK(absl::StrContains(normalized, line(alive, "alive", 1)));
    CHECK(absl::StrContains(normalized, line(dead, "dead", 1)));
  }
  Kill(alive);
}

TEST_CASE("cli dump prints exactly what the exporter serves, for one segment or a service") {
  TempDir dir;
  const pid_t writer = StartWriter(dir, "api", false);
  const std::string expected =
      "# HELP busy_total Busy.\n# TYPE busy_total counter\nbusy_total{service=\"api\"} 0\n"
      "# HELP latency_seconds Latency.\n# TYPE latency_seconds histogram\n"
      "latency_seconds_bucket{service=\"api\",le=\"0.1\"} 1\n"
      "latency_seconds_bucket{service=\"api\",le=\"1\"} 2\n"
      "latency_seconds_bucket{service=\"api\",le=\"+Inf\"} 3\n"
      "latency_seconds_sum{service=\"api\"} 5.55\n"
      "latency_seconds_count{service=\"api\"} 3\n"
      "# HELP requests_total Requests.\n# TYPE requests_total counter\n"
      "requests_total{code=\"200\",service=\"api\"} 41\n"
      "requests_total{code=\"500\",service=\"api\"} 1\n"
      "# HELP workers Workers.\n# TYPE workers gauge\nworkers{service=\"api\"} 4\n";
  const auto all = RunCommand(Cli(dir, "dump --service api"));
  CHECK(all.exit_code == 0);
  CHECK(all.output == expected);
  const std::string file = std::filesystem::path(dir.SegmentPaths().at(0)).filename();
  const auto one = RunCommand(Cli(dir, "dump " + file));
  CHECK(one.output == expected);
  const auto om = RunCommand(Cli(dir, "dump --openmetrics"));
  CHECK(absl::StartsWith(om.output, "# HELP busy Busy.\n# TYPE busy counter\nbusy_total{service=\"api\"} 0\n"));
  CHECK(absl::EndsWith(om.output, "# EOF\n"));
  const auto missing = RunCommand(Cli(dir, "dump shmetrics.api.1.1.0 2>&1"));
  CHECK(missing.exit_code == 3);
  CHECK(missing.output == "shmetrics: open " + dir.path() + "/shmetrics.api.1.1.0: No such file or directory\n");
  Kill(writer);
}

TEST_CASE("cli check passes good segments and catches corrupted ones with exit code 5") {
  TempDir dir;
  const pid_t writer = StartWriter(dir, "api", false);
  const std::string good = dir.SegmentPaths().at(0);
  CHECK(RunCommand(Cli(dir, "check")).output == "ok       " + good + "\n");
  std::string bytes = testing::ReadFile(good);
  // Pids above any real one: the listing (sorted by file name) shows the
  // writer's own segment first, whatever its pid.
  const std::string bad_magic = dir.path() + "/shmetrics.api.99999998.7.0";
  bytes[0] = 'X';
  testing::WriteFile(bad_magic, bytes);
  const std::string truncated = dir.path() + "/shmetrics.api.99999999.8.0";
  testing::WriteFile(truncated, testing::ReadFile(good).substr(0, 4096));
  chmod(bad_magic.c_str(), 0600);
  chmod(truncated.c_str(), 0600);
  const auto r = RunCommand(Cli(dir, "check"));
  CHECK(r.exit_code == 5);
  CHECK(r.output == "ok       " + good + "\n" +
                        "PROBLEM  " + bad_magic + ": not a shmetrics segment (bad magic)\n" +
                        "PROBLEM  " + truncated + ": corrupt segment: truncated or extended: file has 4096 bytes, "
                                                  "header says 3592192\n");
  const auto json = RunCommand(Cli(dir, "check --json shmetrics.api.99999998.7.0"));
  CHECK(json.exit_code == 5);
  CHECK(json.output == "[\n  {\"path\":\"" + bad_magic + "\",\"ok\":false,\"error\":\"" + bad_magic +
                           ": not a shmetrics segment (bad magic)\"}\n]\n");
  CHECK(RunCommand(Cli(dir, "check nosuch 2>/dev/null")).exit_code == 3);
  Kill(writer);
}

TEST_CASE("cli gc removes only dead writers' segments and keeps their totals in the archive") {
  TempDir dir;
  const pid_t alive = StartWriter(dir, "api", false);
  const pid_t dead = StartWriter(dir, "api", false);
  Kill(dead);
  REQUIRE(dir.SegmentPaths().size() == 2);
  CHECK(RunCommand(Cli(dir, "gc < /dev/null 2>/dev/null")).exit_code == 1);  // no --yes, no terminal
  CHECK(dir.SegmentPaths().size() == 2);
  const auto r = RunCommand(Cli(dir, "gc --yes"));
  CHECK(r.exit_code == 0);
  CHECK(absl::EndsWith(r.output, "retired 1 segment(s)\n"));
  const auto left = dir.SegmentPaths();
  REQUIRE(left.size() == 1);
  CHECK(absl::StrContains(left[0], absl::StrCat(".", alive, ".")));
  // The dead writer's 41 stay in the total.
  CHECK(absl::StrContains(RunCommand(Cli(dir, "dump")).output, "requests_total{code=\"200\",service=\"api\"} 82\n"));
  Kill(alive);
}

TEST_CASE("cli top shows series by rate, plain when piped and full-screen in a terminal, and quits on q") {
  TempDir dir;
  const pid_t idle = StartWriter(dir, "idle", false);
  const pid_t busy = StartWriter(dir, "busy", true);
  const auto plain = RunCommand(Cli(dir, "top --interval 0.3 --iterations 2"));
  CHECK(plain.exit_code == 0);
  CHECK(absl::StrContains(plain.output, "      RATE/s          TOTAL  SERIES\n"));
  CHECK(absl::StrContains(plain.output, "         0.0             41  requests_total{code=200,service=idle}"));
  // In the second refresh the busy counter has a rate and sorts first.
  const std::string second = plain.output.substr(plain.output.rfind("RATE/s"));
  const std::string first_row = second.substr(second.find('\n') + 1);
  CHECK(absl::StrContains(first_row.substr(0, first_row.find('\n')), "busy_total{service=busy}"));
  CHECK_FALSE(absl::StartsWith(first_row, "         0.0 "));
  // In a pseudo-terminal: alternate screen, in-place refresh, q quits.
  const auto tty = RunCommand("(sleep 2; printf q) | timeout 20 script -qfec " +
                              testing::ShellQuote(Cli(dir, "top --interval 0.2")) + " /dev/null");
  CHECK(tty.exit_code == 0);
  CHECK(absl::StartsWith(tty.output, "\x1b[?1049h\x1b[H\x1b[2Jshmetrics top: "));
  CHECK(absl::StrContains(tty.output, "(q quits)"));
  CHECK(absl::StrContains(tty.output, "\x1b[?1049l"));
  Kill(idle);
  Kill(busy);
}

TEST_CASE("cli dump --json, tail --json and --pid select and print one process's values and records") {
  TempDir dir;
  const pid_t a = StartWriter(dir, "api", false);
  const pid_t b = StartWriter(dir, "api", false);
  // A third process records two requests (one an error) and exits.
  const pid_t recorder = testing::Fork();
  if (recorder == 0) {
    auto writer = Writer::Create(testing::WriterIn(dir, "web")).value();
    writer->requests().record({.method = "GET", .endpoint = "/a\"b", .status = 200, .duration_ns = 1500000,
                               .response_bytes = 10, .error = false, .error_message = "",
                               .timestamp_unix_ns = 1700000000000000000});
    writer->requests().record({.method = "PUT", .endpoint = "/x", .status = 503, .duration_ns = 2000000,
                               .response_bytes = 0, .error = true, .error_message = "down",
                               .timestamp_unix_ns = 1700000001000000000});
    _exit(0);
  }
  testing::WaitChild(recorder);

  auto ls = RunCommand(Cli(dir, absl::StrCat("ls --json --pid ", a)));
  CHECK(ls.exit_code == 0);
  CHECK(absl::StrContains(ls.output, absl::StrCat("\"pid\":", a, ",")));
  CHECK(!absl::StrContains(ls.output, absl::StrCat("\"pid\":", b, ",")));
  CHECK(!absl::StrContains(ls.output, "\"web\""));

  auto dump = RunCommand(Cli(dir, absl::StrCat("dump --json --pid ", a)));
  CHECK(dump.exit_code == 0);
  CHECK(absl::StartsWith(dump.output, "{\"series\":[\n"));
  for (const char* line :
       {"{\"service\":\"api\",\"family\":\"requests_total\",\"type\":\"counter\",\"labels\":{\"code\":\"200\"},\"value\":41}",
        "{\"service\":\"api\",\"family\":\"workers\",\"type\":\"gauge\",\"labels\":{},\"value\":4}",
        "{\"service\":\"api\",\"family\":\"latency_seconds\",\"type\":\"histogram\",\"labels\":{},"
        "\"bounds\":[0.1,1],\"buckets\":[1,1,1],\"count\":3,\"sum\":5.55}"}) {
    CHECK_MESSAGE(absl::StrContains(dump.output, line), dump.output);
  }
  // Both writers of "api" aggregated: 82, not one process's 41.
  auto all = RunCommand(Cli(dir, "dump --json --service api"));
  CHECK(absl::StrContains(all.output, "\"labels\":{\"code\":\"200\"},\"value\":82}"));
  CHECK(RunCommand(Cli(dir, "dump --pid 999999999 2>&1")).exit_code != 0);

  auto tail = RunCommand(Cli(dir, "tail --json --service web"));
  CHECK(tail.exit_code == 0);
  CHECK_MESSAGE(absl::StrContains(tail.output,
                                  absl::StrCat("{\"time\":\"2023-11-14T22:13:20.000000Z\",\"timestamp_unix_ns\":"
                                               "1700000000000000000,\"service\":\"web\",\"pid\":", recorder,
                                               ",\"lane\":0,\"method\":\"GET\",\"endpoint\":\"/a\\\"b\",\"status\":200,"
                                               "\"duration_seconds\":0.0015,\"response_bytes\":10,\"error\":false}\n")),
                tail.output);
  CHECK(absl::StrContains(tail.output, "\"status\":503,\"duration_seconds\":0.002,\"response_bytes\":0,"
                                       "\"error\":true,\"error_message\":\"down\"}\n"));
  CHECK(std::count(tail.output.begin(), tail.output.end(), '\n') == 2);
  CHECK(RunCommand(Cli(dir, absl::StrCat("tail --json --pid ", a))).output.empty());
  CHECK(RunCommand(Cli(dir, absl::StrCat("tail --json --pid ", recorder))).output == tail.output);
  Kill(a);
  Kill(b);
}

TEST_CASE("cli bad flags and missing directories get their exit codes") {
  TempDir dir;
  CHECK(RunCommand(absl::StrCat(SHMETRICS_CLI_BIN, " 2>/dev/null")).exit_code == 2);
  CHECK(RunCommand(Cli(dir, "ls --bogus 2>/dev/null")).exit_code == 2);
  CHECK(RunCommand(Cli(dir, "top --interval 0 2>/dev/null")).exit_code == 2);
  const auto missing = RunCommand(absl::StrCat(SHMETRICS_CLI_BIN, " --dir ", dir.path(), "/none ls 2>&1"));
  CHECK(missing.exit_code == 3);
  CHECK(missing.output == "shmetrics: cannot list " + dir.path() + "/none: No such file or directory\n");
  CHECK(RunCommand(Cli(dir, "ls")).output ==
        "SERVICE                   PID STATE         AGE      SIZE    FAMILIES        SERIES   LANES OVERFLOW\n");
}

}  // namespace
}  // namespace shmetrics
