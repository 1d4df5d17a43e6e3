// shmetrics-fleet-writer DIR VALUE: a service "fleet" that adds VALUE to
// fleet_jobs_total, prints "ready" and stays alive until SIGTERM/SIGINT (the
// fleet test's writer; its value is known exactly).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "shmetrics/writer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR VALUE\n", argv[0]);
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  shmetrics::WriterOptions options;
  options.service = "fleet";
  options.directory = argv[1];
  auto writer = shmetrics::Writer::Create(options);
  if (!writer.ok()) {
    std::fprintf(stderr, "fleet writer: %s\n", writer.status().ToString().c_str());
    return 1;
  }
  auto jobs = (*writer)->AddCounter("fleet_jobs_total", "Jobs done (fleet test).");
  if (!jobs.ok()) return 1;
  auto counter = jobs->WithLabels({});
  if (!counter.ok()) return 1;
  counter->inc(std::strtoull(argv[2], nullptr, 10));
  std::printf("ready\n");
  std::fflush(stdout);
  int signal = 0;
  sigwait(&signals, &signal);
  return 0;
}
