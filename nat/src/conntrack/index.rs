//! The container-side index: flow key hash → slab slot, open addressing
//! with linear probing and backward-shift deletion (no tombstones, so the
//! probe length never degrades with churn).
//!
//! The table has at least twice as many entries as the slab has slots, so
//! its load factor stays at or below one half and every probe ends at an
//! empty entry. An entry is `tag << 32 | (slot + 1)` (0 = empty) where
//! `tag` is the high 32 bits of the key's hash; the home entry is
//! `tag & mask`, so deletion can recompute homes without the keys. The
//! caller compares the full key of a candidate slot (tags can collide).

pub(crate) struct Index {
    entries: Box<[u64]>,
    mask: usize,
}

#[inline]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Index {
    /// An index for at most `slots` slots.
    pub(crate) fn new(slots: usize) -> Index {
        let n = slots.saturating_mul(2).max(16).next_power_of_two();
        Index {
            entries: vec![0; n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// The slot of the entry with `hash` for which `is_key(slot)` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(hash, &mut is_key).map(|i| self.slot_at(i))
    }

    #[inline]
    fn slot_at(&self, i: usize) -> u32 {
        (self.entries[i] as u32).wrapping_sub(1)
    }

    #[inline]
    fn position(&self, hash: u64, is_key: &mut impl FnMut(u32) -> bool) -> Option<usize> {
        let tag = tag_of(hash);
        let mut i = self.home(tag);
        // Bounded by the table size: the load factor is at most 1/2, so an
        // empty entry is always reached well before.
        for _ in 0..=self.mask {
            let e = self.entries[i];
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == tag && is_key(self.slot_at(i)) {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Adds `slot` under `hash`. The caller has checked the key is absent
    /// and that the slab is not full (so a free entry exists).
    #[inline]
    pub(crate) fn insert(&mut self, hash: u64, slot: u32) {
        let tag = tag_of(hash);
        let mut i = self.home(tag);
        for _ in 0..=self.mask {
            if self.entries[i] == 0 {
                self.entries[i] = (u64::from(tag) << 32) | u64::from(slot.wrapping_add(1));
                return;
            }
            i = (i + 1) & self.mask;
        }
        debug_assert!(false, "index full");
    }

    /// Removes the entry of `slot` stored under `hash`; false if absent.
    pub(crate) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let Some(mut hole) = self.position(hash, &mut |s| s == slot) else {
            return false;
        };
        // Backward-shift deletion: pull later entries of the probe run
        // into the hole unless their home lies cyclically in (hole, j].
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let e = self.entries[j];
            if e == 0 {
                break;
            }
            let k = self.home((e >> 32) as u32);
            let stays = if hole <= j {
                hole < k && k <= j
            } else {
                hole < k || k <= j
            };
            if !stays {
                self.entries[hole] = e;
                hole = j;
            }
        }
        self.entries[hole] = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_and_backward_shift() {
        let mut ix = Index::new(8);
        // Same home (low tag bits equal), distinct tags, plus wrap-around.
        let hs: Vec<u64> = (0..6u64).map(|i| ((i << 8) | 15) << 32).collect();
        for (s, &h) in hs.iter().enumerate() {
            ix.insert(h, s as u32);
        }
        for (s, &h) in hs.iter().enumerate() {
            assert_eq!(ix.find(h, |x| x == s as u32), Some(s as u32));
        }
        assert!(ix.remove(hs[1], 1));
        assert!(!ix.remove(hs[1], 1));
        assert_eq!(ix.find(hs[1], |x| x == 1), None);
        for s in [0usize, 2, 3, 4, 5] {
            assert_eq!(ix.find(hs[s], |x| x == s as u32), Some(s as u32));
        }
    }
}
