//! A small seeded RNG for the answer order (sans-IO: the crate never
//! reads OS randomness; the daemon seeds one per worker).

use rand_core::{impls, Error, RngCore};

/// xorshift64* (Vigna): fast, statistically fine for shuffling answers,
/// not cryptographic (the order of A records is not a secret).
#[derive(Clone, Debug)]
pub struct FastRng(u64);

impl FastRng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> Self {
        // SplitMix64 finaliser so that nearby seeds diverge at once.
        let z = tapnet_switch::fxhash::splitmix64(seed);
        FastRng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }
}

impl RngCore for FastRng {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    #[inline]
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
