// Fault guard: reads of a read-only file mapping never crash when the file
// shrinks under them.
//
// Anyone who owns a segment file can truncate it while a reader has it
// mapped; the next read of a page past the new end raises SIGBUS, which
// would kill the exporter for every service on the host. Checking the size
// first narrows the window but cannot close it. So each reader mapping is
// registered here, and a SIGBUS handler (installed once, on first use)
// recognises a fault inside a registered range, replaces the rest of that
// range with anonymous zero pages (mmap MAP_FIXED) and marks the range
// faulted. The faulting load then completes, reading zeros; the reader sees
// the mark and reports the segment as broken. This is how Wayland
// compositors protect themselves from clients' shared-memory pools.
//
// A SIGBUS that is not ours (another address, or sent by kill) goes to the
// handler that was installed before ours (or the default action: the
// process dies with SIGBUS as it would have). A host program that installs
// its own SIGBUS handler after ours must chain to the previous one.
//
// Cost: nothing on the read path. Registering is a scan of a fixed table.
//
// Invariant the caller keeps: a range is unregistered (and unmapped) only
// when no thread reads it any more.
//
// Thread safety: thread-safe; the handler is async-signal-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmetrics::shm {

// Ranges that can be guarded at once (one per mapped segment).
inline constexpr size_t kMaxGuardedRanges = 16384;

// Registers [base, base + size_bytes). Returns the slot, or -1 when every
// slot is taken (the caller refuses the mapping).
int GuardRange(const void* base, size_t size_bytes);
// Unregisters a slot returned by GuardRange.
void UnguardRange(int slot);
// True once a read in the slot's range faulted (the file shrank).
bool RangeFaulted(int slot);
// Faults caught so far, process-wide: a reader that compares it before and
// after a pass learns cheaply whether any mapping it read faulted.
uint64_t GuardedFaultCount();

}  // namespace shmetrics::shm
