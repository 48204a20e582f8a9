//! Software segmentation: turns a frame with offload metadata (a TSO/USO
//! super-frame, a partial checksum) into the plain frames a receiver
//! without offloads expects, for egresses that cannot take them (the
//! VXLAN tunnel).
//!
//! [`for_each_segment`] handles plain frames (passed through untouched),
//! `NEEDS_CSUM` frames (checksum completed), TCP TSO (v4 and v6) and UDP
//! (USO, with `GSO_UDP_L4`) super-frames over IPv4 and over IPv6 without
//! extension headers. Each segment gets its own IPv4 total length,
//! identification (+1 per segment, as Linux) and header checksum (IPv6:
//! payload length), TCP sequence number and flags (FIN/PSH on the last
//! segment only, CWR on the first only), and a full L4 checksum. Other
//! kinds (UFO, IPv6 extension headers) are refused with
//! [`DropReason::GsoUnsupported`].
//! Never panics on untrusted bytes; no allocation (the caller's buffer).

use crate::counters::DropReason;
use crate::wire::{
    self, ethernet, ipv4, ipv6, vnet, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, VnetHdr,
};

/// Calls `out` with each plain frame `meta`/`frame` stands for. `buf`
/// holds one segment at a time (headers and `gso_size` bytes, or the whole
/// frame for a checksum completion); a frame that needs more is refused
/// with [`DropReason::Oversize`].
pub fn for_each_segment(
    meta: &VnetHdr,
    frame: &[u8],
    buf: &mut [u8],
    mut out: impl FnMut(&[u8]),
) -> Result<(), DropReason> {
    if !meta.is_gso() {
        if meta.flags & vnet::F_NEEDS_CSUM == 0 {
            out(frame);
            return Ok(());
        }
        let b = buf.get_mut(..frame.len()).ok_or(DropReason::Oversize)?;
        b.copy_from_slice(frame);
        complete_checksum(meta, b)?;
        out(b);
        return Ok(());
    }
    let gso = meta.gso_type & !vnet::GSO_ECN;
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    // The L3 header: its length, the L4 protocol and the pseudo-header's
    // address sum (IPv6: only without extension headers).
    let (v6, ihl, proto_in, addr_sum) = match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            let acc = wire::checksum_sum(wire::checksum_sum(0, &s.octets()), &d.octets());
            (false, ip.header_len(), ip.protocol(), acc)
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
            let (s, d) = (ip.src_addr(), ip.dst_addr());
            let acc = wire::checksum_sum(wire::checksum_sum(0, &s.octets()), &d.octets());
            (true, ipv6::HEADER_LEN, ip.next_header(), acc)
        }
        _ => return Err(DropReason::GsoUnsupported),
    };
    let l4 = ethernet::HEADER_LEN + ihl;
    let (proto, l4_hdr) = match gso {
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6
            if proto_in == ipv4::protocol::TCP && v6 == (gso == vnet::GSO_TCPV6) =>
        {
            let t = frame.get(l4 + 12).ok_or(DropReason::Malformed)?;
            let thl = usize::from(t >> 4) * 4;
            if thl < wire::tcp::HEADER_LEN {
                return Err(DropReason::Malformed);
            }
            (ipv4::protocol::TCP, thl)
        }
        vnet::GSO_UDP_L4 if proto_in == ipv4::protocol::UDP => {
            (ipv4::protocol::UDP, wire::udp::HEADER_LEN)
        }
        _ => return Err(DropReason::GsoUnsupported),
    };
    let hdr = l4 + l4_hdr;
    if frame.len() < hdr {
        return Err(DropReason::Malformed);
    }
    let mss = usize::from(meta.gso_size);
    if mss == 0 {
        return Err(DropReason::Malformed);
    }
    if buf.len() < hdr + mss {
        return Err(DropReason::Oversize);
    }
    let id0 = u16::from_be_bytes([
        frame[ethernet::HEADER_LEN + 4],
        frame[ethernet::HEADER_LEN + 5],
    ]);
    let payload = &frame[hdr..];
    let n = payload.len().div_ceil(mss).max(1);
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let flags0 = frame[l4 + 13];
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let len = hdr + chunk.len();
        let s = &mut buf[..len];
        s[..hdr].copy_from_slice(&frame[..hdr]);
        s[hdr..].copy_from_slice(chunk);
        let ipb = &mut s[ethernet::HEADER_LEN..];
        if v6 {
            // IPv6: the payload length only.
            let pl = (len - l4) as u16;
            ipb[4..6].copy_from_slice(&pl.to_be_bytes());
        } else {
            // IPv4: total length, identification, checksum.
            ipb[2..4].copy_from_slice(&((len - ethernet::HEADER_LEN) as u16).to_be_bytes());
            ipb[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            ipb[10..12].fill(0);
            let c = wire::checksum(&ipb[..ihl]);
            ipb[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let l4b = &mut s[l4..];
        let l4len = l4b.len();
        let pseudo = addr_sum + u32::from(proto) + (l4len as u32 & 0xffff) + ((l4len as u32) >> 16);
        if proto == ipv4::protocol::TCP {
            let seq = seq0.wrapping_add((i * mss) as u32);
            l4b[4..8].copy_from_slice(&seq.to_be_bytes());
            let mut f = flags0;
            if i + 1 < n {
                f &= !(wire::tcp::flags::FIN | wire::tcp::flags::PSH);
            }
            if i > 0 {
                f &= !0x80; // CWR
            }
            l4b[13] = f;
            l4b[16..18].fill(0);
            let c = wire::checksum_finish(wire::checksum_sum(pseudo, l4b));
            l4b[16..18].copy_from_slice(&c.to_be_bytes());
        } else {
            l4b[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            l4b[6..8].fill(0);
            let c = match wire::checksum_finish(wire::checksum_sum(pseudo, l4b)) {
                0 => 0xffff,
                c => c,
            };
            l4b[6..8].copy_from_slice(&c.to_be_bytes());
        }
        out(s);
    }
    Ok(())
}

/// Completes a partial checksum (`NEEDS_CSUM`): the one's-complement sum
/// from `csum_start` to the end, stored at `csum_start + csum_offset`
/// (which holds the pseudo-header sum).
fn complete_checksum(meta: &VnetHdr, b: &mut [u8]) -> Result<(), DropReason> {
    let start = usize::from(meta.csum_start);
    let at = start + usize::from(meta.csum_offset);
    if at + 2 > b.len() || start > b.len() {
        return Err(DropReason::Malformed);
    }
    // The sum covers the L4 length only: Ethernet padding is not part of it.
    let end = match EthernetFrame::new_checked(&b[..])
        .ok()
        .map(|e| e.ethertype())
    {
        Some(EtherType::Ipv4) => Ipv4Packet::new_checked(&b[ethernet::HEADER_LEN..])
            .map(|ip| (ethernet::HEADER_LEN + usize::from(ip.total_len())).min(b.len()))
            .unwrap_or(b.len()),
        Some(EtherType::Ipv6) => Ipv6Packet::new_checked(&b[ethernet::HEADER_LEN..])
            .map(|ip| {
                (ethernet::HEADER_LEN + ipv6::HEADER_LEN + usize::from(ip.payload_len()))
                    .min(b.len())
            })
            .unwrap_or(b.len()),
        _ => b.len(),
    }
    .max(at + 2);
    let c = wire::checksum(&b[start..end]);
    // UDP sends a zero sum as 0xffff (0 means "no checksum").
    let c = if c == 0 && meta.csum_offset == wire::udp::CHECKSUM_OFFSET as u16 {
        0xffff
    } else {
        c
    };
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;
    use crate::wire::{TcpPacket, UdpPacket};
    use core::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    /// A TCPv4 super-frame of `n` payload bytes with a partial checksum.
    fn tso(n: usize, mss: u16) -> (VnetHdr, Vec<u8>) {
        let mut tcp = vec![0u8; 20 + n];
        tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = wire::tcp::flags::ACK | wire::tcp::flags::PSH | wire::tcp::flags::FIN | 0x80;
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut p = TcpPacket::new_unchecked(&mut tcp[..]);
        p.set_partial_checksum(A, B, 20 + n);
        let f = build::ipv4(build::mac(2), build::mac(1), A, B, 6, &tcp);
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        (meta, f)
    }

    #[test]
    fn tso_is_cut_into_valid_segments() {
        let (meta, f) = tso(4000, 1398);
        let mut buf = vec![0u8; 2048];
        let mut segs = Vec::new();
        for_each_segment(&meta, &f, &mut buf, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut data = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.total_len()), s.len() - 14);
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(A, B), "segment {i}");
            assert_eq!(t.seq_number(), 0xffff_fff0u32.wrapping_add(1398 * i as u32));
            let last = i == 2;
            assert_eq!(t.has(wire::tcp::flags::FIN), last);
            assert_eq!(t.has(wire::tcp::flags::PSH), last);
            assert_eq!(t.flags() & 0x80 != 0, i == 0);
            data.extend_from_slice(t.payload());
        }
        assert_eq!(data.len(), 4000);
        assert!(data.iter().enumerate().all(|(i, &b)| b == i as u8));
    }

    #[test]
    fn partial_checksum_is_completed_and_plain_passes() {
        let f = build::udp(build::mac(2), build::mac(1), (A, 5), (B, 6), b"hello");
        let mut g = f.clone();
        let mut u = UdpPacket::new_unchecked(&mut g[34..]);
        u.set_partial_checksum(A, B);
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        let mut buf = vec![0u8; 2048];
        let mut got = Vec::new();
        for_each_segment(&meta, &g, &mut buf, |s| got.push(s.to_vec())).unwrap();
        assert_eq!(got, vec![f.clone()]);
        got.clear();
        for_each_segment(&VnetHdr::default(), &f, &mut buf, |s| got.push(s.to_vec())).unwrap();
        assert_eq!(got, vec![f]);
    }

    #[test]
    fn uso_and_refusals() {
        let f = build::udp(build::mac(2), build::mac(1), (A, 5), (B, 6), &[9u8; 3000]);
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            gso_size: 1000,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        let mut buf = vec![0u8; 2048];
        let mut n = 0;
        for_each_segment(&meta, &f, &mut buf, |s| {
            let ip = Ipv4Packet::new_checked(&s[14..]).unwrap();
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(A, B) && u.payload().len() == 1000);
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 3);
        let bad = VnetHdr {
            gso_type: vnet::GSO_TCPV6,
            gso_size: 1000,
            ..meta
        };
        assert_eq!(
            for_each_segment(&bad, &f, &mut buf, |_| {}),
            Err(DropReason::GsoUnsupported)
        );
        let (meta, f) = tso(4000, 1398);
        assert_eq!(
            for_each_segment(&meta, &f, &mut buf[..1000], |_| {}),
            Err(DropReason::Oversize)
        );
        assert_eq!(
            for_each_segment(&meta, &f[..40], &mut buf, |_| {}),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn tso6_is_cut_into_valid_segments() {
        let a6: core::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        let b6: core::net::Ipv6Addr = "2001:db8::3".parse().unwrap();
        let n = 2500;
        let mut f = vec![0u8; 14 + 40 + 20 + n];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        ipv6::emit_header(&mut f[14..], a6, b6, 6, 20 + n, 64);
        let tcp = &mut f[54..];
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = wire::tcp::flags::ACK | wire::tcp::flags::PSH;
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let meta = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV6,
            hdr_len: 74,
            gso_size: 1000,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut buf = vec![0u8; 2048];
        let mut got = vec![];
        for_each_segment(&meta, &f, &mut buf, |s| {
            let ip = Ipv6Packet::new_checked(&s[14..]).unwrap();
            let t = ip.payload();
            assert_eq!(usize::from(ip.payload_len()), t.len());
            assert_eq!(ipv6::upper_checksum(a6, b6, 6, t), 0);
            let seq = u32::from_be_bytes(t[4..8].try_into().unwrap());
            got.push((seq, t.len() - 20, t[13] & wire::tcp::flags::PSH != 0));
        })
        .unwrap();
        assert_eq!(
            got,
            vec![(7, 1000, false), (1007, 1000, false), (2007, 500, true)]
        );
    }
}
