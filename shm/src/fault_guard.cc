#include "shmetrics/shm/fault_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace shmetrics::shm {
namespace {

struct GuardSlot {
  // start == 0: free. GuardRange stores size, then start (release);
  // the handler loads start (acquire), then size.
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> size{0};
  std::atomic<bool> faulted{false};
  std::atomic<bool> taken{false};  // claimed by GuardRange (CAS), released by UnguardRange
};

GuardSlot g_slots[kMaxGuardedRanges];
std::atomic<size_t> g_slots_high_water{0};  // the handler scans below this
std::atomic<uint64_t> g_fault_count{0};
uintptr_t g_page_size = 4096;  // set before the handler is installed
struct sigaction g_previous {};
std::once_flag g_install_once;

void PassOn(int signal_number, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(signal_number, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(signal_number);
    return;
  }
  // Default action: restore it and return. A fault re-executes the load
  // and dies of SIGBUS as it would have without us; a sent signal is
  // raised again.
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  sigaction(SIGBUS, &fallback, nullptr);
  if (info == nullptr || info->si_code <= 0) raise(SIGBUS);
}

void OnSigbus(int signal_number, siginfo_t* info, void* context) {
  if (info != nullptr && info->si_code > 0) {  // a fault, not a kill()
    const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
    const size_t high_water = g_slots_high_water.load(std::memory_order_acquire);
    for (size_t i = 0; i < high_water; ++i) {
      const uintptr_t start = g_slots[i].start.load(std::memory_order_acquire);
      if (start == 0 || address < start) continue;
      const uintptr_t end = start + g_slots[i].size.load(std::memory_order_relaxed);
      if (address >= end) continue;
      const uintptr_t page = address & ~(g_page_size - 1);
      // Zero pages from the faulting page to the end of the range: the
      // load completes, and no later read of this range can fault.
      void* replaced = mmap(reinterpret_cast<void*>(page), end - page, PROT_READ,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (replaced == MAP_FAILED) break;
      g_slots[i].faulted.store(true, std::memory_order_release);
      g_fault_count.fetch_add(1, std::memory_order_release);
      return;
    }
  }
  PassOn(signal_number, info, context);
}

void InstallHandler() {
  g_page_size = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  struct sigaction action {};
  action.sa_sigaction = &OnSigbus;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &g_previous);
}

}  // namespace

int GuardRange(const void* base, size_t size_bytes) {
  std::call_once(g_install_once, InstallHandler);
  for (size_t i = 0; i < kMaxGuardedRanges; ++i) {
    bool expected = false;
    if (!g_slots[i].taken.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
    g_slots[i].faulted.store(false, std::memory_order_relaxed);
    g_slots[i].size.store(size_bytes, std::memory_order_relaxed);
    // release: size above is visible to a handler that sees this start.
    g_slots[i].start.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    size_t high_water = g_slots_high_water.load(std::memory_order_relaxed);
    while (high_water < i + 1 &&
           !g_slots_high_water.compare_exchange_weak(high_water, i + 1, std::memory_order_release)) {
    }
    return static_cast<int>(i);
  }
  return -1;
}

void UnguardRange(int slot) {
  if (slot < 0) return;
  g_slots[slot].start.store(0, std::memory_order_release);
  g_slots[slot].taken.store(false, std::memory_order_release);
}

bool RangeFaulted(int slot) {
  return slot >= 0 && g_slots[slot].faulted.load(std::memory_order_acquire);
}

uint64_t GuardedFaultCount() { return g_fault_count.load(std::memory_order_acquire); }

}  // namespace shmetrics::shm
