//! The container-side leg of a relayed TCP connection: a smoltcp TCP
//! socket that terminates the container's connection at the gateway, one
//! per flow, sans-IO (IP packets in, IP packets out through a callback, a
//! clock passed in).
//!
//! # Why one interface per flow
//! smoltcp finds a packet's socket by scanning its socket set. The
//! connection table already maps each packet to its flow in O(1), so each
//! flow gets its own interface holding one socket: dispatch stays O(1)
//! with thousands of flows, and a listening socket can never pick up
//! another flow's SYN.
//!
//! # Addresses
//! The interface owns the network's gateway address with AnyIP and a
//! default route through itself, so it accepts (and sends from) any
//! address: an outbound flow's socket listens on the remote address the
//! container asked for; a published port's socket connects to the
//! container from the real client's address.
//!
//! # Offloads
//! The interface's MTU is 65535: the container's SYN has its MSS option
//! raised ([`raise_syn_mss`]) so that smoltcp sends 64 KiB segments, which
//! the edge hands to the TAP as TSO super-frames (the real MSS goes in the
//! virtio-net header; [`finish_tcp_segment`]). Checksums: smoltcp neither
//! computes nor verifies TCP checksums; the edge leaves a partial checksum
//! (`NEEDS_CSUM`) for the TAP or the receiving stack, as a NIC would.
//! Received segments are not verified either: they come from a local TAP
//! whose frames the kernel built (most with a partial checksum).

use core::net::{Ipv4Addr, SocketAddrV4};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
pub use smoltcp::socket::tcp::State as TcpSocketState;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

/// Largest IP packet the leg sends or accepts.
pub const MTU: usize = 65535;
/// MSS the container's SYN is given, so smoltcp sends segments up to the
/// MTU (IPv4 and TCP headers without options).
pub const RAISED_MSS: u16 = (MTU - 40) as u16;

/// Bytes a callback's buffer holds before the IP packet (room for the
/// virtio-net and Ethernet headers, so the edge writes one buffer).
pub const HEADROOM: usize = 12 + 14;

/// Socket buffer sizes.
#[derive(Clone, Copy, Debug)]
pub struct LegConfig {
    /// Receive buffer (the window offered to the container).
    pub rx_buffer: usize,
    /// Send buffer (data read from the host socket not yet acknowledged
    /// by the container).
    pub tx_buffer: usize,
    pub random_seed: u64,
}

impl Default for LegConfig {
    fn default() -> Self {
        LegConfig {
            rx_buffer: 1024 * 1024,
            tx_buffer: 1024 * 1024,
            random_seed: 0,
        }
    }
}

/// Where a leg's outgoing packets go: `buf[HEADROOM..]` holds the IP
/// packet, `buf[..HEADROOM]` is free for the edge's headers.
pub type Sink<'a> = &'a mut (dyn FnMut(&mut [u8]) + 'a);

/// One flow's smoltcp interface and socket.
pub struct Leg {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

struct Dev<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut [u8],
    sink: &'a mut (dyn FnMut(&mut [u8]) + 'a),
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a> {
    buf: &'a mut [u8],
    sink: &'a mut (dyn FnMut(&mut [u8]) + 'a),
}

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let r = f(&mut self.buf[HEADROOM..HEADROOM + len]);
        (self.sink)(&mut self.buf[..HEADROOM + len]);
        r
    }
}

impl Device for Dev<'_> {
    type RxToken<'c>
        = Rx<'c>
    where
        Self: 'c;
    type TxToken<'c>
        = Tx<'c>
    where
        Self: 'c;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let rx = self.rx.take()?;
        Some((
            Rx(rx),
            Tx {
                buf: self.tx,
                sink: self.sink,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx {
            buf: self.tx,
            sink: self.sink,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        caps()
    }
}

fn caps() -> DeviceCapabilities {
    let mut c = DeviceCapabilities::default();
    c.medium = Medium::Ip;
    c.max_transmission_unit = MTU;
    let mut sum = ChecksumCapabilities::ignored();
    // The IPv4 header checksum is always checked by the receiver: compute
    // it (20 bytes); never verify (local TAP).
    sum.ipv4 = Checksum::Tx;
    sum.tcp = Checksum::None;
    c.checksum = sum;
    c
}

/// A scratch transmit buffer for [`Leg`] calls (one per thread).
pub fn tx_buffer() -> Box<[u8]> {
    vec![0u8; HEADROOM + MTU].into_boxed_slice()
}

fn now_instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

impl Leg {
    fn new(gateway: Ipv4Addr, prefix: u8, cfg: &LegConfig, now_ns: u64) -> Leg {
        let mut tx = [0u8; 0];
        let mut none = |_: &mut [u8]| {};
        let mut dev = Dev {
            rx: None,
            tx: &mut tx,
            sink: &mut none,
        };
        let mut ic = IfaceConfig::new(HardwareAddress::Ip);
        ic.random_seed = cfg.random_seed;
        let mut iface = Interface::new(ic, &mut dev, now_instant(now_ns));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(gateway), prefix));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        iface.set_any_ip(true);
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; cfg.rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; cfg.tx_buffer]),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        // Dead container or client: give up like a host stack would.
        sock.set_timeout(Some(Duration::from_secs(120)));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(sock);
        Leg {
            iface,
            sockets,
            handle,
        }
    }

    /// A leg for a connection the container opens to `remote`: it accepts
    /// the container's SYN (feed it with [`Leg::ingress`]).
    pub fn accept(
        gateway: Ipv4Addr,
        prefix: u8,
        remote: SocketAddrV4,
        cfg: &LegConfig,
        now_ns: u64,
    ) -> Leg {
        let mut leg = Leg::new(gateway, prefix, cfg, now_ns);
        let ep = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*remote.ip())),
            port: remote.port(),
        };
        // Cannot fail: the socket is new and the port non-zero (callers
        // never relay port 0; then the leg stays closed and answers RST).
        let _ = leg.socket().listen(ep);
        leg
    }

    /// A leg that connects to the container at `container` from `client`
    /// (a published port's connection); send its SYN with [`Leg::poll`].
    pub fn connect(
        gateway: Ipv4Addr,
        prefix: u8,
        client: SocketAddrV4,
        container: SocketAddrV4,
        cfg: &LegConfig,
        now_ns: u64,
    ) -> Option<Leg> {
        let mut leg = Leg::new(gateway, prefix, cfg, now_ns);
        let remote = IpEndpoint::new(IpAddress::Ipv4(*container.ip()), container.port());
        let local = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*client.ip())),
            port: client.port(),
        };
        let Leg {
            iface,
            sockets,
            handle,
        } = &mut leg;
        sockets
            .get_mut::<tcp::Socket>(*handle)
            .connect(iface.context(), remote, local)
            .ok()?;
        Some(leg)
    }

    /// The TCP socket (read what the container sent, queue what goes to
    /// it, close, abort).
    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// Processes one IP packet from the container. Answers it produces
    /// at once (a RST) go to `sink`; ACKs and data wait for the next
    /// [`Leg::poll`], so that a batch of packets gets one ACK.
    pub fn ingress(&mut self, now_ns: u64, packet: &[u8], tx: &mut [u8], sink: Sink<'_>) {
        let now = now_instant(now_ns);
        let mut dev = Dev {
            rx: Some(packet),
            tx,
            sink,
        };
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Sends what is due (data queued, ACKs, retransmissions, FIN).
    pub fn poll(&mut self, now_ns: u64, tx: &mut [u8], sink: Sink<'_>) {
        let now = now_instant(now_ns);
        let mut dev = Dev { rx: None, tx, sink };
        let _ = self.iface.poll_egress(now, &mut dev, &mut self.sockets);
    }

    /// When the leg next needs [`Leg::poll`] (a retransmission or delayed
    /// segment), in the same clock as `now_ns`; `None`: not before new
    /// input.
    pub fn poll_at_ns(&mut self, now_ns: u64) -> Option<u64> {
        let at = self.iface.poll_at(now_instant(now_ns), &self.sockets)?;
        Some((at.total_micros().max(0) as u64).saturating_mul(1000))
    }
}

/// TCP header offset and length of an IPv4 packet carrying TCP, if sane.
fn tcp_bounds(ip: &[u8]) -> Option<(usize, usize)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ip.len() < ihl + 20 {
        return None;
    }
    let doff = usize::from(ip[ihl + 12] >> 4) * 4;
    if doff < 20 || ip.len() < ihl + doff {
        return None;
    }
    Some((ihl, doff))
}

/// Raises the MSS option of a SYN (or SYN+ACK) in an IPv4 packet to
/// [`RAISED_MSS`]; returns the container's original MSS. The TCP checksum
/// is not fixed: legs do not verify it.
pub fn raise_syn_mss(ip: &mut [u8]) -> Option<u16> {
    let (ihl, doff) = tcp_bounds(ip)?;
    let t = &mut ip[ihl..ihl + doff];
    if t[13] & 0x02 == 0 {
        return None;
    }
    let mut i = 20;
    while i < doff {
        match t[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*t.get(i + 1)?);
                if len < 2 || i + len > doff {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([t[i + 2], t[i + 3]]);
                    t[i + 2..i + 4].copy_from_slice(&RAISED_MSS.to_be_bytes());
                    return Some(old);
                }
                i += len;
            }
        }
    }
    None
}

/// What a TAP needs to know about a TCP packet a leg sent (see
/// [`finish_tcp_segment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentOffload {
    /// Offset of the TCP header in the IP packet.
    pub l4_offset: usize,
    /// IP + TCP header length.
    pub headers_len: usize,
    /// TCP payload length.
    pub payload_len: usize,
}

/// Writes the partial TCP checksum (pseudo-header sum, not complemented)
/// of a packet a leg sent, for the receiver to complete (`NEEDS_CSUM`).
pub fn finish_tcp_segment(ip: &mut [u8]) -> Option<SegmentOffload> {
    let (ihl, doff) = tcp_bounds(ip)?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let l4 = total.checked_sub(ihl)?;
    let mut acc: u32 = 0;
    for w in ip[12..20].chunks_exact(2) {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    acc += 6 + l4 as u32;
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    ip[ihl + 16..ihl + 18].copy_from_slice(&(acc as u16).to_be_bytes());
    Some(SegmentOffload {
        l4_offset: ihl,
        headers_len: ihl + doff,
        payload_len: l4 - doff,
    })
}

/// The RST answering `segment` (an IPv4 TCP packet from the container to
/// which no leg belongs, or whose connection failed), written to
/// `out[HEADROOM..]`; returns the IP packet's length. RFC 9293 3.10.7.1:
/// with ACK, `<SEQ=SEG.ACK><CTL=RST>`; without, `<SEQ=0><ACK=SEG.SEQ+
/// SEG.LEN><CTL=RST,ACK>`. Never answers a RST.
pub fn rst_for(segment: &[u8], out: &mut [u8]) -> Option<usize> {
    let (ihl, doff) = tcp_bounds(segment)?;
    let t = &segment[ihl..];
    let flags = t[13];
    if flags & 0x04 != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([segment[2], segment[3]])).min(segment.len());
    let payload = total.saturating_sub(ihl + doff) as u32;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let o = out.get_mut(HEADROOM..HEADROOM + 40)?;
    o.fill(0);
    o[0] = 0x45;
    o[2..4].copy_from_slice(&40u16.to_be_bytes());
    o[6] = 0x40; // DF
    o[8] = 64;
    o[9] = 6;
    o[12..16].copy_from_slice(&segment[16..20]);
    o[16..20].copy_from_slice(&segment[12..16]);
    let csum = !fold(sum(&o[..20]));
    o[10..12].copy_from_slice(&csum.to_be_bytes());
    let r = &mut o[20..40];
    r[0..2].copy_from_slice(&t[2..4]);
    r[2..4].copy_from_slice(&t[0..2]);
    if flags & 0x10 != 0 {
        r[4..8].copy_from_slice(&ack.to_be_bytes());
        r[13] = 0x04;
    } else {
        let len = payload + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
        r[8..12].copy_from_slice(&seq.wrapping_add(len).to_be_bytes());
        r[13] = 0x14;
    }
    r[12] = 5 << 4;
    let mut acc = sum(&o[12..20]) + 6 + 20;
    acc += sum(&o[20..40]);
    let c = !fold(acc);
    o[36..38].copy_from_slice(&c.to_be_bytes());
    Some(40)
}

fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    /// Two legs wired back to back: `a` connects from 192.0.2.9:40000 to
    /// 10.0.0.2:80, `b` accepts at 10.0.0.2:80 (its "remote"), as an
    /// outbound leg does for a container dialing out. Packets are moved
    /// between them by hand.
    #[test]
    fn two_legs_exchange_data_and_close() {
        let cfg = LegConfig {
            rx_buffer: 4096,
            tx_buffer: 4096,
            random_seed: 1,
        };
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 40000);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
        let mut a = Leg::connect(GW, 24, client, server, &cfg, 0).unwrap();
        let mut b = Leg::accept(GW, 24, server, &cfg, 0);
        let mut tx = tx_buffer();
        let mut to_b: Vec<Vec<u8>> = Vec::new();
        let mut to_a: Vec<Vec<u8>> = Vec::new();
        let mut now = 0u64;
        let mut step =
            |a: &mut Leg, b: &mut Leg, to_a: &mut Vec<Vec<u8>>, to_b: &mut Vec<Vec<u8>>| {
                now += 1_000_000;
                a.poll(now, &mut tx, &mut |p| to_b.push(p[HEADROOM..].to_vec()));
                for mut p in std::mem::take(to_b) {
                    raise_syn_mss(&mut p);
                    b.ingress(now, &p, &mut tx, &mut |p| to_a.push(p[HEADROOM..].to_vec()));
                }
                b.poll(now, &mut tx, &mut |p| to_a.push(p[HEADROOM..].to_vec()));
                for p in std::mem::take(to_a) {
                    a.ingress(now, &p, &mut tx, &mut |p| to_b.push(p[HEADROOM..].to_vec()));
                }
            };
        for _ in 0..5 {
            step(&mut a, &mut b, &mut to_a, &mut to_b);
        }
        assert_eq!(a.socket().state(), tcp::State::Established);
        assert_eq!(b.socket().state(), tcp::State::Established);
        assert_eq!(
            b.socket().remote_endpoint().unwrap(),
            IpEndpoint::new(IpAddress::Ipv4(*client.ip()), client.port())
        );
        a.socket().send_slice(b"hello").unwrap();
        a.socket().close();
        for _ in 0..5 {
            step(&mut a, &mut b, &mut to_a, &mut to_b);
        }
        let mut got = [0u8; 16];
        let n = b.socket().recv_slice(&mut got).unwrap();
        assert_eq!(&got[..n], b"hello");
        assert!(!b.socket().may_recv());
    }

    #[test]
    fn rst_answers_a_syn() {
        // 10.0.0.2:1234 -> 192.0.2.1:80 SYN, seq 100.
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&100u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x02;
        let mut out = tx_buffer();
        let n = rst_for(&p, &mut out).unwrap();
        let r = &out[HEADROOM..HEADROOM + n];
        assert_eq!(&r[12..16], &[192, 0, 2, 1]);
        assert_eq!(&r[16..20], &[10, 0, 0, 2]);
        assert_eq!(u16::from_be_bytes([r[20], r[21]]), 80);
        assert_eq!(u32::from_be_bytes([r[28], r[29], r[30], r[31]]), 101);
        assert_eq!(r[33], 0x14);
        assert_eq!(fold(sum(&r[..20])), 0xffff);
        let mut acc = sum(&r[12..20]) + 6 + 20 + sum(&r[20..40]);
        acc = u32::from(fold(acc));
        assert_eq!(acc, 0xffff);
    }

    #[test]
    fn raises_mss() {
        let mut p = vec![0u8; 44];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&44u16.to_be_bytes());
        p[9] = 6;
        p[32] = 6 << 4;
        p[33] = 0x02;
        p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        assert_eq!(raise_syn_mss(&mut p), Some(1460));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), RAISED_MSS);
    }
}
