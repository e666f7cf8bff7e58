// Scoped cache of large CPU blocks; see block_cache.h.

#include "cpu/block_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#ifdef _WIN32  // no mmap: every scope is a no-op (enter() returns false)

namespace gnf {
namespace block_cache {
std::size_t size_class(std::size_t n) { return n; }
bool enter(std::int64_t) { return false; }
void exit() {}
std::int64_t release() { return 0; }
std::int64_t end_pass() { return 0; }
std::map<std::string, std::int64_t> stats() {
  return {{"waiting_bytes", 0}, {"live_bytes", 0}, {"peak_waiting_bytes", 0},
          {"mapped", 0}, {"reused", 0}, {"released_bytes", 0}, {"passes", 0},
          {"depth", 0}};
}
}  // namespace block_cache
}  // namespace gnf

#else

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gnf {
namespace block_cache {
namespace {

std::size_t page_bytes() {
  static const std::size_t page = [] {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? std::size_t(p) : std::size_t(4096);
  }();
  return page;
}

void unmap(void* ptr, std::size_t bytes) { munmap(ptr, bytes); }

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) override {
    if (n < kMinBlockBytes) return replaced()->allocate(n);
    const std::size_t bytes = size_class(n);
    void* ptr = take(bytes);
    if (ptr == nullptr) ptr = map(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(ptr, bytes);
      live_bytes_ += bytes;
    }
    return {ptr, ptr, &BlockCache::free_block,
            c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &BlockCache::free_block;
  }

  void copy_data(void* dest, const void* src,
                 std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  bool enter(std::int64_t keep_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    keep_bytes_ = keep_bytes < 0 ? SIZE_MAX : std::size_t(keep_bytes);
    if (depth_++ == 0) {
      // Replace only PyTorch's own allocator, never a user's.
      c10::Allocator* current = c10::GetCPUAllocator();
      installed_ = current == c10::GetDefaultCPUAllocator();
      if (installed_) {
        replaced_ = current;
        c10::SetCPUAllocator(this, /*priority=*/0);
        installed_ = c10::GetCPUAllocator() == this;
      }
    }
    return installed_;
  }

  void exit() {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(depth_ > 0, "block_cache: exit() without enter()");
    if (--depth_ == 0 && installed_) {
      if (c10::GetCPUAllocator() == this)
        c10::SetCPUAllocator(replaced_, /*priority=*/0);
      installed_ = false;
    }
  }

  // Unmaps the waiting blocks (with stale_only, those freed before the
  // current pass began and not reused since; then a new pass begins).
  std::int64_t release(bool stale_only) {
    std::vector<Block> unmapped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        std::vector<Block>& blocks = it->second;
        auto keep = std::stable_partition(
            blocks.begin(), blocks.end(),
            [&](const Block& b) { return stale_only && b.pass == pass_; });
        unmapped.insert(unmapped.end(), keep, blocks.end());
        blocks.erase(keep, blocks.end());
        it = blocks.empty() ? waiting_.erase(it) : std::next(it);
      }
      for (const Block& b : unmapped) waiting_bytes_ -= b.bytes;
      if (stale_only) ++pass_;
    }
    std::int64_t total = 0;
    for (const Block& b : unmapped) {
      unmap(b.ptr, b.bytes);
      total += std::int64_t(b.bytes);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    released_bytes_ += std::size_t(total);
    return total;
  }

  std::map<std::string, std::int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {{"waiting_bytes", std::int64_t(waiting_bytes_)},
            {"live_bytes", std::int64_t(live_bytes_)},
            {"peak_waiting_bytes", std::int64_t(peak_waiting_bytes_)},
            {"mapped", std::int64_t(mapped_)},
            {"reused", std::int64_t(reused_)},
            {"released_bytes", std::int64_t(released_bytes_)},
            {"passes", std::int64_t(pass_)},
            {"depth", std::int64_t(depth_)}};
  }

  static BlockCache& get() {
    // Never destroyed: tensors may be freed during interpreter shutdown.
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

 private:
  c10::Allocator* replaced() {
    std::lock_guard<std::mutex> lock(mutex_);
    // A storage keeps its allocator; one resized after every scope ended
    // still asks this cache, which then serves small requests as before.
    return replaced_ != nullptr ? replaced_ : c10::GetDefaultCPUAllocator();
  }

  void* take(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = waiting_.find(bytes);
    if (it == waiting_.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back().ptr;  // the most recently freed
    it->second.pop_back();
    if (it->second.empty()) waiting_.erase(it);
    waiting_bytes_ -= bytes;
    ++reused_;
    return ptr;
  }

  void* map(std::size_t bytes) {
    void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {  // hand back what waits, then try once more
      release(/*stale_only=*/false);
      ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, ptr != MAP_FAILED,
                     "block_cache: out of memory allocating ", bytes,
                     " bytes on CPU");
    std::lock_guard<std::mutex> lock(mutex_);
    ++mapped_;
    return ptr;
  }

  static void free_block(void* ptr) {
    BlockCache& cache = get();
    std::size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(cache.mutex_);
      auto it = cache.live_.find(ptr);
      if (it == cache.live_.end()) return;  // not ours: cannot happen
      bytes = it->second;
      cache.live_.erase(it);
      cache.live_bytes_ -= bytes;
      // Waits for the next request of its class, also when freed between
      // scopes (a step's output, freed after the next step ran): the next
      // layer reuses it. The end of a pass unmaps what was not reused.
      if (cache.waiting_bytes_ + bytes <= cache.keep_bytes_) {
        cache.waiting_[bytes].push_back({ptr, bytes, cache.pass_});
        cache.waiting_bytes_ += bytes;
        cache.peak_waiting_bytes_ =
            std::max(cache.peak_waiting_bytes_, cache.waiting_bytes_);
        return;
      }
      cache.released_bytes_ += bytes;
    }
    unmap(ptr, bytes);  // over the budget: back to the system at once
  }

  struct Block {
    void* ptr;
    std::size_t bytes;
    std::uint64_t pass;  // the pass in which it was freed
  };

  std::mutex mutex_;
  std::unordered_map<void*, std::size_t> live_;
  std::map<std::size_t, std::vector<Block>> waiting_;
  std::uint64_t pass_ = 0;
  std::size_t keep_bytes_ = SIZE_MAX;  // most bytes that wait for reuse
  std::size_t live_bytes_ = 0, waiting_bytes_ = 0, peak_waiting_bytes_ = 0;
  std::size_t mapped_ = 0, reused_ = 0, released_bytes_ = 0;
  int depth_ = 0;
  bool installed_ = false;
  c10::Allocator* replaced_ = nullptr;
};

}  // namespace

std::size_t size_class(std::size_t n) {
  const std::size_t page = page_bytes();
  n = std::max<std::size_t>(n, 1);
  n = (n + page - 1) / page * page;
  const std::size_t top = std::size_t(1) << (63 - __builtin_clzll(n));
  const std::size_t step = std::max(top / 8, page);
  return (n + step - 1) / step * step;
}

bool enter(std::int64_t keep_bytes) {
  return BlockCache::get().enter(keep_bytes);
}
void exit() { BlockCache::get().exit(); }
std::int64_t release() { return BlockCache::get().release(false); }
std::int64_t end_pass() { return BlockCache::get().release(true); }
std::map<std::string, std::int64_t> stats() {
  return BlockCache::get().stats();
}

}  // namespace block_cache
}  // namespace gnf

#endif  // _WIN32
