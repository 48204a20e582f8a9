//! The embedded DNS over IPv6 on a dual-stack network: hand-built IPv6
//! frames to the gateway's IPv6 address given to the hook (as the switch
//! hands it the frames to the gateway MAC it does not answer itself),
//! reply frames checked byte by byte (addresses, lengths, checksums with
//! an IPv6 pseudo-header computed here) and answers decoded by
//! hickory-proto; AAAA, NODATA and ip6.arpa PTR through the responder.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use tapnet_dns::tcp::flags::{ACK, FIN, PSH, SYN};
use tapnet_dns::{
    forward_queue, DnsHook, EndpointSpec, FastRng, ForwardRx, NetworkSpec, Registry, Responder,
};
use tapnet_switch::build::mac;
use tapnet_switch::counters::PortCounters;
use tapnet_switch::wire::{checksum_finish, checksum_sum, vnet, EthernetAddress, VnetHdr};
use tapnet_switch::*;

const A: u16 = 1;
const AAAA: u16 = 28;
const PTR: u16 = 12;
const SPORT: u16 = 40000;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Counts the frames the DNS hook passed on.
#[derive(Default)]
struct Inner {
    seen: usize,
}

impl GatewayHook for Inner {
    fn handle(&mut self, _: &HookCx<'_>, _: &VnetHdr, _: &[u8], _: &mut [u8]) -> HookVerdict {
        self.seen += 1;
        HookVerdict::Pass
    }
}

/// Two dual-stack networks, `front` (10.1.0.0/24, 2001:db8:1::/64) and
/// `back` (10.2.0.0/24, 2001:db8:2::/64), and an IPv4-only one, `old`.
struct Fab {
    hook: DnsHook<Inner>,
    reg: Arc<Registry>,
    rx: ForwardRx,
    front: Network,
    back: Network,
    old: Network,
    port: Port,
    scratch: Vec<u8>,
}

fn network(id: u16, name: &str, third: u8, dual: bool, mtu: u32) -> Network {
    let gw = Ipv4Addr::new(10, third, 0, 1);
    let mut config = NetworkConfig::new(name, Ipv4Addr::new(10, third, 0, 0), 24, gw);
    config.mtu = mtu;
    if dual {
        config.v6 = Some(Ipv6Config {
            subnet: v6(&format!("2001:db8:{third}::")),
            prefix_len: 64,
            gateway: v6(&format!("2001:db8:{third}::1")),
        });
    }
    Network {
        id: NetworkId(id),
        config,
        gateway_mac: gateway_mac(gw),
        ports: Vec::new(),
        max_frame: mtu as usize + 14,
        tx_sa: None,
        segment: None,
    }
}

fn fabric_mtu(forward: bool, mtu: u32) -> Fab {
    let reg = Registry::new();
    let (tx, rx) = forward_queue(4);
    let hook = DnsHook::with_inner(
        reg.clone(),
        Responder::default(),
        FastRng::new(5),
        forward.then_some(tx),
        Inner::default(),
    );
    let front = network(1, "front", 1, true, mtu);
    let back = network(2, "back", 2, true, mtu);
    let old = network(3, "old", 3, false, mtu);
    for n in [&front, &back, &old] {
        reg.set_network(NetworkSpec::new(n.id, &n.config.name))
            .unwrap();
    }
    let port = Port {
        id: PortId(7),
        config: PortConfig::endpoint("p", front.id, mac(1), Ipv4Addr::new(10, 1, 0, 2)),
        counters: PortCounters::new(1),
        learned: Arc::new(AtomicU32::new(0)),
        max_macs: 1,
        uplink: None,
    };
    Fab {
        hook,
        reg,
        rx,
        front,
        back,
        old,
        port,
        scratch: vec![0u8; 65536 + 256],
    }
}

fn fabric(forward: bool) -> Fab {
    fabric_mtu(forward, 1500)
}

/// Network `front`: the client (10.1.0.2, 2001:db8:1::2) also on `back`;
/// `web` dual-stack on `front`; `legacy` IPv4-only on `front`; `db`
/// dual-stack on `back` only.
fn populated(forward: bool) -> Fab {
    let f = fabric(forward);
    let (front, back) = (f.front.id, f.back.id);
    let ep = |n, id: &str, name: &str, v4: [u8; 4], a6: Option<&str>| {
        let e = EndpointSpec::new(n, id, name, Ipv4Addr::from(v4));
        match a6 {
            Some(a) => e.with_ipv6(v6(a)),
            None => e,
        }
    };
    let r = &f.reg;
    r.add_endpoint(ep(
        front,
        "c1",
        "client",
        [10, 1, 0, 2],
        Some("2001:db8:1::2"),
    ))
    .unwrap();
    r.add_endpoint(ep(
        back,
        "c1",
        "client",
        [10, 2, 0, 2],
        Some("2001:db8:2::2"),
    ))
    .unwrap();
    let mut web = ep(front, "c2", "web", [10, 1, 0, 3], Some("2001:db8:1::3"));
    web.aliases.push("www".into());
    r.add_endpoint(web).unwrap();
    r.add_endpoint(ep(front, "c3", "legacy", [10, 1, 0, 4], None))
        .unwrap();
    r.add_endpoint(ep(back, "c4", "db", [10, 2, 0, 5], Some("2001:db8:2::5")))
        .unwrap();
    f
}

const CLIENT6: &str = "2001:db8:1::2";

/// The IPv6 pseudo-header sum, written out here independently of the
/// crate's.
fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut acc = checksum_sum(0, &src.octets());
    acc = checksum_sum(acc, &dst.octets());
    acc + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(proto)
}

/// An Ethernet + IPv6 frame to the gateway MAC carrying `l4` after
/// `ext` (extension header bytes, `first` their type).
fn frame6(
    dst_mac: EthernetAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    ext: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    let mut f = dst_mac.0.to_vec();
    f.extend_from_slice(&mac(1).0);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    f.push(next);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(ext);
    f.extend_from_slice(l4);
    f
}

/// A UDP datagram from `src`:SPORT to `dst`:`dport` with a valid checksum.
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = SPORT.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = checksum_finish(checksum_sum(pseudo6(src, dst, 17, len), &u));
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    u
}

/// A TCP segment from `src`:SPORT to `dst`:53 with a valid checksum.
fn tcp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut t = SPORT.to_be_bytes().to_vec();
    t.extend_from_slice(&53u16.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push((((20 + opts.len()) / 4) << 4) as u8);
    t.push(flags);
    t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(opts);
    t.extend_from_slice(data);
    let c = checksum_finish(checksum_sum(pseudo6(src, dst, 6, t.len()), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A query with RD set, optionally with EDNS.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if let Some(size) = edns {
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

impl Fab {
    fn net(&self, which: u16) -> &Network {
        match which {
            1 => &self.front,
            2 => &self.back,
            _ => &self.old,
        }
    }

    fn gw6(&self) -> Ipv6Addr {
        self.front.config.v6.unwrap().gateway
    }

    /// Gives a frame to the hook as the switch would (arrival on `front`).
    fn handle(&mut self, meta: VnetHdr, frame: &[u8]) -> HookVerdict {
        self.handle_on(1, meta, frame)
    }

    fn handle_on(&mut self, net: u16, meta: VnetHdr, frame: &[u8]) -> HookVerdict {
        let network = self.net(net).clone();
        let cx = HookCx {
            network: &network,
            port: &self.port,
            now_ns: 42,
        };
        self.hook.handle(&cx, &meta, frame, &mut self.scratch)
    }

    /// A UDP query from the client's IPv6 address to the gateway's.
    fn ask_udp(&mut self, q: &[u8]) -> HookVerdict {
        let (src, gw) = (v6(CLIENT6), self.gw6());
        let f = frame6(
            self.front.gateway_mac,
            src,
            gw,
            17,
            &[],
            &udp6(src, gw, 53, q),
        );
        self.handle(VnetHdr::default(), &f)
    }

    /// The reply frame's DNS message, after checking its Ethernet, IPv6
    /// and UDP headers and checksum.
    fn udp_answer(&self, v: HookVerdict) -> Message {
        let HookVerdict::Reply(n) = v else {
            panic!("a reply, got {v:?}")
        };
        let f = &self.scratch[..n];
        check_udp6(f, self.front.gateway_mac, self.gw6(), v6(CLIENT6))
    }

    fn ask(&mut self, name: &str, qtype: u16) -> Message {
        let v = self.ask_udp(&query(0x4242, name, qtype, None));
        let m = self.udp_answer(v);
        assert_eq!(m.metadata.id, 0x4242);
        m
    }

    fn stats(&self) -> tapnet_dns::DnsStats {
        self.hook.stats()
    }
}

/// Checks an IPv6/UDP frame from `gw`:53 to `client`:SPORT and decodes
/// its DNS message.
fn check_udp6(f: &[u8], gw_mac: EthernetAddress, gw: Ipv6Addr, client: Ipv6Addr) -> Message {
    assert_eq!(&f[0..6], &mac(1).0, "to the querier's MAC");
    assert_eq!(&f[6..12], &gw_mac.0, "from the gateway MAC");
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    let ip = &f[14..54];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(ip[6], 17, "next header UDP");
    assert_eq!(ip[7], 64, "hop limit");
    assert_eq!(&ip[8..24], &gw.octets());
    assert_eq!(&ip[24..40], &client.octets());
    let u = &f[54..];
    assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), u.len());
    assert_eq!(usize::from(u16::from_be_bytes([u[4], u[5]])), u.len());
    assert_eq!(u16::from_be_bytes([u[0], u[1]]), 53);
    assert_eq!(u16::from_be_bytes([u[2], u[3]]), SPORT);
    assert_ne!(&u[6..8], &[0, 0], "IPv6 needs a UDP checksum");
    assert_eq!(
        checksum_finish(checksum_sum(pseudo6(gw, client, 17, u.len()), u)),
        0,
        "UDP checksum over the IPv6 pseudo-header"
    );
    Message::from_vec(&u[8..]).expect("hickory decodes the answer")
}

fn aaaa(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::AAAA(a) => a.0,
            other => panic!("not AAAA: {other:?}"),
        })
        .collect()
}

fn a(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("not A: {other:?}"),
        })
        .collect()
}

fn reverse6(a: Ipv6Addr) -> String {
    let mut s = String::new();
    for b in a.octets().iter().rev() {
        s += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
    }
    s + "ip6.arpa"
}

#[test]
fn aaaa_and_a_over_ipv6_to_the_gateway() {
    let mut f = populated(true);
    let m = f.ask("web", AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(aaaa(&m), vec![v6("2001:db8:1::3")]);
    assert_eq!(m.answers[0].ttl, 600);
    assert_eq!(aaaa(&f.ask("WWW.front", AAAA)), vec![v6("2001:db8:1::3")]);
    // A over IPv6 transport; the client's other network is visible to it,
    // identified by its IPv6 address.
    assert_eq!(a(&f.ask("web", A)), vec![Ipv4Addr::new(10, 1, 0, 3)]);
    assert_eq!(aaaa(&f.ask("db", AAAA)), vec![v6("2001:db8:2::5")]);
    assert_eq!(aaaa(&f.ask("db.back", AAAA)), vec![v6("2001:db8:2::5")]);
    let s = f.stats();
    assert_eq!((s.queries, s.answers, s.forwarded), (5, 5, 0));
    assert_eq!(f.hook.inner_mut().seen, 0);
}

#[test]
fn nodata_for_a_local_name_without_the_family() {
    let mut f = populated(true);
    // `legacy` has no IPv6 address: NOERROR, no answer, not forwarded.
    let m = f.ask("legacy", AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries[0].query_type, RecordType::AAAA);
    assert!(f.rx.try_recv().is_err(), "not forwarded");
    assert_eq!(f.stats().nodata, 1);
    // Its A answers.
    assert_eq!(a(&f.ask("legacy", A)), vec![Ipv4Addr::new(10, 1, 0, 4)]);
}

#[test]
fn ptr_in_ip6_arpa() {
    let mut f = populated(true);
    let m = f.ask(&reverse6(v6("2001:db8:1::3")), PTR);
    match &m.answers[..] {
        [r] => match &r.data {
            RData::PTR(n) => assert_eq!(n.0.to_ascii(), "web.front."),
            other => panic!("not PTR: {other:?}"),
        },
        other => panic!("one PTR, got {other:?}"),
    }
    // On a network the querier shares (back), found too.
    let m = f.ask(&reverse6(v6("2001:db8:2::5")), PTR);
    assert_eq!(m.answers.len(), 1);
    // Not a container address: not local, forwarded like in-addr.arpa.
    let v = f.ask_udp(&query(7, &reverse6(v6("2001:db8:1::99")), PTR, None));
    assert_eq!(v, HookVerdict::Consumed);
    assert_eq!(f.rx.try_recv().unwrap().query[..2], [0, 7]);
}

#[test]
fn ptr_scoping_follows_the_shared_networks() {
    let f = populated(false);
    let snap = f.reg.load();
    // A container only on `back` does not see `front`'s addresses.
    f.reg
        .add_endpoint(
            EndpointSpec::new(f.back.id, "c9", "lonely", Ipv4Addr::new(10, 2, 0, 9))
                .with_ipv6(v6("2001:db8:2::9")),
        )
        .unwrap();
    let snap2 = f.reg.load();
    let q = snap2.querier(f.back.id, v6("2001:db8:2::9"));
    assert_eq!(q.reverse6(v6("2001:db8:1::3")), None);
    assert!(q.reverse6(v6("2001:db8:2::5")).is_some());
    // The client (front and back), asking by its IPv6 address, sees both.
    let c = snap.querier(f.front.id, v6(CLIENT6));
    assert!(c.reverse6(v6("2001:db8:1::3")).is_some());
    assert!(c.reverse6(v6("2001:db8:2::5")).is_some());
}

#[test]
fn bad_checksums_are_dropped_unless_offloaded() {
    let mut f = populated(true);
    let (src, gw) = (v6(CLIENT6), f.gw6());
    let mut u = udp6(src, gw, 53, &query(1, "web", AAAA, None));
    u[6] ^= 0x10;
    let fr = frame6(f.front.gateway_mac, src, gw, 17, &[], &u);
    assert_eq!(
        f.handle(VnetHdr::default(), &fr),
        HookVerdict::Drop(DropReason::Malformed)
    );
    assert_eq!(f.stats().bad_udp, 1);
    // A zero UDP checksum is invalid over IPv6.
    u[6..8].fill(0);
    let fr = frame6(f.front.gateway_mac, src, gw, 17, &[], &u);
    assert_eq!(
        f.handle(VnetHdr::default(), &fr),
        HookVerdict::Drop(DropReason::Malformed)
    );
    assert_eq!(f.stats().bad_udp, 2);
    // A partial checksum from the guest (NEEDS_CSUM) is not checked.
    let meta = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 54,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let v = f.handle(meta, &fr);
    assert_eq!(aaaa(&f.udp_answer(v)), vec![v6("2001:db8:1::3")]);
    // Bad TCP checksum.
    let mut t = tcp6(src, gw, 100, 0, SYN, &[], &[]);
    t[17] ^= 1;
    let fr = frame6(f.front.gateway_mac, src, gw, 6, &[], &t);
    assert_eq!(
        f.handle(VnetHdr::default(), &fr),
        HookVerdict::Drop(DropReason::Malformed)
    );
    assert_eq!(f.stats().bad_tcp, 1);
    assert_eq!(f.hook.inner_mut().seen, 0);
}

#[test]
fn extension_headers_and_non_dns_go_to_the_inner_hook() {
    let mut f = populated(true);
    let (src, gw) = (v6(CLIENT6), f.gw6());
    let q = udp6(src, gw, 53, &query(1, "web", AAAA, None));
    // Hop-by-hop options (PadN) before the UDP query.
    let hbh = [17, 0, 1, 4, 0, 0, 0, 0];
    let fr = frame6(f.front.gateway_mac, src, gw, 0, &hbh, &q);
    assert_eq!(f.handle(VnetHdr::default(), &fr), HookVerdict::Pass);
    // A fragment header (atomic fragment).
    let frag = [17, 0, 0, 0, 0, 0, 0, 1];
    let fr = frame6(f.front.gateway_mac, src, gw, 44, &frag, &q);
    assert_eq!(f.handle(VnetHdr::default(), &fr), HookVerdict::Pass);
    // Another port, another destination, ICMPv6.
    let fr = frame6(
        f.front.gateway_mac,
        src,
        gw,
        17,
        &[],
        &udp6(src, gw, 123, b"ntp"),
    );
    assert_eq!(f.handle(VnetHdr::default(), &fr), HookVerdict::Pass);
    let other = v6("2001:db8:ffff::1");
    let fr = frame6(
        f.front.gateway_mac,
        src,
        other,
        17,
        &[],
        &udp6(src, other, 53, b"x"),
    );
    assert_eq!(f.handle(VnetHdr::default(), &fr), HookVerdict::Pass);
    let fr = frame6(
        f.front.gateway_mac,
        src,
        gw,
        58,
        &[],
        &[128, 0, 0, 0, 0, 1, 0, 1],
    );
    assert_eq!(f.handle(VnetHdr::default(), &fr), HookVerdict::Pass);
    // An IPv4-only network has no IPv6 gateway: everything passes.
    let fr = frame6(f.old.gateway_mac, src, gw, 17, &[], &q);
    assert_eq!(f.handle_on(3, VnetHdr::default(), &fr), HookVerdict::Pass);
    assert_eq!(f.hook.inner_mut().seen, 6);
    assert_eq!(f.stats().queries, 0);
}

#[test]
fn forwarded_ipv6_query_and_its_reply_frame() {
    let mut f = populated(true);
    let q = query(0x1111, "example.com", AAAA, Some(1400));
    assert_eq!(f.ask_udp(&q), HookVerdict::Consumed);
    let req = f.rx.try_recv().unwrap();
    assert_eq!(req.network, f.front.id);
    assert_eq!(req.port, PortId(7));
    assert_eq!(req.querier_ip, IpAddr::V6(v6(CLIENT6)));
    assert_eq!(req.querier_port, SPORT);
    assert_eq!(req.gateway_ip, IpAddr::V6(f.gw6()));
    assert_eq!(req.gateway_mac, f.front.gateway_mac);
    assert_eq!(req.udp_limit, 1400);
    assert!(req.tcp.is_none());
    // The upstream's answer, framed back over IPv6.
    let mut up = Message::from_vec(&q).unwrap();
    up.metadata.message_type = hickory_proto::op::MessageType::Response;
    let answer = up.to_vec().unwrap();
    let mut out = vec![0u8; answer.len() + 80];
    let (n, meta) = req.reply_frame(&answer, &mut out).unwrap();
    assert!(meta.is_plain());
    let m = check_udp6(&out[..n], f.front.gateway_mac, f.gw6(), v6(CLIENT6));
    assert_eq!(m.metadata.id, 0x1111);
    // Without room for the IPv6 headers: None, not a panic.
    assert!(req
        .reply_frame(&answer, &mut out[..answer.len() + 40])
        .is_none());
}

/// The TCP segment of an IPv6 frame from the gateway to the client, after
/// checking the headers and (for plain frames) the checksum.
struct Seg {
    seq: u32,
    ack: u32,
    flags: u8,
    opts: Vec<u8>,
    data: Vec<u8>,
}

fn check_tcp6(f: &[u8], gw: Ipv6Addr, full_csum: bool) -> Seg {
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    let ip = &f[14..54];
    assert_eq!(ip[6], 6);
    assert_eq!(&ip[8..24], &gw.octets());
    assert_eq!(&ip[24..40], &v6(CLIENT6).octets());
    let t = &f[54..];
    assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), t.len());
    if full_csum {
        assert_eq!(
            checksum_finish(checksum_sum(pseudo6(gw, v6(CLIENT6), 6, t.len()), t)),
            0,
            "TCP checksum over the IPv6 pseudo-header"
        );
    }
    assert_eq!(u16::from_be_bytes([t[0], t[1]]), 53);
    assert_eq!(u16::from_be_bytes([t[2], t[3]]), SPORT);
    let doff = usize::from(t[12] >> 4) * 4;
    let u = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
    Seg {
        seq: u(4),
        ack: u(8),
        flags: t[13],
        opts: t[20..doff].to_vec(),
        data: t[doff..].to_vec(),
    }
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

impl Fab {
    /// SYN (MSS `mss`) → SYN-ACK; returns the cookie ISN and the MSS
    /// granted.
    fn connect(&mut self, isn: u32, mss: u16) -> (u32, u16) {
        let (src, gw) = (v6(CLIENT6), self.gw6());
        let mut o = vec![2, 4];
        o.extend_from_slice(&mss.to_be_bytes());
        let fr = frame6(
            self.front.gateway_mac,
            src,
            gw,
            6,
            &[],
            &tcp6(src, gw, isn, 0, SYN, &o, &[]),
        );
        let HookVerdict::Reply(n) = self.handle(VnetHdr::default(), &fr) else {
            panic!("SYN-ACK")
        };
        let s = check_tcp6(&self.scratch[..n], gw, true);
        assert_eq!(s.flags, SYN | ACK);
        assert_eq!(s.ack, isn.wrapping_add(1));
        assert_eq!(&s.opts[..2], &[2, 4]);
        (s.seq, u16::from_be_bytes([s.opts[2], s.opts[3]]))
    }

    fn send_query(&mut self, isn: u32, cookie: u32, q: &[u8]) -> HookVerdict {
        let (src, gw) = (v6(CLIENT6), self.gw6());
        let t = tcp6(
            src,
            gw,
            isn.wrapping_add(1),
            cookie.wrapping_add(1),
            ACK | PSH,
            &[],
            &framed(q),
        );
        let fr = frame6(self.front.gateway_mac, src, gw, 6, &[], &t);
        self.handle(VnetHdr::default(), &fr)
    }
}

#[test]
fn tcp_over_ipv6_with_cookies_and_the_mtu() {
    let mut f = populated(true);
    // MTU 1500: at most 1500 - 60 over IPv6.
    let (cookie, mss) = f.connect(1000, 9000);
    assert_eq!(mss, 1440);
    let q = query(0x2222, "web", AAAA, None);
    let HookVerdict::Reply(n) = f.send_query(1000, cookie, &q) else {
        panic!("answer")
    };
    let s = check_tcp6(&f.scratch[..n], f.gw6(), true);
    assert_eq!(s.flags, ACK | PSH | FIN);
    assert_eq!(s.seq, cookie.wrapping_add(1));
    assert_eq!(s.ack, 1001 + 2 + q.len() as u32);
    let len = usize::from(u16::from_be_bytes([s.data[0], s.data[1]]));
    assert_eq!(s.data.len(), 2 + len);
    let m = Message::from_vec(&s.data[2..]).unwrap();
    assert_eq!(aaaa(&m), vec![v6("2001:db8:1::3")]);
    // The cookie is bound to the IPv6 tuple: another port is refused.
    let (src, gw) = (v6(CLIENT6), f.gw6());
    let mut t = tcp6(
        src,
        gw,
        1001,
        cookie.wrapping_add(1),
        ACK | PSH,
        &[],
        &framed(&q),
    );
    t[0] ^= 1;
    // Fix the checksum after changing the source port.
    t[16..18].fill(0);
    let c = checksum_finish(checksum_sum(pseudo6(src, gw, 6, t.len()), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let fr = frame6(f.front.gateway_mac, src, gw, 6, &[], &t);
    assert!(matches!(
        f.handle(VnetHdr::default(), &fr),
        HookVerdict::Reply(_)
    ));
    assert_eq!(f.stats().tcp_bad_cookie, 1);
    assert_eq!(f.stats().tcp_answers, 1);
}

#[test]
fn big_answers_over_ipv6_truncated_on_udp_gso_on_tcp() {
    let mut f = fabric_mtu(false, 1280);
    let me = EndpointSpec::new(f.front.id, "me", "me", Ipv4Addr::new(10, 1, 0, 2))
        .with_ipv6(v6(CLIENT6));
    f.reg.add_endpoint(me).unwrap();
    for i in 0..60u8 {
        let mut e = EndpointSpec::new(
            f.front.id,
            &format!("id{i}"),
            &format!("m{i}"),
            Ipv4Addr::new(10, 1, 1, i),
        )
        .with_ipv6(v6(&format!("2001:db8:1::1:{i:x}")));
        e.aliases.push("big".into());
        f.reg.add_endpoint(e).unwrap();
    }
    // 60 AAAA records = 1680 bytes: beyond MTU 1280 - 48 even with EDNS.
    let v = f.ask_udp(&query(3, "big", AAAA, Some(4096)));
    let HookVerdict::Reply(n) = v else { panic!() };
    assert!(n <= 14 + 1280, "capped to the MTU");
    let m = f.udp_answer(v);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(f.stats().truncated, 1);
    // Over TCP: one GSO_TCPV6 super-frame with all 60.
    let (cookie, mss) = f.connect(5000, 1460);
    assert_eq!(mss, 1220);
    let v = f.send_query(5000, cookie, &query(4, "big", AAAA, None));
    let HookVerdict::ReplyWith(n, meta) = v else {
        panic!("a GSO frame, got {v:?}")
    };
    assert_eq!(meta.gso_type, vnet::GSO_TCPV6);
    assert_eq!(meta.flags, vnet::F_NEEDS_CSUM);
    assert_eq!(
        (meta.csum_start, meta.csum_offset, meta.hdr_len),
        (54, 16, 74)
    );
    assert_eq!(meta.gso_size, mss);
    // The partial checksum, completed over the whole super-frame, verifies.
    let mut whole = f.scratch[..n].to_vec();
    let c = checksum_finish(checksum_sum(0, &whole[54..]));
    whole[70..72].copy_from_slice(&c.to_be_bytes());
    let s = check_tcp6(&whole, f.gw6(), true);
    let m = Message::from_vec(&s.data[2..]).unwrap();
    assert_eq!(m.answers.len(), 60);
}

#[test]
fn forwarded_tcp_query_over_ipv6_is_acked_then_answered_over_tcp() {
    let mut f = populated(true);
    let (cookie, _) = f.connect(7000, 1460);
    let q = query(0x3333, "example.org", AAAA, None);
    let HookVerdict::Reply(n) = f.send_query(7000, cookie, &q) else {
        panic!("an ACK")
    };
    let ack = check_tcp6(&f.scratch[..n], f.gw6(), true);
    assert_eq!(ack.flags, ACK);
    assert!(ack.data.is_empty());
    let req = f.rx.try_recv().unwrap();
    assert_eq!(req.querier_ip, IpAddr::V6(v6(CLIENT6)));
    assert_eq!(req.gateway_ip, IpAddr::V6(f.gw6()));
    let t = req.tcp.expect("over TCP");
    assert_eq!((t.seq, t.ack), (ack.seq, ack.ack));
    let mut up = Message::from_vec(&q).unwrap();
    up.metadata.message_type = hickory_proto::op::MessageType::Response;
    let answer = up.to_vec().unwrap();
    let mut out = vec![0u8; answer.len() + 80];
    let (n, meta) = req.reply_frame(&answer, &mut out).unwrap();
    assert!(meta.is_plain());
    let s = check_tcp6(&out[..n], f.gw6(), true);
    assert_eq!(s.flags, ACK | PSH | FIN);
    assert_eq!((s.seq, s.ack), (t.seq, t.ack));
    assert_eq!(&s.data[2..], &answer[..]);
    assert_eq!(f.stats().tcp_forwarded, 1);
}

#[test]
fn queries_to_the_gateways_link_local_address_are_answered_from_it() {
    let mut f = populated(true);
    let ll = tapnet_switch::link_local_of(f.front.gateway_mac);
    let src = v6(CLIENT6);
    let q = query(0x77, "web", AAAA, None);
    let fr = frame6(
        f.front.gateway_mac,
        src,
        ll,
        17,
        &[],
        &udp6(src, ll, 53, &q),
    );
    let v = f.handle(VnetHdr::default(), &fr);
    let HookVerdict::Reply(n) = v else {
        panic!("a reply, got {v:?}")
    };
    let m = check_udp6(&f.scratch[..n], f.front.gateway_mac, ll, src);
    assert_eq!(aaaa(&m), vec![v6("2001:db8:1::3")]);
}
