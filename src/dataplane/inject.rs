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
}
