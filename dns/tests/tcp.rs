//! DNS over TCP through the in-memory switch: hand-built TCP segments in,
//! the stateless answering machine's frames out (checksums, sequence
//! numbers, GSO super-frames segmented here as the TAP would), answers
//! decoded by hickory-proto.

use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tapnet_dns::tcp::flags::{ACK, FIN, PSH, RST, SYN};
use tapnet_dns::{
    forward_queue, DnsHook, EndpointSpec, FastRng, ForwardRx, NetworkSpec, Registry, Responder,
};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::{MemSwitch, Sent};
use tapnet_switch::wire::{checksum, checksum_finish, checksum_sum, vnet, VnetHdr};
use tapnet_switch::*;

const A: u16 = 1;
const SPORT: u16 = 45678;

struct Fab {
    m: MemSwitch<DnsHook>,
    reg: Arc<Registry>,
    rx: ForwardRx,
    net: NetworkId,
    gw: Ipv4Addr,
    next: u32,
}

#[derive(Clone, Copy)]
struct Ctr {
    port: PortId,
    ip: Ipv4Addr,
    mac: tapnet_switch::wire::EthernetAddress,
}

fn fabric(forward: bool) -> Fab {
    let reg = Registry::new();
    let (tx, rx) = forward_queue(16);
    let hook = DnsHook::new(
        reg.clone(),
        Responder::default(),
        FastRng::new(9),
        forward.then_some(tx),
    );
    let m = MemSwitch::with_hook(SwitchConfig::default(), hook);
    let gw = Ipv4Addr::new(10, 1, 0, 1);
    let net = m
        .switch
        .add_network(NetworkConfig::new(
            "front",
            Ipv4Addr::new(10, 1, 0, 0),
            24,
            gw,
        ))
        .unwrap();
    reg.set_network(NetworkSpec::new(net, "front")).unwrap();
    Fab {
        m,
        reg,
        rx,
        net,
        gw,
        next: 1,
    }
}

impl Fab {
    fn attach(&mut self, d: u8, name: &str, alias: Option<&str>) -> Ctr {
        let ip = Ipv4Addr::new(10, 1, 0, d);
        let mac = mac(self.next);
        self.next += 1;
        let port = self
            .m
            .switch
            .add_port(PortConfig::endpoint(name, self.net, mac, ip))
            .unwrap();
        let mut spec = EndpointSpec::new(self.net, &format!("id{d}"), name, ip);
        if let Some(a) = alias {
            spec.aliases.push(a.into());
        }
        self.reg.add_endpoint(spec).unwrap();
        Ctr { port, ip, mac }
    }

    fn send(&mut self, c: &Ctr, meta: VnetHdr, frame: &[u8]) -> Vec<Sent> {
        self.m.inject(0, c.port, meta, frame)
    }

    /// A segment from `c` (port [`SPORT`]) to the gateway's port 53.
    fn seg(&self, c: &Ctr, s: Seg) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&SPORT.to_be_bytes());
        t[2..4].copy_from_slice(&53u16.to_be_bytes());
        t[4..8].copy_from_slice(&s.seq.to_be_bytes());
        t[8..12].copy_from_slice(&s.ack.to_be_bytes());
        t[12] = (((20 + s.opts.len()) / 4) as u8) << 4;
        t[13] = s.flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(&s.opts);
        t.extend_from_slice(&s.data);
        let mut acc = checksum_sum(0, &c.ip.octets());
        acc = checksum_sum(acc, &self.gw.octets());
        acc += 6 + t.len() as u32;
        let cs = checksum_finish(checksum_sum(acc, &t));
        t[16..18].copy_from_slice(&cs.to_be_bytes());
        build::ipv4(gateway_mac(self.gw), c.mac, c.ip, self.gw, 6, &t)
    }

    fn tx(&mut self, c: &Ctr, s: Seg) -> Vec<Sent> {
        let f = self.seg(c, s);
        self.send(c, VnetHdr::default(), &f)
    }

    /// SYN (with MSS `mss`) → the cookie of the SYN-ACK.
    fn connect(&mut self, c: &Ctr, isn: u32, mss: u16) -> u32 {
        let mut opts = vec![2, 4];
        opts.extend_from_slice(&mss.to_be_bytes());
        let sent = self.tx(
            c,
            Seg {
                seq: isn,
                flags: SYN,
                opts,
                ..Seg::default()
            },
        );
        assert_eq!(sent.len(), 1);
        let r = reply(self, c, &sent[0]);
        assert_eq!(r.flags, SYN | ACK);
        assert_eq!(r.ack, isn.wrapping_add(1));
        r.seq
    }

    fn stats(&mut self) -> tapnet_dns::DnsStats {
        self.m.worker.hook_mut().stats()
    }
}

#[derive(Default)]
struct Seg {
    seq: u32,
    ack: u32,
    flags: u8,
    opts: Vec<u8>,
    data: Vec<u8>,
}

/// A decoded reply segment.
#[derive(Debug)]
struct Reply {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: Vec<u8>,
    data: Vec<u8>,
}

/// Checks a plain reply frame (addresses, ports, full checksums).
fn reply(f: &Fab, c: &Ctr, s: &Sent) -> Reply {
    assert!(s.meta.is_plain(), "a plain frame: {:?}", s.meta);
    parse(f, c, s, true)
}

fn parse(f: &Fab, c: &Ctr, s: &Sent, full_csum: bool) -> Reply {
    let fr = &s.frame;
    assert_eq!(s.port, c.port);
    assert_eq!(&fr[0..6], &c.mac.0);
    assert_eq!(&fr[6..12], &gateway_mac(f.gw).0);
    let ip = &fr[14..34];
    assert_eq!(checksum(ip), 0, "IPv4 header checksum");
    assert_eq!(&ip[12..16], &f.gw.octets());
    assert_eq!(&ip[16..20], &c.ip.octets());
    assert_eq!(ip[9], 6);
    let t = &fr[34..];
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        20 + t.len()
    );
    let mut acc = checksum_sum(0, &f.gw.octets());
    acc = checksum_sum(acc, &c.ip.octets());
    acc += 6 + t.len() as u32;
    if full_csum {
        assert_eq!(checksum_finish(checksum_sum(acc, t)), 0, "TCP checksum");
    }
    assert_eq!(u16::from_be_bytes([t[0], t[1]]), 53);
    assert_eq!(u16::from_be_bytes([t[2], t[3]]), SPORT);
    let doff = usize::from(t[12] >> 4) * 4;
    let u = |i: usize| u32::from_be_bytes([t[i], t[i + 1], t[i + 2], t[i + 3]]);
    Reply {
        seq: u(4),
        ack: u(8),
        flags: t[13],
        window: u16::from_be_bytes([t[14], t[15]]),
        opts: t[20..doff].to_vec(),
        data: t[doff..].to_vec(),
    }
}

/// Segments a GSO super-frame as the kernel does (tcp_gso_segment): each
/// piece gets `gso_size` bytes, its own sequence number, IP length and
/// checksums; FIN and PSH only on the last. Checks the partial checksum
/// the super-frame carries on the way.
fn segment(s: &Sent) -> Vec<Sent> {
    let m = s.meta;
    assert_eq!(m.gso_type, vnet::GSO_TCPV4);
    assert_eq!(m.flags, vnet::F_NEEDS_CSUM);
    assert_eq!((m.csum_start, m.csum_offset, m.hdr_len), (34, 16, 54));
    let f = &s.frame;
    // The partial checksum completed over the whole super-frame verifies.
    let mut whole = f.clone();
    let c = checksum(&whole[34..]);
    whole[50..52].copy_from_slice(&c.to_be_bytes());
    let mut acc = checksum_sum(0, &whole[26..34]);
    acc += 6 + (whole.len() - 34) as u32;
    assert_eq!(checksum_finish(checksum_sum(acc, &whole[34..])), 0);
    let seq0 = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
    let flags = f[47];
    let data = &f[54..];
    let n = data.len().div_ceil(usize::from(m.gso_size));
    data.chunks(usize::from(m.gso_size))
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = f[..54].to_vec();
            p.extend_from_slice(chunk);
            let tl = (p.len() - 14) as u16;
            p[16..18].copy_from_slice(&tl.to_be_bytes());
            p[24..26].fill(0);
            let ipc = checksum(&p[14..34]);
            p[24..26].copy_from_slice(&ipc.to_be_bytes());
            let seq = seq0.wrapping_add((i * usize::from(m.gso_size)) as u32);
            p[38..42].copy_from_slice(&seq.to_be_bytes());
            p[47] = if i + 1 == n {
                flags
            } else {
                flags & !(FIN | PSH)
            };
            p[50..52].fill(0);
            let mut acc = checksum_sum(0, &p[26..34]);
            acc += 6 + (p.len() - 34) as u32;
            let c = checksum_finish(checksum_sum(acc, &p[34..]));
            p[50..52].copy_from_slice(&c.to_be_bytes());
            Sent {
                port: s.port,
                meta: VnetHdr::default(),
                frame: p,
            }
        })
        .collect()
}

/// A query with RD set.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

/// The one message of a framed stream.
fn unframe(stream: &[u8]) -> Message {
    let n = usize::from(u16::from_be_bytes([stream[0], stream[1]]));
    assert_eq!(stream.len(), 2 + n, "exactly one framed message");
    Message::from_vec(&stream[2..]).expect("hickory decodes the answer")
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0,
            other => panic!("not A: {other:?}"),
        })
        .collect()
}

/// A client and 40 containers sharing the alias `big`.
fn big_fabric(forward: bool) -> (Fab, Ctr) {
    let mut f = fabric(forward);
    let client = f.attach(2, "client", None);
    for i in 0..40u8 {
        f.attach(10 + i, &format!("m{i}"), Some("big"));
    }
    (f, client)
}

#[test]
fn handshake_gives_a_cookie_with_mss_and_window() {
    let mut f = fabric(true);
    let c = f.attach(2, "client", None);
    let syn = Seg {
        seq: 1000,
        flags: SYN,
        opts: vec![
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ],
        ..Seg::default()
    };
    let sent = f.tx(&c, syn);
    assert_eq!(sent.len(), 1);
    let r = reply(&f, &c, &sent[0]);
    assert_eq!(r.flags, SYN | ACK);
    assert_eq!(r.ack, 1001);
    assert_eq!(r.window, 65535);
    // Only MSS: no window scaling, SACK or timestamps.
    assert_eq!(r.opts, vec![2, 4, 0x05, 0xb4]);
    assert!(r.data.is_empty());
    // Stateless: the same SYN gets the same cookie; MSS is capped to MTU - 40.
    assert_eq!(f.connect(&c, 1000, 1460), r.seq);
    let sent = f.tx(
        &c,
        Seg {
            seq: 1000,
            flags: SYN,
            opts: vec![2, 4, 0x23, 0x28], // 9000
            ..Seg::default()
        },
    );
    assert_eq!(reply(&f, &c, &sent[0]).opts, vec![2, 4, 0x05, 0xb4]);
    // Without the option: 536.
    let sent = f.tx(
        &c,
        Seg {
            seq: 5,
            flags: SYN,
            ..Seg::default()
        },
    );
    assert_eq!(reply(&f, &c, &sent[0]).opts, vec![2, 4, 0x02, 0x18]);
    assert_eq!(f.stats().tcp_syns, 4);
}

#[test]
fn big_answer_truncated_over_udp_whole_over_tcp() {
    let (mut f, c) = big_fabric(true);
    // UDP: TC, no answers.
    let fr = build::udp(
        gateway_mac(f.gw),
        c.mac,
        (c.ip, 40000),
        (f.gw, 53),
        &query(7, "big", A),
    );
    let sent = f.send(&c, VnetHdr::default(), &fr);
    let m = Message::from_vec(&sent[0].frame[42..]).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // TCP: the whole answer, ACK + data + FIN in one frame.
    let isn = 0xffff_fff0; // wraps
    let cookie = f.connect(&c, isn, 1460);
    let q = framed(&query(8, "big", A));
    let data_seg = || Seg {
        seq: isn.wrapping_add(1),
        ack: cookie.wrapping_add(1),
        flags: ACK | PSH,
        data: q.clone(),
        ..Seg::default()
    };
    // The handshake's last ACK: consumed silently.
    assert!(f
        .tx(
            &c,
            Seg {
                seq: isn.wrapping_add(1),
                ack: cookie.wrapping_add(1),
                flags: ACK,
                ..Seg::default()
            }
        )
        .is_empty());
    let sent = f.tx(&c, data_seg());
    assert_eq!(sent.len(), 1);
    let r = reply(&f, &c, &sent[0]);
    assert_eq!(r.flags, ACK | PSH | FIN);
    assert_eq!(r.seq, cookie.wrapping_add(1));
    assert_eq!(r.ack, isn.wrapping_add(1 + q.len() as u32));
    let m = unframe(&r.data);
    assert!(!m.metadata.truncation);
    assert_eq!(m.metadata.id, 8);
    let mut got = addrs(&m);
    got.sort();
    let want: Vec<_> = (0..40u8).map(|i| Ipv4Addr::new(10, 1, 0, 10 + i)).collect();
    assert_eq!(got, want);
    // A retransmitted query is answered again, identically framed.
    let sent = f.tx(&c, data_seg());
    let again = reply(&f, &c, &sent[0]);
    assert_eq!((again.seq, again.ack, again.flags), (r.seq, r.ack, r.flags));
    assert_eq!(addrs(&unframe(&again.data)).len(), 40);
    let st = f.stats();
    assert_eq!(st.tcp_answers, 2);
    assert_eq!(st.answers, 2);
    assert_eq!(st.truncated, 1);
    assert_eq!(st.tcp_ignored, 1);
}

#[test]
fn answers_beyond_the_mss_are_one_gso_frame() {
    let (mut f, c) = big_fabric(true);
    let cookie = f.connect(&c, 77, 536);
    let q = framed(&query(9, "big", A));
    let sent = f.tx(
        &c,
        Seg {
            seq: 78,
            ack: cookie.wrapping_add(1),
            flags: ACK | PSH,
            data: q.clone(),
            ..Seg::default()
        },
    );
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].meta.gso_size, 536);
    let segs = segment(&sent[0]);
    assert_eq!(segs.len(), 2); // 2 + 661 bytes
    let mut stream = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let r = reply(&f, &c, s);
        assert!(r.data.len() <= 536);
        assert_eq!(r.seq, cookie.wrapping_add(1 + stream.len() as u32));
        assert_eq!(r.ack, 78 + q.len() as u32);
        let last = i + 1 == segs.len();
        assert_eq!(r.flags & FIN != 0, last);
        stream.extend_from_slice(&r.data);
    }
    assert_eq!(addrs(&unframe(&stream)).len(), 40);
}

#[test]
fn fin_rst_and_pure_acks() {
    let mut f = fabric(true);
    let c = f.attach(2, "client", None);
    // The client's FIN after our answer+FIN: ACKed, seq from its ack.
    let sent = f.tx(
        &c,
        Seg {
            seq: 500,
            ack: 9000,
            flags: FIN | ACK,
            ..Seg::default()
        },
    );
    let r = reply(&f, &c, &sent[0]);
    assert_eq!((r.seq, r.ack, r.flags), (9000, 501, ACK));
    assert!(r.data.is_empty());
    // RST and pure ACKs: nothing.
    for flags in [RST, RST | ACK, ACK] {
        assert!(f
            .tx(
                &c,
                Seg {
                    seq: 1,
                    ack: 2,
                    flags,
                    ..Seg::default()
                }
            )
            .is_empty());
    }
    // No flags at all, or SYN+ACK: dropped as malformed.
    for flags in [0, SYN | ACK] {
        assert!(f
            .tx(
                &c,
                Seg {
                    flags,
                    ..Seg::default()
                }
            )
            .is_empty());
    }
    let st = f.stats();
    assert_eq!(st.tcp_fins, 1);
    assert_eq!(st.tcp_ignored, 3);
    assert_eq!(st.bad_tcp, 2);
    let ps = f.m.switch.port_stats(c.port).unwrap();
    assert_eq!(ps.drop_count(DropReason::Malformed), 2);
}

#[test]
fn bad_cookie_is_reset_and_odd_data_dropped() {
    let mut f = fabric(true);
    let c = f.attach(2, "client", None);
    let q = framed(&query(1, "client", A));
    let cookie = f.connect(&c, 100, 1460);
    let sent = f.tx(
        &c,
        Seg {
            seq: 101,
            ack: cookie.wrapping_add(1) ^ 0x8000_0000,
            flags: ACK | PSH,
            data: q.clone(),
            ..Seg::default()
        },
    );
    let r = reply(&f, &c, &sent[0]);
    assert_eq!(r.flags, RST);
    assert_eq!(r.seq, cookie.wrapping_add(1) ^ 0x8000_0000);
    // Data at stream offset 10 (a later segment): dropped.
    assert!(f
        .tx(
            &c,
            Seg {
                seq: 111,
                ack: cookie.wrapping_add(1),
                flags: ACK | PSH,
                data: q.clone(),
                ..Seg::default()
            }
        )
        .is_empty());
    // A query split in two segments: the first is incomplete, dropped.
    assert!(f
        .tx(
            &c,
            Seg {
                seq: 101,
                ack: cookie.wrapping_add(1),
                flags: ACK | PSH,
                data: q[..10].to_vec(),
                ..Seg::default()
            }
        )
        .is_empty());
    // The same query whole: answered.
    let sent = f.tx(
        &c,
        Seg {
            seq: 101,
            ack: cookie.wrapping_add(1),
            flags: ACK | PSH,
            data: q.clone(),
            ..Seg::default()
        },
    );
    assert_eq!(addrs(&unframe(&reply(&f, &c, &sent[0]).data)), vec![c.ip]);
    let st = f.stats();
    assert_eq!(st.tcp_bad_cookie, 1);
    assert_eq!(st.tcp_not_at_start, 1);
    assert_eq!(st.tcp_incomplete, 1);
    assert_eq!(st.tcp_answers, 1);
}

#[test]
fn checksum_checked_unless_partial() {
    let mut f = fabric(true);
    let c = f.attach(2, "client", None);
    let mut syn = f.seg(
        &c,
        Seg {
            seq: 1,
            flags: SYN,
            ..Seg::default()
        },
    );
    syn[50] ^= 0x5a; // corrupt the TCP checksum
    assert!(f.send(&c, VnetHdr::default(), &syn).is_empty());
    assert_eq!(f.stats().bad_tcp, 1);
    let meta = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let sent = f.send(&c, meta, &syn);
    let cookie = reply(&f, &c, &sent[0]).seq;
    let mut data = f.seg(
        &c,
        Seg {
            seq: 2,
            ack: cookie.wrapping_add(1),
            flags: ACK | PSH,
            data: framed(&query(3, "client", A)),
            ..Seg::default()
        },
    );
    data[50..52].fill(0); // a partial checksum, not ours to verify
    let sent = f.send(&c, meta, &data);
    assert_eq!(addrs(&unframe(&reply(&f, &c, &sent[0]).data)), vec![c.ip]);
    assert_eq!(f.stats().tcp_syns, 1);
}

#[test]
fn forwarded_tcp_queries_are_acked_then_answered_over_tcp() {
    let mut f = fabric(true);
    let c = f.attach(2, "client", None);
    let cookie = f.connect(&c, 4000, 1460);
    let q = query(0x2222, "example.com", A);
    let sent = f.tx(
        &c,
        Seg {
            seq: 4001,
            ack: cookie.wrapping_add(1),
            flags: ACK | PSH,
            data: framed(&q),
            ..Seg::default()
        },
    );
    // The query is ACKed at once.
    let r = reply(&f, &c, &sent[0]);
    assert_eq!(r.flags, ACK);
    assert_eq!(
        (r.seq, r.ack),
        (cookie.wrapping_add(1), 4001 + 2 + q.len() as u32)
    );
    let req = f.rx.try_recv().unwrap();
    assert_eq!(&req.query[..], &q[..]);
    assert_eq!(req.querier_port, SPORT);
    let t = req.tcp.expect("marked as TCP");
    assert_eq!((t.seq, t.ack, t.mss), (r.seq, r.ack, 1460));
    assert_eq!(f.stats().tcp_forwarded, 1);
    assert_eq!(f.stats().forwarded, 1);
    // The upstream's answer, framed by the forwarder: data + FIN.
    let mut up = Message::from_vec(&q).unwrap();
    up.metadata.message_type = hickory_proto::op::MessageType::Response;
    let bytes = up.to_vec().unwrap();
    let mut out = vec![0; bytes.len() + 64];
    let (n, meta) = req.reply_frame(&bytes, &mut out).unwrap();
    let s = Sent {
        port: req.port,
        meta,
        frame: out[..n].to_vec(),
    };
    let a = reply(&f, &c, &s);
    assert_eq!(a.flags, ACK | PSH | FIN);
    assert_eq!((a.seq, a.ack), (t.seq, t.ack));
    assert_eq!(&a.data[2..], &bytes[..]);
    // A big upstream answer (2000 bytes of padding in a TXT-sized blob):
    // one GSO frame, never truncated.
    let mut big = bytes.clone();
    big.extend_from_slice(&[0u8; 3000]);
    let mut out = vec![0; big.len() + 64];
    let (n, meta) = req.reply_frame(&big, &mut out).unwrap();
    let s = Sent {
        port: req.port,
        meta,
        frame: out[..n].to_vec(),
    };
    let segs = segment(&s);
    assert_eq!(segs.len(), 3);
    let stream: Vec<u8> = segs
        .iter()
        .flat_map(|s| parse(&f, &c, s, true).data)
        .collect();
    assert_eq!(&stream[2..], &big[..]);
}

#[test]
fn no_forwarder_means_servfail_over_tcp() {
    let mut f = fabric(false);
    let c = f.attach(2, "client", None);
    let cookie = f.connect(&c, 1, 1460);
    let sent = f.tx(
        &c,
        Seg {
            seq: 2,
            ack: cookie.wrapping_add(1),
            flags: ACK | PSH | FIN,
            data: framed(&query(5, "example.com", A)),
            ..Seg::default()
        },
    );
    let r = reply(&f, &c, &sent[0]);
    assert_eq!(r.flags, ACK | PSH | FIN);
    // The client's FIN (sent with the query) is acknowledged too.
    assert_eq!(r.ack, 2 + r_len(&framed(&query(5, "example.com", A))) + 1);
    let m = unframe(&r.data);
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail
    );
}

fn r_len(v: &[u8]) -> u32 {
    v.len() as u32
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary segments (header fields, options, payload; sometimes with
    /// a valid cookie) never panic the hook, and whatever comes back is a
    /// well-formed TCP frame to the sender with valid checksums.
    #[test]
    fn arbitrary_segments_never_panic(
        seq: u32,
        ack: u32,
        flags: u8,
        opts in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10),
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        use_cookie: bool,
        framed_query: bool,
    ) {
        let (mut f, c) = big_fabric(true);
        let mut opts = opts;
        opts.resize(opts.len().div_ceil(4) * 4, 0);
        let (seq, ack, data) = if use_cookie {
            let cookie = f.connect(&c, seq, 1460);
            let data = if framed_query { framed(&query(1, "big", A)) } else { data };
            (seq.wrapping_add(1), cookie.wrapping_add(1), data)
        } else {
            (seq, ack, data)
        };
        let sent = f.tx(&c, Seg { seq, ack, flags, opts, data });
        proptest::prop_assert!(sent.len() <= 1);
        for s in &sent {
            if s.meta.is_plain() {
                reply(&f, &c, s);
            } else {
                for p in segment(s) {
                    reply(&f, &c, &p);
                }
            }
        }
    }
}
