//! Receive coalescing of tunnelled TCP (a small GRO), sans-IO.
//!
//! A TSO super-frame crosses the overlay as MSS-sized VXLAN datagrams
//! ([`crate::gso`] splits it before encapsulation). Written one by one to
//! the receiving container's TAP, each costs a syscall and a trip through
//! the kernel's stack, so TCP across hosts would run at the per-packet
//! rate. [`Gro`] joins consecutive segments of one flow back into a
//! super-frame (`GSO_TCPV4`, `NEEDS_CSUM`) that leaves through one write,
//! as Linux's GRO does for its own vxlan device. The worker offers it only
//! frames from the cluster's own peers (not from learned, foreign VTEPs).
//!
//! # Rules (those of Linux's `tcp_gro_receive`, conservatively)
//! A segment is a candidate only when it is: unicast Ethernet II to a MAC
//! that is not the network's gateway (the gateway's hooks see frames one
//! by one), IPv4 with a 20-byte header and a valid header checksum, not a
//! fragment, TCP with only ACK (and PSH) set, a payload, a TCP checksum
//! that verifies (the one check the segment would have had: after the
//! merge the receiver trusts the super-frame's partial checksum), and a
//! frame exactly as long as its IP packet. It joins the held super-frame
//! when it comes from the same tunnel port (one VTEP on one network) with the same
//! MACs, addresses, ports, TOS, TTL, ACK number, window and TCP options,
//! its sequence number follows, and its payload is not longer than the
//! first segment's (the MSS); a shorter segment or one with PSH closes the
//! super-frame. Anything else first flushes what is held, so a flow's
//! frames never change order.
//!
//! # Invariants
//! - At most one super-frame is held, and only between two calls of the
//!   worker's batch: the caller flushes at the end of every batch, so
//!   nothing waits for a timer.
//! - No allocation after [`Gro::new`]: the held frame lives in one buffer
//!   of [`MAX_FRAME`] bytes.

use crate::topology::PortId;
use crate::wire::{self, vnet, EthernetAddress, VnetHdr};
use std::net::Ipv4Addr;

const ETH: usize = wire::ethernet::HEADER_LEN;
const IP: usize = 20;
/// The largest super-frame: an Ethernet header and the largest IPv4
/// packet.
pub const MAX_FRAME: usize = ETH + 65535;

/// What makes segments of one flow joinable (compared as a whole).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    /// The tunnel port (a VTEP on a network).
    port: u32,
    macs: [u8; 12],
    /// TOS and TTL.
    tos_ttl: [u8; 2],
    /// Source and destination addresses.
    addrs: [u8; 8],
    /// Source and destination ports.
    ports: [u8; 4],
    ack: [u8; 4],
    window: [u8; 2],
    /// TCP header length.
    thl: u8,
}

/// A candidate segment, as parsed.
struct Seg {
    key: Key,
    seq: u32,
    payload: usize,
    psh: bool,
}

/// The coalescer of one worker.
pub struct Gro {
    buf: Box<[u8]>,
    /// Bytes held in `buf`; 0 when nothing is held.
    len: usize,
    key: Key,
    port: PortId,
    mss: usize,
    next_seq: u32,
    segs: u32,
    /// A short or PSH segment ended the super-frame.
    closed: bool,
    /// The last candidate [`Gro::offer`] parsed and did not join, for
    /// [`Gro::start`].
    last: Option<Seg>,
}

impl Default for Gro {
    fn default() -> Self {
        Gro::new()
    }
}

impl Gro {
    pub fn new() -> Gro {
        Gro {
            buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            len: 0,
            key: Key::default(),
            port: PortId(0),
            mss: 0,
            next_seq: 0,
            segs: 0,
            closed: false,
            last: None,
        }
    }

    /// Whether a super-frame (or a single segment) is held.
    #[inline]
    pub fn is_holding(&self) -> bool {
        self.len != 0
    }

    /// Offers `frame`, which came in on tunnel port `port` (of a network
    /// whose gateway MAC is `gateway`); see [`Offer`] for what the caller
    /// does next.
    pub fn offer(&mut self, port: PortId, gateway: EthernetAddress, frame: &[u8]) -> Offer {
        let Some(s) = parse(port, gateway, frame) else {
            return Offer::NotCandidate;
        };
        if self.len != 0
            && !self.closed
            && s.key == self.key
            && s.seq == self.next_seq
            && s.payload <= self.mss
            && self.len + s.payload <= MAX_FRAME
            && self.options_match(frame)
        {
            let start = frame.len() - s.payload;
            self.buf[self.len..self.len + s.payload].copy_from_slice(&frame[start..]);
            self.len += s.payload;
            self.next_seq = self.next_seq.wrapping_add(s.payload as u32);
            self.segs += 1;
            if s.payload < self.mss || s.psh {
                self.closed = true;
                if s.psh {
                    self.buf[ETH + IP + 13] |= PSH;
                }
            }
            return Offer::Joined;
        }
        self.last = Some(s);
        Offer::Candidate
    }

    /// Holds `frame`, the one the last [`Gro::offer`] called a
    /// [`Offer::Candidate`], as the start of a super-frame, once what was
    /// held has been taken.
    pub fn start(&mut self, port: PortId, frame: &[u8]) {
        debug_assert_eq!(self.len, 0);
        let Some(s) = self.last.take() else {
            return;
        };
        self.buf[..frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        self.key = s.key;
        self.port = port;
        self.mss = s.payload;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.segs = 1;
        self.closed = s.psh;
    }

    /// What is held, made whole: (tunnel port, metadata, frame); the
    /// coalescer is empty afterwards. One segment comes back as it came
    /// (its checksum verified, so plain metadata); several come back as a
    /// `GSO_TCPV4` super-frame with the IPv4 length and checksum rewritten
    /// and a partial TCP checksum.
    pub fn take(&mut self) -> Option<(PortId, VnetHdr, &[u8])> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let b = &mut self.buf[..len];
        let meta = if self.segs == 1 {
            VnetHdr::default()
        } else {
            let total = (len - ETH) as u16;
            b[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
            b[ETH + 10..ETH + 12].fill(0);
            let c = wire::checksum(&b[ETH..ETH + IP]);
            b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
            let src = Ipv4Addr::new(b[ETH + 12], b[ETH + 13], b[ETH + 14], b[ETH + 15]);
            let dst = Ipv4Addr::new(b[ETH + 16], b[ETH + 17], b[ETH + 18], b[ETH + 19]);
            let l4 = len - ETH - IP;
            let partial = !wire::checksum_finish(wire::pseudo_header_sum(
                src,
                dst,
                wire::ipv4::protocol::TCP,
                l4,
            ));
            let at = ETH + IP + wire::tcp::CHECKSUM_OFFSET;
            b[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: vnet::GSO_TCPV4,
                hdr_len: (ETH + IP + usize::from(self.key.thl)) as u16,
                gso_size: self.mss as u16,
                csum_start: (ETH + IP) as u16,
                csum_offset: wire::tcp::CHECKSUM_OFFSET as u16,
                num_buffers: 0,
            }
        };
        Some((self.port, meta, &self.buf[..len]))
    }

    fn options_match(&self, frame: &[u8]) -> bool {
        let opts = ETH + IP + wire::tcp::HEADER_LEN..ETH + IP + usize::from(self.key.thl);
        self.buf[opts.clone()] == frame[opts]
    }
}

/// What [`Gro::offer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Joined to the held super-frame: nothing more to do.
    Joined,
    /// A candidate that does not join what is held: take what is held,
    /// then [`Gro::start`] with it.
    Candidate,
    /// Not a candidate: take what is held, then run the frame as it is.
    NotCandidate,
}

const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// The candidate rules of the module documentation.
#[inline]
fn parse(port: PortId, gateway: EthernetAddress, f: &[u8]) -> Option<Seg> {
    if f.len() < ETH + IP + wire::tcp::HEADER_LEN
        || f[12..14] != [0x08, 0x00]
        || f[0] & 1 != 0
        || f[..6] == gateway.0
    {
        return None;
    }
    let ip = &f[ETH..];
    if ip[0] != 0x45
        || ip[9] != wire::ipv4::protocol::TCP
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
        || usize::from(u16::from_be_bytes([ip[2], ip[3]])) != ip.len()
        || wire::checksum(&ip[..IP]) != 0
    {
        return None;
    }
    let tcp = &ip[IP..];
    let thl = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    if thl < wire::tcp::HEADER_LEN || thl >= tcp.len() || flags & !PSH != ACK {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let sum = wire::pseudo_header_sum(src, dst, wire::ipv4::protocol::TCP, tcp.len());
    if wire::checksum_finish(wire::checksum_sum(sum, tcp)) != 0 {
        return None;
    }
    let mut key = Key {
        port: port.0,
        thl: thl as u8,
        ..Key::default()
    };
    key.macs.copy_from_slice(&f[..12]);
    key.tos_ttl = [ip[1], ip[8]];
    key.addrs.copy_from_slice(&ip[12..20]);
    key.ports.copy_from_slice(&tcp[..4]);
    key.ack.copy_from_slice(&tcp[8..12]);
    key.window.copy_from_slice(&tcp[14..16]);
    Some(Seg {
        key,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload: tcp.len() - thl,
        psh: flags & PSH != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use crate::gso;
    use crate::wire::TcpPacket;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const PORT: PortId = PortId(3);
    const GW: EthernetAddress = EthernetAddress([2, 0x42, 10, 0, 0, 1]);

    /// The segments a peer's software segmentation sends for a TSO
    /// super-frame of `n` bytes (ACK, PSH on the last, timestamps).
    fn segments(n: usize, mss: u16, seq: u32) -> Vec<Vec<u8>> {
        let mut tcp = vec![0u8; 32 + n];
        tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = wire::tcp::flags::ACK | wire::tcp::flags::PSH;
        tcp[14..16].copy_from_slice(&500u16.to_be_bytes());
        tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
        for (i, b) in tcp[32..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let mut p = TcpPacket::new_unchecked(&mut tcp[..]);
        p.set_partial_checksum(A, B, 32 + n);
        let f = build::ipv4(build::mac(2), build::mac(1), A, B, 6, &tcp);
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 66,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        gso::for_each_segment(&meta, &f, &mut buf, |s| out.push(s.to_vec())).unwrap();
        out
    }

    /// Offers every frame as a worker does; returns what it would run.
    fn run(g: &mut Gro, frames: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let flush = |g: &mut Gro, out: &mut Vec<_>| {
            if let Some((p, m, f)) = g.take() {
                assert_eq!(p, PORT);
                out.push((m, f.to_vec()));
            }
        };
        for f in frames {
            match g.offer(PORT, GW, f) {
                Offer::Joined => {}
                Offer::Candidate => {
                    flush(g, &mut out);
                    g.start(PORT, f);
                }
                Offer::NotCandidate => {
                    flush(g, &mut out);
                    out.push((VnetHdr::default(), f.clone()));
                }
            }
        }
        flush(g, &mut out);
        out
    }

    #[test]
    fn segments_join_into_a_super_frame_that_splits_back_identically() {
        let segs = segments(10_000, 1398, 0xffff_f000);
        assert_eq!(segs.len(), 8);
        let mut g = Gro::new();
        let out = run(&mut g, &segs);
        assert_eq!(out.len(), 1, "one super-frame");
        let (meta, f) = &out[0];
        assert_eq!(meta.gso_type, vnet::GSO_TCPV4);
        assert_eq!((meta.gso_size, meta.hdr_len), (1398, 66));
        assert_eq!(f.len(), 66 + 10_000);
        let mut buf = vec![0u8; 2048];
        let mut again = Vec::new();
        gso::for_each_segment(meta, f, &mut buf, |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again, segs, "split again, the same segments");
        assert!(!g.is_holding());
    }

    #[test]
    fn a_gap_a_single_segment_and_other_frames_pass_in_order() {
        let segs = segments(4000, 1000, 1);
        let mut g = Gro::new();
        // A lost segment: the first two join, the last two start again.
        let lossy = vec![segs[0].clone(), segs[1].clone(), segs[3].clone()];
        let out = run(&mut g, &lossy);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.gso_size, 1000);
        assert_eq!(
            out[1],
            (VnetHdr::default(), segs[3].clone()),
            "alone: as it came"
        );
        // A non-candidate (a corrupt checksum) flushes what is held first.
        let mut bad = segs[2].clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let out = run(&mut g, &[segs[0].clone(), bad.clone(), segs[1].clone()]);
        assert_eq!(
            out,
            vec![
                (VnetHdr::default(), segs[0].clone()),
                (VnetHdr::default(), bad),
                (VnetHdr::default(), segs[1].clone()),
            ]
        );
    }

    #[test]
    fn only_plain_unicast_acks_away_from_the_gateway_are_candidates() {
        let seg = segments(1000, 1000, 1).remove(0);
        let mut g = Gro::new();
        assert_eq!(g.offer(PORT, GW, &seg), Offer::Candidate);
        let mut to_gw = seg.clone();
        to_gw[..6].copy_from_slice(&GW.0);
        let mut syn = seg.clone();
        syn[14 + 20 + 13] |= wire::tcp::flags::SYN;
        let mut frag = seg.clone();
        frag[14 + 6] |= 0x20;
        let mut bcast = seg.clone();
        bcast[..6].fill(0xff);
        for f in [to_gw, syn, frag, bcast, seg[..60].to_vec()] {
            assert_eq!(g.offer(PORT, GW, &f), Offer::NotCandidate);
        }
    }
}
