// Buffers on 64-byte boundaries: a cache line, and one 512-bit vector. The kernels' panels are
// read in whole vectors; from malloc's 16-byte alignment most of those loads straddled two
// lines, and which ones depended on where the heap put the buffer, so the same step measured
// about 0.8 s or 1.0 s from one process to the next (ResNet-20, b = 128, with address-space
// randomisation on).
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace exactforge {

template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const { return true; }
  template <class U>
  bool operator!=(const Aligned64<U>&) const { return false; }
};

/// A vector whose data lies on a 64-byte boundary.
template <class T>
using avector = std::vector<T, Aligned64<T>>;

/// Aligned64 whose vectors leave their elements uninitialised when sized without a value: for
/// buffers every element of which is written before it is read (a padded copy of an operand,
/// which would otherwise be written twice).
template <class T>
struct Aligned64Uninit : Aligned64<T> {
  template <class U>
  struct rebind { using other = Aligned64Uninit<U>; };
  Aligned64Uninit() = default;
  template <class U>
  Aligned64Uninit(const Aligned64Uninit<U>&) {}
  template <class U>
  void construct(U* p) noexcept { ::new (static_cast<void*>(p)) U; }
  template <class U, class... A>
  void construct(U* p, A&&... a) { ::new (static_cast<void*>(p)) U(static_cast<A&&>(a)...); }
};
template <class T>
using uvector = std::vector<T, Aligned64Uninit<T>>;

}  // namespace exactforge
