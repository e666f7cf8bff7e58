// A scoped cache of large CPU blocks for memory-saving reversible steps.
//
// glibc's malloc serves blocks above its adaptive mmap threshold (at most
// 32 MiB) from its heap once a block of that size has been freed. A deep
// reversible stack frees and re-allocates one step's intermediates at every
// layer, and what glibc keeps of them stays resident, fragmented between
// live blocks: the resident peak grows with depth although the live memory
// is flat. Blocks above the threshold are mmapped afresh each time and
// their pages faulted in at every layer.
//
// While a scope is entered (enter() ... exit()), the process's CPU
// allocator (c10::GetCPUAllocator) is this cache, provided it was PyTorch's
// default one (a user's own allocator is left alone). Requests of at least
// kMinBlockBytes get a block of their size class (pages, then 8 classes per
// power of two) from the cache or from mmap; smaller ones go to the
// replaced allocator unchanged. A block freed while a scope is active
// waits in the cache for the next request of its class (the next layer's
// same-shaped intermediate: no fault, no fragmentation); one freed outside
// any scope is unmapped at once. A pass (a training step's backward pass
// through a chain of steps) ends with end_pass(): the blocks
// that waited through the whole pass without being reused are unmapped, so
// a steady training loop keeps exactly the blocks its steps reuse and
// faults nothing in again, while blocks of sizes no longer requested go
// back. release() unmaps every waiting block.
// Data is never touched: a block is reused as malloc would reuse it.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace gnf {
namespace block_cache {

constexpr std::size_t kMinBlockBytes = std::size_t(1) << 20;

// The size class of an n-byte request (n >= kMinBlockBytes): n rounded up
// to whole pages, then to 1/8 of its highest power of two.
std::size_t size_class(std::size_t n);

// Enters a scope (nested scopes count); the first installs the cache as
// the CPU allocator if PyTorch's default allocator is installed. Freed
// blocks wait for reuse up to keep_bytes in all (negative: no limit); one
// that would exceed it is unmapped at once. Returns whether the cache is
// the CPU allocator now.
bool enter(std::int64_t keep_bytes);
// Leaves a scope; the last restores the replaced allocator.
void exit();
// Unmaps every waiting block; returns the bytes handed back.
std::int64_t release();
// Ends a pass: unmaps the blocks not reused since the previous pass ended;
// returns the bytes handed back.
std::int64_t end_pass();
// Counters: waiting_bytes, live_bytes, peak_waiting_bytes, mapped (mmap
// calls), reused (requests served from the cache), released_bytes,
// passes (ended), depth.
std::map<std::string, std::int64_t> stats();

}  // namespace block_cache
}  // namespace gnf
