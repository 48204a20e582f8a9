//! The embedded DNS driven through the in-memory switch: frames in,
//! frames out, answers decoded by an independent implementation
//! (hickory-proto).

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tapnet_dns::{
    forward_queue, DnsHook, EndpointSpec, FastRng, ForwardRx, Link, NetworkSpec, Registry,
    Responder, ResponderConfig,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::{MemSwitch, Sent};
use tapnet_switch::wire::{checksum, checksum_finish, checksum_sum, vnet, VnetHdr};
use tapnet_switch::*;

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

struct Net {
    id: NetworkId,
    gw: Ipv4Addr,
    third: u8,
}

struct Fab {
    m: MemSwitch<DnsHook<Inner>>,
    reg: Arc<Registry>,
    rx: ForwardRx,
    front: Net,
    back: Net,
    private: Net,
    bridge: Net,
    next_port: u32,
}

struct Ctr {
    port: PortId,
    ip: Ipv4Addr,
    mac: tapnet_switch::wire::EthernetAddress,
    net: NetworkId,
    gw: Ipv4Addr,
}

fn fabric_with(queue: usize) -> Fab {
    let reg = Registry::new();
    let (tx, rx) = forward_queue(queue);
    let hook = DnsHook::with_inner(
        reg.clone(),
        Responder::default(),
        FastRng::new(7),
        Some(tx),
        Inner::default(),
    );
    let m = MemSwitch::with_hook(SwitchConfig::default(), hook);
    let mk = |name: &str, third: u8, internal: bool, dns: bool| {
        let gw = Ipv4Addr::new(10, third, 0, 1);
        let id = m
            .switch
            .add_network(NetworkConfig::new(
                name,
                Ipv4Addr::new(10, third, 0, 0),
                24,
                gw,
            ))
            .unwrap();
        let mut spec = NetworkSpec::new(id, name);
        spec.internal = internal;
        spec.dns = dns;
        reg.set_network(spec).unwrap();
        Net { id, gw, third }
    };
    Fab {
        front: mk("front", 1, false, true),
        back: mk("back", 2, false, true),
        private: mk("private", 3, true, true),
        bridge: mk("bridge", 4, false, false),
        m,
        reg,
        rx,
        next_port: 1,
    }
}

fn fabric() -> Fab {
    fabric_with(16)
}

impl Fab {
    fn net(&self, which: &str) -> &Net {
        match which {
            "front" => &self.front,
            "back" => &self.back,
            "private" => &self.private,
            _ => &self.bridge,
        }
    }

    /// Attaches container `id` (name `name`) to `net` at host `d`.
    fn attach(
        &mut self,
        net: &str,
        d: u8,
        id: &str,
        name: &str,
        f: impl FnOnce(&mut EndpointSpec),
    ) -> Ctr {
        let (nid, gw, third) = {
            let n = self.net(net);
            (n.id, n.gw, n.third)
        };
        let ip = Ipv4Addr::new(10, third, 0, d);
        let mac = mac(self.next_port);
        self.next_port += 1;
        let port = self
            .m
            .switch
            .add_port(PortConfig::endpoint(&format!("{name}-{net}"), nid, mac, ip))
            .unwrap();
        let mut spec = EndpointSpec::new(nid, id, name, ip);
        f(&mut spec);
        self.reg.add_endpoint(spec).unwrap();
        Ctr {
            port,
            ip,
            mac,
            net: nid,
            gw,
        }
    }

    fn send(&mut self, c: &Ctr, meta: VnetHdr, frame: &[u8]) -> Vec<Sent> {
        self.m.inject(0, c.port, meta, frame)
    }

    /// Sends `query` from `c` to its gateway's port 53; returns the frames.
    fn ask_raw(&mut self, c: &Ctr, query: &[u8]) -> Vec<Sent> {
        let f = build::udp(gateway_mac(c.gw), c.mac, (c.ip, 40000), (c.gw, 53), query);
        self.send(c, VnetHdr::default(), &f)
    }

    /// Asks and decodes the one answer.
    fn ask(&mut self, c: &Ctr, name: &str, qtype: u16) -> Message {
        let sent = self.ask_raw(c, &query(0x4242, name, qtype, None));
        assert_eq!(sent.len(), 1, "one answer for {name}");
        decode(c, &sent[0])
    }

    fn stats(&mut self) -> tapnet_dns::DnsStats {
        self.m.worker.hook_mut().stats()
    }
}

/// A query with RD set, optionally with an EDNS OPT advertising `edns`.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for l in name.trim_end_matches('.').split('.') {
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

/// Checks the reply frame's headers and checksums; returns its DNS payload.
fn payload<'a>(c: &Ctr, s: &'a Sent) -> &'a [u8] {
    let f = &s.frame;
    assert_eq!(s.port, c.port, "answer goes back to the querier's port");
    assert_eq!(&f[0..6], &c.mac.0, "to the querier's MAC");
    assert_eq!(&f[6..12], &gateway_mac(c.gw).0, "from the gateway MAC");
    let ip = &f[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum");
    assert_eq!(&ip[12..16], &c.gw.octets());
    assert_eq!(&ip[16..20], &c.ip.octets());
    assert_eq!(ip[9], 17);
    let udp = &f[34..];
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        20 + udp.len()
    );
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 53);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 40000);
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    let mut acc = checksum_sum(0, &c.gw.octets());
    acc = checksum_sum(acc, &c.ip.octets());
    acc += 17 + udp.len() as u32;
    acc = checksum_sum(acc, udp);
    assert_eq!(checksum_finish(acc), 0, "UDP checksum");
    &udp[8..]
}

fn decode(c: &Ctr, s: &Sent) -> Message {
    Message::from_vec(payload(c, s)).expect("hickory decodes our answer")
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

const A: u16 = 1;
const PTR: u16 = 12;
const MX: u16 = 15;
const AAAA: u16 = 28;

const WEB_ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211";

#[test]
fn a_for_every_kind_of_name() {
    let mut f = fabric();
    let web = f.attach("front", 2, WEB_ID, "web", |e| {
        e.aliases = vec!["www".into(), "Frontend-Alias".into()];
        e.hostname = Some("webhost".into());
    });
    let cli = f.attach("front", 3, "c2", "client", |_| {});
    for name in [
        "web",
        "www",
        "frontend-alias",
        "3f4e5d6c7b8a",
        "webhost",
        "web.front",
        "www.front",
        "WEB",
        "Web.FRONT.",
        "3F4E5D6C7B8A",
    ] {
        let m = f.ask(&cli, name, A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addrs(&m), vec![web.ip], "{name}");
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired);
        assert!(m.metadata.recursion_available);
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.answers[0].ttl, 600);
        // The question is echoed as asked (case kept, for 0x20 checks).
        assert_eq!(
            m.queries[0].name.to_ascii().trim_end_matches('.'),
            name.trim_end_matches('.')
        );
    }
    // The container resolves itself too.
    assert_eq!(addrs(&f.ask(&web, "client", A)), vec![cli.ip]);
    assert_eq!(f.stats().answers, 11);
    assert_eq!(f.stats().queries, 11);
}

#[test]
fn configurable_ttl() {
    let reg = Registry::new();
    let hook = DnsHook::new(
        reg.clone(),
        Responder::new(ResponderConfig {
            ttl: 30,
            ..ResponderConfig::default()
        }),
        FastRng::new(1),
        None,
    );
    let mut m = MemSwitch::with_hook(SwitchConfig::default(), hook);
    let gw = Ipv4Addr::new(10, 9, 0, 1);
    let net = m
        .switch
        .add_network(NetworkConfig::new("n", Ipv4Addr::new(10, 9, 0, 0), 24, gw))
        .unwrap();
    reg.set_network(NetworkSpec::new(net, "n")).unwrap();
    let ip = Ipv4Addr::new(10, 9, 0, 2);
    let p = m
        .switch
        .add_port(PortConfig::endpoint("a", net, mac(1), ip))
        .unwrap();
    reg.add_endpoint(EndpointSpec::new(net, "c1", "a", ip))
        .unwrap();
    let c = Ctr {
        port: p,
        ip,
        mac: mac(1),
        net,
        gw,
    };
    let fr = build::udp(
        gateway_mac(gw),
        mac(1),
        (ip, 40000),
        (gw, 53),
        &query(1, "a", A, None),
    );
    let sent = m.inject(0, p, VnetHdr::default(), &fr);
    assert_eq!(decode(&c, &sent[0]).answers[0].ttl, 30);
    // No forwarder configured: SERVFAIL for names that are not local.
    let fr = build::udp(
        gateway_mac(gw),
        mac(1),
        (ip, 40000),
        (gw, 53),
        &query(2, "example.com", A, None),
    );
    let sent = m.inject(0, p, VnetHdr::default(), &fr);
    let msg = decode(&c, &sent[0]);
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.worker.hook_mut().stats().servfail, 1);
    let _ = c.net;
}

#[test]
fn scoping_across_networks() {
    let mut f = fabric();
    let a = f.attach("front", 2, "ca", "alpha", |_| {});
    let b = f.attach("back", 2, "cb", "beta", |_| {});
    // gamma is on both networks.
    let g1 = f.attach("front", 3, "cg", "gamma", |_| {});
    let g2 = f.attach("back", 3, "cg", "gamma", |_| {});
    // alpha sees front only.
    assert_eq!(addrs(&f.ask(&a, "gamma", A)), vec![g1.ip]);
    assert!(f.ask_raw(&a, &query(1, "beta", A, None)).is_empty());
    assert!(f.ask_raw(&a, &query(1, "beta.back", A, None)).is_empty());
    assert_eq!(f.rx.len(), 2, "both forwarded");
    // beta sees back only: gamma at its back address.
    assert_eq!(addrs(&f.ask(&b, "gamma", A)), vec![g2.ip]);
    assert!(f.ask_raw(&b, &query(1, "alpha", A, None)).is_empty());
    // gamma sees both, through either gateway.
    assert_eq!(addrs(&f.ask(&g1, "beta", A)), vec![b.ip]);
    assert_eq!(addrs(&f.ask(&g2, "alpha", A)), vec![a.ip]);
    assert_eq!(addrs(&f.ask(&g1, "alpha.front", A)), vec![a.ip]);
    assert_eq!(addrs(&f.ask(&g1, "beta.back", A)), vec![b.ip]);
    // Its own name: the arrival network's address first.
    assert_eq!(addrs(&f.ask(&g2, "gamma", A)), vec![g2.ip]);
}

#[test]
fn links_visible_to_the_linking_container_only() {
    let mut f = fabric();
    let _db = f.attach("front", 2, "cdb", "db", |_| {});
    let app = f.attach("front", 3, "capp", "app", |e| {
        e.links.push(Link {
            container: "db".into(),
            alias: "database".into(),
        })
    });
    let other = f.attach("front", 4, "cother", "other", |_| {});
    assert_eq!(
        addrs(&f.ask(&app, "Database", A)),
        vec![Ipv4Addr::new(10, 1, 0, 2)]
    );
    assert!(f.ask_raw(&other, &query(1, "database", A, None)).is_empty());
    assert_eq!(f.rx.try_recv().unwrap().querier_ip, other.ip);
}

#[test]
fn shared_alias_returns_all_in_varying_order_and_removal_is_immediate() {
    let mut f = fabric();
    let client = f.attach("front", 2, "cc", "client", |_| {});
    let mut ips = Vec::new();
    for i in 0..5u8 {
        let c = f.attach("front", 10 + i, &format!("c{i}"), &format!("s{i}"), |e| {
            e.aliases.push("svc".into())
        });
        ips.push(c.ip);
    }
    let mut orders = HashSet::new();
    for _ in 0..20 {
        let got = addrs(&f.ask(&client, "svc", A));
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, ips, "every address, once");
        orders.insert(got);
    }
    assert!(orders.len() > 3, "orders vary: {}", orders.len());
    f.reg.remove_container("c0").unwrap();
    let got: HashSet<_> = addrs(&f.ask(&client, "svc", A)).into_iter().collect();
    assert_eq!(got, ips[1..].iter().copied().collect());
    for i in 1..5 {
        f.reg.remove_endpoint(f.front.id, &format!("c{i}")).unwrap();
    }
    assert!(f.ask_raw(&client, &query(9, "svc", A, None)).is_empty());
    assert_eq!(f.rx.len(), 1, "svc is no longer local");
}

#[test]
fn ptr_aaaa_and_other_types() {
    let mut f = fabric();
    let web = f.attach("front", 2, WEB_ID, "web", |_| {});
    let m = f.ask(&web, "2.0.1.10.in-addr.arpa", PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    match &m.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.front."),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.answers[0].record_type(), RecordType::PTR);
    for t in [AAAA, MX, PTR] {
        let m = f.ask(&web, "web", t);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(m.metadata.authoritative);
    }
    assert_eq!(f.stats().nodata, 3);
    // Addresses that are not containers' go upstream.
    assert!(f
        .ask_raw(&web, &query(1, "8.8.8.8.in-addr.arpa", PTR, None))
        .is_empty());
    // So do unknown names, of any type.
    assert!(f.ask_raw(&web, &query(1, "nosuch", AAAA, None)).is_empty());
    assert_eq!(f.rx.len(), 2);
}

#[test]
fn oversize_answers_truncate_over_udp() {
    let mut f = fabric();
    let client = f.attach("front", 2, "cc", "client", |_| {});
    for i in 0..40u8 {
        f.attach("front", 10 + i, &format!("c{i}"), &format!("m{i}"), |e| {
            e.aliases.push("many".into())
        });
    }
    // 12 + 9 + 40 * 16 = 661 > 512.
    let m = f.ask(&client, "many", A);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(f.stats().truncated, 1);
    // With EDNS (1232), it fits.
    let sent = f.ask_raw(&client, &query(3, "many", A, Some(1232)));
    let m = decode(&client, &sent[0]);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(4096));
}

#[test]
fn garbage_gets_formerr_or_nothing() {
    let mut f = fabric();
    let c = f.attach("front", 2, "cc", "client", |_| {});
    // A header with QDCOUNT 1 and a truncated question.
    let sent = f.ask_raw(&c, &[0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'a']);
    let p = payload(&c, &sent[0]);
    assert_eq!(p.len(), 12);
    assert_eq!(&p[0..2], &[0xbe, 0xef]);
    assert_eq!(p[3] & 0x0f, 1, "FORMERR");
    assert!(p[2] & 0x80 != 0, "QR");
    // QDCOUNT 0.
    let sent = f.ask_raw(&c, &[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(payload(&c, &sent[0])[3] & 0x0f, 1);
    // No header: dropped.
    assert!(f.ask_raw(&c, b"hello").is_empty());
    // A response sent as a query: dropped (no reply loops).
    let mut r = query(5, "web", A, None);
    r[2] |= 0x80;
    assert!(f.ask_raw(&c, &r).is_empty());
    // Opcode NOTIFY: NOTIMP.
    let mut r = query(5, "web", A, None);
    r[2] |= 4 << 3;
    assert_eq!(payload(&c, &f.ask_raw(&c, &r)[0])[3] & 0x0f, 4);
    let s = f.stats();
    assert_eq!((s.formerr, s.dropped, s.notimp), (2, 2, 1));
    let drops = f.m.switch.port_stats(c.port).unwrap();
    assert_eq!(drops.drop_count(DropReason::Malformed), 2);
}

#[test]
fn internal_networks_refuse_what_is_not_local() {
    let mut f = fabric();
    let inside = f.attach("private", 2, "ci", "inside", |_| {});
    let _peer = f.attach("private", 3, "cp", "peer", |_| {});
    let m = f.ask(&inside, "example.com", A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(
        addrs(&f.ask(&inside, "peer", A)),
        vec![Ipv4Addr::new(10, 3, 0, 3)]
    );
    assert_eq!(f.stats().refused, 1);
    // A container on an internal and a normal network may forward.
    let both = f.attach("private", 4, "cb", "both", |_| {});
    f.attach("front", 4, "cb", "both", |_| {});
    assert!(f
        .ask_raw(&both, &query(1, "example.com", A, None))
        .is_empty());
    assert_eq!(f.rx.len(), 1);
}

#[test]
fn forward_queue_contents_and_reply_frame() {
    let mut f = fabric_with(2);
    let c = f.attach("front", 2, "cc", "client", |_| {});
    let q = query(0x1111, "example.com", A, Some(1400));
    assert!(f.ask_raw(&c, &q).is_empty());
    let req = f.rx.try_recv().unwrap();
    assert_eq!(req.network, c.net);
    assert_eq!(req.port, c.port);
    assert_eq!(req.querier_mac, c.mac);
    assert_eq!(req.querier_ip, c.ip);
    assert_eq!(req.querier_port, 40000);
    assert_eq!(req.gateway_ip, c.gw);
    assert_eq!(req.gateway_mac, gateway_mac(c.gw));
    assert_eq!(req.udp_limit, 1400);
    assert_eq!(&req.query[..], &q[..]);
    // The forwarder's answer, framed back to the querier.
    let mut upstream = Message::from_vec(&q).unwrap();
    upstream.metadata.message_type = hickory_proto::op::MessageType::Response;
    let bytes = upstream.to_vec().unwrap();
    let mut out = vec![0; 2048];
    let (n, meta) = req.reply_frame(&bytes, &mut out).unwrap();
    assert!(req.tcp.is_none());
    let s = Sent {
        port: req.port,
        meta,
        frame: out[..n].to_vec(),
    };
    assert_eq!(payload(&c, &s), &bytes[..]);
    // Full queue: dropped and counted.
    for _ in 0..3 {
        f.ask_raw(&c, &q);
    }
    assert_eq!(f.rx.len(), 2);
    assert_eq!(f.stats().forward_queue_full, 1);
    assert_eq!(f.stats().forwarded, 3);
    let st = f.m.switch.port_stats(c.port).unwrap();
    assert_eq!(st.drop_count(DropReason::TxFull), 1);
}

#[test]
fn everything_else_goes_to_the_inner_hook() {
    let mut f = fabric();
    let c = f.attach("front", 2, "cc", "client", |_| {});
    let br = f.attach("bridge", 2, "cb", "onbridge", |_| {});
    // Another UDP port, and TCP to another port (TCP to port 53 is ours).
    let fr = build::udp(gateway_mac(c.gw), c.mac, (c.ip, 40000), (c.gw, 5353), b"x");
    assert!(f.send(&c, VnetHdr::default(), &fr).is_empty());
    let mut tcp = vec![0u8; 20];
    tcp[2..4].copy_from_slice(&54u16.to_be_bytes());
    let fr = build::ipv4(gateway_mac(c.gw), c.mac, c.ip, c.gw, 6, &tcp);
    assert!(f.send(&c, VnetHdr::default(), &fr).is_empty());
    // UDP to 53 but beyond the gateway (routed): not ours.
    let fr = build::udp(
        gateway_mac(c.gw),
        c.mac,
        (c.ip, 40000),
        (Ipv4Addr::new(1, 1, 1, 1), 53),
        &query(1, "web", A, None),
    );
    assert!(f.send(&c, VnetHdr::default(), &fr).is_empty());
    // The default bridge has no embedded DNS.
    assert!(f.ask_raw(&br, &query(1, "onbridge", A, None)).is_empty());
    assert_eq!(f.m.worker.hook_mut().inner_mut().seen, 4);
    assert_eq!(f.stats().queries, 0);
    assert_eq!(f.rx.len(), 0);
}

#[test]
fn udp_checksum_checked_unless_offloaded() {
    let mut f = fabric();
    let c = f.attach("front", 2, "cc", "client", |_| {});
    let mut fr = build::udp(
        gateway_mac(c.gw),
        c.mac,
        (c.ip, 40000),
        (c.gw, 53),
        &query(1, "client", A, None),
    );
    fr[40] ^= 0x55; // corrupt the UDP checksum
    assert!(f.send(&c, VnetHdr::default(), &fr).is_empty());
    assert_eq!(f.stats().bad_udp, 1);
    let meta = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let sent = f.send(&c, meta, &fr);
    assert_eq!(addrs(&decode(&c, &sent[0])), vec![c.ip]);
    // A UDP length beyond the datagram.
    let mut fr = build::udp(
        gateway_mac(c.gw),
        c.mac,
        (c.ip, 40000),
        (c.gw, 53),
        &query(1, "client", A, None),
    );
    fr[38..40].copy_from_slice(&500u16.to_be_bytes());
    assert!(f.send(&c, meta, &fr).is_empty());
    assert_eq!(f.stats().bad_udp, 2);
}

/// On a macvlan/ipvlan network (the segment's router is the gateway) the
/// DNS answers at the service address `segment::DNS_ADDR`, from
/// `segment::DNS_MAC`: names and aliases of the network's endpoints,
/// forwarding with that address and MAC as the answer's source, and
/// nothing at the router's address.
#[test]
fn segment_networks_answer_at_the_dns_service_address() {
    use tapnet_switch::segment::{SegmentMode, DNS_ADDR, DNS_MAC};
    assert_eq!(gateway_mac(DNS_ADDR), DNS_MAC);
    for mode in [
        SegmentMode::Macvlan,
        SegmentMode::IpvlanL2,
        SegmentMode::IpvlanL3,
    ] {
        let mut f = fabric();
        let router = Ipv4Addr::new(192, 0, 2, 1);
        let id =
            f.m.switch
                .add_network(NetworkConfig::new(
                    "seg",
                    Ipv4Addr::new(192, 0, 2, 0),
                    24,
                    router,
                ))
                .unwrap();
        f.m.switch.set_segment(id, mode).unwrap();
        let mut spec = NetworkSpec::new(id, "seg");
        spec.internal = false;
        f.reg.set_network(spec).unwrap();
        let pmac = mac(100);
        let attach = |f: &mut Fab, d: u8, name: &str, alias: &str| {
            let ip = Ipv4Addr::new(192, 0, 2, d);
            let m = match mode {
                SegmentMode::Macvlan => mac(200 + u32::from(d)),
                SegmentMode::IpvlanL2 | SegmentMode::IpvlanL3 => pmac,
            };
            let port =
                f.m.switch
                    .add_port(PortConfig::endpoint(name, id, m, ip))
                    .unwrap();
            let mut e = EndpointSpec::new(id, name, name, ip);
            e.aliases = vec![alias.into()];
            f.reg.add_endpoint(e).unwrap();
            Ctr {
                port,
                ip,
                mac: m,
                net: id,
                gw: DNS_ADDR,
            }
        };
        let a = attach(&mut f, 10, "alpha", "first");
        let b = attach(&mut f, 11, "beta", "second");
        for name in ["beta", "second", "beta.seg"] {
            let m = f.ask(&a, name, A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(addrs(&m), vec![b.ip], "{mode:?} {name}");
        }
        assert_eq!(addrs(&f.ask(&b, "first", A)), vec![a.ip]);
        // Not local: forwarded, answered from the service address.
        let q = query(0x2222, "example.com", A, None);
        assert!(f.ask_raw(&a, &q).is_empty());
        let req = f.rx.try_recv().unwrap();
        assert_eq!(req.network, a.net);
        assert_eq!(req.gateway_ip, DNS_ADDR);
        assert_eq!(req.gateway_mac, DNS_MAC);
        let mut upstream = Message::from_vec(&q).unwrap();
        upstream.metadata.message_type = hickory_proto::op::MessageType::Response;
        let bytes = upstream.to_vec().unwrap();
        let mut out = vec![0; 2048];
        let (n, meta) = req.reply_frame(&bytes, &mut out).unwrap();
        let s = Sent {
            port: req.port,
            meta,
            frame: out[..n].to_vec(),
        };
        assert_eq!(payload(&a, &s), &bytes[..]);
        // The router's address is not the DNS here: nothing answers (the
        // frame goes out towards the segment: there is no parent port).
        let fr = build::udp(mac(1), a.mac, (a.ip, 40000), (router, 53), &q);
        let sent = f.send(&a, VnetHdr::default(), &fr);
        assert!(sent.iter().all(|s| s.port != a.port), "{mode:?}");
        assert_eq!(f.rx.len(), 0);
    }
}
