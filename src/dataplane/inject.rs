//! The one door into a worker for frames made off the fast path: the NAT
//! thread's frames and the DNS forwarder's answers. Each producer has one
//! bounded queue per worker ([`queue`]); the worker drains its queues in
//! its loop and sends every frame through the switch's egress stage
//! ([`tapnet_switch::Worker::transmit_injected`]: the port's tx counters,
//! the egress capture hook, the TAP queue it owns), exactly as switched
//! frames. Buffers travel with the frames and come back on a return queue
//! for the producer to reuse: no allocation per frame, no lock (crossbeam's
//! bounded array channels), and a full queue is the producer's counted
//! drop, never a block.
//!
//! Wake-ups: a producer wakes a worker (one `eventfd` write through its
//! mio `Waker`) only when the worker said it is about to sleep
//! ([`WorkerWake::sleeping`]); a busy worker finds the frames on its next
//! loop without a syscall. Both sides fence (`SeqCst`) between their
//! store and their check, so a frame is never left waiting for the
//! worker's next timeout.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::PortId;

/// A frame for a worker to send: `buf[start..start + len]` on `port`.
#[derive(Debug)]
pub struct Injected {
    pub port: PortId,
    pub meta: VnetHdr,
    pub buf: Box<[u8]>,
    pub start: usize,
    pub len: usize,
}

impl Injected {
    pub fn frame(&self) -> &[u8] {
        self.buf
            .get(self.start..self.start.saturating_add(self.len))
            .unwrap_or(&[])
    }
}

/// How producers wake one worker.
pub struct WorkerWake {
    waker: Waker,
    /// Set by the worker before it blocks in epoll, cleared when it
    /// wakes up.
    sleeping: AtomicBool,
}

impl WorkerWake {
    pub fn new(waker: Waker) -> WorkerWake {
        WorkerWake {
            waker,
            sleeping: AtomicBool::new(false),
        }
    }

    /// Wakes the worker unconditionally (commands).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// The worker is about to block: after this, it must look at its
    /// queues once more before sleeping (see [`WorkerWake::awake`]).
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The worker woke up.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// After a frame was queued: wakes the worker if it sleeps.
    fn kick(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }
}

/// A producer's half of one worker's queue.
pub struct InjectTx {
    frames: Sender<Injected>,
    returns: Receiver<Box<[u8]>>,
    wake: Arc<WorkerWake>,
}

/// A worker's half of one producer's queue.
pub struct InjectRx {
    frames: Receiver<Injected>,
    returns: Sender<Box<[u8]>>,
}

/// A queue of `capacity` frames from one producer to the worker `wake`
/// belongs to (and the return queue of their buffers, as large).
pub fn queue(capacity: usize, wake: Arc<WorkerWake>) -> (InjectTx, InjectRx) {
    let (ftx, frx) = crossbeam_channel::bounded(capacity.max(1));
    let (rtx, rrx) = crossbeam_channel::bounded(capacity.max(1));
    (
        InjectTx {
            frames: ftx,
            returns: rrx,
            wake,
        },
        InjectRx {
            frames: frx,
            returns: rtx,
        },
    )
}

impl InjectTx {
    /// Queues a frame and wakes the worker if it sleeps; a full (or
    /// closed) queue gives the frame back (count it, reuse its buffer).
    pub fn send(&self, f: Injected) -> Result<(), Injected> {
        match self.frames.try_send(f) {
            Ok(()) => {
                self.wake.kick();
                Ok(())
            }
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => Err(f),
        }
    }

    /// A buffer the worker is done with.
    pub fn returned(&self) -> Option<Box<[u8]>> {
        self.returns.try_recv().ok()
    }
}

impl InjectRx {
    /// The next frame, if any.
    #[inline]
    pub fn next(&self) -> Option<Injected> {
        self.frames.try_recv().ok()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Gives a sent frame's buffer back to its producer (dropped if the
    /// producer is gone).
    #[inline]
    pub fn give_back(&self, buf: Box<[u8]>) {
        let _ = self.returns.try_send(buf);
    }
}

/// The workers' busy-polling tokens: at most `limit` workers poll at
/// once. On a small machine every polling worker is a CPU taken from the
/// containers and the NAT thread (two workers polling on two CPUs left a
/// NAT thread and its peers waiting 140 µs on average for a CPU, by
/// `perf sched latency`). Measured with the NAT in a thread of its own
/// (now `--nat-thread`): with one token on 2 CPUs, two alternating runs
/// each: NAT outbound 0.46 / 0.48 -> 0.64 / 0.66 of the kernel path,
/// published 0.93 / 0.90 -> 1.04 / 1.12, connections/s 0.32-0.40 ->
/// 0.52-0.60 of the kernel's; the switch's TCP and 64 B rates unchanged.
/// But the host -> container direction through the NAT and two busy pairs
/// lost (a worker with traffic sleeps between frames when the other holds
/// the token), so by default there is no limit.
#[derive(Debug)]
pub(super) struct SpinGate {
    limit: usize,
    polling: std::sync::atomic::AtomicUsize,
}

impl SpinGate {
    /// A gate of `limit` tokens; `limit` 0: no gate (no limit, and no
    /// shared counter for the workers to touch).
    pub(super) fn new(limit: usize) -> Option<SpinGate> {
        (limit > 0).then(|| SpinGate {
            limit,
            polling: Default::default(),
        })
    }

    /// Takes a token if one is free.
    fn enter(&self) -> bool {
        self.polling
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a token back.
    fn leave(&self) {
        self.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One worker's side of the [`SpinGate`]: whether it holds a token. The
/// token goes back when the worker stops polling, and when the worker
/// ends (drop), whichever way it ends.
pub(super) struct SpinToken {
    gate: Option<Arc<SpinGate>>,
    held: bool,
}

impl SpinToken {
    pub(super) fn new(gate: Option<Arc<SpinGate>>) -> SpinToken {
        SpinToken { gate, held: false }
    }

    /// Whether the worker, which would poll now (`want`), may: without a
    /// gate, always; else while it holds a token, taking one when it
    /// starts and giving it back when it stops.
    pub(super) fn allow(&mut self, want: bool) -> bool {
        let Some(g) = &self.gate else {
            return want;
        };
        let allow = want && (self.held || g.enter());
        if self.held && !allow {
            g.leave();
        }
        self.held = allow;
        allow
    }
}

impl Drop for SpinToken {
    fn drop(&mut self) {
        self.allow(false);
    }
}

/// The smallest window a worker's polling grows back to from nothing.
const SPIN_GROW_FROM: Duration = Duration::from_micros(10);
/// Below this a shrinking window is nothing.
const SPIN_FLOOR: Duration = Duration::from_micros(2);

/// One worker's adaptive busy-poll window, after KVM's halt polling:
/// between 0 and the `--busy-poll-us` maximum, set by the gaps between
/// its work. A gap within the window: polling caught the work (no
/// change). A gap beyond the maximum: polling was CPU spent for nothing,
/// so the window shrinks by a quarter. A gap between the two: a longer
/// window would have caught it, so it doubles (from
/// [`SPIN_GROW_FROM`]). A worker whose frames come in bursts keeps
/// polling; one that sees a frame now and then (the worker without the
/// NAT while the NAT's flows steer to worker 0, a second worker during
/// one stream) stops, and leaves its CPU to the containers.
#[derive(Clone, Copy, Debug)]
pub(super) struct SpinWindow {
    max: Duration,
    now: Duration,
}

impl SpinWindow {
    pub(super) fn new(max: Duration) -> SpinWindow {
        SpinWindow { max, now: max }
    }

    /// How long the worker polls after its last work.
    pub(super) fn get(&self) -> Duration {
        self.now
    }

    /// Work came `gap` after the worker's previous work, the worker idle
    /// (polling or asleep) in between.
    pub(super) fn observe(&mut self, gap: Duration) {
        if gap <= self.now {
            return;
        }
        if gap > self.max {
            self.now -= self.now / 4;
            if self.now < SPIN_FLOOR {
                self.now = Duration::ZERO;
            }
        } else {
            self.now = (self.now * 2).max(SPIN_GROW_FROM).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake() -> (mio::Poll, Arc<WorkerWake>) {
        let poll = mio::Poll::new().unwrap();
        let w = Waker::new(poll.registry(), mio::Token(0)).unwrap();
        (poll, Arc::new(WorkerWake::new(w)))
    }

    fn frame(n: u8) -> Injected {
        Injected {
            port: PortId(1),
            meta: VnetHdr::default(),
            buf: vec![n; 16].into_boxed_slice(),
            start: 2,
            len: 4,
        }
    }

    #[test]
    fn frames_and_buffers_round_trip_and_full_is_refused() {
        let (_p, w) = wake();
        let (tx, rx) = queue(2, w);
        assert!(tx.send(frame(1)).is_ok());
        assert!(tx.send(frame(2)).is_ok());
        let back = tx.send(frame(3)).unwrap_err();
        assert_eq!(back.frame(), &[3; 4]);
        let f = rx.next().unwrap();
        assert_eq!((f.port, f.frame()), (PortId(1), &[1u8; 4][..]));
        rx.give_back(f.buf);
        assert_eq!(tx.returned().unwrap().len(), 16);
        assert!(tx.returned().is_none());
    }

    #[test]
    fn a_sleeping_worker_is_woken_once() {
        let (mut poll, w) = wake();
        let (tx, rx) = queue(4, w.clone());
        let mut events = mio::Events::with_capacity(4);
        // Busy worker: no wake-up.
        tx.send(frame(1)).unwrap();
        poll.poll(&mut events, Some(std::time::Duration::ZERO))
            .unwrap();
        assert!(events.is_empty());
        // Sleeping worker: one wake-up for two frames.
        w.going_to_sleep();
        tx.send(frame(2)).unwrap();
        tx.send(frame(3)).unwrap();
        poll.poll(&mut events, Some(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
        w.awake();
        assert!(rx.next().is_some() && rx.next().is_some() && rx.next().is_some());
        assert!(rx.is_empty());
    }

    /// At most `limit` tokens are out at once; a returned one is free again.
    #[test]
    fn the_spin_gate_lets_limit_workers_poll() {
        let g = Arc::new(SpinGate::new(2).unwrap());
        let mut t: Vec<SpinToken> = (0..3).map(|_| SpinToken::new(Some(g.clone()))).collect();
        assert!(t[0].allow(true) && t[1].allow(true));
        assert!(t[0].allow(true), "a holder keeps its token");
        assert!(!t[2].allow(true), "a third worker sleeps");
        assert!(!t[0].allow(false));
        assert!(t[2].allow(true), "a returned token is free again");
        drop(t.remove(1));
        assert!(t[0].allow(true), "a worker that ends gives its token back");
        assert!(SpinGate::new(0).is_none(), "0: no limit");
        assert!(SpinToken::new(None).allow(true));
    }

    #[test]
    fn the_spin_window_follows_the_gaps_between_work() {
        let us = Duration::from_micros;
        let mut w = SpinWindow::new(us(200));
        // Work within the window: no change.
        w.observe(us(50));
        assert_eq!(w.get(), us(200));
        // Gaps past the maximum: it shrinks to nothing.
        for _ in 0..40 {
            w.observe(us(5000));
        }
        assert_eq!(w.get(), Duration::ZERO);
        // Gaps a longer window would have caught: it grows back, up to the
        // maximum.
        w.observe(us(30));
        assert_eq!(w.get(), us(10));
        w.observe(us(30));
        assert_eq!(w.get(), us(20));
        for _ in 0..10 {
            w.observe(us(199));
        }
        assert_eq!(w.get(), us(200));
        // A ping's pattern (a reply 40 us after the request, the next
        // request 5 ms later) keeps a window that catches the reply.
        for _ in 0..100 {
            w.observe(us(40));
            w.observe(us(5000));
        }
        assert!(w.get() >= us(30), "{:?}", w.get());
        // No polling configured: never any.
        let mut off = SpinWindow::new(Duration::ZERO);
        off.observe(us(1));
        assert_eq!(off.get(), Duration::ZERO);
    }
}
