//! The forwarding database: MAC → port, per network, shared by all
//! workers without locks.
//!
//! Layout: an open-addressing table of `(key, value)` pairs of `AtomicU64`,
//! grouped in buckets of [`BUCKET`] pairs that fill one 64-byte cache line
//! (the table is cache-line aligned). A key hashes to a bucket and is
//! probed linearly from that bucket's first slot: a lookup of a key that
//! sits in its home bucket (nearly all, below half full) reads one line.
//! `key = 1<<63 | network<<48 | mac` (0 = empty slot), `value = 1<<63 |
//! port<<32 | last_seen_seconds` (0 = slot claimed, value not yet
//! published: read as absent). Port ids are below 2^31. Linear probing over
//! at most [`MAX_PROBE`] slots.
//!
//! Invariants and contract:
//! - Slots are only ever claimed (CAS from empty), never freed in place, so
//!   two workers learning the same new MAC at once end up on the same slot
//!   (the loser of the CAS sees the winner's key and updates it instead).
//! - An entry older than the aging time is treated as absent by lookups and
//!   is reused by the next learning of the same MAC.
//! - Expired entries are removed by [`Fdb::rebuilt_without_expired`], run by
//!   the control plane off the fast path; the new table is swapped in
//!   atomically (entries learned into the old table during the rebuild are
//!   lost and relearned from the next frame: a brief flood, never a wrong
//!   delivery).
//! - Learning writes only when something changed (new MAC, move, or a
//!   timestamp at least one second old), so steady traffic only reads.

use crate::wire::EthernetAddress;
use core::sync::atomic::{AtomicU64, Ordering};

/// Slots probed from a key's home slot before giving up.
pub const MAX_PROBE: usize = 32;

/// Slots per bucket (one cache line).
pub const BUCKET: usize = 4;

const EMPTY: u64 = 0;

struct Slot {
    key: AtomicU64,
    val: AtomicU64,
}

/// [`BUCKET`] slots in one cache line.
#[repr(C, align(64))]
struct Bucket([Slot; BUCKET]);

/// Result of [`Fdb::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Known on this port; nothing (or only the timestamp) changed.
    Known,
    /// A new MAC (or an expired one) now on this port.
    New,
    /// The MAC moved here from `from` (a live entry).
    Moved { from: u32 },
    /// No free slot near the hash.
    Full,
    /// A new entry was needed and the caller's check refused it.
    Refused,
}

/// Lock-free MAC table. See the module documentation for the contract.
pub struct Fdb {
    buckets: Box<[Bucket]>,
    /// Slot index mask (capacity - 1).
    mask: usize,
    /// 64 - log2(number of buckets).
    shift: u32,
}

/// Builds the table key of `mac` on network `net`.
#[inline]
pub fn key(net: u16, mac: EthernetAddress) -> u64 {
    (1 << 63) | (u64::from(net) << 48) | mac.to_u64()
}

const VALID: u64 = 1 << 63;

#[inline]
fn pack(port: u32, seen: u32) -> u64 {
    debug_assert!(port < 1 << 31);
    VALID | (u64::from(port) << 32) | u64::from(seen)
}

/// `(port, seen)` of a published value.
#[inline]
fn unpack(v: u64) -> Option<(u32, u32)> {
    (v & VALID != 0).then_some((((v & !VALID) >> 32) as u32, v as u32))
}

#[inline]
fn expired(seen: u32, now: u32, aging: u32) -> bool {
    now.wrapping_sub(seen) > aging
}

/// A key and the first slot of its home bucket (from [`Fdb::prefetch`] for
/// callers). Valid only for the table that computed it (tables differ in
/// size).
#[derive(Clone, Copy, Debug)]
pub struct Home {
    key: u64,
    slot: usize,
}

/// Where [`Fdb::probe`] ended.
enum Probe<'a> {
    /// The slot holding the key.
    Found(&'a Slot),
    /// Not there; the first empty slot is this many slots from home.
    Vacant(usize),
    /// Not there, no empty slot within [`MAX_PROBE`].
    Full,
}

/// The learning of `port` at `now` into `s`, which holds the key already.
#[inline]
fn refresh(
    s: &Slot,
    port: u32,
    now: u32,
    aging: u32,
    allowed: &mut impl FnMut() -> bool,
) -> Learned {
    let Some((p, seen)) = unpack(s.val.load(Ordering::Acquire)) else {
        // Another worker is publishing this very MAC right now.
        return Learned::Known;
    };
    if p == port && seen == now {
        return Learned::Known;
    }
    let stale = expired(seen, now, aging);
    if (p != port || stale) && !allowed() {
        return Learned::Refused;
    }
    s.val.store(pack(port, now), Ordering::Release);
    if stale {
        Learned::New
    } else if p != port {
        Learned::Moved { from: p }
    } else {
        Learned::Known
    }
}

impl Fdb {
    /// A table of `capacity` slots (rounded up to a power of two, at least
    /// 64). Keep it at least twice the number of MACs expected.
    pub fn new(capacity: usize) -> Fdb {
        let cap = capacity.max(64).next_power_of_two();
        let buckets = cap / BUCKET;
        Fdb {
            buckets: (0..buckets)
                .map(|_| {
                    Bucket(core::array::from_fn(|_| Slot {
                        key: AtomicU64::new(EMPTY),
                        val: AtomicU64::new(0),
                    }))
                })
                .collect(),
            mask: cap - 1,
            shift: 64 - buckets.trailing_zeros(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * BUCKET
    }

    /// `key` with the first slot of its home bucket.
    #[inline]
    fn home(&self, key: u64) -> Home {
        // Fibonacci hashing: the high bits of key * 2^64/phi.
        let bucket = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize;
        Home {
            key,
            slot: bucket * BUCKET,
        }
    }

    /// Slot `i` (taken modulo the capacity).
    #[inline]
    fn slot(&self, i: usize) -> &Slot {
        let i = i & self.mask;
        &self.buckets[i / BUCKET].0[i % BUCKET]
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.buckets.iter().flat_map(|b| b.0.iter())
    }

    /// Looks the key of `at` up from the first slot of its home bucket on.
    #[inline(always)]
    fn probe(&self, at: Home) -> Probe<'_> {
        for i in 0..MAX_PROBE {
            let s = self.slot(at.slot + i);
            match s.key.load(Ordering::Acquire) {
                k if k == at.key => return Probe::Found(s),
                EMPTY => return Probe::Vacant(i),
                _ => {}
            }
        }
        Probe::Full
    }

    /// Starts loading `key`'s home bucket into the cache and returns where
    /// it is, for [`Fdb::lookup_at`]: a lookup issued early, so that a miss
    /// on a large table overlaps the work done before the lookup proper.
    #[inline(always)]
    pub fn prefetch(&self, key: u64) -> Home {
        let at = self.home(key);
        crate::prefetch::prefetch(&self.buckets[at.slot / BUCKET]);
        at
    }

    /// The port of a live entry.
    #[inline]
    pub fn lookup(&self, key: u64, now: u32, aging: u32) -> Option<u32> {
        self.lookup_at(self.home(key), now, aging)
    }

    /// [`Fdb::lookup`] of the key [`Fdb::prefetch`] returned `at` for (in
    /// this table).
    #[inline]
    pub fn lookup_at(&self, at: Home, now: u32, aging: u32) -> Option<u32> {
        let Probe::Found(s) = self.probe(at) else {
            return None;
        };
        let (port, seen) = unpack(s.val.load(Ordering::Acquire))?;
        (!expired(seen, now, aging)).then_some(port)
    }

    /// Records that `key` was seen on `port` at `now` (seconds).
    #[inline]
    pub fn learn(&self, key: u64, port: u32, now: u32, aging: u32) -> Learned {
        self.learn_if(key, port, now, aging, || true)
    }

    /// Like [`Fdb::learn`], but a new entry for `port` (a new or expired
    /// MAC, or a move) is made only if `may_add()` says so; otherwise
    /// returns [`Learned::Refused`] and changes nothing. One probe.
    /// `may_add` is called at most once (a second need, after losing a
    /// race for a slot, is refused).
    ///
    /// `may_add` is borrowed where it is, not moved into an `Option`: that
    /// copy of the caller's just-written closure (16-byte loads over 8-byte
    /// stores, no store forwarding) stalled every frame.
    #[inline]
    pub fn learn_if(
        &self,
        key: u64,
        port: u32,
        now: u32,
        aging: u32,
        mut may_add: impl FnMut() -> bool,
    ) -> Learned {
        let mut asked = false;
        let mut allowed = || !core::mem::replace(&mut asked, true) && may_add();
        let at = self.home(key);
        let start = match self.probe(at) {
            Probe::Found(s) => return refresh(s, port, now, aging, &mut allowed),
            Probe::Vacant(i) => i,
            Probe::Full => return Learned::Full,
        };
        // From the first empty slot on, one by one: another worker may claim
        // it first (with this very key, or another).
        for i in start..MAX_PROBE {
            let s = self.slot(at.slot + i);
            let mut k = s.key.load(Ordering::Acquire);
            if k == EMPTY {
                if !allowed() {
                    return Learned::Refused;
                }
                // Claim the slot first; its value is published right after
                // (readers treat the unpublished value as absent).
                match s
                    .key
                    .compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        s.val.store(pack(port, now), Ordering::Release);
                        return Learned::New;
                    }
                    Err(other) => k = other,
                }
            }
            if k == key {
                return refresh(s, port, now, aging, &mut allowed);
            }
        }
        Learned::Full
    }

    /// Live entries as `(key, port, seen)`.
    pub fn entries(&self, now: u32, aging: u32) -> impl Iterator<Item = (u64, u32, u32)> + '_ {
        self.slots().filter_map(move |s| {
            let k = s.key.load(Ordering::Acquire);
            if k == EMPTY {
                return None;
            }
            let (p, seen) = unpack(s.val.load(Ordering::Acquire))?;
            (!expired(seen, now, aging)).then_some((k, p, seen))
        })
    }

    /// Number of occupied slots, live or expired.
    pub fn occupied(&self) -> usize {
        self.slots()
            .filter(|s| s.key.load(Ordering::Relaxed) != EMPTY)
            .count()
    }

    /// A new table with only the live entries for which `keep(key, port)`
    /// holds, or None when there is nothing to remove.
    pub fn rebuilt_without_expired(
        &self,
        now: u32,
        aging: u32,
        keep: impl Fn(u64, u32) -> bool,
    ) -> Option<Fdb> {
        let occupied = self.occupied();
        let live: Vec<_> = self
            .entries(now, aging)
            .filter(|&(k, p, _)| keep(k, p))
            .collect();
        if live.len() == occupied {
            return None;
        }
        let fresh = Fdb::new(self.capacity());
        for (k, p, seen) in live {
            fresh.learn(k, p, seen, aging);
        }
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u64) -> EthernetAddress {
        EthernetAddress::from_u64(0x0200_0000_0000 | n)
    }

    #[test]
    fn learn_lookup_move() {
        let f = Fdb::new(64);
        let k = key(1, mac(1));
        assert_eq!(f.lookup(k, 0, 300), None);
        assert_eq!(f.learn(k, 7, 10, 300), Learned::New);
        assert_eq!(f.lookup(k, 10, 300), Some(7));
        assert_eq!(f.learn(k, 7, 10, 300), Learned::Known);
        assert_eq!(f.learn(k, 8, 11, 300), Learned::Moved { from: 7 });
        assert_eq!(f.lookup(k, 11, 300), Some(8));
    }

    #[test]
    fn networks_are_separate() {
        let f = Fdb::new(64);
        f.learn(key(1, mac(1)), 1, 0, 300);
        assert_eq!(f.lookup(key(2, mac(1)), 0, 300), None);
        f.learn(key(2, mac(1)), 2, 0, 300);
        assert_eq!(f.lookup(key(1, mac(1)), 0, 300), Some(1));
        assert_eq!(f.lookup(key(2, mac(1)), 0, 300), Some(2));
    }

    #[test]
    fn aging() {
        let f = Fdb::new(64);
        let k = key(0, mac(5));
        f.learn(k, 3, 100, 300);
        assert_eq!(f.lookup(k, 400, 300), Some(3));
        assert_eq!(f.lookup(k, 401, 300), None);
        // Relearned after expiry counts as new, even on the same port.
        assert_eq!(f.learn(k, 3, 401, 300), Learned::New);
        assert_eq!(f.lookup(k, 401, 300), Some(3));
    }

    #[test]
    fn rebuild_drops_expired_and_unwanted() {
        let f = Fdb::new(64);
        f.learn(key(0, mac(1)), 1, 0, 300);
        f.learn(key(0, mac(2)), 2, 500, 300);
        f.learn(key(0, mac(3)), 3, 500, 300);
        assert!(f.rebuilt_without_expired(500, 300, |_, _| true).is_some());
        let g = f.rebuilt_without_expired(500, 300, |_, p| p != 3).unwrap();
        assert_eq!(g.occupied(), 1);
        assert_eq!(g.lookup(key(0, mac(2)), 500, 300), Some(2));
        assert!(g.rebuilt_without_expired(500, 300, |_, _| true).is_none());
    }

    #[test]
    fn fills_up_without_panicking() {
        let f = Fdb::new(64);
        let mut full = 0;
        for n in 0..1000 {
            if f.learn(key(0, mac(n)), 1, 0, 300) == Learned::Full {
                full += 1;
            }
        }
        assert_eq!(f.occupied(), 64);
        assert_eq!(full, 1000 - 64);
    }

    #[test]
    fn every_learned_key_is_found_when_nearly_full() {
        // Many keys share buckets and spill into the next ones.
        let f = Fdb::new(256);
        let learned: Vec<u64> = (0..1000)
            .map(|n| key(0, mac(n)))
            .filter(|&k| f.learn(k, 1, 0, 300) == Learned::New)
            .collect();
        assert!(learned.len() > 200, "{}", learned.len());
        for &k in &learned {
            assert_eq!(f.lookup(k, 0, 300), Some(1));
            // The prefetched lookup probes from the same home, spills too.
            assert_eq!(f.lookup_at(f.prefetch(k), 0, 300), Some(1));
            assert_eq!(f.learn(k, 1, 0, 300), Learned::Known);
        }
        assert_eq!(f.occupied(), learned.len());
        assert_eq!(f.lookup(key(0, mac(5000)), 0, 300), None);
        let absent = f.prefetch(key(0, mac(5000)));
        assert_eq!(f.lookup_at(absent, 0, 300), None);
    }

    #[test]
    fn concurrent_learning_of_one_mac_uses_one_slot() {
        let f = std::sync::Arc::new(Fdb::new(1024));
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        f.learn(key(0, mac(n)), t, 0, 300);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(f.occupied(), 500);
    }
}
