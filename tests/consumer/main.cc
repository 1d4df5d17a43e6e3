// A service that uses shmetrics as a package would: writes
// consumer_jobs_total = 42 for service "consumer" into the directory argv[1],
// then exits. The writer's destructor closes the segment, which stays in the
// directory (values final) until an exporter folds it into its archive.
#include <cstdio>

#include "shmetrics/writer.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  shmetrics::WriterOptions options;
  options.service = "consumer";
  options.directory = argv[1];
  auto writer = shmetrics::Writer::Create(options);
  if (!writer.ok()) {
    std::fprintf(stderr, "consumer: %s\n", writer.status().ToString().c_str());
    return 1;
  }
  auto jobs = (*writer)->AddCounter("consumer_jobs_total", "Jobs done by the consumer test.");
  if (!jobs.ok()) {
    std::fprintf(stderr, "consumer: %s\n", jobs.status().ToString().c_str());
    return 1;
  }
  auto counter = jobs->WithLabels({});
  if (!counter.ok()) {
    std::fprintf(stderr, "consumer: %s\n", counter.status().ToString().c_str());
    return 1;
  }
  counter->inc(42);
  std::printf("consumer: segment %s\n", (*writer)->path().c_str());
  return 0;
}
