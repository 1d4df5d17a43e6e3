#include "realtime_clock.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace shmetrics::internal {

constinit thread_local ClockAnchor t_clock_anchor = {0, 0, 0, 0};

namespace {

__extension__ using Uint128 = unsigned __int128;  // for (ns << 32) / ticks

constexpr uint64_t kWindowNs = 1'000'000;        // extrapolate for 1 ms after an anchor
constexpr uint64_t kMinRateSpanNs = 500'000;     // measure a rate over at least 0.5 ms ...
constexpr uint64_t kMaxRateSpanNs = 10'000'000'000;  // ... and at most 10 s
constexpr uint64_t kMaxPairTicks = 2'000;        // a pair read slower than this was interrupted: not used

// -1 unknown, 0 no, 1 yes. Benign race: threads that ask at once read the
// same file. Plain open()/read(): fork children may ask too.
std::atomic<int> g_tsc_keeps_kernel_time{-1};

// CPUID 0x80000007 EDX bit 8: the TSC ticks at a constant rate in every
// power state. A VM whose kernel keeps time with another clocksource
// (kvm-clock) usually still has it. Should two CPUs' TSCs disagree, a
// thread that moves between them is off by at most one window (1 ms): a
// reading past the window, or behind the anchor, re-anchors.
bool InvariantTsc() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0x80000000u, &eax, &ebx, &ecx, &edx) == 0 || eax < 0x80000007u) return false;
  if (__get_cpuid(0x80000007u, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (edx & (1u << 8)) != 0;
}

bool TscKeepsKernelTime() {
  int known = g_tsc_keeps_kernel_time.load(std::memory_order_relaxed);
  if (known >= 0) return known == 1;
  char source[32] = {};
  const int fd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    if (read(fd, source, sizeof source - 1) < 0) source[0] = '\0';
    close(fd);
  }
  known = std::strcmp(source, "tsc\n") == 0 || InvariantTsc() ? 1 : 0;
  g_tsc_keeps_kernel_time.store(known, std::memory_order_relaxed);
  return known == 1;
}

}  // namespace

uint64_t RealtimeNowNsSlow() {
  ClockAnchor& anchor = t_clock_anchor;
  if (!TscKeepsKernelTime()) {
    anchor.window_ticks = 0;
    return VdsoRealtimeNs();
  }
  // The pair: the TSC half-way through the clock read.
  const uint64_t before = __rdtsc();
  const uint64_t ns = VdsoRealtimeNs();
  const uint64_t after = __rdtsc();
  if (after - before > kMaxPairTicks) return ns;  // interrupted: keep the old anchor
  const uint64_t tsc = before + (after - before) / 2;

  const uint64_t span_ns = ns - anchor.ns, span_ticks = tsc - anchor.tsc;
  if (anchor.tsc == 0 || ns < anchor.ns || tsc <= anchor.tsc || span_ns > kMaxRateSpanNs) {
    anchor = {tsc, ns, 0, 0};  // first reading, or too long ago (or a clock went back): start over
    return ns;
  }
  if (span_ns < kMinRateSpanNs) return ns;  // too close to measure a rate: keep the base
  uint64_t rate = static_cast<uint64_t>((static_cast<Uint128>(span_ns) << 32) / span_ticks);
  // A rate far from the last one means CLOCK_REALTIME was stepped in
  // between; so does one no TSC has (below 0.1 GHz or above 10 GHz).
  const uint64_t last = anchor.ns_per_tick;
  if (last != 0 && (rate > last + last / 1000 || rate < last - last / 1000)) rate = 0;
  if (rate < (uint64_t{1} << 32) / 10 || rate > (uint64_t{10} << 32)) rate = 0;
  const uint64_t window_ticks = rate == 0 ? 0 : static_cast<uint64_t>((static_cast<Uint128>(kWindowNs) << 32) / rate);
  anchor = {tsc, ns, rate, window_ticks};
  return ns;
}

}  // namespace shmetrics::internal
#endif
