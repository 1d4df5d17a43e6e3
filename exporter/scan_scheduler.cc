#include "scan_scheduler.h"

#include <algorithm>
#include <utility>

#include "log.h"

namespace shmetrics::exporter {

ScanScheduler::ScanScheduler(reader::Collector* collector, Options options, std::function<void()> after_scan)
    : collector_(collector), options_(options), after_scan_(std::move(after_scan)) {}

void ScanScheduler::ScanLocked(std::unique_lock<std::mutex>& lock) {
  const Clock::time_point begun = Clock::now();
  scanning_ = true;
  ++scan_events_;
  last_begun_ = begun;
  scan_event_.notify_all();  // waiters move their deadline to this scan's
  lock.unlock();
  // Collector::Scan builds the next view aside: requests that do not wait
  // for this scan render the last view meanwhile.
  const absl::Status status = collector_->Scan();
  if (!status.ok()) Log(LogLevel::kError, "scan failed", {{"err", status.message()}});
  lock.lock();
  scanning_ = false;
  ++scan_events_;
  last_completed_begun_ = begun;
  last_ended_ = Clock::now();
  last_scan_ok_ = status.ok();
  scans_completed_ += 1;
  scan_event_.notify_all();
  if (after_scan_) {
    lock.unlock();  // the view is out: nobody waits for this
    after_scan_();
    lock.lock();
  }
}

void ScanScheduler::Run() {
  std::unique_lock lock(mu_);
  while (!stopped_) {
    // Its own pace counts from the end of the last scan, so a slow scan
    // leaves the thread at rest in between; asked, it counts from the
    // beginning, by min_interval. The first pass scans at once.
    const Clock::time_point own_next =
        scans_completed_ == 0 ? Clock::time_point{}
                              : std::max(last_ended_ + options_.period, last_begun_ + options_.min_interval);
    scanner_wake_.wait_until(lock, own_next, [&] { return stopped_ || scan_asked_; });
    if (stopped_) break;
    const Clock::time_point earliest =
        scan_asked_ && scans_completed_ > 0 ? last_begun_ + options_.min_interval : own_next;
    if (Clock::now() < earliest) {
      // Asked within min_interval of the last scan's beginning (or woken
      // early): not before it.
      if (scan_asked_) scanner_wake_.wait_until(lock, earliest, [&] { return stopped_; });
      continue;
    }
    scan_asked_ = false;
    ScanLocked(lock);
  }
}

void ScanScheduler::AskLocked() {
  scan_asked_ = true;
  scanner_wake_.notify_one();
}

void ScanScheduler::Freshen(Wait wait) {
  // A scan begun after the arrival sees every writer that was ready then.
  // (min_interval only spaces the scans: a request just after one waits
  // for the next.)
  const Clock::time_point arrival = Clock::now();
  std::unique_lock lock(mu_);
  if (stopped_ || CompletedSinceLocked(arrival)) return;
  // The scan running may do, if it began late enough; else the next one,
  // which the scanner starts as soon as the running one ends.
  if (!(scanning_ && last_begun_ >= arrival)) AskLocked();
  if (wait == Wait::kNever) return;
  // What is served without waiting is the last view, or a 503 before the
  // first scan (not counted: no view is served).
  const bool have_view = scans_completed_ > 0;
  if (options_.scan_wait.count() == 0) {
    stale_.scan_wait += have_view;
    return;
  }
  if (waiting_ >= kMaxWaiters || (wait == Wait::kView && waiting_for_views_ >= kMaxWaiters - 1)) {
    stale_.busy += have_view;
    return;
  }
  ++waiting_;
  if (wait == Wait::kView) ++waiting_for_views_;
  while (!stopped_ && !CompletedSinceLocked(arrival)) {
    // Each scan gets its own deadline: scan_wait after it began. None runs:
    // the scanner begins the next once min_interval has passed since the
    // last began; a request waits scan_wait at most for that too (a long
    // min_interval must not hold scrapes past their timeout).
    Clock::time_point deadline;
    if (scanning_) {
      deadline = last_begun_ + options_.scan_wait;
    } else {
      const Clock::time_point now = Clock::now();
      const Clock::time_point next_begins = std::max(now, last_begun_ + options_.min_interval);
      deadline = next_begins - now > options_.scan_wait ? now : next_begins + options_.scan_wait;
    }
    const uint64_t events = scan_events_;
    if (!scan_event_.wait_until(lock, deadline, [&] { return scan_events_ != events || stopped_; })) {
      stale_.scan_wait += scans_completed_ > 0;  // slow, stuck on a hung file system, or too far off
      break;
    }
  }
  if (!stopped_ && !scanning_ && !last_scan_ok_ && CompletedSinceLocked(arrival)) {
    ++stale_.scan_failed;  // the scan waited for failed: the last good view
  }
  --waiting_;
  if (wait == Wait::kView) --waiting_for_views_;
}

void ScanScheduler::Stop() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  scanner_wake_.notify_all();
  scan_event_.notify_all();
}

bool ScanScheduler::ready() const {
  std::lock_guard lock(mu_);
  return scans_completed_ > 0;
}

ScanScheduler::Report ScanScheduler::report() const {
  std::lock_guard lock(mu_);
  return {.ready = scans_completed_ > 0,
          .last_scan_failed = scans_completed_ > 0 && !last_scan_ok_,
          .waiting = waiting_,
          .stale = stale_};
}

}  // namespace shmetrics::exporter
