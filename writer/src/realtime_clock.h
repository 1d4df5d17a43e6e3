// The writer's clocks for the timestamps it takes itself, in nanoseconds
// since the epoch. Request records: CoarseRealtimeNs() below by default
// (WriterOptions::Clock::kCoarse), RealtimeNowNs() with Clock::kPrecise.
// Exemplars: always RealtimeNowNs(): CLOCK_REALTIME at nanosecond
// resolution, for about the cost of one unordered rdtsc (~10 ns on the
// 2-core EPYC VM, ~17 ns on the 16-vCPU Xeon) instead of the vDSO's 22-28 ns
// (an ordered rdtsc plus its conversion).
//
// Each thread keeps an anchor: a (TSC, CLOCK_REALTIME) pair read together,
// and the rate of the TSC against CLOCK_REALTIME that it measured between
// its last two anchors. For 1 ms after an anchor, a reading is the anchor's
// time plus the ticks since, converted at that rate; then the thread reads
// CLOCK_REALTIME again (the slow path, ~45 ns) and re-anchors. Errors do
// not accumulate: each window starts from a fresh CLOCK_REALTIME reading.
// Within a window the error is the rate's: typically a few parts in 10^5
// of at most 1 ms, tens of nanoseconds; at worst, when both pairs that
// measured the rate took kMaxPairTicks to read, about 0.2% of the window
// plus half a pair, a few microseconds. A reading may be that much earlier
// than one from the window before, and two threads' readings (each has its
// own anchor) may disagree by as much. A rate that disagrees with the previous one
// by more than 0.1% (CLOCK_REALTIME was stepped meanwhile) is thrown away
// and measured again.
//
// The TSC is used where the kernel itself keeps time with it
// (/sys/devices/system/clocksource/clocksource0/current_clocksource is
// "tsc") or where the CPU says its TSC is invariant (CPUID 0x80000007
// EDX[8]; VMs that keep kernel time with kvm-clock): with TSCs that
// disagree across CPUs, a reading is off by at most the 1 ms window.
// Elsewhere, and on other architectures, every reading is
// clock_gettime(CLOCK_REALTIME).
//
// Thread safety: each thread uses its own anchor; thread-safe.
#pragma once

#include <time.h>

#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace shmetrics::internal {

// CLOCK_REALTIME through the vDSO (no system call).
inline uint64_t VdsoRealtimeNs() {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return uint64_t(now.tv_sec) * 1000000000u + uint64_t(now.tv_nsec);
}

// CLOCK_REALTIME_COARSE through the vDSO: the wall-clock time of the
// kernel's last tick, so its resolution is the tick (clock_getres: 1 ms at
// HZ=1000, 4 ms at HZ=250) and it never runs ahead of CLOCK_REALTIME. It
// reads a few words of the vDSO data page and no TSC: ~5 ns on both the
// 2-core EPYC and the 16-vCPU Xeon, where an rdtsc alone costs 10 and 17 ns.
inline uint64_t CoarseRealtimeNs() {
  timespec now;
  clock_gettime(CLOCK_REALTIME_COARSE, &now);
  return uint64_t(now.tv_sec) * 1000000000u + uint64_t(now.tv_nsec);
}

#if defined(__x86_64__)
struct ClockAnchor {
  uint64_t tsc;           // read with `ns`
  uint64_t ns;            // CLOCK_REALTIME
  uint64_t ns_per_tick;   // 32.32 fixed point; 0 while unmeasured
  uint64_t window_ticks;  // extrapolate while ticks since `tsc` < this; 0: never
};
// Trivial and constant-initialized: a plain %fs-relative access, no TLS guard.
extern constinit thread_local ClockAnchor t_clock_anchor;

// Re-anchors this thread (or reads the vDSO clock where the TSC is not
// usable) and returns CLOCK_REALTIME.
uint64_t RealtimeNowNsSlow();

inline uint64_t RealtimeNowNs() {
  const ClockAnchor& anchor = t_clock_anchor;
  const uint64_t ticks = __rdtsc() - anchor.tsc;  // unordered: a timestamp needs no fence
  // ticks * ns_per_tick < window (about 2^22 ticks at 4 GHz) * 2^32: no overflow.
  if (ticks < anchor.window_ticks) [[likely]] return anchor.ns + ((ticks * anchor.ns_per_tick) >> 32);
  return RealtimeNowNsSlow();
}
#else
inline uint64_t RealtimeNowNs() { return VdsoRealtimeNs(); }
#endif

}  // namespace shmetrics::internal
