//! The NAT gateway driven in memory: a container's TCP stack (a smoltcp
//! socket, the same building block as the gateway's legs) on one side, a
//! fake host-socket side (streams with settable room, end of stream and
//! errors; datagram sockets that record what was sent) on the other, and
//! virtual time, in the style of quinn-proto's `tests/util.rs`. No real
//! socket, thread or clock.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use tapnet_nat::gateway::{RingReleases, RING_IDLE_NS};
use tapnet_nat::gateway::{BUFFER_LEN, FRAME_OFFSET};
use tapnet_nat::ip6::{self, icmp6, Ipv6Packet};
use tapnet_nat::leg::{self, IdleRing, Leg, LegConfig, LegTx, TcpSocketState, HEADROOM};
use tapnet_nat::{
    ConnectError, FlowHandle, FrameAction, Gateway, GatewayConfig, HostEvent, IcmpMode, NatDrop,
    NetInfo, Protocol, SocketId, SocketOp,
};
use tapnet_switch::wire::{
    ethernet, icmp, ipv4, tcp, vnet, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet,
    TcpPacket, UdpPacket, VnetHdr,
};
use tapnet_switch::{build, gateway_mac, Ipv6Config, NetworkId, PortId};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
const NET: NetworkId = NetworkId(1);
const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const C_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const C_PORT: PortId = PortId(7);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const C_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

fn c_mac() -> EthernetAddress {
    EthernetAddress([2, 0, 0, 0, 0, 2])
}

fn info() -> NetInfo {
    NetInfo {
        gateway: GW,
        prefix: 24,
        mtu: 1500,
        masquerade: true,
        internal: false,
        v6: Some(v6_side()),
    }
}

/// The network's IPv6 side (the IPv4 tests run on a dual-stack network).
fn v6_side() -> Ipv6Config {
    Ipv6Config {
        subnet: "2001:db8:1::".parse().unwrap(),
        prefix_len: 64,
        gateway: GW6,
    }
}

/// A fake host TCP stream: what the gateway wrote (`sent`, what the
/// remote received), what the remote sends (`incoming`), how much more
/// the host accepts before `WouldBlock` (`room`), end of stream and errors.
#[derive(Debug, Default)]
struct FakeStream {
    sent: Vec<u8>,
    incoming: VecDeque<u8>,
    room: usize,
    eof: bool,
    error: Option<io::ErrorKind>,
    shut_wr: bool,
}

impl Read for FakeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(k) = self.error {
            return Err(k.into());
        }
        if self.incoming.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.incoming.len());
        for (b, v) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

impl Write for FakeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(k) = self.error {
            return Err(k.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.sent.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A fake host socket.
#[derive(Debug)]
enum Fake {
    Connecting(SocketAddr),
    Stream(FakeStream),
    /// A connected UDP or ping socket and what was sent on it.
    Dgram(SocketAddr, Vec<Vec<u8>>),
}

/// How the fake host answers connects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dial {
    /// Left pending: the test completes it.
    Pending,
    Accept,
    Fail(ConnectError),
    /// No socket could be made.
    NoSocket,
}

/// A frame the gateway sent to a container.
#[derive(Clone, Debug)]
struct Out {
    port: PortId,
    meta: VnetHdr,
    frame: Vec<u8>,
    lane: Option<u8>,
}

impl Out {
    fn ip(&self) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(&self.frame[ethernet::HEADER_LEN..]).unwrap()
    }
    /// The IPv6 packet (checks the Ethernet type too).
    fn ip6(&self) -> Ipv6Packet<&[u8]> {
        let e = EthernetFrame::new_checked(&self.frame[..]).unwrap();
        assert_eq!(e.ethertype(), EtherType::Ipv6);
        Ipv6Packet::new_checked(&self.frame[ethernet::HEADER_LEN..]).unwrap()
    }
    /// The IPv6 payload (the upper-layer message).
    fn l4_6(&self) -> &[u8] {
        &self.frame[ethernet::HEADER_LEN + 40..]
    }
}

struct Harness {
    gw: Gateway,
    now: u64,
    socks: HashMap<FlowHandle, Fake>,
    closed: Vec<(FlowHandle, bool)>,
    /// Sockets closed, kept for inspection.
    graveyard: HashMap<FlowHandle, Fake>,
    /// Datagrams sent on published or raw sockets: (via, data, to).
    sent_unconnected: Vec<(SocketId, Vec<u8>, Option<SocketAddr>)>,
    dial: Dial,
    open_fails: bool,
    /// Datagram sockets' connects fail with this (no route, no neighbour).
    open_unreachable: Option<ConnectError>,
    /// The TTL the latest datagram sent was to go with.
    last_ttl: Option<u8>,
    /// Frames to the container not yet taken by the test.
    out: Vec<Out>,
    /// Stop giving buffers back (the workers are stuck).
    hold_buffers: bool,
    held: Vec<Box<[u8]>>,
    /// The lane container frames come in on.
    lane: u8,
    /// The workers' injection queues refuse what a relay hands on.
    refuse_early: bool,
    /// Where the gateway asked to connect, in order.
    dialed: Vec<SocketAddr>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(GatewayConfig::default(), info())
    }

    fn with(mut cfg: GatewayConfig, info: NetInfo) -> Harness {
        cfg.table.capacity = cfg.table.capacity.min(1024);
        cfg.leg = LegConfig {
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            random_seed: 1,
        };
        let mut gw = Gateway::new(cfg);
        gw.set_network(NET, info);
        gw.add_endpoint(NET, C_IP, Some(C_IP6), c_mac().0, C_PORT);
        Harness {
            gw,
            now: S,
            socks: HashMap::new(),
            closed: Vec::new(),
            graveyard: HashMap::new(),
            sent_unconnected: Vec::new(),
            dial: Dial::Accept,
            open_fails: false,
            open_unreachable: None,
            last_ttl: None,
            out: Vec::new(),
            hold_buffers: false,
            held: Vec::new(),
            lane: 0,
            refuse_early: false,
            dialed: Vec::new(),
        }
    }

    fn drops(&self, r: NatDrop) -> u64 {
        self.gw.drops().get(r)
    }

    fn stream(&mut self, h: FlowHandle) -> &mut FakeStream {
        let s = match self.socks.get_mut(&h) {
            Some(s) => Some(s),
            None => self.graveyard.get_mut(&h),
        };
        match s {
            Some(Fake::Stream(s)) => s,
            other => panic!("flow {h:?} has no stream: {other:?}"),
        }
    }

    /// A container frame in: the gateway, then what it asked for.
    fn frame(&mut self, meta: VnetHdr, mut frame: Vec<u8>) {
        let a = self
            .gw
            .handle_frame(self.now, NET, self.lane, &meta, &mut frame);
        self.pump();
        let whole = self.gw.take_whole();
        if a == FrameAction::None {
            return;
        }
        let o = a
            .outgoing(&frame, whole.as_deref())
            .unwrap_or_else(|| panic!("{a:?}: payload outside its buffer"));
        self.last_ttl = o.ttl;
        let (via, data, to, segment) = (o.via, o.data, o.to, o.segment);
        let datagrams: Vec<Vec<u8>> = match segment {
            Some(n) => data.chunks(n).map(<[u8]>::to_vec).collect(),
            None => vec![data.to_vec()],
        };
        if let Some(b) = whole {
            self.gw.recycle_whole(b);
        }
        for d in datagrams {
            match via {
                SocketId::Flow(h) => {
                    // Nothing when the open failed.
                    if let Some(Fake::Dgram(_, sent)) = self.socks.get_mut(&h) {
                        sent.push(d);
                    }
                }
                _ => self.sent_unconnected.push((via, d, to)),
            }
        }
    }

    /// A container's IP packet (either family), in an Ethernet frame to
    /// the gateway.
    fn ip_in(&mut self, packet: &[u8]) {
        let t = if packet[0] >> 4 == 6 {
            EtherType::Ipv6
        } else {
            EtherType::Ipv4
        };
        let f = build::ethernet(gateway_mac(GW), c_mac(), t, packet);
        self.frame(VnetHdr::default(), f);
    }

    /// Performs socket ops and collects frames until nothing is left.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            while let Some(op) = self.gw.poll_socket_op() {
                any = true;
                self.op(op);
            }
            while let Some(t) = self.gw.poll_transmit() {
                any = true;
                self.take_transmit(t);
            }
            if !any {
                return;
            }
        }
    }

    fn op(&mut self, op: SocketOp) {
        let now = self.now;
        if let SocketOp::Connect { to, .. } = op {
            self.dialed.push(to);
        }
        match op {
            SocketOp::Connect { flow, to } => match self.dial {
                Dial::Pending => {
                    self.socks.insert(flow, Fake::Connecting(to));
                }
                Dial::Accept => {
                    self.socks.insert(
                        flow,
                        Fake::Stream(FakeStream {
                            room: usize::MAX,
                            ..Default::default()
                        }),
                    );
                    self.gw
                        .handle_socket_event(now, SocketId::Flow(flow), HostEvent::Connected);
                }
                Dial::Fail(e) => self.gw.handle_socket_event(
                    now,
                    SocketId::Flow(flow),
                    HostEvent::ConnectFailed(e),
                ),
                Dial::NoSocket => {
                    self.gw
                        .handle_socket_event(now, SocketId::Flow(flow), HostEvent::OpenFailed)
                }
            },
            SocketOp::OpenUdp { flow, to } => self.open_dgram(flow, to),
            SocketOp::OpenPing { flow, to } => self.open_dgram(flow, SocketAddr::new(to, 0)),
            SocketOp::Relay(h) => {
                if let Some(Fake::Stream(mut s)) = self.socks.remove(&h) {
                    let mut early = Vec::new();
                    let refuse = self.refuse_early;
                    self.gw.relay_tcp(now, h, &mut s, &mut |t| {
                        if refuse {
                            return Err(t);
                        }
                        early.push(t);
                        Ok(())
                    });
                    self.socks.insert(h, Fake::Stream(s));
                    for t in early {
                        self.take_transmit(t);
                    }
                }
            }
            SocketOp::Read(_) => {}
            SocketOp::ShutdownWrite(h) => {
                if let Some(Fake::Stream(s)) = self.socks.get_mut(&h) {
                    s.shut_wr = true;
                }
            }
            SocketOp::Close { flow, reset } => {
                if let Some(s) = self.socks.remove(&flow) {
                    self.graveyard.insert(flow, s);
                }
                self.closed.push((flow, reset));
            }
        }
    }

    /// A frame for the container: recorded, its buffer given back (or
    /// held, when the workers are stuck).
    fn take_transmit(&mut self, t: tapnet_nat::Transmit) {
        assert_eq!(t.buf.len(), BUFFER_LEN);
        self.out.push(Out {
            port: t.port,
            meta: t.meta,
            frame: t.buf[FRAME_OFFSET..FRAME_OFFSET + t.len].to_vec(),
            lane: t.lane,
        });
        if self.hold_buffers {
            self.held.push(t.buf);
        } else {
            self.gw.recycle(t.buf);
        }
    }

    fn open_dgram(&mut self, flow: FlowHandle, to: SocketAddr) {
        if self.open_fails {
            self.gw
                .handle_socket_event(self.now, SocketId::Flow(flow), HostEvent::OpenFailed);
        } else if let Some(e) = self.open_unreachable {
            let ev = HostEvent::OpenUnreachable(e);
            self.gw
                .handle_socket_event(self.now, SocketId::Flow(flow), ev);
        } else {
            self.socks.insert(flow, Fake::Dgram(to, Vec::new()));
        }
    }

    /// A datagram from the host side of `id`.
    fn host_datagram(&mut self, id: SocketId, data: &[u8], from: Option<SocketAddr>) -> bool {
        let Some(buf) = self.gw.recv_buffer(id) else {
            return false;
        };
        buf[..data.len()].copy_from_slice(data);
        self.gw.handle_datagram(self.now, id, data.len(), from);
        self.pump();
        true
    }

    /// Datagrams of `segment` bytes (the last may be shorter) read from
    /// the host side of `id` at once (`UDP_GRO`).
    fn host_datagrams(
        &mut self,
        id: SocketId,
        data: &[u8],
        from: Option<SocketAddr>,
        segment: usize,
    ) -> bool {
        let Some(buf) = self.gw.recv_buffer(id) else {
            return false;
        };
        buf[..data.len()].copy_from_slice(data);
        self.gw
            .handle_datagrams(self.now, id, data.len(), from, Some(segment));
        self.pump();
        true
    }

    /// Time passes.
    fn advance(&mut self, ns: u64) {
        self.now += ns;
        self.gw.handle_timeout(self.now);
        self.pump();
    }

    fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// The flow handles the gateway opened sockets for, in order.
    fn only_flow(&self) -> FlowHandle {
        assert_eq!(self.socks.len(), 1, "{:?}", self.socks.keys());
        *self.socks.keys().next().unwrap()
    }
}

/// The container's TCP stack: a smoltcp socket (a [`Leg`]) whose IP
/// packets travel in Ethernet frames to the gateway MAC.
struct Container {
    leg: Leg,
    tx: ContainerTx,
}

#[derive(Default)]
struct ContainerTx {
    pending: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl LegTx for ContainerTx {
    fn ready(&mut self) -> bool {
        true
    }
    fn buffer(&mut self) -> &mut [u8] {
        self.buf.resize(leg::TX_BUFFER_LEN, 0);
        &mut self.buf
    }
    fn commit(&mut self, len: usize) {
        self.pending
            .push(self.buf[HEADROOM..HEADROOM + len].to_vec());
    }
}

impl Container {
    /// A connection from the container's IPv6 address (port 40000) to `to`.
    fn dial6(to: SocketAddrV6, now: u64) -> Container {
        let cfg = LegConfig {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            random_seed: 2,
        };
        let from = SocketAddrV6::new(C_IP6, 40000, 0, 0);
        let leg = Leg::connect(GW6, 64, from, to, &cfg, now).unwrap();
        Container {
            leg,
            tx: ContainerTx::default(),
        }
    }

    /// A server on the container's IPv6 address, on `port`.
    fn listen6(port: u16, now: u64) -> Container {
        let cfg = LegConfig {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            random_seed: 3,
        };
        let at = SocketAddrV6::new(C_IP6, port, 0, 0);
        Container {
            leg: Leg::accept(GW6, 64, at, &cfg, now),
            tx: ContainerTx::default(),
        }
    }

    /// A connection from the container (port 40000) to `to`.
    fn dial(to: SocketAddrV4, now: u64) -> Container {
        let cfg = LegConfig {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            random_seed: 2,
        };
        let leg = Leg::connect(GW, 24, SocketAddrV4::new(C_IP, 40000), to, &cfg, now).unwrap();
        Container {
            leg,
            tx: ContainerTx::default(),
        }
    }

    /// A server in the container listening on `port`.
    fn listen(port: u16, now: u64) -> Container {
        let cfg = LegConfig {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            random_seed: 3,
        };
        Container {
            leg: Leg::accept(GW, 24, SocketAddrV4::new(C_IP, port), &cfg, now),
            tx: ContainerTx::default(),
        }
    }
}

/// One round trip of virtual time: the container sends what it has, the
/// gateway answers, the container takes the answers. Returns the frames
/// the container got.
fn step(h: &mut Harness, c: &mut Container) -> Vec<Out> {
    h.now += MS;
    for _ in 0..64 {
        c.leg.poll(h.now, &mut c.tx);
    }
    let mut got = Vec::new();
    for p in std::mem::take(&mut c.tx.pending) {
        h.ip_in(&p);
    }
    h.gw.handle_timeout(h.now);
    h.pump();
    for o in h.take_out() {
        assert_eq!(o.port, C_PORT);
        c.leg
            .ingress(h.now, &o.frame[ethernet::HEADER_LEN..], &mut c.tx);
        got.push(o);
    }
    got
}

fn steps(h: &mut Harness, c: &mut Container, n: usize) -> Vec<Out> {
    (0..n).flat_map(|_| step(h, c)).collect()
}

fn remote(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(REMOTE, port)
}

/// An established outbound connection to REMOTE:80 and its flow.
fn connected(h: &mut Harness) -> (Container, FlowHandle) {
    let mut c = Container::dial(remote(80), h.now);
    steps(h, &mut c, 4);
    assert_eq!(c.leg.socket().state(), TcpSocketState::Established);
    let f = h.only_flow();
    (c, f)
}

#[test]
fn tcp_handshake_and_data_both_ways() {
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(v.state.as_str(), "tcp_established");
    assert_eq!(v.key.remote_port, 80);
    // Container → host.
    c.leg
        .socket()
        .send_slice(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.stream(f).sent, b"GET / HTTP/1.0\r\n\r\n");
    // Host → container: 200 KiB, a TSO super-frame at a time.
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    h.stream(f).incoming.extend(&body);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    let mut got = Vec::new();
    let mut gso = false;
    for _ in 0..100 {
        for o in step(&mut h, &mut c) {
            gso |= o.meta.gso_type == vnet::GSO_TCPV4;
            if o.meta.gso_type == vnet::GSO_TCPV4 {
                assert_eq!(o.meta.gso_size, 1460);
                assert_eq!(o.meta.flags, vnet::F_NEEDS_CSUM);
            }
        }
        let mut b = [0u8; 65536];
        while let Ok(n) = c.leg.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        if got.len() == body.len() {
            break;
        }
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body);
    assert!(gso, "data towards the container leaves as TSO super-frames");
    let v = h.gw.conntrack().get(f).unwrap();
    assert!(v.to_container.bytes >= body.len() as u64);
    assert_eq!(v.from_container.bytes, 18);
}

#[test]
fn tcp_backpressure_both_ways() {
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    // The host accepts 10 bytes, then blocks: the rest stays in the leg.
    h.stream(f).room = 10;
    let data = vec![7u8; 100_000];
    let mut sent = 0;
    for _ in 0..50 {
        sent += c.leg.socket().send_slice(&data[sent..]).unwrap_or(0);
        step(&mut h, &mut c);
    }
    assert_eq!(h.stream(f).sent.len(), 10);
    // The leg's buffer (64 KiB) filled and its window closed: the rest
    // waits in the container.
    assert!(
        c.leg.socket().send_queue() > 30_000,
        "sent {sent}, queued {}",
        c.leg.socket().send_queue()
    );
    // Writable again: the leg drains.
    h.stream(f).room = usize::MAX;
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Writable);
    for _ in 0..100 {
        sent += c.leg.socket().send_slice(&data[sent..]).unwrap_or(0);
        step(&mut h, &mut c);
    }
    assert_eq!(sent, data.len());
    assert_eq!(h.stream(f).sent.len(), data.len());

    // Host → container, the container not reading: the leg fills and the
    // rest stays in the host socket.
    let big = vec![9u8; 1 << 20];
    h.stream(f).incoming.extend(&big);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 30);
    let left = h.stream(f).incoming.len();
    assert!(left > 0 && left < big.len(), "left {left}");
    // The container reads: the rest follows.
    let mut got = 0;
    let mut b = vec![0u8; 1 << 16];
    for _ in 0..300 {
        while let Ok(n) = c.leg.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got += n;
        }
        step(&mut h, &mut c);
    }
    assert_eq!(got, big.len());
    assert!(h.stream(f).incoming.is_empty());
}

#[test]
fn tcp_half_close_both_ways() {
    // The container closes first: the host socket is shut down for
    // writing, data still flows the other way, then the host's EOF.
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    c.leg.socket().send_slice(b"bye").unwrap();
    c.leg.socket().close();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.stream(f).sent, b"bye");
    assert!(h.stream(f).shut_wr);
    assert_eq!(
        h.gw.conntrack().get(f).unwrap().state.as_str(),
        "tcp_fin_wait"
    );
    h.stream(f).incoming.extend(b"answer");
    h.stream(f).eof = true;
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 5);
    let mut b = [0u8; 16];
    let n = c.leg.socket().recv_slice(&mut b).unwrap();
    assert_eq!(&b[..n], b"answer");
    assert!(!c.leg.socket().may_recv());
    assert_eq!(h.closed, vec![(f, false)], "a clean close, no reset");

    // The host closes first: FIN to the container, which still sends.
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    h.stream(f).eof = true;
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 3);
    assert!(!c.leg.socket().may_recv(), "the container got FIN");
    assert!(c.leg.socket().may_send());
    c.leg.socket().send_slice(b"late").unwrap();
    c.leg.socket().close();
    steps(&mut h, &mut c, 5);
    assert_eq!(h.stream(f).sent, b"late");
    assert!(h.stream(f).shut_wr || h.closed.iter().any(|&(x, _)| x == f));
}

#[test]
fn tcp_reset_both_ways() {
    // The host resets: the container's socket is reset, the host socket
    // closed abortively.
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    h.stream(f).error = Some(io::ErrorKind::ConnectionReset);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 3);
    assert_eq!(c.leg.socket().state(), TcpSocketState::Closed);
    assert_eq!(h.closed, vec![(f, true)]);
    assert_eq!(
        h.gw.conntrack().get(f).unwrap().state.as_str(),
        "tcp_closed"
    );

    // The container resets: the host socket is closed with a reset.
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    c.leg.socket().abort();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.closed, vec![(f, true)]);
}

/// A container that resets its connection and at once opens a new one
/// from the same port (a client closing with `SO_LINGER` 0, whose kernel
/// hands the freed port out again): the new SYN opens a new flow, even
/// while the old one is still in the table (its reset arrived in the
/// same batch of frames, before the relay that retires it).
#[test]
fn a_syn_reusing_a_reset_connections_port_opens_a_new_flow() {
    let mut h = Harness::new();
    let f = reset_in_one_batch(&mut h);
    h.ip_in(&syn(40000, remote(80)));
    assert_eq!(
        h.dialed,
        vec![remote(80).into(); 2],
        "a second host connect"
    );
    assert!(h.closed.contains(&(f, true)), "{:?}", h.closed);
    // The legs answer when polled: the gateway's next turn.
    h.gw.handle_timeout(h.now);
    h.pump();
    let out = h.take_out();
    let flags: Vec<u8> = out.iter().filter_map(tcp_flags_of).collect();
    assert!(
        flags.contains(&(tcp::flags::SYN | tcp::flags::ACK)),
        "{flags:?}"
    );
    assert!(flags.iter().all(|f| f & tcp::flags::RST == 0), "{flags:?}");
    assert_eq!(h.drops(NatDrop::TcpNoFlow), 0);
    assert_eq!(h.gw.conntrack().gauges().flows, 1);
}

/// An established connection (port 40000 to REMOTE:80) that the
/// container resets: its RST reaches the gateway, and no relay has run
/// since (the leg is closed, the flow not yet retired). Returns the flow.
fn reset_in_one_batch(h: &mut Harness) -> FlowHandle {
    let (mut c, f) = connected(h);
    c.leg.socket().abort();
    c.leg.poll(h.now, &mut c.tx);
    let rst = std::mem::take(&mut c.tx.pending);
    assert_eq!(rst.len(), 1);
    h.ip_in(&rst[0]);
    f
}

fn syn(sport: u16, dst: SocketAddrV4) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    let mut p = TcpPacket::new_unchecked(&mut t[..]);
    tapnet_switch::wire::TcpRepr {
        src_port: sport,
        dst_port: dst.port(),
        seq: 1000,
        ack: 0,
        flags: tcp::flags::SYN,
        window: 65535,
        options_len: 4,
    }
    .emit(&mut p);
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut ip = vec![0u8; 20 + t.len()];
    ipv4::emit_header(&mut ip, C_IP, *dst.ip(), ipv4::protocol::TCP, t.len(), 64);
    ip[20..].copy_from_slice(&t);
    ip
}

/// The TCP flags of a frame to the container, if it is TCP.
fn tcp_flags_of(o: &Out) -> Option<u8> {
    let ip = o.ip();
    (ip.protocol() == ipv4::protocol::TCP)
        .then(|| TcpPacket::new_checked(ip.payload()).unwrap().flags())
}

/// ICMP (type, code) of a frame to the container, if it is ICMP.
fn icmp_of(o: &Out) -> Option<(u8, u8)> {
    let ip = o.ip();
    (ip.protocol() == ipv4::protocol::ICMP).then(|| (ip.payload()[0], ip.payload()[1]))
}

#[test]
fn refused_and_unreachable_connects() {
    // Refused: RST, ACKing the SYN.
    let mut h = Harness::new();
    h.dial = Dial::Fail(ConnectError::Refused);
    h.ip_in(&syn(40001, remote(81)));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    assert_eq!(
        tcp_flags_of(&out[0]),
        Some(tcp::flags::RST | tcp::flags::ACK)
    );
    let ip = out[0].ip();
    let t = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(t.ack_number(), 1001);
    assert_eq!(h.gw.conntrack().counters().tcp_reset, 1);
    // Unreachable and timed out: ICMP from the gateway.
    for (e, code) in [
        (ConnectError::NetUnreachable, icmp::unreachable::NET),
        (ConnectError::HostUnreachable, icmp::unreachable::HOST),
        (ConnectError::TimedOut, icmp::unreachable::HOST),
    ] {
        let mut h = Harness::new();
        h.dial = Dial::Fail(e);
        h.ip_in(&syn(40002, remote(82)));
        let out = h.take_out();
        assert_eq!(out.len(), 1, "{e:?}");
        assert_eq!(icmp_of(&out[0]), Some((icmp::DEST_UNREACHABLE, code)));
        assert_eq!(out[0].ip().src_addr(), GW);
        assert!(tapnet_switch::wire::checksum(out[0].ip().payload()) == 0);
    }
    // A pending connect: the SYN waits; a retransmission replaces it; a
    // non-SYN segment meanwhile is counted.
    let mut h = Harness::new();
    h.dial = Dial::Pending;
    h.ip_in(&syn(40003, remote(83)));
    h.ip_in(&syn(40003, remote(83)));
    assert!(h.take_out().is_empty());
    let mut ack = syn(40003, remote(83));
    ack[33] = tcp::flags::ACK;
    h.ip_in(&ack);
    assert_eq!(h.drops(NatDrop::TcpConnecting), 1);
    let f = h.only_flow();
    h.socks.insert(
        f,
        Fake::Stream(FakeStream {
            room: usize::MAX,
            ..Default::default()
        }),
    );
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Connected);
    // The SYN-ACK leaves with the next relay round.
    h.advance(0);
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    assert_eq!(
        tcp_flags_of(&out[0]),
        Some(tcp::flags::SYN | tcp::flags::ACK)
    );
    // No socket at all: counted, and a RST.
    let mut h = Harness::new();
    h.dial = Dial::NoSocket;
    h.ip_in(&syn(40004, remote(84)));
    assert_eq!(h.drops(NatDrop::SocketOpen), 1);
    assert_eq!(
        tcp_flags_of(&h.take_out()[0]),
        Some(tcp::flags::RST | tcp::flags::ACK)
    );
}

fn udp_frame(sport: u16, dst: SocketAddrV4, data: &[u8]) -> Vec<u8> {
    build::udp(
        gateway_mac(GW),
        c_mac(),
        (C_IP, sport),
        (*dst.ip(), dst.port()),
        data,
    )
}

/// A container's `UDP_SEGMENT` send comes as one USO super-frame: the
/// edge is told to send its datagrams one by one, each counted, outbound
/// and through a published port.
#[test]
fn a_udp_super_frame_goes_out_as_its_datagrams() {
    let mut h = Harness::new();
    let data: Vec<u8> = (0..2500).map(|i| i as u8).collect();
    let chunks = vec![
        data[..1000].to_vec(),
        data[1000..2000].to_vec(),
        data[2000..].to_vec(),
    ];
    let meta = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_UDP_L4,
        gso_size: 1000,
        ..Default::default()
    };
    let mut frame = udp_frame(5000, remote(443), &data);
    let a = h.gw.handle_frame(h.now, NET, 0, &meta, &mut frame);
    assert!(
        matches!(a, FrameAction::Send { segment: Some(1000), ref payload, .. } if payload.len() == 2500),
        "{a:?}"
    );
    h.pump();
    h.frame(meta, udp_frame(5000, remote(443), &data));
    let f = h.only_flow();
    match &h.socks[&f] {
        Fake::Dgram(_, sent) => assert_eq!(sent, &chunks),
        s => panic!("{s:?}"),
    }
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(
        (v.from_container.packets, v.from_container.bytes),
        (6, 5000)
    );

    h.gw.publish(4, NET, SocketAddrV4::new(C_IP, 5353), None);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 6000));
    assert!(h.host_datagram(SocketId::Published(4), b"hi", Some(client)));
    let answer = build::udp(
        gateway_mac(GW),
        c_mac(),
        (C_IP, 5353),
        (CLIENT, 6000),
        &data,
    );
    h.frame(meta, answer);
    let sent: Vec<_> = h.sent_unconnected.drain(..).collect();
    let want: Vec<_> = chunks
        .iter()
        .map(|c| (SocketId::Published(4), c.clone(), Some(client)))
        .collect();
    assert_eq!(sent, want);
    assert_eq!(h.drops(NatDrop::UdpGso), 0);
}

/// Datagrams the host side read at once (`UDP_GRO`) reach the container
/// as one UDP super-frame the container's kernel cuts (`GSO_UDP_L4`, the
/// segment size, the headers' length, a partial checksum over the whole),
/// each datagram counted; outbound and through a published port, IPv4.
/// A run that is one datagram is a plain frame.
#[test]
fn datagrams_read_at_once_reach_the_container_as_one_super_frame() {
    let mut h = Harness::new();
    let data: Vec<u8> = (0..2500u32).map(|i| (i * 13) as u8).collect();
    let check = |out: &Out, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)| {
        let want = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            gso_size: 1000,
            hdr_len: 14 + 20 + 8,
            csum_start: 14 + 20,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(out.meta, want);
        let ip = out.ip();
        assert_eq!(usize::from(ip.total_len()), 20 + 8 + 2500);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (from.0, to.0));
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(usize::from(u.len()), 8 + 2500);
        assert_eq!((u.src_port(), u.dst_port()), (from.1, to.1));
        assert_eq!(u.payload(), &data[..]);
        // The pseudo-header's sum over the whole length, for the kernel to
        // adjust per datagram.
        let mut partial = UdpPacket::new_unchecked(ip.payload().to_vec());
        partial.set_partial_checksum(from.0, to.0);
        assert_eq!(u.checksum(), partial.checksum());
    };
    h.frame(VnetHdr::default(), udp_frame(5000, remote(443), b"go"));
    let f = h.only_flow();
    assert!(h.host_datagrams(SocketId::Flow(f), &data, None, 1000));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    check(&out[0], (REMOTE, 443), (C_IP, 5000));
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!((v.to_container.packets, v.to_container.bytes), (3, 2500));
    // One datagram read the same way: a plain frame.
    assert!(h.host_datagrams(SocketId::Flow(f), &data[..900], None, 1000));
    let out = h.take_out();
    assert_eq!((out[0].meta.gso_type, out[0].meta.gso_size), (0, 0));
    assert_eq!(usize::from(out[0].ip().total_len()), 20 + 8 + 900);

    h.gw.publish(4, NET, SocketAddrV4::new(C_IP, 5353), None);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 6000));
    assert!(h.host_datagrams(SocketId::Published(4), &data, Some(client), 1000));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    check(&out[0], (CLIENT, 6000), (C_IP, 5353));
    let p =
        h.gw.conntrack()
            .iter()
            .find(|v| v.key.container_port == 5353)
            .unwrap();
    assert_eq!(p.to_container.packets, 3);
}

/// Cuts the UDP part `l4` of a `GSO_UDP_L4` super-frame from `src` to
/// `dst` into its datagrams as Linux's `__udp_gso_segment` does (each
/// gets its length, and the partial checksum adjusted by the old and new
/// length: `csum16_add(csum16_sub(check, len), newlen)`), completes each
/// checksum as a receiver's offload would, and checks it against one
/// computed from scratch: the super-frame's partial checksum must be what
/// the kernel expects. Returns the datagrams' payloads.
fn segment_as_linux(l4: &[u8], seg: usize, src: IpAddr, dst: IpAddr) -> Vec<Vec<u8>> {
    use tapnet_switch::wire::{checksum_finish, checksum_sum};
    let fold = |mut a: u32| {
        while a > 0xffff {
            a = (a & 0xffff) + (a >> 16);
        }
        a as u16
    };
    let add = |a: u16, b: u16| fold(u32::from(a) + u32::from(b));
    let sub = |a: u16, b: u16| add(a, !b);
    let check = u16::from_be_bytes([l4[6], l4[7]]);
    let len = u16::from_be_bytes([l4[4], l4[5]]);
    assert_eq!(usize::from(len), l4.len());
    let addrs = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut out = Vec::new();
    for payload in l4[8..].chunks(seg) {
        let newlen = (8 + payload.len()) as u16;
        let mut d = l4[..8].to_vec();
        d[4..6].copy_from_slice(&newlen.to_be_bytes());
        d[6..8].copy_from_slice(&add(sub(check, len), newlen).to_be_bytes());
        d.extend_from_slice(payload);
        // The offload's completion: the sum over the datagram, partial
        // checksum included.
        let done = checksum_finish(checksum_sum(0, &d));
        // From scratch: pseudo-header (addresses, protocol, length) and
        // the datagram with a zero checksum.
        let mut pseudo = addrs(src);
        pseudo.extend(addrs(dst));
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&newlen.to_be_bytes());
        let mut z = d.clone();
        z[6..8].copy_from_slice(&[0, 0]);
        let want = checksum_finish(checksum_sum(checksum_sum(0, &pseudo), &z));
        assert_eq!(done, want, "segment {} of {seg}", out.len());
        out.push(payload.to_vec());
    }
    out
}

/// The super-frame of a run read at once carries a partial checksum that
/// Linux's segmentation turns into each datagram's own, for IPv4 and
/// IPv6 flows alike, and the IPv6 frame's headers are IPv6's.
#[test]
fn a_run_read_at_once_segments_into_valid_datagrams_both_families() {
    let mut h = Harness::new();
    let data: Vec<u8> = (0..4321u32).map(|i| (i * 31 + 7) as u8).collect();
    let want: Vec<Vec<u8>> = data.chunks(1200).map(<[u8]>::to_vec).collect();
    h.frame(VnetHdr::default(), udp_frame(5000, remote(443), b"go"));
    let f = h.only_flow();
    assert!(h.host_datagrams(SocketId::Flow(f), &data, None, 1200));
    let out = h.take_out();
    let ip = out[0].ip();
    let got = segment_as_linux(ip.payload(), 1200, IpAddr::V4(REMOTE), IpAddr::V4(C_IP));
    assert_eq!(got, want);

    let mut h = Harness::new();
    h.ip_in(&udp6(5000, remote6(443), b"go6"));
    let f = h.only_flow();
    assert!(h.host_datagrams(SocketId::Flow(f), &data, None, 1200));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    let m = out[0].meta;
    assert_eq!(
        (
            m.gso_type,
            m.gso_size,
            m.hdr_len,
            m.csum_start,
            m.csum_offset
        ),
        (vnet::GSO_UDP_L4, 1200, 14 + 40 + 8, 14 + 40, 6)
    );
    let ip = out[0].ip6();
    assert_eq!(ip.payload_len(), 8 + data.len());
    let got = segment_as_linux(out[0].l4_6(), 1200, IpAddr::V6(REMOTE6), IpAddr::V6(C_IP6));
    assert_eq!(got, want);
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!((v.to_container.packets, v.to_container.bytes), (4, 4321));
}

/// `packet` (IPv4 or IPv6, without options or extension headers) cut
/// into IP fragments of `chunk` payload bytes (a multiple of 8).
fn fragments(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let v6 = packet[0] >> 4 == 6;
    let h = if v6 { 40 } else { 20 };
    let payload = &packet[h..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let n = chunk.min(payload.len() - off);
        let more = off + n < payload.len();
        let mut p = packet[..h].to_vec();
        if v6 {
            let next = p[6];
            p[6] = 44;
            p[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
            let fo = ((off / 8) as u16) << 3 | u16::from(more);
            p.extend_from_slice(&[next, 0]);
            p.extend_from_slice(&fo.to_be_bytes());
            p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0x4321u16.to_be_bytes());
            let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            p[6..8].copy_from_slice(&fo.to_be_bytes());
        }
        p.extend_from_slice(&payload[off..off + n]);
        out.push(p);
        off += n;
    }
    out
}

/// What the only flow's datagram socket sent.
fn sent_on_only_flow(h: &Harness) -> Vec<Vec<u8>> {
    match &h.socks[&h.only_flow()] {
        Fake::Dgram(_, sent) => sent.clone(),
        s => panic!("{s:?}"),
    }
}

/// A datagram larger than the network's MTU, which the container's
/// kernel sent as IP fragments, goes out whole (UDP of either family,
/// ICMP echo), counted as one datagram (the workers hand fragments to
/// the NAT: `the_worker_side_classification`). A datagram that never
/// becomes whole is counted when it expires.
#[test]
fn fragmented_datagrams_go_out_whole() {
    let data: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
    let full = udp_frame(5000, remote(53), &data);
    let frags = fragments(&full[14..], 1480);
    assert_eq!(frags.len(), 3);
    let mut h = Harness::new();
    for f in frags.iter().rev() {
        h.ip_in(f);
    }
    assert_eq!(sent_on_only_flow(&h), vec![data.clone()]);
    let v = h.gw.conntrack().get(h.only_flow()).unwrap();
    assert_eq!(
        (v.from_container.packets, v.from_container.bytes),
        (1, 4000)
    );
    assert_eq!(h.drops(NatDrop::IpFragment), 0);

    let mut h = Harness::new();
    for f in fragments(&udp6(5000, remote6(53), &data), 1232) {
        h.ip_in(&f);
    }
    assert_eq!(sent_on_only_flow(&h), vec![data.clone()]);

    // `ping -s 3000`: the whole echo request to the ping socket.
    let mut h = Harness::new();
    let echo = build::icmp_echo(
        false,
        gateway_mac(GW),
        c_mac(),
        C_IP,
        REMOTE,
        77,
        1,
        &data[..3000],
    );
    for f in fragments(&echo[14..], 1480) {
        h.ip_in(&f);
    }
    let sent = sent_on_only_flow(&h);
    assert_eq!((sent.len(), &sent[0][8..]), (1, &data[..3000]));

    // Half a datagram: nothing goes out; counted when it expires.
    let mut h = Harness::new();
    h.ip_in(&frags[0]);
    assert!(h.socks.is_empty() && h.sent_unconnected.is_empty());
    h.advance(31 * S);
    assert_eq!(h.drops(NatDrop::IpFragment), 1);
}

#[test]
fn udp_flow_both_ways_and_port_unreachable() {
    let mut h = Harness::new();
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"query"));
    let f = h.only_flow();
    match &h.socks[&f] {
        Fake::Dgram(to, sent) => {
            assert_eq!(*to, SocketAddr::V4(remote(53)));
            assert_eq!(sent, &vec![b"query".to_vec()]);
        }
        s => panic!("{s:?}"),
    }
    // Same flow, same socket; its latest frame came in on lane 1.
    h.lane = 1;
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"again"));
    assert_eq!(h.socks.len(), 1);
    // The answer: from the remote to the container, partial checksum.
    assert!(h.host_datagram(SocketId::Flow(f), b"answer", None));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    let ip = out[0].ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE, C_IP));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (53, 5000, &b"answer"[..])
    );
    assert_eq!(out[0].meta.flags, vnet::F_NEEDS_CSUM);
    assert_eq!(
        EthernetFrame::new_checked(&out[0].frame[..])
            .unwrap()
            .dst_addr(),
        c_mac()
    );
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(v.state.as_str(), "udp_replied");
    assert_eq!((v.from_container.packets, v.to_container.packets), (2, 1));
    // The remote's port unreachable: ICMP port unreachable from the remote,
    // quoting the container's datagram.
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::PortUnreachable);
    h.pump();
    let out = h.take_out();
    assert_eq!(
        icmp_of(&out[0]),
        Some((icmp::DEST_UNREACHABLE, icmp::unreachable::PORT))
    );
    let ip = out[0].ip();
    assert_eq!(ip.src_addr(), REMOTE);
    let quoted = Ipv4Packet::new_checked(&ip.payload()[8..]).unwrap();
    assert_eq!((quoted.src_addr(), quoted.dst_addr()), (C_IP, REMOTE));
    // Idle past the replied timeout: expired, socket closed.
    h.advance(181 * S);
    assert!(h.gw.conntrack().get(f).is_none());
    assert_eq!(h.closed, vec![(f, false)]);
    assert_eq!(h.gw.conntrack().counters().expired[6], 1);
}

/// `o` is an ICMP (ICMPv6) destination unreachable with `code` from the
/// gateway to the container: the packet it quotes.
fn from_gateway_unreachable(o: &Out, code: u8) -> Vec<u8> {
    if o.frame[12..14] == [0x86, 0xdd] {
        assert_eq!(icmp6_of(o), Some((icmp6::DEST_UNREACHABLE, code)));
        let ip = o.ip6();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, C_IP6));
        return o.l4_6()[8..].to_vec();
    }
    assert_eq!(icmp_of(o), Some((icmp::DEST_UNREACHABLE, code)));
    let ip = o.ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW, C_IP));
    ip.payload()[8..].to_vec()
}

/// Raises `e` on flow `f`'s socket: the gateway's one frame, checked by
/// [`from_gateway_unreachable`] for `code`.
fn host_unreachable(h: &mut Harness, f: FlowHandle, e: ConnectError, code: u8) -> Vec<u8> {
    let ev = HostEvent::Unreachable { why: e, from: None };
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), ev);
    h.pump();
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    from_gateway_unreachable(&out[0], code)
}

/// The host socket's "no route" or "no neighbour" (its connect, send or
/// receive failing with ENETUNREACH or EHOSTUNREACH) reaches the
/// container as ICMP net or host unreachable from its gateway, as a
/// router would send it, quoting the flow's header: UDP of either
/// family and ICMP echo. At the connect the flow ends; later it stays.
#[test]
fn unreachable_destinations_answer_datagrams_with_icmp() {
    let mut h = Harness::new();
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"query"));
    let f = h.only_flow();
    let net = ConnectError::NetUnreachable;
    let quote = host_unreachable(&mut h, f, net, icmp::unreachable::NET);
    let quoted = Ipv4Packet::new_checked(&quote[..]).unwrap();
    assert_eq!((quoted.src_addr(), quoted.dst_addr()), (C_IP, REMOTE));
    let u = UdpPacket::new_unchecked(&quoted.payload()[..8]);
    assert_eq!((u.src_port(), u.dst_port()), (5000, 53));
    assert!(h.gw.conntrack().get(f).is_some(), "the flow stays");
    assert_eq!(h.drops(NatDrop::Unreachable), 1);

    // At the connect: host unreachable over IPv6, and the flow ends.
    let mut h = Harness::new();
    h.open_unreachable = Some(ConnectError::HostUnreachable);
    h.ip_in(&udp6(5000, remote6(53), b"query6"));
    let out = h.take_out();
    let quote = from_gateway_unreachable(&out[0], icmp6::unreachable::ADDRESS);
    // The datagram as sent, payload too (busybox's traceroute6 matches
    // its probes by their payload).
    assert_eq!(&quote[40 + 8..], b"query6");
    assert!(h.socks.is_empty() && h.gw.conntrack().is_empty());
    assert_eq!(h.drops(NatDrop::Unreachable), 1);
    assert_eq!(h.drops(NatDrop::SocketOpen), 0);

    // An echo through a ping socket: the quote is an echo request with
    // the container's identifier.
    let mut h = Harness::new();
    let echo = build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, REMOTE, 77, 1, b"p");
    h.frame(VnetHdr::default(), echo);
    let f = h.only_flow();
    let host = ConnectError::HostUnreachable;
    let quote = host_unreachable(&mut h, f, host, icmp::unreachable::HOST);
    let quoted = Ipv4Packet::new_checked(&quote[..]).unwrap();
    assert_eq!(quoted.protocol(), 1);
    let m = icmp::IcmpPacket::new_checked(quoted.payload()).unwrap();
    assert_eq!((m.msg_type(), m.echo_ident()), (icmp::ECHO_REQUEST, 77));

    // Through the raw socket (a root daemon without ping sockets): the
    // unreachable the host reads there, quoting the request as sent
    // (with the raw socket's identifier), goes to the flow's container.
    let mut h = Harness::with(
        GatewayConfig {
            icmp: IcmpMode::Raw,
            ..Default::default()
        },
        info(),
    );
    let echo = build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, REMOTE, 5, 1, b"p");
    h.frame(VnetHdr::default(), echo);
    let (_, sent, _) = h.sent_unconnected.pop().unwrap();
    let host = Ipv4Addr::new(10, 9, 9, 9);
    let kind = (icmp::DEST_UNREACHABLE, icmp::unreachable::HOST);
    let mut error = raw_icmp_error(host, host, kind, &sent, 64);
    assert!(h.host_datagram(SocketId::RawIcmp, &error, None));
    let out = h.take_out();
    let quote = from_gateway_unreachable(&out[0], icmp::unreachable::HOST);
    let quoted = Ipv4Packet::new_checked(&quote[..]).unwrap();
    let m = icmp::IcmpPacket::new_checked(quoted.payload()).unwrap();
    assert_eq!(m.echo_ident(), 5, "the container's own identifier");
    assert_eq!(h.drops(NatDrop::Unreachable), 1);
    // One about a request that is not ours: ignored, counted.
    error[28 + 24] ^= 0xff;
    assert!(h.host_datagram(SocketId::RawIcmp, &error, None));
    assert_eq!(h.drops(NatDrop::IcmpIgnored), 1);
}

/// A traceroute through the gateway: a probe with TTL 1 (to anywhere
/// but the gateway's own address) is answered with ICMP time exceeded
/// from the gateway, as a router does; others leave with their TTL less
/// one, and a router's time exceeded (from the socket's error queue, or
/// read on the raw socket for pings) comes back from that router.
#[test]
fn traceroute_probes_expire_at_the_gateway_and_beyond() {
    let with_ttl = |mut f: Vec<u8>, ttl: u8| {
        f[14 + 8] = ttl;
        f
    };
    let mut h = Harness::new();
    h.frame(
        VnetHdr::default(),
        with_ttl(udp_frame(5000, remote(33434), b"p"), 1),
    );
    assert!(h.socks.is_empty(), "not forwarded");
    let out = h.take_out();
    assert_eq!(icmp_of(&out[0]), Some((icmp::TIME_EXCEEDED, 0)));
    let ip = out[0].ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW, C_IP));
    assert_eq!(h.drops(NatDrop::TtlExceeded), 1);
    // To the gateway's own address (the host's loopback): delivered.
    let to_gw = SocketAddrV4::new(GW, 53);
    h.frame(
        VnetHdr::default(),
        with_ttl(udp_frame(5000, to_gw, b"q"), 1),
    );
    assert_eq!((h.socks.len(), h.last_ttl), (1, None));
    // TTL 3 leaves with 2; the router at the second hop says it expired.
    let mut h = Harness::new();
    h.frame(
        VnetHdr::default(),
        with_ttl(udp_frame(5001, remote(33435), b"p"), 3),
    );
    assert_eq!(h.last_ttl, Some(2));
    let f = h.only_flow();
    let router = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    h.gw.handle_socket_event(
        h.now,
        SocketId::Flow(f),
        HostEvent::TimeExceeded { from: router },
    );
    h.pump();
    let out = h.take_out();
    assert_eq!(icmp_of(&out[0]), Some((icmp::TIME_EXCEEDED, 0)));
    let ip = out[0].ip();
    assert_eq!(IpAddr::V4(ip.src_addr()), router);
    let quoted = Ipv4Packet::new_checked(&ip.payload()[8..]).unwrap();
    let u = UdpPacket::new_unchecked(&quoted.payload()[..8]);
    assert_eq!((u.src_port(), u.dst_port()), (5001, 33435));
    assert_eq!(h.drops(NatDrop::TtlExceeded), 1);

    // IPv6: hop limit 1 expires at the gateway's IPv6 address.
    let mut h = Harness::new();
    let mut probe = udp6(5000, remote6(33434), b"p");
    probe[7] = 1;
    h.ip_in(&probe);
    let out = h.take_out();
    assert_eq!(icmp6_of(&out[0]), Some((icmp6::TIME_EXCEEDED, 0)));
    assert_eq!(out[0].ip6().src_addr(), GW6);

    // A ping through the raw socket (traceroute -I): the router's time
    // exceeded quoting the request as sent.
    let mut h = Harness::with(
        GatewayConfig {
            icmp: IcmpMode::Raw,
            ..Default::default()
        },
        info(),
    );
    let echo = build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, REMOTE, 9, 1, b"p");
    h.frame(VnetHdr::default(), with_ttl(echo, 2));
    assert_eq!(h.last_ttl, Some(1));
    let (_, sent, _) = h.sent_unconnected.pop().unwrap();
    let me = Ipv4Addr::new(198, 51, 100, 1);
    let r4 = Ipv4Addr::new(198, 51, 100, 2);
    let error = raw_icmp_error(r4, me, (icmp::TIME_EXCEEDED, 0), &sent, 1);
    assert!(h.host_datagram(SocketId::RawIcmp, &error, None));
    let out = h.take_out();
    assert_eq!(icmp_of(&out[0]), Some((icmp::TIME_EXCEEDED, 0)));
    assert_eq!(out[0].ip().src_addr(), r4);
    let ip = out[0].ip();
    let quoted = Ipv4Packet::new_checked(&ip.payload()[8..]).unwrap();
    let m = icmp::IcmpPacket::new_checked(quoted.payload()).unwrap();
    assert_eq!(m.echo_ident(), 9);
}

#[test]
fn icmp_echo_through_ping_sockets_and_the_raw_socket() {
    let echo = |id| {
        build::icmp_echo(
            false,
            gateway_mac(GW),
            c_mac(),
            C_IP,
            REMOTE,
            id,
            1,
            b"ping",
        )
    };
    let mut h = Harness::new();
    h.frame(VnetHdr::default(), echo(77));
    let f = h.only_flow();
    let Fake::Dgram(_, sent) = &h.socks[&f] else {
        panic!()
    };
    assert_eq!(sent[0][0], icmp::ECHO_REQUEST);
    // The reply (the kernel rewrote the identifier): back with the
    // container's identifier.
    let mut reply = sent[0].clone();
    reply[0] = icmp::ECHO_REPLY;
    reply[4..6].copy_from_slice(&999u16.to_be_bytes());
    assert!(h.host_datagram(SocketId::Flow(f), &reply, None));
    let out = h.take_out();
    let ip = out[0].ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE, C_IP));
    let m = icmp::IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((m.msg_type(), m.echo_ident()), (icmp::ECHO_REPLY, 77));
    assert!(m.verify_checksum());
    // Not an echo reply: counted.
    h.host_datagram(SocketId::Flow(f), &[3, 3, 0, 0, 0, 0, 0, 0], None);
    assert_eq!(h.drops(NatDrop::IcmpIgnored), 1);
    // Expiry after 30 s.
    h.advance(31 * S);
    assert_eq!(h.closed, vec![(f, false)]);

    // The raw socket: identifiers rewritten per flow, replies matched.
    let mut h = Harness::with(
        GatewayConfig {
            icmp: IcmpMode::Raw,
            ..Default::default()
        },
        info(),
    );
    h.frame(VnetHdr::default(), echo(5));
    let (via, data, to) = h.sent_unconnected.pop().unwrap();
    assert_eq!(via, SocketId::RawIcmp);
    assert_eq!(to, Some(SocketAddr::V4(SocketAddrV4::new(REMOTE, 0))));
    assert!(tapnet_switch::wire::checksum(&data) == 0);
    let mut pkt = vec![0u8; 20 + data.len()];
    ipv4::emit_header(
        &mut pkt,
        REMOTE,
        Ipv4Addr::new(10, 9, 9, 9),
        1,
        data.len(),
        64,
    );
    pkt[20..].copy_from_slice(&data);
    pkt[20] = icmp::ECHO_REPLY;
    assert!(h.host_datagram(SocketId::RawIcmp, &pkt, None));
    let out = h.take_out();
    let ip = out[0].ip();
    let m = icmp::IcmpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(m.echo_ident(), 5);
    // Another host's ping on the raw socket: ignored, counted.
    pkt[24] ^= 0xff;
    h.host_datagram(SocketId::RawIcmp, &pkt, None);
    assert_eq!(h.drops(NatDrop::IcmpIgnored), 1);

    // Neither: counted.
    let mut h = Harness::with(
        GatewayConfig {
            icmp: IcmpMode::Unavailable,
            ..Default::default()
        },
        info(),
    );
    h.frame(VnetHdr::default(), echo(5));
    assert_eq!(h.drops(NatDrop::NoPingSocket), 1);
    // A ping socket that cannot be opened: counted, flow gone.
    let mut h = Harness::new();
    h.open_fails = true;
    h.frame(VnetHdr::default(), echo(6));
    assert_eq!(h.drops(NatDrop::SocketOpen), 1);
    assert!(h.gw.conntrack().is_empty());
}

#[test]
fn published_tcp_port_keeps_the_client_address() {
    let mut h = Harness::new();
    h.gw.publish(3, NET, SocketAddrV4::new(C_IP, 8080), None);
    let mut c = Container::listen(8080, h.now);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 51000));
    let f = h.gw.handle_accept(h.now, 3, client).unwrap();
    h.socks.insert(
        f,
        Fake::Stream(FakeStream {
            room: usize::MAX,
            ..Default::default()
        }),
    );
    h.pump();
    steps(&mut h, &mut c, 4);
    assert_eq!(c.leg.socket().state(), TcpSocketState::Established);
    let ep = c.leg.socket().remote_endpoint().unwrap();
    assert_eq!(ep.to_string(), "198.51.100.7:51000");
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(v.direction.as_str(), "inbound");
    h.stream(f).incoming.extend(b"hello");
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 3);
    let mut b = [0u8; 8];
    assert_eq!(c.leg.socket().recv_slice(&mut b).unwrap(), 5);
    c.leg.socket().send_slice(b"world").unwrap();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.stream(f).sent, b"world");
    // A loopback client appears as the gateway; the same tuple again while
    // live is refused and counted.
    let lo = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 52000));
    let g = h.gw.handle_accept(h.now, 3, lo).unwrap();
    let v = h.gw.conntrack().get(g).unwrap();
    assert_eq!(v.key.remote_ip, std::net::IpAddr::V4(GW));
    assert!(h.gw.handle_accept(h.now, 3, lo).is_none());
    assert_eq!(h.drops(NatDrop::PublishedBusy), 1);
    // Unpublished: refused.
    h.gw.unpublish(3);
    assert!(h.gw.handle_accept(h.now, 3, client).is_none());
    assert_eq!(h.drops(NatDrop::NoListener), 1);
}

#[test]
fn published_udp_port_and_expiry() {
    let mut h = Harness::new();
    h.gw.publish(4, NET, SocketAddrV4::new(C_IP, 5353), None);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 6000));
    assert!(h.host_datagram(SocketId::Published(4), b"hi", Some(client)));
    let out = h.take_out();
    assert_eq!(out[0].lane, None, "the container has not sent on it yet");
    let ip = out[0].ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (CLIENT, C_IP));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (6000, 5353));
    // The container answers through the published socket, to the client.
    h.frame(
        VnetHdr::default(),
        build::udp(
            gateway_mac(GW),
            c_mac(),
            (C_IP, 5353),
            (CLIENT, 6000),
            b"yo",
        ),
    );
    let (via, data, to) = h.sent_unconnected.pop().unwrap();
    assert_eq!(
        (via, data.as_slice(), to),
        (SocketId::Published(4), &b"yo"[..], Some(client))
    );
    assert_eq!(h.gw.conntrack().len(), 1);
    // Unreplied... replied: expires after 180 s idle.
    h.advance(179 * S);
    assert_eq!(h.gw.conntrack().len(), 1);
    h.advance(2 * S);
    assert_eq!(h.gw.conntrack().len(), 0);
    // Unpublished while a flow lives: the container's answer is counted.
    assert!(h.host_datagram(SocketId::Published(4), b"hi", Some(client)));
    h.gw.unpublish(4);
    h.frame(
        VnetHdr::default(),
        build::udp(
            gateway_mac(GW),
            c_mac(),
            (C_IP, 5353),
            (CLIENT, 6000),
            b"yo",
        ),
    );
    assert_eq!(h.drops(NatDrop::NoListener), 1);
    assert!(h.sent_unconnected.is_empty());
}

#[test]
fn tcp_expiry_resets_the_host_side() {
    let mut cfg = GatewayConfig::default();
    cfg.table.timeouts.tcp_established = std::time::Duration::from_secs(5);
    let mut h = Harness::with(cfg, info());
    let (_c, f) = connected(&mut h);
    h.advance(6 * S);
    assert!(h.gw.conntrack().get(f).is_none());
    assert_eq!(h.closed, vec![(f, true)]);
    assert_eq!(h.gw.conntrack().counters().expired[1], 1);
}

/// A container at its limit whose flows include closed ones (reset, not
/// yet expired): a new connection takes the place of the oldest closed
/// one, whose leg is dropped (the reset and the new SYN in one batch:
/// the relay that retires a leg has not run); with none closed, it is
/// refused.
#[test]
fn a_closed_flow_makes_room_at_the_limit() {
    let mut cfg = GatewayConfig::default();
    cfg.table.max_per_container = 1;
    let mut h = Harness::with(cfg, info());
    let f = reset_in_one_batch(&mut h);
    assert_eq!(
        h.gw.conntrack().get(f).unwrap().state.as_str(),
        "tcp_closed"
    );
    h.ip_in(&syn(41000, remote(80)));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 0);
    assert_eq!(h.gw.conntrack().counters().evicted_closed, 1);
    assert!(h.gw.conntrack().get(f).is_none());
    assert!(h.closed.contains(&(f, true)), "{:?}", h.closed);
    assert_eq!(h.dialed.len(), 2);
    // The new flow is live, not closed: the next one is refused.
    h.ip_in(&syn(41001, remote(80)));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 1);
    assert_eq!(h.gw.conntrack().counters().evicted_closed, 1);
}

#[test]
fn limits_refuse_new_flows() {
    let mut cfg = GatewayConfig::default();
    cfg.table.max_per_container = 2;
    let mut h = Harness::with(cfg, info());
    h.dial = Dial::Pending;
    for p in 0..2 {
        h.ip_in(&syn(41000 + p, remote(80)));
    }
    h.ip_in(&syn(41009, remote(80)));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 1);
    assert_eq!(
        tcp_flags_of(&h.take_out()[0]),
        Some(tcp::flags::RST | tcp::flags::ACK)
    );
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"q"));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 2);
    // A dual-stack container's IPv6 flows share its limit.
    h.ip_in(&udp6(5000, remote6(53), b"q"));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 3);
    let mut cfg = GatewayConfig::default();
    cfg.table.max_per_container = 2;
    let mut h = Harness::with(cfg, info());
    h.ip_in(&udp6(5000, remote6(53), b"q"));
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"q"));
    assert_eq!(h.gw.conntrack().container_flows(NET, IpAddr::V4(C_IP)), 2);
    h.ip_in(&udp6(5001, remote6(53), b"q"));
    assert_eq!(h.drops(NatDrop::ContainerLimit), 1);
    // Its departure gives the limit back.
    h.gw.remove_endpoint(C_PORT);
    assert_eq!(h.gw.conntrack().container_flows(NET, IpAddr::V4(C_IP)), 0);

    let mut cfg = GatewayConfig::default();
    cfg.table.capacity = 1;
    let mut h = Harness::with(cfg, info());
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"q"));
    h.frame(VnetHdr::default(), udp_frame(5001, remote(53), b"q"));
    assert_eq!(h.drops(NatDrop::TableFull), 1);
    assert_eq!(h.gw.conntrack().counters().refused_table_full, 1);
}

#[test]
fn policy_refusals_are_answered_and_counted() {
    let prohibited = Some((icmp::DEST_UNREACHABLE, icmp::unreachable::PROHIBITED));
    let cases: [(NetInfo, bool, Ipv4Addr, NatDrop); 4] = [
        (
            NetInfo {
                internal: true,
                ..info()
            },
            true,
            REMOTE,
            NatDrop::Internal,
        ),
        (
            NetInfo {
                masquerade: false,
                ..info()
            },
            true,
            REMOTE,
            NatDrop::MasqueradeOff,
        ),
        (
            info(),
            true,
            Ipv4Addr::new(10, 2, 0, 5),
            NatDrop::OtherNetwork,
        ),
        (info(), false, GW, NatDrop::HostLoopbackOff),
    ];
    for (net, loopback, dst, why) in cases {
        let mut h = Harness::with(
            GatewayConfig {
                host_loopback: loopback,
                ..Default::default()
            },
            net,
        );
        h.gw.set_network(
            NetworkId(2),
            NetInfo {
                gateway: Ipv4Addr::new(10, 2, 0, 1),
                ..info()
            },
        );
        h.ip_in(&syn(40000, SocketAddrV4::new(dst, 80)));
        h.frame(
            VnetHdr::default(),
            udp_frame(5000, SocketAddrV4::new(dst, 53), b"q"),
        );
        if dst != GW {
            h.frame(
                VnetHdr::default(),
                build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, dst, 1, 1, b""),
            );
        }
        let out = h.take_out();
        let n = if dst != GW { 3 } else { 2 };
        assert_eq!(out.len(), n, "{why:?}");
        assert!(out.iter().all(|o| icmp_of(o) == prohibited), "{why:?}");
        assert_eq!(h.drops(why), n as u64, "{why:?}");
        assert!(h.socks.is_empty() && h.gw.conntrack().is_empty(), "{why:?}");
    }
    // The gateway address reaches the host's loopback.
    let mut h = Harness::new();
    h.dial = Dial::Pending;
    h.ip_in(&syn(40000, SocketAddrV4::new(GW, 5000)));
    let f = h.only_flow();
    assert!(matches!(h.socks[&f], Fake::Connecting(a) if a == "127.0.0.1:5000".parse().unwrap()));
}

#[test]
fn unsupported_frames_are_counted() {
    let mut h = Harness::new();
    // A UDP super-frame that is not USO (legacy UFO), and USO without a
    // segment size.
    for (gso_type, gso_size) in [(vnet::GSO_UDP, 1000), (vnet::GSO_UDP_L4, 0)] {
        let meta = VnetHdr {
            gso_type,
            gso_size,
            ..Default::default()
        };
        h.frame(meta, udp_frame(5000, remote(53), &[0; 3000]));
    }
    assert_eq!(h.drops(NatDrop::UdpGso), 2);
    // ICMP other than echo.
    let mut ts = build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, REMOTE, 1, 1, b"");
    ts[34] = 13;
    h.frame(VnetHdr::default(), ts);
    assert_eq!(h.drops(NatDrop::IcmpNotEcho), 1);
    // Another protocol, a truncated TCP header, an unknown network.
    let gre = build::ipv4(gateway_mac(GW), c_mac(), C_IP, REMOTE, 47, &[0; 8]);
    h.frame(VnetHdr::default(), gre);
    assert_eq!(h.drops(NatDrop::Protocol), 1);
    let short = build::ipv4(gateway_mac(GW), c_mac(), C_IP, REMOTE, 6, &[0; 10]);
    h.frame(VnetHdr::default(), short);
    assert_eq!(h.drops(NatDrop::Malformed), 1);
    let mut f = udp_frame(5000, remote(53), b"q");
    let a =
        h.gw.handle_frame(h.now, NetworkId(9), 0, &VnetHdr::default(), &mut f);
    assert_eq!(a, FrameAction::None);
    assert_eq!(h.drops(NatDrop::NoNetwork), 1);
    // A segment without a flow: RST, counted.
    let mut ack = syn(40000, remote(80));
    ack[33] = tcp::flags::ACK;
    h.ip_in(&ack);
    assert_eq!(h.drops(NatDrop::TcpNoFlow), 1);
    assert_eq!(tcp_flags_of(&h.take_out()[0]), Some(tcp::flags::RST));
    // A UDP socket that cannot be opened.
    h.open_fails = true;
    h.frame(VnetHdr::default(), udp_frame(6000, remote(53), b"q"));
    assert_eq!(h.drops(NatDrop::SocketOpen), 1);
    assert!(h.gw.conntrack().is_empty());
}

#[test]
fn the_worker_side_classification() {
    let sw = tapnet_switch::Switch::new(Default::default());
    let id = sw
        .add_network(tapnet_switch::NetworkConfig::new(
            "n",
            Ipv4Addr::new(10, 1, 0, 0),
            24,
            GW,
        ))
        .unwrap();
    let topo = sw.topology();
    let net = topo.network(id).unwrap();
    use tapnet_nat::Claim;
    let out = udp_frame(1, remote(53), b"q");
    assert_eq!(tapnet_nat::classify(net, &out), Claim::Nat);
    let to_gw = udp_frame(1, SocketAddrV4::new(GW, 80), b"q");
    assert_eq!(tapnet_nat::classify(net, &to_gw), Claim::Nat);
    let local = udp_frame(1, SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 9), 53), b"q");
    assert_eq!(tapnet_nat::classify(net, &local), Claim::Pass);
    let mut frag = out.clone();
    frag[20] = 0x20; // more fragments: the gateway reassembles them
    assert_eq!(tapnet_nat::classify(net, &frag), Claim::Nat);
    let gre = build::ipv4(gateway_mac(GW), c_mac(), C_IP, REMOTE, 47, &[0; 8]);
    assert_eq!(
        tapnet_nat::classify(net, &gre),
        Claim::Drop(NatDrop::Protocol, tapnet_switch::DropReason::NoRoute)
    );
    let gre_gw = build::ipv4(gateway_mac(GW), c_mac(), C_IP, GW, 47, &[0; 8]);
    assert_eq!(tapnet_nat::classify(net, &gre_gw), Claim::Pass);
    assert_eq!(
        tapnet_nat::classify(net, &out[..20]),
        Claim::Drop(NatDrop::Malformed, tapnet_switch::DropReason::Malformed)
    );
}

#[test]
fn out_of_buffers_tcp_waits_datagrams_wait_control_frames_drop() {
    let mut h = Harness::with(
        GatewayConfig {
            tx_buffers: 2,
            ..Default::default()
        },
        info(),
    );
    let (mut c, f) = connected(&mut h);
    let u = {
        h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"q"));
        *h.socks.keys().find(|&&k| k != f).unwrap()
    };
    // The workers hold every buffer.
    h.hold_buffers = true;
    let body = vec![5u8; 300_000];
    h.stream(f).incoming.extend(&body);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    h.pump();
    // The container gets those frames and acknowledges them: the leg has
    // more to send, but no buffer.
    steps(&mut h, &mut c, 3);
    assert_eq!(h.held.len(), 2);
    assert!(h.gw.waiting_for_buffers());
    assert_eq!(h.gw.free_buffers(), 0);
    // A datagram cannot be read: left in the socket.
    assert!(!h.host_datagram(SocketId::Flow(u), b"a", None));
    // A RST for a stray segment is dropped and counted.
    let mut ack = syn(40099, remote(80));
    ack[33] = tcp::flags::ACK;
    h.ip_in(&ack);
    assert_eq!(h.drops(NatDrop::NoBuffer), 1);
    // The buffers come back: the socket is read again, the leg goes on.
    h.hold_buffers = false;
    let held = std::mem::take(&mut h.held);
    let mut reads = Vec::new();
    for b in held {
        h.gw.recycle(b);
        while let Some(op) = h.gw.poll_socket_op() {
            match op {
                SocketOp::Read(id) => reads.push(id),
                op => h.op(op),
            }
        }
    }
    assert_eq!(reads, vec![SocketId::Flow(u)]);
    let mut got = 0;
    let mut b = vec![0u8; 1 << 16];
    for _ in 0..400 {
        step(&mut h, &mut c);
        while let Ok(n) = c.leg.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == body.len() {
            break;
        }
    }
    assert_eq!(got, body.len(), "no data lost while out of buffers");
}

#[test]
fn a_full_injection_queue_is_counted_and_the_buffer_reused() {
    let mut h = Harness::new();
    let (mut c, f) = connected(&mut h);
    h.refuse_early = true;
    h.stream(f).incoming.extend(vec![1u8; 200_000]);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    step(&mut h, &mut c);
    assert!(h.drops(NatDrop::InjectFull) >= 1);
    assert_eq!(h.gw.free_buffers(), h.gw.config().tx_buffers);
    // The queue drains again: the leg retransmits what was dropped.
    h.refuse_early = false;
    let mut got = 0;
    let mut b = vec![0u8; 1 << 16];
    for _ in 0..300 {
        h.advance(100 * MS);
        step(&mut h, &mut c);
        while let Ok(n) = c.leg.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 200_000 {
            break;
        }
    }
    assert_eq!(got, 200_000);
}

#[test]
fn a_departed_container_closes_its_flows() {
    let mut h = Harness::new();
    let (_c, f) = connected(&mut h);
    h.frame(VnetHdr::default(), udp_frame(5000, remote(53), b"q"));
    h.gw.remove_endpoint(C_PORT);
    h.pump();
    assert!(h.gw.conntrack().is_empty());
    assert!(h.closed.contains(&(f, true)), "{:?}", h.closed);
    assert_eq!(h.closed.len(), 2);
    // A published datagram for it now: no endpoint, counted.
    h.gw.publish(1, NET, SocketAddrV4::new(C_IP, 53), None);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 1));
    h.host_datagram(SocketId::Published(1), b"x", Some(client));
    assert_eq!(h.drops(NatDrop::NoEndpoint), 1);
}

/// A container that closes its side and leaves at once, while the host
/// reads slowly: what the leg acknowledged still reaches the host, then
/// FIN, no reset. The host's late data is read and dropped (a socket
/// closed with unread data would reset). A host that never reads is cut
/// off with a reset when the flow's idle timeout ends.
#[test]
fn a_departed_containers_acknowledged_data_still_reaches_the_host() {
    let data: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
    let departed = |h: &mut Harness| {
        let (mut c, f) = connected(h);
        h.stream(f).room = 1000;
        let mut sent = 0;
        for _ in 0..50 {
            sent += c.leg.socket().send_slice(&data[sent..]).unwrap_or(0);
            step(h, &mut c);
        }
        c.leg.socket().close();
        steps(h, &mut c, 5);
        assert_eq!(sent, data.len());
        assert_eq!(c.leg.socket().send_queue(), 0, "the leg took it all");
        assert_eq!(c.leg.socket().state(), TcpSocketState::FinWait2);
        assert_eq!(h.stream(f).sent.len(), 1000);
        h.stream(f).incoming.extend(b"an answer nobody reads");
        h.gw.remove_endpoint(C_PORT);
        h.advance(1);
        assert!(h.closed.is_empty(), "{:?}", h.closed);
        assert_eq!(h.gw.conntrack().len(), 1);
        f
    };

    let mut h = Harness::new();
    let f = departed(&mut h);
    h.stream(f).room = usize::MAX;
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Writable);
    h.advance(1);
    assert!(h.stream(f).sent == data, "{} bytes", h.stream(f).sent.len());
    assert!(h.stream(f).shut_wr);
    assert!(h.stream(f).incoming.is_empty());
    assert_eq!(h.closed, vec![(f, false)], "a clean close, no reset");
    assert!(h.gw.conntrack().is_empty());

    let mut h = Harness::new();
    let f = departed(&mut h);
    h.advance(121_000_000_000);
    assert_eq!(h.closed, vec![(f, true)]);
    assert!(h.gw.conntrack().is_empty());
}

#[test]
fn flows_name_their_sockets() {
    let mut h = Harness::new();
    let (_c, f) = connected(&mut h);
    h.gw.publish(9, NET, SocketAddrV4::new(C_IP, 53), None);
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT, 1));
    h.host_datagram(SocketId::Published(9), b"x", Some(client));
    let mut rows: Vec<_> = h.gw.flows().map(|(v, s)| (v.key.protocol, s)).collect();
    rows.sort_by_key(|r| r.0 as u8);
    assert_eq!(
        rows,
        vec![
            (Protocol::Tcp, Some(SocketId::Flow(f))),
            (Protocol::Udp, Some(SocketId::Published(9)))
        ]
    );
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary packets from the container (after a valid Ethernet
        /// header to the gateway), arbitrary host datagrams and events in
        /// any order: nothing panics, every frame out is well-formed IPv4
        /// to the container, and the buffers all come back.
        #[test]
        fn arbitrary_input_never_panics(
            input in prop::collection::vec(
                (0u8..6, prop::collection::vec(any::<u8>(), 0..96), any::<u8>()),
                1..24,
            )
        ) {
            let mut h = Harness::new();
            h.dial = Dial::Pending;
            for (kind, bytes, x) in input {
                match kind {
                    0 | 1 => {
                        // Keep most packets IPv4 with a plausible header.
                        let mut p = bytes.clone();
                        if kind == 0 && p.len() >= 20 {
                            let proto = [6u8, 17, 1][usize::from(x % 3)];
                            let len = p.len();
                            ipv4::emit_header(&mut p, C_IP, REMOTE, proto, len - 20, 64);
                        }
                        let meta = VnetHdr { gso_type: x & 5, ..Default::default() };
                        let f = build::ethernet(gateway_mac(GW), c_mac(), EtherType::Ipv4, &p);
                        h.frame(meta, f);
                    }
                    2 => {
                        let flows: Vec<_> = h.socks.keys().copied().collect();
                        if let Some(&f) = flows.get(usize::from(x) % flows.len().max(1)) {
                            let n = bytes.len();
                            if let Some(buf) = h.gw.recv_buffer(SocketId::Flow(f)) {
                                buf[..n].copy_from_slice(&bytes);
                                h.gw.handle_datagram(h.now, SocketId::Flow(f), n, None);
                            }
                        }
                    }
                    3 => {
                        let flows: Vec<_> = h.socks.keys().copied().collect();
                        if let Some(&f) = flows.get(usize::from(x) % flows.len().max(1)) {
                            let ev = [
                                HostEvent::Connected,
                                HostEvent::ConnectFailed(ConnectError::Refused),
                                HostEvent::OpenFailed,
                                HostEvent::Readable,
                                HostEvent::Writable,
                                HostEvent::PortUnreachable,
                            ][usize::from(x) % 6];
                            if ev == HostEvent::Connected {
                                h.socks.insert(f, Fake::Stream(FakeStream {
                                    room: usize::from(x),
                                    incoming: bytes.iter().copied().collect(),
                                    eof: x & 1 == 1,
                                    ..Default::default()
                                }));
                            }
                            h.gw.handle_socket_event(h.now, SocketId::Flow(f), ev);
                        }
                    }
                    4 => {
                        let n = bytes.len();
                        if let Some(buf) = h.gw.recv_buffer(SocketId::RawIcmp) {
                            buf[..n].copy_from_slice(&bytes);
                            h.gw.handle_datagram(h.now, SocketId::RawIcmp, n, None);
                        }
                    }
                    _ => h.advance(u64::from(x) * S),
                }
                h.pump();
                for o in h.take_out() {
                    prop_assert_eq!(o.port, C_PORT);
                    let ip = Ipv4Packet::new_checked(&o.frame[ethernet::HEADER_LEN..]);
                    prop_assert!(ip.is_ok());
                    prop_assert_eq!(ip.unwrap().dst_addr(), C_IP);
                }
            }
            prop_assert_eq!(h.gw.free_buffers(), h.gw.config().tx_buffers);
        }
    }
}

// ---- IPv6 ----------------------------------------------------------------

const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcc, 0, 0, 0, 0, 7);

fn remote6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(REMOTE6, port, 0, 0)
}

/// An IPv6 packet from the container's IPv6 address to `dst`.
fn packet6(dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + l4.len()];
    ip6::emit_header(&mut p, C_IP6, dst, next_header, l4.len(), 64).unwrap();
    p[40..].copy_from_slice(l4);
    p
}

fn syn6(sport: u16, dst: SocketAddrV6) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    let mut p = TcpPacket::new_unchecked(&mut t[..]);
    tapnet_switch::wire::TcpRepr {
        src_port: sport,
        dst_port: dst.port(),
        seq: 1000,
        ack: 0,
        flags: tcp::flags::SYN,
        window: 65535,
        options_len: 4,
    }
    .emit(&mut p);
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xa0]);
    packet6(*dst.ip(), ip6::next_header::TCP, &t)
}

fn udp6(sport: u16, dst: SocketAddrV6, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    packet6(*dst.ip(), ip6::next_header::UDP, &u)
}

fn echo6(dst: Ipv6Addr, ident: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp6::ECHO_REQUEST, 0, 0, 0];
    m.extend_from_slice(&ident.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(data);
    ip6::fill_checksum(&mut m, 2, C_IP6, dst, 58, false);
    packet6(dst, ip6::next_header::ICMPV6, &m)
}

/// ICMPv6 (type, code) of a frame to the container, if it is ICMPv6.
fn icmp6_of(o: &Out) -> Option<(u8, u8)> {
    let ip = o.ip6();
    (ip.next_header() == 58).then(|| (o.l4_6()[0], o.l4_6()[1]))
}

fn tcp6_flags_of(o: &Out) -> Option<u8> {
    (o.ip6().next_header() == 6).then(|| TcpPacket::new_checked(o.l4_6()).unwrap().flags())
}

#[test]
fn tcp6_handshake_data_and_fin_through_an_ipv6_host_socket() {
    let mut h = Harness::new();
    let mut c = Container::dial6(remote6(443), h.now);
    steps(&mut h, &mut c, 4);
    assert_eq!(c.leg.socket().state(), TcpSocketState::Established);
    // The host side: an IPv6 connect to the remote as the container named it.
    assert_eq!(h.dialed, vec![SocketAddr::V6(remote6(443))]);
    let f = h.only_flow();
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(v.state.as_str(), "tcp_established");
    assert_eq!(v.key.container_ip, IpAddr::V6(C_IP6));
    assert_eq!(v.key.remote_ip, IpAddr::V6(REMOTE6));
    // Container → host.
    c.leg.socket().send_slice(b"GET / HTTP/1.1\r\n").unwrap();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.stream(f).sent, b"GET / HTTP/1.1\r\n");
    // Host → container: TSO super-frames of IPv6 (MSS 1500 - 60).
    let body: Vec<u8> = (0..150 * 1024).map(|i| (i % 253) as u8).collect();
    h.stream(f).incoming.extend(&body);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    let (mut got, mut gso) = (Vec::new(), false);
    for _ in 0..100 {
        for o in step(&mut h, &mut c) {
            let ip = o.ip6();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE6, C_IP6));
            if o.meta.gso_type == vnet::GSO_TCPV6 {
                gso = true;
                assert_eq!(o.meta.gso_size, 1440);
                assert_eq!(o.meta.csum_start, 14 + 40);
            }
        }
        let mut b = [0u8; 65536];
        while let Ok(n) = c.leg.socket().recv_slice(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        if got.len() == body.len() {
            break;
        }
    }
    assert!(got == body);
    assert!(gso, "IPv6 data leaves as GSO_TCPV6 super-frames");
    // FIN from the container: the host socket's write side is shut down;
    // end of stream from the host: FIN to the container.
    c.leg.socket().close();
    steps(&mut h, &mut c, 3);
    assert!(h.stream(f).shut_wr);
    h.stream(f).eof = true;
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 5);
    assert!(!c.leg.socket().may_recv());
    assert!(h.closed.contains(&(f, false)), "{:?}", h.closed);
}

#[test]
fn tcp6_refused_and_unreachable_connects() {
    let mut h = Harness::new();
    h.dial = Dial::Fail(ConnectError::Refused);
    h.ip_in(&syn6(40001, remote6(81)));
    let out = h.take_out();
    assert_eq!(out.len(), 1);
    assert_eq!(
        tcp6_flags_of(&out[0]),
        Some(tcp::flags::RST | tcp::flags::ACK)
    );
    let ip = out[0].ip6();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE6, C_IP6));
    assert!(ip6::verify_checksum(out[0].l4_6(), REMOTE6, C_IP6, 6));
    let t = TcpPacket::new_checked(out[0].l4_6()).unwrap();
    assert_eq!(
        (t.src_port(), t.dst_port(), t.ack_number()),
        (81, 40001, 1001)
    );
    for (e, code) in [
        (ConnectError::NetUnreachable, icmp6::unreachable::NO_ROUTE),
        (ConnectError::HostUnreachable, icmp6::unreachable::ADDRESS),
        (ConnectError::TimedOut, icmp6::unreachable::ADDRESS),
    ] {
        let mut h = Harness::new();
        h.dial = Dial::Fail(e);
        h.ip_in(&syn6(40002, remote6(82)));
        let out = h.take_out();
        assert_eq!(icmp6_of(&out[0]), Some((icmp6::DEST_UNREACHABLE, code)));
        let ip = out[0].ip6();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, C_IP6));
        assert!(ip6::verify_checksum(out[0].l4_6(), GW6, C_IP6, 58));
        // It quotes the SYN.
        let quoted = Ipv6Packet::new_checked(&out[0].l4_6()[8..]).unwrap();
        assert_eq!(quoted.dst_addr(), REMOTE6);
    }
}

#[test]
fn udp6_flow_both_ways_and_port_unreachable() {
    let mut h = Harness::new();
    h.ip_in(&udp6(5000, remote6(53), b"query6"));
    let f = h.only_flow();
    match &h.socks[&f] {
        Fake::Dgram(to, sent) => {
            assert_eq!(*to, SocketAddr::V6(remote6(53)));
            assert_eq!(sent, &vec![b"query6".to_vec()]);
        }
        s => panic!("{s:?}"),
    }
    // The answer, as large as IPv6 UDP allows.
    let big = vec![0x5a; 65527];
    assert!(h.host_datagram(SocketId::Flow(f), &big, None));
    assert!(h.host_datagram(SocketId::Flow(f), b"answer6", None));
    let out = h.take_out();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].l4_6().len(), 8 + 65527);
    let ip = out[1].ip6();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE6, C_IP6));
    assert_eq!(ip.payload_len(), 8 + 7);
    let u = UdpPacket::new_checked(out[1].l4_6()).unwrap();
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (53, 5000, &b"answer6"[..])
    );
    assert_eq!(out[1].meta.flags, vnet::F_NEEDS_CSUM);
    assert_eq!(out[1].meta.csum_start, 14 + 40);
    // The partial checksum is the pseudo-header's: completing it over the
    // datagram gives a valid checksum.
    let mut d = out[1].l4_6().to_vec();
    let full = tapnet_switch::wire::checksum_finish(tapnet_switch::wire::checksum_sum(0, &d));
    d[6..8].copy_from_slice(&full.to_be_bytes());
    assert!(ip6::verify_checksum(&d, REMOTE6, C_IP6, 17));
    assert_eq!(
        h.gw.conntrack().get(f).unwrap().state.as_str(),
        "udp_replied"
    );
    // Port unreachable: ICMPv6 port unreachable from the remote, quoting
    // the container's datagram.
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::PortUnreachable);
    h.pump();
    let out = h.take_out();
    assert_eq!(
        icmp6_of(&out[0]),
        Some((icmp6::DEST_UNREACHABLE, icmp6::unreachable::PORT))
    );
    assert_eq!(out[0].ip6().src_addr(), REMOTE6);
    assert!(ip6::verify_checksum(out[0].l4_6(), REMOTE6, C_IP6, 58));
    let quoted = Ipv6Packet::new_checked(&out[0].l4_6()[8..]).unwrap();
    assert_eq!((quoted.src_addr(), quoted.dst_addr()), (C_IP6, REMOTE6));
}

#[test]
fn icmp6_echo_through_ping_sockets_and_the_raw_socket() {
    let mut h = Harness::new();
    h.ip_in(&echo6(REMOTE6, 77, b"ping6"));
    let f = h.only_flow();
    let Fake::Dgram(to, sent) = &h.socks[&f] else {
        panic!()
    };
    assert_eq!(*to, SocketAddr::new(IpAddr::V6(REMOTE6), 0));
    assert_eq!(sent[0][0], icmp6::ECHO_REQUEST);
    let mut reply = sent[0].clone();
    reply[0] = icmp6::ECHO_REPLY;
    reply[4..6].copy_from_slice(&999u16.to_be_bytes());
    assert!(h.host_datagram(SocketId::Flow(f), &reply, None));
    let out = h.take_out();
    let ip = out[0].ip6();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (REMOTE6, C_IP6));
    let m = out[0].l4_6();
    assert_eq!(m[0], icmp6::ECHO_REPLY);
    assert_eq!(u16::from_be_bytes([m[4], m[5]]), 77);
    assert_eq!(&m[8..], b"ping6");
    assert!(ip6::verify_checksum(m, REMOTE6, C_IP6, 58));
    // An IPv4 echo reply type on an ICMPv6 flow is no echo reply.
    h.host_datagram(SocketId::Flow(f), &[0, 0, 0, 0, 0, 0, 0, 0], None);
    assert_eq!(h.drops(NatDrop::IcmpIgnored), 1);
    assert_eq!(
        h.gw.conntrack().get(f).unwrap().key.protocol,
        Protocol::Icmp
    );

    // The raw ICMPv6 socket: identifiers rewritten, replies matched by
    // identifier and sender.
    let mut h = Harness::with(
        GatewayConfig {
            icmp6: IcmpMode::Raw,
            ..Default::default()
        },
        info(),
    );
    h.ip_in(&echo6(REMOTE6, 5, b"x"));
    let (via, data, to) = h.sent_unconnected.pop().unwrap();
    assert_eq!(via, SocketId::RawIcmp6);
    assert_eq!(to, Some(SocketAddr::new(IpAddr::V6(REMOTE6), 0)));
    let mut reply = data.clone();
    reply[0] = icmp6::ECHO_REPLY;
    let from = Some(SocketAddr::new(IpAddr::V6(REMOTE6), 0));
    assert!(h.host_datagram(SocketId::RawIcmp6, &reply, from));
    let out = h.take_out();
    let m = out[0].l4_6();
    assert_eq!((m[0], u16::from_be_bytes([m[4], m[5]])), (129, 5));
    assert!(ip6::verify_checksum(m, REMOTE6, C_IP6, 58));
    // The same identifier from another host: ignored, counted.
    let other = Some(SocketAddr::new(IpAddr::V6(CLIENT6), 0));
    h.host_datagram(SocketId::RawIcmp6, &reply, other);
    assert_eq!(h.drops(NatDrop::IcmpIgnored), 1);
    // An address unreachable quoting the request as sent: to the
    // container, from its gateway, with its own identifier.
    let host: Ipv6Addr = "2001:db8:ff::1".parse().unwrap();
    let mut request = packet6(REMOTE6, ip6::next_header::ICMPV6, &data);
    request[8..24].copy_from_slice(&host.octets());
    let mut error = vec![
        icmp6::DEST_UNREACHABLE,
        icmp6::unreachable::ADDRESS,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    error.extend_from_slice(&request);
    assert!(h.host_datagram(
        SocketId::RawIcmp6,
        &error,
        Some(SocketAddr::new(IpAddr::V6(host), 0))
    ));
    let out = h.take_out();
    let quoted = from_gateway_unreachable(&out[0], icmp6::unreachable::ADDRESS);
    assert_eq!(
        (quoted[40], u16::from_be_bytes([quoted[44], quoted[45]])),
        (128, 5)
    );
    assert_eq!(h.drops(NatDrop::Unreachable), 1);
    // Neither ping nor raw sockets for IPv6: counted; IPv4 unaffected.
    let mut h = Harness::with(
        GatewayConfig {
            icmp6: IcmpMode::Unavailable,
            ..Default::default()
        },
        info(),
    );
    h.ip_in(&echo6(REMOTE6, 5, b""));
    assert_eq!(h.drops(NatDrop::NoPingSocket), 1);
    h.frame(
        VnetHdr::default(),
        build::icmp_echo(false, gateway_mac(GW), c_mac(), C_IP, REMOTE, 1, 1, b""),
    );
    assert_eq!(h.gw.conntrack().len(), 1);
}

#[test]
fn ipv6_policy_refusals_are_answered_and_counted() {
    let other = NetInfo {
        gateway: Ipv4Addr::new(10, 2, 0, 1),
        v6: Some(Ipv6Config {
            subnet: "2001:db8:2::".parse().unwrap(),
            prefix_len: 64,
            gateway: "2001:db8:2::1".parse().unwrap(),
        }),
        ..info()
    };
    let mapped_lo: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
    let cases: [(NetInfo, bool, Ipv6Addr, NatDrop); 7] = [
        (
            NetInfo {
                internal: true,
                ..info()
            },
            true,
            REMOTE6,
            NatDrop::Internal,
        ),
        (
            NetInfo {
                masquerade: false,
                ..info()
            },
            true,
            REMOTE6,
            NatDrop::MasqueradeOff,
        ),
        (
            info(),
            true,
            "2001:db8:2::5".parse().unwrap(),
            NatDrop::OtherNetwork,
        ),
        (
            info(),
            true,
            "2001:db8:2::1".parse().unwrap(),
            NatDrop::OtherNetwork,
        ),
        (info(), false, GW6, NatDrop::HostLoopbackOff),
        (info(), true, mapped_lo, NatDrop::V6Unroutable),
        (info(), true, Ipv6Addr::LOCALHOST, NatDrop::V6Unroutable),
    ];
    for (net, loopback, dst, why) in cases {
        let mut h = Harness::with(
            GatewayConfig {
                host_loopback: loopback,
                ..Default::default()
            },
            net,
        );
        h.gw.set_network(NetworkId(2), other);
        h.ip_in(&syn6(40000, SocketAddrV6::new(dst, 80, 0, 0)));
        h.ip_in(&udp6(5000, SocketAddrV6::new(dst, 53, 0, 0), b"q"));
        h.ip_in(&echo6(dst, 9, b""));
        assert_eq!(h.drops(why), 3, "{why:?} {dst}");
        assert!(h.socks.is_empty() && h.dialed.is_empty(), "{why:?}");
        let out = h.take_out();
        assert_eq!(out.len(), 3, "{why:?}");
        for o in &out {
            assert_eq!(
                icmp6_of(o),
                Some((icmp6::DEST_UNREACHABLE, icmp6::unreachable::PROHIBITED))
            );
            assert_eq!(o.ip6().src_addr(), GW6);
            assert!(ip6::verify_checksum(o.l4_6(), GW6, C_IP6, 58));
        }
    }
    // The gateway's IPv6 address is the host's IPv6 loopback.
    let mut h = Harness::new();
    h.dial = Dial::Pending;
    h.ip_in(&syn6(40000, SocketAddrV6::new(GW6, 8080, 0, 0)));
    h.ip_in(&udp6(5000, SocketAddrV6::new(GW6, 9999, 0, 0), b"q"));
    assert_eq!(
        h.dialed,
        vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8080)]
    );
    let loopback = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9999);
    assert!(h
        .socks
        .values()
        .any(|s| matches!(s, Fake::Dgram(to, _) if *to == loopback)));
    // A network without an IPv6 side relays no IPv6.
    let mut h = Harness::with(GatewayConfig::default(), NetInfo { v6: None, ..info() });
    h.ip_in(&syn6(40000, remote6(80)));
    assert_eq!(h.drops(NatDrop::NoIpv6), 1);
    assert!(h.dialed.is_empty() && h.take_out().is_empty());
}

#[test]
fn ipv6_unsupported_frames_are_counted() {
    let mut h = Harness::new();
    // A fragment without data (fragments are otherwise reassembled:
    // `fragmented_datagrams_go_out_whole`), another extension header, a
    // short header.
    h.ip_in(&packet6(REMOTE6, 44, &[17, 0, 0, 1, 0, 0, 0, 1]));
    assert_eq!(h.drops(NatDrop::IpFragment), 1);
    h.ip_in(&packet6(REMOTE6, 60, &[17, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(h.drops(NatDrop::Protocol), 1);
    let short = packet6(REMOTE6, 6, &[0; 10]);
    h.ip_in(&short);
    h.ip_in(&short[..30]);
    assert_eq!(h.drops(NatDrop::Malformed), 2);
    // ICMPv6 other than echo request.
    let mut m = echo6(REMOTE6, 1, b"");
    m[40] = 2; // packet too big
    h.ip_in(&m);
    assert_eq!(h.drops(NatDrop::IcmpNotEcho), 1);
    // A segment without a flow: an IPv6 RST.
    let mut ack = syn6(40000, remote6(80));
    ack[53] = tcp::flags::ACK;
    h.ip_in(&ack);
    assert_eq!(h.drops(NatDrop::TcpNoFlow), 1);
    assert_eq!(tcp6_flags_of(&h.take_out()[0]), Some(tcp::flags::RST));
    assert!(h.gw.conntrack().is_empty());
}

#[test]
fn published_tcp_port_from_an_ipv6_client_keeps_its_address() {
    let mut h = Harness::new();
    h.gw.publish(3, NET, SocketAddrV4::new(C_IP, 8080), Some(C_IP6));
    let mut c = Container::listen6(8080, h.now);
    let client = SocketAddr::V6(SocketAddrV6::new(CLIENT6, 51000, 0, 0));
    let f = h.gw.handle_accept(h.now, 3, client).unwrap();
    h.socks.insert(
        f,
        Fake::Stream(FakeStream {
            room: usize::MAX,
            ..Default::default()
        }),
    );
    h.pump();
    steps(&mut h, &mut c, 4);
    assert_eq!(c.leg.socket().state(), TcpSocketState::Established);
    let ep = c.leg.socket().remote_endpoint().unwrap();
    assert_eq!(
        (ep.addr.to_string(), ep.port),
        ("2001:db8:cc::7".into(), 51000)
    );
    let v = h.gw.conntrack().get(f).unwrap();
    assert_eq!(v.direction.as_str(), "inbound");
    assert_eq!(v.key.container_ip, IpAddr::V6(C_IP6));
    h.stream(f).incoming.extend(b"hello6");
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    steps(&mut h, &mut c, 3);
    let mut b = [0u8; 8];
    assert_eq!(c.leg.socket().recv_slice(&mut b).unwrap(), 6);
    c.leg.socket().send_slice(b"world6").unwrap();
    steps(&mut h, &mut c, 3);
    assert_eq!(h.stream(f).sent, b"world6");
    // Loopback and link-local clients appear as the gateway's IPv6
    // address, with their own port.
    for (i, a) in ["::1", "fe80::1234"].iter().enumerate() {
        let lo = SocketAddr::new(a.parse().unwrap(), 52000 + i as u16);
        let g = h.gw.handle_accept(h.now, 3, lo).unwrap();
        let v = h.gw.conntrack().get(g).unwrap();
        assert_eq!(v.key.remote_ip, IpAddr::V6(GW6));
        assert_eq!(v.key.remote_port, 52000 + i as u16);
    }
    // An IPv4 client (also as an IPv4-mapped address on a dual-stack
    // socket) reaches the IPv4 address as before.
    let mapped: Ipv6Addr = "::ffff:198.51.100.7".parse().unwrap();
    let g =
        h.gw.handle_accept(h.now, 3, SocketAddr::new(IpAddr::V6(mapped), 53000))
            .unwrap();
    let v = h.gw.conntrack().get(g).unwrap();
    assert_eq!(v.key.container_ip, IpAddr::V4(C_IP));
    assert_eq!(v.key.remote_ip, IpAddr::V4(CLIENT));
    // A port without the container's IPv6 address: IPv6 clients reach the
    // IPv4 address from the gateway's IPv4 address.
    h.gw.publish(5, NET, SocketAddrV4::new(C_IP, 8080), None);
    let g = h.gw.handle_accept(h.now, 5, client).unwrap();
    let v = h.gw.conntrack().get(g).unwrap();
    assert_eq!(v.key.container_ip, IpAddr::V4(C_IP));
    assert_eq!(v.key.remote_ip, IpAddr::V4(GW));
}

#[test]
fn published_udp_port_from_an_ipv6_client() {
    let mut h = Harness::new();
    h.gw.publish(4, NET, SocketAddrV4::new(C_IP, 5353), Some(C_IP6));
    let client = SocketAddr::V6(SocketAddrV6::new(CLIENT6, 6000, 0, 0));
    assert!(h.host_datagram(SocketId::Published(4), b"hi6", Some(client)));
    let out = h.take_out();
    let ip = out[0].ip6();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (CLIENT6, C_IP6));
    let u = UdpPacket::new_checked(out[0].l4_6()).unwrap();
    assert_eq!(
        (u.src_port(), u.dst_port(), u.payload()),
        (6000, 5353, &b"hi6"[..])
    );
    // The container answers over IPv6 through the published socket.
    h.ip_in(&{
        let mut p = udp6(5353, SocketAddrV6::new(CLIENT6, 6000, 0, 0), b"yo6");
        p[8..24].copy_from_slice(&C_IP6.octets());
        p
    });
    let (via, data, to) = h.sent_unconnected.pop().unwrap();
    assert_eq!(
        (via, data.as_slice(), to),
        (SocketId::Published(4), &b"yo6"[..], Some(client))
    );
    // An IPv4 client on the same port reaches the IPv4 address.
    let v4 = SocketAddr::V4(SocketAddrV4::new(CLIENT, 6001));
    assert!(h.host_datagram(SocketId::Published(4), b"hi4", Some(v4)));
    let out = h.take_out();
    let ip = out[0].ip();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (CLIENT, C_IP));
    assert_eq!(
        UdpPacket::new_checked(ip.payload()).unwrap().payload(),
        b"hi4"
    );
    assert_eq!(h.gw.conntrack().len(), 2);
}

#[test]
fn ipv6_classification_and_departure() {
    let sw = tapnet_switch::Switch::new(Default::default());
    let mut cfg = tapnet_switch::NetworkConfig::new("n", Ipv4Addr::new(10, 1, 0, 0), 24, GW);
    cfg.v6 = Some(v6_side());
    let id = sw.add_network(cfg).unwrap();
    let v4only = sw
        .add_network(tapnet_switch::NetworkConfig::new(
            "m",
            Ipv4Addr::new(10, 3, 0, 0),
            24,
            Ipv4Addr::new(10, 3, 0, 1),
        ))
        .unwrap();
    let topo = sw.topology();
    let net = topo.network(id).unwrap();
    use tapnet_nat::Claim;
    let eth = |p: &[u8]| build::ethernet(gateway_mac(GW), c_mac(), EtherType::Ipv6, p);
    let classify = |p: &[u8]| tapnet_nat::classify(net, &eth(p));
    assert_eq!(classify(&udp6(1, remote6(53), b"q")), Claim::Nat);
    assert_eq!(classify(&syn6(1, remote6(80))), Claim::Nat);
    assert_eq!(classify(&echo6(REMOTE6, 1, b"")), Claim::Nat);
    // TCP/UDP to the gateway's address: the host's loopback; its echo and
    // Neighbor Discovery are the switch's.
    let gw6 = SocketAddrV6::new(GW6, 80, 0, 0);
    assert_eq!(classify(&syn6(1, gw6)), Claim::Nat);
    assert_eq!(classify(&echo6(GW6, 1, b"")), Claim::Pass);
    let mut ns = echo6(REMOTE6, 1, b"");
    ns[40] = 135;
    assert_eq!(classify(&ns), Claim::Pass);
    // On-link, link-local, multicast: the switch's.
    let local = SocketAddrV6::new("2001:db8:1::9".parse().unwrap(), 53, 0, 0);
    assert_eq!(classify(&udp6(1, local, b"q")), Claim::Pass);
    let ll = SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 0);
    assert_eq!(classify(&udp6(1, ll, b"q")), Claim::Pass);
    let mc = SocketAddrV6::new("ff02::fb".parse().unwrap(), 5353, 0, 0);
    assert_eq!(classify(&udp6(1, mc, b"q")), Claim::Pass);
    // Fragments of TCP, UDP or ICMPv6 are the NAT's; of anything else
    // (here a hop-by-hop header), not.
    assert_eq!(
        classify(&packet6(REMOTE6, 44, &[17, 0, 0, 1, 0, 0, 0, 1])),
        Claim::Nat
    );
    assert_eq!(
        classify(&packet6(REMOTE6, 44, &[0; 8])),
        Claim::Drop(NatDrop::Protocol, tapnet_switch::DropReason::NoRoute)
    );
    assert_eq!(
        classify(&packet6(REMOTE6, 47, &[0; 8])),
        Claim::Drop(NatDrop::Protocol, tapnet_switch::DropReason::NoRoute)
    );
    assert_eq!(
        classify(&udp6(1, remote6(53), b"q")[..39]),
        Claim::Drop(NatDrop::Malformed, tapnet_switch::DropReason::Malformed)
    );
    // A network without an IPv6 side, and other Ethernet types: the
    // switch's.
    let m = topo.network(v4only).unwrap();
    assert_eq!(
        tapnet_nat::classify(m, &eth(&udp6(1, remote6(53), b"q"))),
        Claim::Pass
    );
    let arp = build::ethernet(gateway_mac(GW), c_mac(), EtherType::Arp, &[0; 28]);
    assert_eq!(tapnet_nat::classify(net, &arp), Claim::Pass);

    // A departing dual-stack container takes its flows of both families.
    let mut h = Harness::new();
    let (_c, f4) = connected(&mut h);
    h.ip_in(&udp6(5000, remote6(53), b"q"));
    assert_eq!(h.gw.conntrack().len(), 2);
    h.gw.remove_endpoint(C_PORT);
    h.pump();
    assert!(h.gw.conntrack().is_empty());
    assert_eq!(h.closed.len(), 2);
    assert!(h.closed.contains(&(f4, true)));
    // Frames to its IPv6 address now have nowhere to go.
    h.gw.handle_socket_event(h.now, SocketId::Flow(f4), HostEvent::Readable);
    assert!(h.take_out().is_empty());
}

/// An ICMP error as the raw ICMP socket reads it: from `router` to `me`,
/// `(type, code)`, quoting the first 28 bytes of the echo request `sent`
/// (its ICMP message) as it left `me` for `REMOTE` with TTL `ttl`.
fn raw_icmp_error(
    router: Ipv4Addr,
    me: Ipv4Addr,
    (kind, code): (u8, u8),
    sent: &[u8],
    ttl: u8,
) -> Vec<u8> {
    let mut request = vec![0u8; 20 + sent.len()];
    ipv4::emit_header(&mut request, me, REMOTE, 1, sent.len(), ttl);
    request[20..].copy_from_slice(sent);
    let mut error = vec![0u8; 20 + 8 + 28];
    ipv4::emit_header(&mut error, router, me, 1, 8 + 28, 64);
    error[20] = kind;
    error[21] = code;
    error[28..].copy_from_slice(&request[..28]);
    error
}

// ---- idle flows give their rings back ------------------------------------

thread_local! {
    /// The lengths of the rings [`poison`] was lent, in order (each test
    /// runs in a thread of its own).
    static LENT: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `release` that writes garbage where the daemon's (`madvise`) leaves
/// zeros: a leg that handed on a byte of a lent ring would show it.
fn poison(r: IdleRing<'_>) {
    LENT.with(|l| l.borrow_mut().push(r.len()));
    let p = std::ptr::with_exposed_provenance_mut::<u8>(r.addr());
    // SAFETY: an IdleRing is `len` bytes of one live allocation, lent for
    // this call, which nothing else touches meanwhile; any byte is a valid
    // u8.
    unsafe { std::ptr::write_bytes(p, 0xa5, r.len()) };
}

fn lent() -> Vec<usize> {
    LENT.with(|l| l.borrow().clone())
}

fn releasing() -> Harness {
    Harness::with(
        GatewayConfig {
            release: Some(poison),
            ..Default::default()
        },
        info(),
    )
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Container → host: `data`, until the host has it all.
fn up(h: &mut Harness, c: &mut Container, f: FlowHandle, data: &[u8]) {
    let before = h.stream(f).sent.len();
    let mut sent = 0;
    for _ in 0..500 {
        sent += c.leg.socket().send_slice(&data[sent..]).unwrap_or(0);
        step(h, c);
        if h.stream(f).sent.len() == before + data.len() {
            break;
        }
    }
    assert!(
        h.stream(f).sent[before..] == *data,
        "the host got what was sent"
    );
}

/// Host → container: `data`, until the container has read it all.
fn down(h: &mut Harness, c: &mut Container, f: FlowHandle, data: &[u8]) {
    h.stream(f).incoming.extend(data);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    let got = read_all(h, c, data.len(), MS);
    assert!(got == data, "the container got what was sent");
    steps(h, c, 2); // its last acknowledgement reaches the gateway
}

/// Steps (`pause` apart) until the container has read `n` bytes.
fn read_all(h: &mut Harness, c: &mut Container, n: usize, pause: u64) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = vec![0u8; 1 << 16];
    for _ in 0..500 {
        h.now += pause;
        step(h, c);
        while let Ok(k @ 1..) = c.leg.socket().recv_slice(&mut b) {
            got.extend_from_slice(&b[..k]);
        }
        if got.len() >= n {
            break;
        }
    }
    got
}

/// A flow that moved data and then none for [`RING_IDLE_NS`] lends both
/// rings (the harness's legs have 64 KiB each) once, and again after each
/// later burst; data keeps flowing through them intact.
#[test]
fn an_idle_flow_lends_its_empty_rings_and_data_flows_on() {
    let mut h = releasing();
    let (mut c, f) = connected(&mut h);
    h.advance(3 * S);
    assert!(lent().is_empty(), "no data yet: nothing was touched");
    up(&mut h, &mut c, f, &pattern(100_000, 1));
    down(&mut h, &mut c, f, &pattern(100_000, 2));
    h.advance(RING_IDLE_NS / 2);
    assert!(lent().is_empty(), "not idle long enough");
    h.advance(RING_IDLE_NS);
    assert_eq!(lent(), [64 * 1024, 64 * 1024]);
    assert_eq!(
        h.gw.ring_releases(),
        RingReleases {
            rings: 2,
            bytes: 128 * 1024
        }
    );
    h.advance(10 * S);
    assert_eq!(lent().len(), 2, "nothing moved since: nothing more");
    up(&mut h, &mut c, f, &pattern(150_000, 3));
    down(&mut h, &mut c, f, &pattern(150_000, 4));
    h.advance(RING_IDLE_NS + S);
    assert_eq!(lent().len(), 4, "lent again after the second burst");
    up(&mut h, &mut c, f, &pattern(1000, 5));
    down(&mut h, &mut c, f, &pattern(1000, 6));
}

/// A segment smoltcp stores out of order (the one before it was lost)
/// sits in the receive ring's free space: that ring is not lent, and the
/// stream comes out whole once the hole is filled.
#[test]
fn a_segment_held_out_of_order_keeps_the_receive_ring() {
    let mut h = releasing();
    let (mut c, f) = connected(&mut h);
    let p = pattern(3000, 7);
    up(&mut h, &mut c, f, &p[..1000]);
    c.leg.socket().send_slice(&p[1000..2000]).unwrap();
    c.leg.poll(h.now, &mut c.tx);
    let lost = std::mem::take(&mut c.tx.pending);
    assert_eq!(lost.len(), 1);
    c.leg.socket().send_slice(&p[2000..]).unwrap();
    c.leg.poll(h.now, &mut c.tx);
    for seg in std::mem::take(&mut c.tx.pending) {
        h.ip_in(&seg);
    }
    h.take_out();
    assert_eq!(h.stream(f).sent.len(), 1000);
    h.advance(RING_IDLE_NS + S);
    assert_eq!(lent(), [64 * 1024], "the transmit ring only");
    h.take_out();
    for _ in 0..100 {
        h.now += 200 * MS;
        step(&mut h, &mut c);
        if h.stream(f).sent.len() == p.len() {
            break;
        }
    }
    assert!(h.stream(f).sent == p, "the stream came out whole");
    h.advance(RING_IDLE_NS + S);
    assert_eq!(lent().len(), 3, "then both");
}

/// Data the container has not acknowledged stays in the transmit ring
/// for retransmission: that ring is not lent.
#[test]
fn data_the_container_has_not_acknowledged_keeps_the_transmit_ring() {
    let mut h = releasing();
    let (mut c, f) = connected(&mut h);
    let p = pattern(20_000, 9);
    h.stream(f).incoming.extend(&p);
    h.gw.handle_socket_event(h.now, SocketId::Flow(f), HostEvent::Readable);
    h.advance(0);
    assert!(!h.take_out().is_empty(), "sent, and lost on the way");
    h.advance(RING_IDLE_NS + S);
    h.take_out();
    assert_eq!(lent(), [64 * 1024], "the receive ring only");
    let got = read_all(&mut h, &mut c, p.len(), 500 * MS);
    assert!(got == p, "retransmitted whole");
}
