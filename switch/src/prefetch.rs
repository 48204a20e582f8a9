//! A hint to the CPU to start loading a cache line the pipeline will read
//! shortly, so that the miss overlaps work that does not depend on it.
//!
//! The only unsafe code of this crate: the x86-64 `PREFETCHT0`
//! intrinsic is an `unsafe fn` because it requires the `sse` target
//! feature. It is sound to call here: SSE is part of the x86-64 baseline
//! (every x86-64 CPU has it), and a prefetch is only a hint: it never
//! faults, writes nothing and changes no state the program can observe.
//! The argument is a reference, so callers can only name memory they may
//! read anyway. On other architectures it does nothing.
#![allow(unsafe_code)]

/// Asks for the cache line holding the start of `r` (into all levels).
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see the module documentation (SSE is baseline on x86-64;
    // the instruction has no architectural effect).
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
