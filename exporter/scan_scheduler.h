// When the exporter rescans its directory, and how long a request waits
// for it.
//
// One thread scans: the scanner (Run), at once when it starts, then
// `period` after each scan ends, and whenever a request asks (no sooner
// than `min_interval` after the last scan began). Handler threads never
// scan, so a scan stuck in the kernel (a hung file system) holds no request
// for longer than `scan_wait`, and neither start-up nor shutdown waits for
// it.
//
// A request calls Freshen(): it wants the view of a scan that began after
// it arrived, so a scrape sees every writer that was ready when it came.
// It asks the scanner for a scan and waits for one to complete, with three
// bounds:
//  - a scan is waited for only until it has run `scan_wait`, and one that
//    has not begun, only `scan_wait` for it to begin: then the last view is
//    served (counted: StaleViews::scan_wait; so is every request when
//    `scan_wait` is 0);
//  - at most kMaxWaiters requests wait at once, and JSON views (Wait::kView)
//    take at most kMaxWaiters - 1 of those places, so they cannot crowd out
//    scrapes (other scrapes can); a request beyond is served the last view
//    at once (counted: StaleViews::busy). A waiter whose client has gone
//    keeps its place until its wait ends;
//  - Wait::kNever (health, for liveness probes) asks but never waits.
// A request that waited for a scan that failed gets the last good view
// (counted: StaleViews::scan_failed).
//
//   ScanScheduler scheduler(collector, {.min_interval = 100ms, .scan_wait = 1s});
//   std::thread scanner([&] { scheduler.Run(); });
//   scheduler.Freshen(ScanScheduler::Wait::kScrape);   // on a handler thread
//   if (!scheduler.ready()) -> 503: no scan has completed yet
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
    std::chrono::milliseconds period{200};        // the scanner's own pace: rest after a scan
  };
  enum class Wait { kScrape, kView, kNever };
  // Handler threads that may wait at once (the server has kHandlerThreads).
  static constexpr int kMaxWaiters = 2;

  struct StaleViews {
    uint64_t busy = 0;         // no place left to wait in
    uint64_t scan_wait = 0;    // the scan ran past scan_wait
    uint64_t scan_failed = 0;  // the scan waited for failed
  };

  // `collector` must outlive the scheduler; `after_scan`, when given, runs
  // on the scanner thread after each scan (malloc_trim, say).
  ScanScheduler(reader::Collector* collector, Options options, std::function<void()> after_scan = nullptr);

  // The scanner's loop; returns after Stop(), once no scan runs.
  void Run();
  // Waits, as described above, for a view fresh enough for a request that
  // arrives now.
  void Freshen(Wait wait);
  // Run() ends after the scan in progress; no scan starts and no request
  // waits any more.
  void Stop();

  bool ready() const;  // a scan has completed
  // All of it at one instant (for the self-metrics and health).
  struct Report {
    bool ready = false;
    bool last_scan_failed = false;
    int waiting = 0;  // requests waiting in Freshen
    StaleViews stale;
  };
  Report report() const;

 private:
  // Runs one scan; mu_ is held on entry and exit but not during the scan.
  void ScanLocked(std::unique_lock<std::mutex>& lock);
  void AskLocked();
  // Whether a scan that began at or after `t` has completed; mu_ held.
  bool CompletedSinceLocked(Clock::time_point t) const { return scans_completed_ > 0 && last_completed_begun_ >= t; }

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
  uint64_t scans_completed_ = 0;
  Clock::time_point last_begun_;             // when the last scan began
  Clock::time_point last_completed_begun_;   // when the last completed scan began
  Clock::time_point last_ended_;             // when the last completed scan ended
  bool last_scan_ok_ = false;                // the last completed scan's Status
  int waiting_ = 0;
  int waiting_for_views_ = 0;                // of those, Wait::kView
  StaleViews stale_;
};

}  // namespace shmetrics::exporter
