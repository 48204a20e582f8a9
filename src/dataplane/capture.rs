//! Live capture (`tapnet capture`): the daemon's capture hub, which
//! installs the running sessions in the switch as its [`CaptureHook`]
//! while at least one capture runs (with none, the switch pays one
//! predictable branch per stage and nothing else), and the sessions it
//! copies frames into.
//!
//! # Fast path
//! A worker offers each frame to every session: selection (all ports, a
//! network, a container's ports), kind (traffic, or drops with
//! `--drops`), then the session's BPF filter (libpcap compiled it; the
//! switch's [`tapnet_switch::bpf`] interpreter runs it, no FFI, no lock),
//! then a copy of at most `snaplen` bytes into a buffer taken from the
//! session's pool and a `try_send` on its bounded queue. Buffers are
//! `Vec`s that keep their capacity: after warm-up, no allocation. When the
//! pool, the queue or the byte budget is exhausted (the reader fell
//! behind), the frame is lost **to the capture only**, counted per port
//! (a small lock-free table) and reported at the end (an Interface
//! Statistics Block with `isb_ifdrop` per interface, and the CLI's stderr
//! line). The network never waits for a capture.
//!
//! # Reader
//! One thread per session ([`run_reader`]) turns records into pcapng: an
//! Interface Description Block the first time a port appears (named like
//! the port, `CONTAINER/ethN`, its network in `if_description`,
//! nanosecond timestamps), Enhanced Packet Blocks with the direction in
//! `epb_flags`, the virtio-net metadata as the `vnet_hdr` comment that
//! `tapnet replay` reads, and for drops a `drop_reason=...` comment. It
//! hands chunks to the HTTP body through a small bounded channel; a slow
//! client blocks only this thread. It ends when the count is reached,
//! the capture is stopped ([`Hub::stop`]) or the client went away.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tapnet_nat::NatDrop;
use tapnet_switch::pcapng::{self, EPB_INBOUND, EPB_OUTBOUND};
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::{bpf, CaptureHook, DropReason, NetworkId, Port, PortId, Switch};

/// Records one session may have queued.
const QUEUE: usize = 1024;
/// Bytes one session may have queued (TSO super-frames are up to 64 KiB).
const BYTE_BUDGET: usize = 32 << 20;
/// The initial capacity of a pooled buffer (grows once for larger frames).
const BUF_CAPACITY: usize = 2048;
/// Slots of the per-port table of lost frames.
const LOST_SLOTS: usize = 64;

/// Which ports a capture sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every port, including ports added while it runs.
    All,
    /// The ports of one network.
    Network(NetworkId),
    /// A container's ports: port names `PREFIX/IFNAME` for one of the
    /// prefixes (its name, its short id), one interface or all.
    Container {
        prefixes: Vec<String>,
        interface: Option<String>,
    },
}

impl Selection {
    #[inline]
    fn matches(&self, port: &Port) -> bool {
        match self {
            Selection::All => true,
            Selection::Network(n) => port.network() == *n,
            Selection::Container {
                prefixes,
                interface,
            } => {
                let Some((c, i)) = port.config.name.rsplit_once('/') else {
                    return false;
                };
                prefixes.iter().any(|p| p == c) && interface.as_deref().is_none_or(|want| want == i)
            }
        }
    }
}

/// What a capture asks for.
#[derive(Clone, Debug)]
pub struct CaptureSpec {
    pub selection: Selection,
    /// Dropped frames (with their reasons) instead of traffic.
    pub drops: bool,
    /// Bytes kept of each frame (0: all).
    pub snaplen: u32,
    /// Frames to capture before ending (0: until stopped).
    pub count: u64,
    pub filter: Option<bpf::Program>,
}

/// Why a frame was dropped, as the capture comment says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Switch(DropReason),
    Nat(NatDrop),
}

impl Reason {
    /// The pcapng comment: `drop_reason=icc_disabled`,
    /// `drop_reason=nat:internal`.
    pub fn comment(self) -> String {
        match self {
            Reason::Switch(r) => format!("drop_reason={}", r.as_str()),
            Reason::Nat(r) => format!("drop_reason=nat:{}", r.as_str()),
        }
    }
}

/// One captured frame on its way to the reader.
struct Record {
    buf: Vec<u8>,
    orig_len: u32,
    port: PortId,
    flags: u32,
    ts_ns: u64,
    meta: VnetHdr,
    reason: Option<Reason>,
}

/// Frames lost per port (lock-free open addressing; ports beyond the
/// table's room count in `other`).
struct Lost {
    keys: [AtomicU32; LOST_SLOTS],
    counts: [AtomicU64; LOST_SLOTS],
    other: AtomicU64,
}

impl Lost {
    fn new() -> Lost {
        Lost {
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            other: AtomicU64::new(0),
        }
    }
    fn count(&self, port: PortId) {
        let key = port.0.wrapping_add(1);
        let start = (port.0 as usize).wrapping_mul(0x9E37_79B9) % LOST_SLOTS;
        for i in 0..LOST_SLOTS {
            let s = (start + i) % LOST_SLOTS;
            match self.keys[s].compare_exchange(0, key, Relaxed, Relaxed) {
                Ok(_) => {}
                Err(k) if k == key => {}
                Err(_) => continue,
            }
            self.counts[s].fetch_add(1, Relaxed);
            return;
        }
        self.other.fetch_add(1, Relaxed);
    }
    /// `(port, lost)` for every port that lost frames, and the rest.
    fn snapshot(&self) -> (Vec<(PortId, u64)>, u64) {
        let mut v = vec![];
        for s in 0..LOST_SLOTS {
            let k = self.keys[s].load(Relaxed);
            let n = self.counts[s].load(Relaxed);
            if k != 0 && n != 0 {
                v.push((PortId(k - 1), n));
            }
        }
        (v, self.other.load(Relaxed))
    }
}

/// One running capture.
pub struct Session {
    pub id: u64,
    spec: CaptureSpec,
    frames: Sender<Record>,
    free: Receiver<Vec<u8>>,
    free_tx: Sender<Vec<u8>>,
    queued_bytes: AtomicUsize,
    lost: Lost,
    stopped: AtomicBool,
}

impl Session {
    #[inline]
    fn offer(&self, port: &Port, flags: u32, meta: &VnetHdr, frame: &[u8], reason: Option<Reason>) {
        if reason.is_some() != self.spec.drops
            || self.stopped.load(Relaxed)
            || !self.spec.selection.matches(port)
        {
            return;
        }
        if let Some(f) = &self.spec.filter {
            if !f.matches(frame) {
                return;
            }
        }
        let cap = match self.spec.snaplen {
            0 => frame.len(),
            s => frame.len().min(s as usize),
        };
        if self.queued_bytes.load(Relaxed) + cap > BYTE_BUDGET {
            self.lost.count(port.id);
            return;
        }
        let Ok(mut buf) = self.free.try_recv() else {
            self.lost.count(port.id);
            return;
        };
        buf.clear();
        buf.extend_from_slice(&frame[..cap]);
        self.queued_bytes.fetch_add(cap, Relaxed);
        let rec = Record {
            buf,
            orig_len: frame.len() as u32,
            port: port.id,
            flags,
            ts_ns: wall_ns(),
            meta: *meta,
            reason,
        };
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) =
            self.frames.try_send(rec)
        {
            self.queued_bytes.fetch_sub(r.buf.len(), Relaxed);
            let _ = self.free_tx.try_send(r.buf);
            self.lost.count(port.id);
        }
    }
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The capture hub: the sessions, installed in the switch while any runs.
pub struct Hub {
    switch: Arc<Switch>,
    sessions: arc_swap::ArcSwap<Vec<Arc<Session>>>,
    /// Sessions with `drops`: the NAT thread looks before it compares
    /// its counters.
    drop_sessions: AtomicUsize,
    next_id: AtomicU64,
    ctl: parking_lot::Mutex<()>,
}

impl Hub {
    pub fn new(switch: Arc<Switch>) -> Arc<Hub> {
        Arc::new(Hub {
            switch,
            sessions: arc_swap::ArcSwap::from_pointee(Vec::new()),
            drop_sessions: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            ctl: parking_lot::Mutex::new(()),
        })
    }

    /// Starts a session (and installs the hub in the switch if it is the
    /// first). Its buffers are allocated here, not per frame. Pass the
    /// result to [`run_reader`].
    pub fn start(&self, spec: CaptureSpec) -> Started {
        let (frames, frames_rx) = crossbeam_channel::bounded(QUEUE);
        let (free_tx, free) = crossbeam_channel::bounded(QUEUE);
        for _ in 0..QUEUE {
            let _ = free_tx.send(Vec::with_capacity(BUF_CAPACITY));
        }
        let s = Arc::new(Session {
            id: self.next_id.fetch_add(1, Relaxed),
            spec,
            frames,
            free,
            free_tx,
            queued_bytes: AtomicUsize::new(0),
            lost: Lost::new(),
            stopped: AtomicBool::new(false),
        });
        let _g = self.ctl.lock();
        let mut v = Vec::clone(&self.sessions.load());
        v.push(s.clone());
        if s.spec.drops {
            self.drop_sessions.fetch_add(1, Relaxed);
        }
        let v = Arc::new(v);
        self.sessions.store(v.clone());
        self.switch.set_capture(Some(Arc::new(Installed(v))));
        Started {
            session: s,
            rx: frames_rx,
        }
    }

    /// Asks a session to end (its reader finishes the file); false if no
    /// such session runs.
    pub fn stop(&self, id: u64) -> bool {
        match self.sessions.load().iter().find(|s| s.id == id) {
            Some(s) => {
                s.stopped.store(true, Relaxed);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        let _g = self.ctl.lock();
        let mut v = Vec::clone(&self.sessions.load());
        if let Some(i) = v.iter().position(|s| s.id == id) {
            let s = v.remove(i);
            s.stopped.store(true, Relaxed);
            if s.spec.drops {
                self.drop_sessions.fetch_sub(1, Relaxed);
            }
        }
        let v = Arc::new(v);
        self.sessions.store(v.clone());
        self.switch.set_capture(if v.is_empty() {
            None
        } else {
            Some(Arc::new(Installed(v)))
        });
    }

    /// Whether a capture of drops runs (the NAT thread checks this before
    /// it looks for a drop to report).
    #[inline]
    pub fn wants_drops(&self) -> bool {
        self.drop_sessions.load(Relaxed) != 0
    }

    /// A frame the NAT dropped, from `port`.
    pub fn nat_drop(&self, port: PortId, meta: &VnetHdr, frame: &[u8], reason: NatDrop) {
        let topo = self.switch.topology();
        let Some(p) = topo.port(port) else { return };
        for s in self.sessions.load().iter() {
            s.offer(p, EPB_INBOUND, meta, frame, Some(Reason::Nat(reason)));
        }
    }

    /// Running sessions.
    pub fn len(&self) -> usize {
        self.sessions.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the switch calls while captures run: the sessions of one moment,
/// immutable, installed in the switch's topology snapshot by [`Hub`] at
/// each start and end of a session. A worker reaches them through the
/// snapshot it already holds: no atomic load per frame, only the loop over
/// the sessions (their selection first).
struct Installed(Arc<Vec<Arc<Session>>>);

impl CaptureHook for Installed {
    #[inline]
    fn on_ingress(&self, port: &Port, meta: &VnetHdr, frame: &[u8]) {
        for s in self.0.iter() {
            s.offer(port, EPB_INBOUND, meta, frame, None);
        }
    }
    #[inline]
    fn on_egress(&self, port: &Port, meta: &VnetHdr, frame: &[u8]) {
        for s in self.0.iter() {
            s.offer(port, EPB_OUTBOUND, meta, frame, None);
        }
    }
    fn on_drop(&self, port: &Port, meta: &VnetHdr, frame: &[u8], reason: DropReason) {
        for s in self.0.iter() {
            s.offer(port, EPB_INBOUND, meta, frame, Some(Reason::Switch(reason)));
        }
    }
    fn on_egress_drop(&self, port: &Port, meta: &VnetHdr, frame: &[u8], reason: DropReason) {
        for s in self.0.iter() {
            s.offer(
                port,
                EPB_OUTBOUND,
                meta,
                frame,
                Some(Reason::Switch(reason)),
            );
        }
    }
}

/// A started session and the receiving end of its queue.
pub struct Started {
    pub session: Arc<Session>,
    rx: Receiver<Record>,
}

/// How a capture ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub captured: u64,
    pub lost: u64,
    /// The client went away before the end.
    pub client_gone: bool,
}

/// Turns the session's records into pcapng and passes the bytes to `out`
/// in chunks, until the count is reached, the session is stopped or `out`
/// is closed; then writes one Interface Statistics Block per interface
/// (`isb_ifdrop`: frames lost by the capture) and removes the session.
pub fn run_reader(
    hub: &Hub,
    started: Started,
    out: tokio::sync::mpsc::Sender<axum::body::Bytes>,
) -> Summary {
    let Started { session, rx } = started;
    let mut sum = Summary::default();
    let r = write_capture(hub, &session, &rx, &out, &mut sum);
    hub.remove(session.id);
    // Records still queued go with `rx`; the pool goes with the session.
    if r.is_err() {
        sum.client_gone = true;
    }
    sum
}

struct Gone;

fn write_capture(
    hub: &Hub,
    s: &Session,
    rx: &Receiver<Record>,
    out: &tokio::sync::mpsc::Sender<axum::body::Bytes>,
    sum: &mut Summary,
) -> Result<(), Gone> {
    let mut w = pcapng::Writer::new(Vec::with_capacity(1 << 16)).map_err(|_| Gone)?;
    let mut ifaces: HashMap<PortId, u32> = HashMap::new();
    let count = s.spec.count;
    let flush = |w: &mut pcapng::Writer<Vec<u8>>| -> Result<(), Gone> {
        let b = std::mem::take(w.get_mut());
        if b.is_empty() {
            return Ok(());
        }
        out.blocking_send(axum::body::Bytes::from(b))
            .map_err(|_| Gone)
    };
    flush(&mut w)?;
    'outer: while !s.stopped.load(Relaxed) {
        if out.is_closed() {
            return Err(Gone);
        }
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let mut next = Some(first);
        while let Some(r) = next.take() {
            s.queued_bytes.fetch_sub(r.buf.len(), Relaxed);
            let iface = interface(hub, &mut w, &mut ifaces, r.port, s.spec.snaplen)?;
            let vnet = pcapng::vnet_comment(&r.meta);
            let drop = r.reason.map(Reason::comment);
            let mut comments: Vec<&str> = vec![];
            if let Some(c) = &drop {
                comments.push(c);
            }
            if let Some(c) = &vnet {
                comments.push(c);
            }
            w.write_captured(iface, r.ts_ns, &r.buf, r.orig_len, r.flags, &comments)
                .map_err(|_| Gone)?;
            let _ = s.free_tx.try_send(r.buf);
            sum.captured += 1;
            if count != 0 && sum.captured >= count {
                break 'outer;
            }
            if w.get_mut().len() >= 1 << 16 {
                flush(&mut w)?;
            }
            next = rx.try_recv().ok();
        }
        flush(&mut w)?;
    }
    s.stopped.store(true, Relaxed);
    let (lost, other) = s.lost.snapshot();
    let now = wall_ns();
    let mut per: HashMap<u32, u64> = HashMap::new();
    for (p, n) in lost {
        let i = interface(hub, &mut w, &mut ifaces, p, s.spec.snaplen)?;
        *per.entry(i).or_default() += n;
        sum.lost += n;
    }
    sum.lost += other;
    let mut all: Vec<u32> = ifaces.values().copied().collect();
    all.sort_unstable();
    for (k, i) in all.iter().enumerate() {
        // Losses of ports beyond the table's room go to the first ISB.
        let extra = if k == 0 { other } else { 0 };
        let n = per.get(i).copied().unwrap_or(0) + extra;
        w.write_statistics(*i, now, n).map_err(|_| Gone)?;
    }
    flush(&mut w)
}

/// The interface index of `port`, writing its IDB the first time.
fn interface(
    hub: &Hub,
    w: &mut pcapng::Writer<Vec<u8>>,
    ifaces: &mut HashMap<PortId, u32>,
    port: PortId,
    snaplen: u32,
) -> Result<u32, Gone> {
    if let Some(&i) = ifaces.get(&port) {
        return Ok(i);
    }
    let topo = hub.switch.topology();
    let (name, desc) = match topo.port(port) {
        Some(p) => {
            let net = topo
                .network(p.network())
                .map(|n| n.config.name.clone())
                .unwrap_or_default();
            (p.config.name.clone(), format!("network {net}"))
        }
        None => (format!("port-{}", port.0), String::new()),
    };
    let i = w
        .add_interface_described(&name, &desc, snaplen)
        .map_err(|_| Gone)?;
    ifaces.insert(port, i);
    Ok(i)
}

/// Compiles a tcpdump filter with libpcap for Ethernet frames; the error
/// is libpcap's message.
pub fn compile_filter(filter: &str) -> Result<bpf::Program, String> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
    let prog = dead.compile(filter, true).map_err(|e| e.to_string())?;
    let lines: Vec<String> = prog
        .get_instructions()
        .iter()
        .map(|i| i.to_string())
        .collect();
    bpf::Program::parse(lines.iter().map(String::as_str)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_match() {
        let p = compile_filter("icmp").unwrap();
        let mut f = vec![0u8; 60];
        f[12] = 8;
        f[14] = 0x45;
        f[23] = 1;
        assert!(p.matches(&f));
        f[23] = 6;
        assert!(!p.matches(&f));
        let e = compile_filter("icmp and and").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
    }

    #[test]
    fn lost_table_counts_per_port() {
        let l = Lost::new();
        for p in 0..100u32 {
            l.count(PortId(p));
        }
        l.count(PortId(7));
        let (v, other) = l.snapshot();
        assert_eq!(v.len(), LOST_SLOTS);
        assert_eq!(other, 100 - LOST_SLOTS as u64);
        let total: u64 = v.iter().map(|x| x.1).sum::<u64>() + other;
        assert_eq!(total, 101);
    }
}
