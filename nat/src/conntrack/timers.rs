//! Expiry timers: an indexed binary min-heap of `(deadline, slot)`, one
//! entry per live flow, with each slot's position kept so that a timer is
//! moved or removed in O(log n) without stale entries.
//!
//! Why not a plain heap with lazy deletion: removed flows would leave
//! entries behind until their (up to two-hour) deadline, so the heap would
//! grow with churn instead of staying within the table's capacity. Why not
//! a timer wheel: it expires at tick granularity and in no defined order
//! within a tick; the heap gives exact deadlines and a total order
//! (deadline, then slot) that tests can check against a model, at
//! ⌈log2 n⌉ ≤ 20 levels for a million flows.
//!
//! Laziness is kept where it pays: packets only move a flow's *real*
//! deadline later and never touch the heap; the table re-arms an entry
//! when it reaches the top early (at most once per timeout period of an
//! active flow). Only a transition to a shorter timeout moves an entry
//! up at once. Invariant: a flow's armed deadline ≤ its real deadline.

const NONE: u32 = u32::MAX;

pub(crate) struct Timers {
    heap: Vec<(u64, u32)>,
    /// Heap position of each slot (`NONE` when not armed).
    pos: Vec<u32>,
}

impl Timers {
    pub(crate) fn new(slots: usize) -> Timers {
        Timers {
            heap: Vec::with_capacity(slots),
            pos: vec![NONE; slots],
        }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    /// Arms `slot` at `deadline` (moves it if already armed).
    pub(crate) fn set(&mut self, slot: u32, deadline: u64) {
        let Some(&p) = self.pos.get(slot as usize) else {
            return;
        };
        if p == NONE {
            let i = self.heap.len();
            self.heap.push((deadline, slot));
            self.pos[slot as usize] = i as u32;
            self.sift_up(i);
        } else {
            let i = p as usize;
            let old = self.heap[i];
            self.heap[i].0 = deadline;
            if (deadline, slot) < old {
                self.sift_up(i);
            } else {
                self.sift_down(i);
            }
        }
    }

    /// Disarms `slot` (no-op if not armed).
    pub(crate) fn remove(&mut self, slot: u32) {
        let Some(&p) = self.pos.get(slot as usize) else {
            return;
        };
        if p == NONE {
            return;
        }
        let i = p as usize;
        self.pos[slot as usize] = NONE;
        let last = self.heap.len() - 1;
        if i != last {
            self.heap.swap(i, last);
            self.heap.pop();
            let moved = self.heap[i].1;
            self.pos[moved as usize] = i as u32;
            self.sift_up(i);
            if self.pos[moved as usize] as usize == i {
                self.sift_down(i);
            }
        } else {
            self.heap.pop();
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] < self.heap[parent] {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r] < self.heap[l] {
                r
            } else {
                l
            };
            if self.heap[c] < self.heap[i] {
                self.swap(i, c);
                i = c;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_pops_with_moves_and_removals() {
        let mut t = Timers::new(16);
        for s in 0..16u32 {
            t.set(s, u64::from((s * 7) % 16));
        }
        t.set(3, 100);
        t.set(9, 0);
        t.remove(5);
        t.remove(5);
        let mut out = vec![];
        while let Some((d, s)) = t.peek() {
            out.push((d, s));
            t.remove(s);
        }
        let mut want: Vec<(u64, u32)> = (0..16u32)
            .filter(|&s| s != 5)
            .map(|s| match s {
                3 => (100, 3),
                9 => (0, 9),
                _ => (u64::from((s * 7) % 16), s),
            })
            .collect();
        want.sort();
        assert_eq!(out, want);
    }
}
