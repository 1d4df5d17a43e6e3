// When the exporter rescans its directory, and how long a request waits
// for it.
//
// One thread scans: the scanner (Run), every `period` and whenever a
// request asks. Handler threads never scan, so a scan stuck in the kernel
// (a hung file system) holds no request for longer than `scan_wait`, and
// shutdown never has to join a handler stuck in one.
//
// A request calls Freshen(): it wants the view of a scan that began no
// earlier than `min_interval` before the request arrived, so a scrape sees
// every writer that was ready when it came. It asks the scanner for a scan
// and waits for one to complete, with three bounds:
//  - a running scan is waited for only until it has run `scan_wait`: then
//    the last view is served (counted: StaleViews::scan_wait);
//  - at most kMaxWaiters handler threads wait at once, and requests other
//    than scrapes take at most kMaxWaiters - 1 of those places, so JSON
//    clients cannot crowd out Prometheus; a request beyond is served the
//    last view at once (counted: StaleViews::busy);
//  - Wait::kNever (health, for liveness probes) never waits.
//
//   ScanScheduler scheduler(collector, {.min_interval = 100ms, .scan_wait = 1s});
//   scheduler.ScanOnce();                               // before serving
//   std::thread scanner([&] { scheduler.Run(); });
//   scheduler.Freshen(ScanScheduler::Wait::kScrape);   // on a handler thread
//   scheduler.Stop();  scanner.join();                  // unless a scan is stuck
//
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

#include "shmetrics/collector.h"

namespace shmetrics::exporter {

class ScanScheduler {
 public:
  using Clock = std::chrono::steady_clock;
  struct Options {
    std::chrono::milliseconds min_interval{100};  // no scan begins sooner than this after the last began
    std::chrono::milliseconds scan_wait{1000};    // 0: requests never wait
    std::chrono::milliseconds period{200};        // the scanner's own pace
  };
  enum class Wait { kScrape, kView, kNever };
  // Handler threads that may wait at once (the server has kHandlerThreads).
  static constexpr int kMaxWaiters = 2;

  struct StaleViews {
    uint64_t busy = 0;       // kMaxWaiters were waiting already
    uint64_t scan_wait = 0;  // the scan ran past scan_wait
  };

  // `collector` must outlive the scheduler; `after_scan`, when given, runs
  // on the scanner thread after each scan (malloc_trim, say).
  ScanScheduler(reader::Collector* collector, Options options, std::function<void()> after_scan = nullptr);

  // One scan on the calling thread (at start, before Run and the server).
  void ScanOnce();
  // The scanner's loop; returns after Stop(), once no scan runs.
  void Run();
  // Waits, as described above, for a view fresh enough for a request that
  // arrives now.
  void Freshen(Wait wait);
  // Run() ends after the scan in progress; no scan starts and no request
  // waits any more.
  void Stop();

  bool scanning() const;
  int waiting() const;  // handler threads waiting in Freshen
  StaleViews stale_views() const;

 private:
  // Runs one scan; mu_ is held on entry and exit but not during the scan.
  void ScanLocked(std::unique_lock<std::mutex>& lock);
  void AskLocked();

  reader::Collector* const collector_;
  const Options options_;
  const std::function<void()> after_scan_;

  // std::mutex, not absl::Mutex: Debian's Abseil carries no TSan annotations.
  mutable std::mutex mu_;
  std::condition_variable scanner_wake_;  // a request asked, or Stop()
  std::condition_variable scan_event_;    // a scan began or ended, or Stop()
  // All guarded by mu_:
  bool stopped_ = false;
  bool scan_asked_ = false;
  bool scanning_ = false;
  uint64_t scan_events_ = 0;                 // scans begun plus scans ended
  Clock::time_point last_begun_;             // when the last scan began
  Clock::time_point last_completed_begun_;   // when the last completed scan began
  int waiting_ = 0;
  int waiting_for_views_ = 0;                // of those, Wait::kView
  StaleViews stale_;
};

}  // namespace shmetrics::exporter
