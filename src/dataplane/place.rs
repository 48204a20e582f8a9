//! Which worker carries a flow between two containers: flow placement
//! across a multi-queue TAP's queues.
//!
//! A TAP with one queue per worker hands a container's frames to the
//! queue the kernel picks: the queue its replies were last written on
//! (tun's flow steering), else one chosen by a hash. So a flow stays with
//! the worker that writes its frames, and two busy flows land on the same
//! worker half the time when only the kernel's hash decides (two pairs of
//! containers: 1.3x one pair instead of the 1.8x two CPUs allow).
//!
//! Here the switch decides. Each flow (TCP or UDP over IPv4/IPv6, both
//! directions alike) has a home worker in a small shared table, and every
//! worker writes the flow's frames on its home's queue of the destination
//! port, so the kernel steers both containers' next frames of the flow to
//! the home. A flow's home is at first the worker that saw it first (the
//! kernel's choice). Each worker samples the flows it carries; when it is
//! busy, carries two heavy flows or more, and another worker is mostly
//! idle, it gives one of them to that worker ([`Rebalancer`]). One flow
//! alone never moves (it would only take its load along).
//!
//! The table is direct-mapped and lossy: a flow whose slot another flow
//! took gets a home again (its current worker), which is always correct,
//! only not balanced. No lock, no allocation per frame: one atomic load
//! per frame, a store when a flow is new or moves.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tapnet_switch::fxhash::splitmix64;

/// Slots of the flow table (a power of two).
const SLOTS: usize = 4096;
/// One frame in this many is sampled (on average).
const SAMPLE_EVERY: u32 = 16;
/// Samples a worker keeps between two looks (a ring).
const SAMPLES: usize = 32;
/// Busy share (per mille) above which a worker gives flows away.
const BUSY: u32 = 700;
/// Busy share (per mille) below which a worker takes them.
const IDLE: u32 = 400;
/// A flow is heavy with at least this many of a look's samples.
const HEAVY: usize = SAMPLES / 5;

/// The shared part: the flow table and each worker's recent load.
pub(super) struct Placement {
    /// `tag << 8 | (home + 1)`; 0: empty.
    slots: Box<[AtomicU64]>,
    /// Each worker's busy share over its last interval, per mille.
    load: Box<[Padded]>,
}

#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU32);

impl Placement {
    pub(super) fn new(workers: usize) -> Placement {
        Placement {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            load: (0..workers.clamp(1, 255))
                .map(|_| Padded::default())
                .collect(),
        }
    }

    fn workers(&self) -> usize {
        self.load.len()
    }

    /// Worker `w`'s busy share over its last interval, per mille.
    pub(super) fn set_load(&self, w: usize, permille: u32) {
        if let Some(l) = self.load.get(w) {
            l.0.store(permille, Ordering::Relaxed);
        }
    }

    /// The worker whose queue should carry `frame` (an Ethernet frame),
    /// sent by worker `me`; `me` for frames that are not a TCP or UDP
    /// flow. Worker `me` records its flows in `local` for rebalancing.
    #[inline]
    pub(super) fn home(&self, me: usize, frame: &[u8], local: &mut Rebalancer) -> usize {
        if self.workers() < 2 {
            return me;
        }
        let Some(h) = flow_hash(frame) else {
            return me;
        };
        let slot = (h as usize) & (SLOTS - 1);
        // The hash's bits above the slot index, as the entry holds them.
        let want = (h >> 12) << 8;
        let e = self.slots[slot].load(Ordering::Relaxed);
        let home = if e & !0xff == want && e & 0xff != 0 {
            ((e & 0xff) - 1) as usize
        } else {
            self.slots[slot].store(want | (me as u64 + 1), Ordering::Relaxed);
            me
        };
        if home == me {
            local.sample(slot as u32, want);
        }
        home
    }

    /// Worker `me` ends an interval at `permille` busy: publishes it and,
    /// when it is busy with two heavy flows or more while another worker
    /// idles, gives that worker one of them. Returns the slot moved.
    pub(super) fn rebalance(
        &self,
        me: usize,
        permille: u32,
        local: &mut Rebalancer,
    ) -> Option<u32> {
        self.set_load(me, permille);
        let picked = local.heavy_second();
        local.clear();
        if permille < BUSY {
            return None;
        }
        let (slot, want) = picked?;
        let (to, l) = self
            .load
            .iter()
            .enumerate()
            .filter(|(w, _)| *w != me)
            .map(|(w, l)| (w, l.0.load(Ordering::Relaxed)))
            .min_by_key(|(_, l)| *l)?;
        if l >= IDLE {
            return None;
        }
        let s = &self.slots[slot as usize];
        // Only if the slot still holds that flow, at home here.
        s.compare_exchange(
            want | (me as u64 + 1),
            want | (to as u64 + 1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .ok()?;
        // The receiving worker counts as busy until it says otherwise.
        self.set_load(to, BUSY);
        Some(slot)
    }
}

/// One worker's samples of the flows it carries since its last look.
pub(super) struct Rebalancer {
    /// xorshift32 state: which frames are sampled.
    rng: u32,
    n: usize,
    samples: [(u32, u64); SAMPLES],
}

impl Default for Rebalancer {
    fn default() -> Self {
        Rebalancer {
            rng: 0x9E37_79B9,
            n: 0,
            samples: [(u32::MAX, 0); SAMPLES],
        }
    }
}

impl Rebalancer {
    #[inline]
    fn sample(&mut self, slot: u32, tag: u64) {
        // xorshift32: one in SAMPLE_EVERY at random, so that flows taking
        // turns are not sampled in step.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        if x.is_multiple_of(SAMPLE_EVERY) {
            self.samples[self.n % SAMPLES] = (slot, tag);
            self.n += 1;
        }
    }

    fn clear(&mut self) {
        self.n = 0;
    }

    /// With a full ring of samples and two heavy flows or more: the
    /// heaviest but one (slot, tag).
    fn heavy_second(&self) -> Option<(u32, u64)> {
        if self.n < SAMPLES {
            return None;
        }
        let mut counts: [((u32, u64), usize); SAMPLES] = [((u32::MAX, 0), 0); SAMPLES];
        let mut distinct = 0;
        for s in &self.samples {
            match counts[..distinct].iter_mut().find(|(k, _)| k == s) {
                Some((_, c)) => *c += 1,
                None => {
                    counts[distinct] = (*s, 1);
                    distinct += 1;
                }
            }
        }
        let heavy = &mut counts[..distinct];
        heavy.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
        match heavy {
            [_, second, ..] if second.1 >= HEAVY => Some(second.0),
            _ => None,
        }
    }
}

/// A hash of a frame's TCP or UDP flow, the same both ways; None for
/// anything else (other protocols, fragments, VLAN tags, runts).
pub(super) fn flow_hash(frame: &[u8]) -> Option<u64> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (proto, a, b, l4): (u8, u128, u128, &[u8]) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            // A fragment past the first has no ports; the first's ports
            // are not the later fragments': both go by the worker's queue.
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if frag & 0x3fff != 0 || ihl < 20 {
                return None;
            }
            let src = u32::from_be_bytes(ip.get(12..16)?.try_into().ok()?);
            let dst = u32::from_be_bytes(ip.get(16..20)?.try_into().ok()?);
            (*ip.get(9)?, src.into(), dst.into(), ip.get(ihl..)?)
        }
        0x86dd => {
            let src = u128::from_be_bytes(ip.get(8..24)?.try_into().ok()?);
            let dst = u128::from_be_bytes(ip.get(24..40)?.try_into().ok()?);
            (*ip.get(6)?, src, dst, ip.get(40..)?)
        }
        _ => return None,
    };
    if proto != 6 && proto != 17 {
        return None;
    }
    let sp = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dp = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let (x, y) = if (a, sp) <= (b, dp) {
        ((a, sp), (b, dp))
    } else {
        ((b, dp), (a, sp))
    };
    let mut h = u64::from(proto);
    for v in [
        x.0 as u64,
        (x.0 >> 64) as u64,
        y.0 as u64,
        (y.0 >> 64) as u64,
        u64::from(x.1) << 16 | u64::from(y.1),
    ] {
        h = splitmix64(h ^ v);
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f
    }

    #[test]
    fn a_flow_hashes_the_same_both_ways_and_others_do_not() {
        let a = tcp4([10, 0, 0, 2], 40000, [10, 0, 0, 3], 5201);
        let b = tcp4([10, 0, 0, 3], 5201, [10, 0, 0, 2], 40000);
        let c = tcp4([10, 0, 0, 2], 40001, [10, 0, 0, 3], 5201);
        assert_eq!(flow_hash(&a), flow_hash(&b));
        assert!(flow_hash(&a).is_some());
        assert_ne!(flow_hash(&a), flow_hash(&c));
        // ICMP, a later fragment, a runt: no flow.
        let mut icmp = a.clone();
        icmp[14 + 9] = 1;
        assert_eq!(flow_hash(&icmp), None);
        let mut frag = a.clone();
        frag[14 + 7] = 8;
        assert_eq!(flow_hash(&frag), None);
        assert_eq!(flow_hash(&a[..30]), None);
    }

    #[test]
    fn two_heavy_flows_on_a_busy_worker_split_and_one_flow_stays() {
        let p = Placement::new(2);
        let mut w0 = Rebalancer::default();
        let f1 = tcp4([10, 0, 0, 2], 40000, [10, 0, 0, 3], 5201);
        let f2 = tcp4([10, 0, 0, 4], 40000, [10, 0, 0, 5], 5201);
        // Worker 0 sees both first: both at home there.
        for _ in 0..(SAMPLES as u32 * SAMPLE_EVERY) {
            assert_eq!(p.home(0, &f1, &mut w0), 0);
            assert_eq!(p.home(0, &f2, &mut w0), 0);
        }
        // Worker 1 sending them follows their home.
        let mut w1 = Rebalancer::default();
        assert_eq!(p.home(1, &f1, &mut w1), 0);
        p.set_load(1, 50);
        // Not busy: nothing moves.
        assert_eq!(p.rebalance(0, 500, &mut w0), None);
        for _ in 0..(SAMPLES as u32 * SAMPLE_EVERY) {
            p.home(0, &f1, &mut w0);
            p.home(0, &f2, &mut w0);
        }
        assert!(p.rebalance(0, 950, &mut w0).is_some());
        let homes = [p.home(0, &f1, &mut w0), p.home(0, &f2, &mut w0)];
        assert!(homes.contains(&0) && homes.contains(&1), "{homes:?}");
        // One heavy flow alone stays where it is, however busy.
        let q = Placement::new(2);
        let mut r = Rebalancer::default();
        for _ in 0..(4 * SAMPLES as u32 * SAMPLE_EVERY) {
            q.home(0, &f1, &mut r);
        }
        assert_eq!(q.rebalance(0, 1000, &mut r), None);
        assert_eq!(q.home(0, &f1, &mut r), 0);
        // One worker: always its own.
        let one = Placement::new(1);
        assert_eq!(one.home(0, &f1, &mut r), 0);
    }
}
