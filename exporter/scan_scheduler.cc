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
  if (absl::Status s = collector_->Scan(); !s.ok()) Log(LogLevel::kError, "scan failed", {{"err", s.message()}});
  if (after_scan_) after_scan_();
  lock.lock();
  scanning_ = false;
  ++scan_events_;
  last_completed_begun_ = begun;
  scan_event_.notify_all();
}

void ScanScheduler::ScanOnce() {
  std::unique_lock lock(mu_);
  if (!stopped_ && !scanning_) ScanLocked(lock);
}

void ScanScheduler::Run() {
  const auto own_pace = std::max(options_.period, options_.min_interval);
  std::unique_lock lock(mu_);
  while (!stopped_) {
    scanner_wake_.wait_until(lock, last_begun_ + own_pace, [&] { return stopped_ || scan_asked_; });
    if (stopped_) break;
    const Clock::time_point earliest = last_begun_ + (scan_asked_ ? options_.min_interval : own_pace);
    if (Clock::now() < earliest) {
      // Asked too soon after the last scan began (or woken early): not
      // before min_interval. Requests ask only once it has passed, so this
      // is rare.
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
  const Clock::time_point arrival = Clock::now();
  const Clock::time_point needed = arrival - options_.min_interval;  // a scan begun since will do
  std::unique_lock lock(mu_);
  if (stopped_ || last_completed_begun_ >= needed) return;
  // The scan running may do, if it began late enough; else the next one,
  // which the scanner starts as soon as the running one ends.
  if (!(scanning_ && last_begun_ >= needed)) AskLocked();
  if (wait == Wait::kNever || options_.scan_wait.count() == 0) return;
  if (waiting_ >= kMaxWaiters || (wait == Wait::kView && waiting_for_views_ >= kMaxWaiters - 1)) {
    ++stale_.busy;
    return;
  }
  ++waiting_;
  if (wait == Wait::kView) ++waiting_for_views_;
  while (last_completed_begun_ < needed && !stopped_) {
    // Each scan gets its own deadline: scan_wait after it began. None runs
    // (one just ended): the scanner begins the next at once.
    const Clock::time_point deadline = (scanning_ ? last_begun_ : Clock::now()) + options_.scan_wait;
    const uint64_t events = scan_events_;
    if (!scan_event_.wait_until(lock, deadline, [&] { return scan_events_ != events || stopped_; })) {
      ++stale_.scan_wait;  // slow, or stuck on a hung file system: the last view
      break;
    }
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

bool ScanScheduler::scanning() const {
  std::lock_guard lock(mu_);
  return scanning_;
}

int ScanScheduler::waiting() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

ScanScheduler::StaleViews ScanScheduler::stale_views() const {
  std::lock_guard lock(mu_);
  return stale_;
}

}  // namespace shmetrics::exporter
