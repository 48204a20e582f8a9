//! When a worker polls instead of sleeping in epoll: the busy-poll
//! policy of the worker loop (`dataplane::imp`). Polling catches a frame
//! without a wake-up, at the price of a CPU; [`SpinWindow`] sets how long
//! each worker polls after its work, [`SpinGate`] how many may poll at
//! once (`tapnet daemon --busy-poll-us`, `--busy-poll-workers`), and
//! [`Crowd`] with [`Stream`] whether a worker sleeps instead because the
//! machine is crowded (`--sleep-when-crowded`, `super::CrowdSleep`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// one stream) stops, and leaves its CPU to the containers. A turn that
/// only handed frames to the NAT in another worker is not work: it
/// neither ends a gap nor starts one (the worker loop).
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

/// How often a worker looks at the machine's run queues, at most (while
/// it would poll): a look costs a `pread` of `/proc/loadavg`, about a
/// microsecond.
const CROWD_LOOK: Duration = Duration::from_micros(100);
/// Weight of the latest look in the crowded share: 1/16.
const CROWD_WEIGHT: u32 = 16;
/// The crowded share, in 1/1024ths, from which a worker sleeps instead
/// of polling: half its recent looks.
const CROWDED_SHARE: u32 = 512;

/// Whether the machine is crowded: whether, in most of a worker's recent
/// looks, more threads were runnable than the machine has CPUs. Then a
/// polling worker takes a CPU from a thread with work (a container's
/// sender or receiver, which the scheduler must share a CPU with the
/// poller), and it sleeps instead: by default only while it hands the
/// NAT a [`Stream`] (`CrowdSleep`, `tapnet daemon --sleep-when-crowded`).
///
/// Measured on 2 CPUs (bench/NOTES.md: "Sleeping when the machine
/// is crowded"): during one TCP stream through the NAT 20-60% of the
/// looks found three threads runnable, during a 64-byte flood nearly
/// all, during a connection-rate run 10-30%. A container's sends through
/// the NAT gained a tenth to a third, connections/s lost 3-15% (the
/// wake-ups polling saves a connection's round trips): hence the default
/// of sleeping only while the worker hands the NAT a stream. Stopping at the
/// first crowded look cost connections/s more; a share of half stops
/// later.
///
/// The looks read `/proc/loadavg`'s running count (every CPU's run queue,
/// the reader included) at most every [`CROWD_LOOK`]; where that file
/// cannot be read the machine is never crowded (polling as before).
pub(super) struct Crowd {
    loadavg: Option<File>,
    cpus: usize,
    /// When the worker last looked.
    looked: Option<Instant>,
    /// The share of recent looks that found the machine crowded, in
    /// 1/1024ths (an exponential moving average, [`CROWD_WEIGHT`]).
    share: u32,
}

impl Crowd {
    /// A worker's watch over the run queues (`tapnet daemon
    /// --sleep-when-crowded` other than `never`); `watch` false: never
    /// crowded.
    pub(super) fn new(watch: bool) -> Crowd {
        // The machine's online CPUs (the run queues loadavg counts); 1
        // when unknown.
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .map_or(1, |n| n.max(1) as usize);
        Crowd::of(
            watch.then(|| File::open("/proc/loadavg").ok()).flatten(),
            cpus,
        )
    }

    fn of(loadavg: Option<File>, cpus: usize) -> Crowd {
        Crowd {
            loadavg,
            cpus,
            looked: None,
            share: 0,
        }
    }

    /// Whether the machine is crowded, looking again if the last look is
    /// [`CROWD_LOOK`] old at `now`.
    pub(super) fn crowded(&mut self, now: Instant) -> bool {
        let Some(f) = &self.loadavg else {
            return false;
        };
        if self
            .looked
            .is_none_or(|at| now.saturating_duration_since(at) >= CROWD_LOOK)
        {
            self.looked = Some(now);
            let mut buf = [0u8; 128];
            let crowded = f
                .read_at(&mut buf, 0)
                .ok()
                .and_then(|n| running(&buf[..n]))
                .is_some_and(|r| r > self.cpus);
            self.share -= self.share / CROWD_WEIGHT;
            if crowded {
                self.share += 1024 / CROWD_WEIGHT;
            }
        }
        self.share >= CROWDED_SHARE
    }
}

/// How long a [`Stream`] measurement lasts, at least.
const STREAM_SPAN: Duration = Duration::from_millis(1);
/// The rate from which a worker's frames of one kind are a stream, bytes
/// a second (0.8 Gbit/s).
const STREAM_RATE: u64 = 100_000_000;

/// Whether a worker's frames of one kind come at a stream's rate:
/// [`STREAM_RATE`] or more over the last measurement (a span of
/// [`STREAM_SPAN`] or more, idle time included). The verdict holds until
/// the next measurement ends. A worker keeps two:
///
/// - **The frames it hands the NAT** (a container's data through it): a
///   stream of them makes it sleep instead of polling on a crowded
///   machine (`CrowdSleep::Streams`, the default). Why those frames only
///   (2026-12-06, alternating runs; bench/NOTES.md: "Sleeping when
///   the machine is crowded"): with the NAT's frames towards a container
///   counted too (a container receiving a stream), sleeping on a crowded
///   machine cost that container's receives (four runs of `bench/nat.sh
///   --reverse`, outbound: medians 0.79 of the kernel path against 1.02).
///   A connection-rate load hands the NAT a few hundred bytes a
///   connection: some 1-2 MB/s at 4000 connections/s, far below a stream.
/// - **The frames it forwards between containers** (the switch's, not
///   the NAT's): a stream of them makes it sleep instead of polling,
///   crowded or not (unless `tapnet daemon --poll-switch-streams`).
///   With its polling, one TCP stream from a BBR sender (this machine's
///   default congestion control) fell into a slow mode, 10-12 Gbit/s
///   against 16-17, in a quarter to a third of the runs (bench/NOTES.md:
///   "The switch's slow TCP mode"): 19 of 65 runs against 1
///   of 45 with this rule, alternated. Why polling invites it is not
///   pinned down. A ping flood or a 64-byte flood (some 10 MB/s) keeps
///   the worker polling.
pub(super) struct Stream {
    since: Instant,
    bytes: u64,
    stream: bool,
}

impl Stream {
    pub(super) fn new(now: Instant) -> Stream {
        Stream {
            since: now,
            bytes: 0,
            stream: false,
        }
    }

    /// A turn ending at `now` carried `bytes` of this kind.
    pub(super) fn add(&mut self, bytes: usize, now: Instant) {
        self.bytes += bytes as u64;
        let span = now.saturating_duration_since(self.since);
        if span >= STREAM_SPAN {
            self.stream =
                u128::from(self.bytes) * 1_000_000_000 >= u128::from(STREAM_RATE) * span.as_nanos();
            self.bytes = 0;
            self.since = now;
        }
    }

    /// Whether the last measurement found a stream.
    pub(super) fn get(&self) -> bool {
        self.stream
    }
}

/// The runnable threads in a `/proc/loadavg` line
/// (`0.79 1.02 1.15 3/107 10581`: the 3).
fn running(line: &[u8]) -> Option<usize> {
    let field = line.split(|&b| b == b' ').nth(3)?;
    let r = field.split(|&b| b == b'/').next()?;
    std::str::from_utf8(r).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_running_count_is_read_from_loadavg() {
        assert_eq!(running(b"0.79 1.02 1.15 3/107 10581\n"), Some(3));
        assert_eq!(running(b"0.00 0.00 0.00 1/1 1"), Some(1));
        assert_eq!(running(b"0.79 1.02 1.15"), None);
        assert_eq!(running(b"a b c x/1 2"), None);
        // The real file parses, and this thread is running.
        let line = std::fs::read("/proc/loadavg").unwrap();
        assert!(running(&line).unwrap() >= 1);
        let mut off = Crowd::new(false);
        assert!(!off.crowded(Instant::now()));
    }

    /// A `/proc/loadavg` stand-in holding `line`.
    fn loadavg(line: &str) -> File {
        let mut f = crate::sys::unlinked_temp_file("loadavg");
        use std::io::Write;
        f.write_all(line.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_worker_stops_polling_when_most_looks_find_the_machine_crowded() {
        let look = CROWD_LOOK;
        let t0 = Instant::now();
        // Three runnable on two CPUs: crowded, but one look is not enough.
        let mut c = Crowd::of(Some(loadavg("0.50 0.40 0.30 3/120 999\n")), 2);
        assert!(!c.crowded(t0), "one crowded look does not stop polling");
        // Looks closer together than CROWD_LOOK do not count again.
        for i in 1..50 {
            assert!(!c.crowded(t0 + look / 50 * i));
        }
        let mut n = 1;
        let mut at = t0;
        while !c.crowded(at) {
            at += look;
            n += 1;
            assert!(n < 100, "never crowded");
        }
        // About ten looks in a row (half the share at weight 1/16).
        assert!((8..=14).contains(&n), "{n} looks");
        // Two runnable on two CPUs: not crowded, and the share decays.
        let mut calm = Crowd::of(Some(loadavg("0.50 0.40 0.30 2/120 999\n")), 2);
        calm.share = c.share;
        let mut m = 0;
        while calm.crowded(at) {
            at += look;
            m += 1;
            assert!(m < 100, "never calm again");
        }
        assert!(m <= 2, "{m} looks to calm down");
        // An unreadable line: not crowded.
        let mut odd = Crowd::of(Some(loadavg("garbage")), 1);
        for i in 0..40 {
            assert!(!odd.crowded(t0 + look * i));
        }
    }

    #[test]
    fn a_stream_is_a_rate_over_a_millisecond_or_more() {
        let us = Duration::from_micros;
        let t0 = Instant::now();
        let mut b = Stream::new(t0);
        // A stream: 64 KiB frames every 100 us (5 Gbit/s).
        for i in 1..=20 {
            b.add(65536, t0 + us(100) * i);
        }
        assert!(b.get());
        // Connections: a few small frames a turn, 20 turns a millisecond.
        let t1 = t0 + us(2000);
        for i in 1..=40 {
            b.add(300, t1 + us(50) * i);
        }
        assert!(!b.get());
        // Nothing is decided before a millisecond has passed: one big turn
        // after a long sleep is judged against the whole span.
        let t2 = t1 + us(10_000);
        b.add(65536, t2);
        assert!(!b.get(), "64 KiB in 10 ms is 6.5 MB/s");
        b.add(200_000, t2 + us(500));
        assert!(!b.get(), "half a millisecond: still the last verdict");
        b.add(0, t2 + us(1000));
        assert!(b.get(), "200 KB in a millisecond");
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
