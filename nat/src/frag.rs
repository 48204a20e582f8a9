//! Reassembly of the IP fragments containers send out through the NAT
//! (IPv4, and IPv6 with the fragment header right after the fixed
//! header).
//!
//! A container's kernel fragments a datagram larger than its network's
//! MTU (a 3000-byte UDP answer, `ping -s 3000`). Docker's kernel NAT
//! reassembles it (conntrack needs the ports), and so does the gateway
//! here: the whole datagram then goes its way like any other, over a host
//! socket whose kernel fragments it again as its own route needs.
//!
//! # Invariants
//! - At most [`MAX_DATAGRAMS`] datagrams are being reassembled at once;
//!   a fragment of a new one beyond that evicts the oldest.
//! - A datagram has at most [`MAX_FRAGMENTS`] fragments and at most
//!   65,535 bytes of IP packet once whole; it must be whole within
//!   [`TIMEOUT_NS`] (30 s, Linux's `ipfrag_time`) of its first fragment.
//! - Fragments that overlap (duplicates too) drop their whole datagram
//!   (RFC 5722 asks it for IPv6; for IPv4 it refuses the overlapping-
//!   fragment tricks that hide a header from a filter).
//! - A datagram is reported whole exactly when its fragments cover
//!   `0..end` without a gap, `end` being the last fragment's end.
//! - Buffers are made when first needed and kept for reuse: once warm,
//!   no fragment allocates.
//!
//! Every fragment that is not part of a datagram handed on is counted in
//! [`Reassembly::take_lost`] or returned as [`Offer::Dropped`].
//!
//! # Panics
//! None, for any bytes and any sequence of calls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use tapnet_switch::wire::{checksum_finish, checksum_sum, ethernet};
use tapnet_switch::NetworkId;

/// Datagrams being reassembled at once, all containers together.
pub const MAX_DATAGRAMS: usize = 32;
/// Fragments of one datagram (a 64 KiB datagram at IPv4's 576-byte
/// minimum MTU takes 117).
pub const MAX_FRAGMENTS: usize = 128;
/// How long a datagram may take to be whole.
pub const TIMEOUT_NS: u64 = 30_000_000_000;

/// The longest IP packet.
const MAX_PACKET: usize = 65_535;
/// Room for the longest IPv4 header (60 bytes; IPv6's fixed header is 40).
const MAX_HEADER: usize = 60;
/// Where the payload starts in a buffer: after an Ethernet header and
/// the longest IP header.
const DATA: usize = ethernet::HEADER_LEN + MAX_HEADER;
/// A reassembly buffer's length.
const BUF_LEN: usize = DATA + MAX_PACKET;
/// IPv6's fixed header, and its fragment header.
const V6_HEADER: usize = 40;
const V6_FRAG_HEADER: usize = 8;
const V6_NEXT_FRAGMENT: u8 = 44;

/// What became of a fragment.
#[derive(Debug)]
pub enum Offer {
    /// Kept: its datagram is not whole yet.
    Pending,
    /// Its datagram is whole: `buf[frame]` is an Ethernet frame (the
    /// first fragment's Ethernet header) holding the datagram as one
    /// unfragmented IP packet. Give `buf` back with
    /// [`Reassembly::recycle`].
    Whole { buf: Box<[u8]>, frame: Range<usize> },
    /// Dropped with its datagram: this many fragments in all (this one
    /// included).
    Dropped(u64),
}

/// Which datagram a fragment belongs to (RFC 791: source, destination,
/// protocol, identification; RFC 8200: source, destination,
/// identification), per network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    network: NetworkId,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4's protocol; 0 for IPv6 (not part of its key).
    proto: u8,
    id: u32,
}

/// A fragment, parsed.
struct Fragment<'a> {
    key: Key,
    /// The payload's offset in the datagram, in bytes.
    offset: usize,
    more: bool,
    payload: &'a [u8],
    /// The IP header to keep when this is the first fragment (IPv4: with
    /// its options; IPv6: the fixed header), and for IPv6 the next header
    /// the fragment header names.
    header: &'a [u8],
    next_header: u8,
}

struct Slot {
    key: Key,
    buf: Box<[u8]>,
    /// The payload ranges received, unordered, disjoint.
    ranges: Vec<Range<usize>>,
    /// Bytes received (the ranges' total).
    got: usize,
    /// The datagram's payload length, once the last fragment came.
    end: Option<usize>,
    /// The first fragment's IP header length, once it came (its header
    /// and Ethernet header are then in place before [`DATA`]).
    header: Option<usize>,
    started: u64,
}

/// The datagrams being reassembled; see the module's invariants.
#[derive(Default)]
pub struct Reassembly {
    slots: Vec<Slot>,
    /// Buffers of finished or dropped datagrams, and range lists.
    spare_bufs: Vec<Box<[u8]>>,
    spare_lists: Vec<Vec<Range<usize>>>,
    /// Fragments dropped with datagrams that expired or were evicted.
    lost: u64,
}

impl Reassembly {
    pub fn new() -> Reassembly {
        Reassembly::default()
    }

    /// Whether `ip` (an IPv4 or IPv6 packet) is a fragment this module
    /// takes: IPv4 with more-fragments or an offset, IPv6 whose next
    /// header is the fragment header.
    pub fn is_fragment(ip: &[u8]) -> bool {
        match ip.first().map(|b| b >> 4) {
            Some(4) => ip.len() >= 20 && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0,
            Some(6) => ip.len() >= V6_HEADER && ip[6] == V6_NEXT_FRAGMENT,
            _ => false,
        }
    }

    /// Datagrams being reassembled.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// When the oldest datagram being reassembled expires
    /// ([`Reassembly::expire`]).
    pub fn deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.started.saturating_add(TIMEOUT_NS))
            .min()
    }

    /// Fragments dropped since the last call because their datagram took
    /// too long or was evicted for a newer one.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Gives back the buffer of an [`Offer::Whole`].
    pub fn recycle(&mut self, buf: Box<[u8]>) {
        if buf.len() == BUF_LEN && self.spare_bufs.len() < MAX_DATAGRAMS {
            self.spare_bufs.push(buf);
        }
    }

    /// Datagrams older than [`TIMEOUT_NS`] are dropped (their fragments
    /// counted in [`Reassembly::take_lost`]).
    pub fn expire(&mut self, now: u64) {
        let mut i = 0;
        while i < self.slots.len() {
            if now.saturating_sub(self.slots[i].started) >= TIMEOUT_NS {
                self.lost += self.drop_slot(i);
            } else {
                i += 1;
            }
        }
    }

    /// A fragment from a container on `network`: `frame` is its Ethernet
    /// frame, whose IP packet [`Reassembly::is_fragment`].
    pub fn offer(&mut self, now: u64, network: NetworkId, frame: &[u8]) -> Offer {
        self.expire(now);
        let Some(f) = parse(network, frame) else {
            return Offer::Dropped(1);
        };
        let i = match self.slots.iter().position(|s| s.key == f.key) {
            Some(i) => i,
            None => self.open(now, f.key),
        };
        let s = &mut self.slots[i];
        let range = f.offset..f.offset + f.payload.len();
        let bad = (f.more && (f.payload.is_empty() || f.payload.len() % 8 != 0))
            || range.end > MAX_PACKET - f.header.len()
            || s.ranges.len() >= MAX_FRAGMENTS
            || s.ranges
                .iter()
                .any(|r| r.start < range.end && range.start < r.end)
            || s.end
                .is_some_and(|e| range.end > e || (!f.more && range.end != e))
            || (!f.more && s.ranges.iter().any(|r| r.end > range.end));
        if bad {
            return Offer::Dropped(self.drop_slot(i) + 1);
        }
        s.buf[DATA + range.start..DATA + range.end].copy_from_slice(f.payload);
        s.got += f.payload.len();
        s.ranges.push(range);
        if !f.more {
            s.end = Some(f.offset + f.payload.len());
        }
        if f.offset == 0 {
            let h = f.header.len();
            let at = DATA - h;
            s.buf[at..DATA].copy_from_slice(f.header);
            s.buf[at - ethernet::HEADER_LEN..at].copy_from_slice(&frame[..ethernet::HEADER_LEN]);
            if s.key.src.is_ipv6() {
                s.buf[at + 6] = f.next_header;
            }
            s.header = Some(h);
        }
        match (s.header, s.end) {
            (Some(h), Some(end)) if s.got == end => {
                let mut s = self.slots.swap_remove(i);
                let n = s.ranges.len() as u64;
                s.ranges.clear();
                self.spare_lists.push(s.ranges);
                match finish(&mut s.buf, h, end) {
                    Some(frame) => Offer::Whole { buf: s.buf, frame },
                    // Longer than an IP packet can be.
                    None => {
                        self.recycle(s.buf);
                        Offer::Dropped(n)
                    }
                }
            }
            _ => Offer::Pending,
        }
    }

    /// A new slot for `key` (evicting the oldest when full): its index.
    fn open(&mut self, now: u64, key: Key) -> usize {
        if self.slots.len() >= MAX_DATAGRAMS {
            let oldest = (0..self.slots.len())
                .min_by_key(|&i| self.slots[i].started)
                .unwrap_or(0);
            self.lost += self.drop_slot(oldest);
        }
        let buf = self
            .spare_bufs
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN].into_boxed_slice());
        let ranges = self
            .spare_lists
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_FRAGMENTS));
        self.slots.push(Slot {
            key,
            buf,
            ranges,
            got: 0,
            end: None,
            header: None,
            started: now,
        });
        self.slots.len() - 1
    }

    /// Drops slot `i`, keeping its buffers: how many fragments it held.
    fn drop_slot(&mut self, i: usize) -> u64 {
        let mut s = self.slots.swap_remove(i);
        let n = s.ranges.len() as u64;
        s.ranges.clear();
        self.spare_lists.push(s.ranges);
        self.recycle(s.buf);
        n
    }
}

/// Reads a fragment's key, place and payload from an Ethernet frame.
fn parse(network: NetworkId, frame: &[u8]) -> Option<Fragment<'_>> {
    let ip = frame.get(ethernet::HEADER_LEN..)?;
    match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if ihl < 20 || total < ihl || total > ip.len() {
                return None;
            }
            let fo = u16::from_be_bytes([ip[6], ip[7]]);
            let a = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
            Some(Fragment {
                key: Key {
                    network,
                    src: IpAddr::V4(a(12)),
                    dst: IpAddr::V4(a(16)),
                    proto: ip[9],
                    id: u32::from(u16::from_be_bytes([ip[4], ip[5]])),
                },
                offset: usize::from(fo & 0x1fff) * 8,
                more: fo & 0x2000 != 0,
                payload: &ip[ihl..total],
                header: &ip[..ihl],
                next_header: ip[9],
            })
        }
        6 => {
            if ip.len() < V6_HEADER + V6_FRAG_HEADER || ip[6] != V6_NEXT_FRAGMENT {
                return None;
            }
            let end = V6_HEADER + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if end < V6_HEADER + V6_FRAG_HEADER || end > ip.len() {
                return None;
            }
            let fh = &ip[V6_HEADER..V6_HEADER + V6_FRAG_HEADER];
            let fo = u16::from_be_bytes([fh[2], fh[3]]);
            let a = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&ip[at..at + 16]);
                Ipv6Addr::from(b)
            };
            Some(Fragment {
                key: Key {
                    network,
                    src: IpAddr::V6(a(8)),
                    dst: IpAddr::V6(a(24)),
                    proto: 0,
                    id: u32::from_be_bytes([fh[4], fh[5], fh[6], fh[7]]),
                },
                offset: usize::from(fo >> 3) * 8,
                more: fo & 1 != 0,
                payload: &ip[V6_HEADER + V6_FRAG_HEADER..end],
                header: &ip[..V6_HEADER],
                next_header: fh[0],
            })
        }
        _ => None,
    }
}

/// Makes the whole datagram's header (header length `h`, payload length
/// `end`) an unfragmented packet's: the frame's range, or `None` when the
/// packet would exceed 65,535 bytes.
fn finish(buf: &mut [u8], h: usize, end: usize) -> Option<Range<usize>> {
    let at = DATA - h;
    if buf[at] >> 4 == 4 {
        let total = u16::try_from(h + end).ok()?;
        buf[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
        // Neither more fragments nor an offset (nor don't-fragment: the
        // host's kernel fragments it as its route needs).
        buf[at + 6..at + 8].fill(0);
        buf[at + 10..at + 12].fill(0);
        let sum = checksum_finish(checksum_sum(0, &buf[at..DATA]));
        buf[at + 10..at + 12].copy_from_slice(&sum.to_be_bytes());
    } else {
        let len = u16::try_from(end).ok()?;
        buf[at + 4..at + 6].copy_from_slice(&len.to_be_bytes());
    }
    Some(at - ethernet::HEADER_LEN..DATA + end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NET: NetworkId = NetworkId(1);
    const ETH: [u8; 14] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];

    /// A UDP datagram's IP payload as IPv4 (`v6`: IPv6) fragments of
    /// `chunk` bytes each (a multiple of 8), with Ethernet headers.
    fn fragments(v6: bool, payload: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let n = chunk.min(payload.len() - off);
            let more = off + n < payload.len();
            let mut f = ETH.to_vec();
            if v6 {
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
                let mut ip = vec![0u8; 48];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
                ip[6] = V6_NEXT_FRAGMENT;
                ip[7] = 64;
                ip[8] = 0xfd;
                ip[23] = 2;
                ip[24] = 0x20;
                ip[25] = 0x01;
                ip[39] = 1;
                ip[40] = 17;
                let fo = ((off / 8) as u16) << 3 | u16::from(more);
                ip[42..44].copy_from_slice(&fo.to_be_bytes());
                ip[44..48].copy_from_slice(&id.to_be_bytes());
                f.extend_from_slice(&ip);
            } else {
                let mut ip = vec![0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                let fo = (off / 8) as u16 | if more { 0x2000 } else { 0 };
                ip[6..8].copy_from_slice(&fo.to_be_bytes());
                ip[8] = 64;
                ip[9] = 17;
                ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
                ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
                f.extend_from_slice(&ip);
            }
            f.extend_from_slice(&payload[off..off + n]);
            out.push(f);
            off += n;
            if !more {
                return out;
            }
        }
    }

    fn v4_fragments(payload: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
        fragments(false, payload, chunk, u32::from(id))
    }

    fn v6_fragments(payload: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
        fragments(true, payload, chunk, id)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Offers every frame; the last one must make the datagram whole:
    /// its frame.
    fn whole(r: &mut Reassembly, frags: &[Vec<u8>]) -> Vec<u8> {
        let (last, rest) = frags.split_last().unwrap();
        for f in rest {
            assert!(matches!(r.offer(0, NET, f), Offer::Pending));
        }
        match r.offer(0, NET, last) {
            Offer::Whole { buf, frame } => {
                let v = buf[frame].to_vec();
                r.recycle(buf);
                v
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn ipv4_in_any_order_becomes_one_packet() {
        let p = data(3008);
        let mut frags = v4_fragments(&p, 1480, 7);
        assert_eq!(frags.len(), 3);
        assert!(frags.iter().all(|f| Reassembly::is_fragment(&f[14..])));
        frags.swap(0, 2);
        let mut r = Reassembly::new();
        let got = whole(&mut r, &frags);
        assert_eq!(got[..14], ETH);
        let ip = &got[14..];
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            20 + p.len()
        );
        assert_eq!(ip[6..8], [0, 0], "no longer a fragment");
        assert!(!Reassembly::is_fragment(ip));
        assert_eq!(checksum_finish(checksum_sum(0, &ip[..20])), 0);
        assert_eq!((ip[9], &ip[12..20]), (17, &[10, 0, 0, 2, 192, 0, 2, 1][..]));
        assert_eq!(&ip[20..], &p[..]);
        assert_eq!((r.pending(), r.take_lost()), (0, 0));
    }

    #[test]
    fn ipv6_in_any_order_becomes_one_packet_and_an_atomic_fragment_at_once() {
        let p = data(3000);
        let mut frags = v6_fragments(&p, 1232, 0xdead_beef);
        frags.reverse();
        let mut r = Reassembly::new();
        let got = whole(&mut r, &frags);
        let ip = &got[14..];
        assert_eq!(got[12..14], [0x86, 0xdd]);
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), p.len());
        assert_eq!(ip[6], 17, "the fragment header's next header");
        assert_eq!(&ip[40..], &p[..]);
        // Offset 0, no more fragments (RFC 6946): whole at once.
        let atomic = v6_fragments(&p[..100], 1232, 9);
        assert_eq!(&whole(&mut r, &atomic)[14 + 40..], &p[..100]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn interleaved_datagrams_are_told_apart() {
        let (a, b) = (data(2000), vec![9u8; 2000]);
        let fa = v4_fragments(&a, 1000, 1);
        let fb = v4_fragments(&b, 1000, 2);
        let mut r = Reassembly::new();
        assert!(matches!(r.offer(0, NET, &fa[0]), Offer::Pending));
        assert!(matches!(r.offer(0, NET, &fb[1]), Offer::Pending));
        // The same id on another network is another datagram.
        assert!(matches!(r.offer(0, NetworkId(2), &fa[1]), Offer::Pending));
        assert_eq!(&whole(&mut r, &fa[1..])[34..], &a[..]);
        assert_eq!(&whole(&mut r, &fb[..1])[34..], &b[..]);
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn overlaps_duplicates_and_bad_lengths_drop_the_datagram() {
        let p = data(3000);
        let frags = v4_fragments(&p, 1000, 3);
        let mut r = Reassembly::new();
        // A duplicate.
        assert!(matches!(r.offer(0, NET, &frags[0]), Offer::Pending));
        assert!(matches!(r.offer(0, NET, &frags[0]), Offer::Dropped(2)));
        assert_eq!(r.pending(), 0);
        // An overlap: the same bytes again from another offset.
        let shifted = v4_fragments(&p, 1000, 3);
        let mut late = shifted[1].clone();
        late[14 + 6..14 + 8].copy_from_slice(&(0x2000u16 | (992 / 8)).to_be_bytes());
        assert!(matches!(r.offer(0, NET, &frags[0]), Offer::Pending));
        assert!(matches!(r.offer(0, NET, &late), Offer::Dropped(2)));
        // A middle fragment whose length is not a multiple of 8.
        let odd = v4_fragments(&p, 1004, 4);
        assert!(matches!(r.offer(0, NET, &odd[0]), Offer::Dropped(1)));
        // A second last fragment that ends elsewhere, or data past the end.
        assert!(matches!(r.offer(0, NET, &frags[2]), Offer::Pending));
        let short = v4_fragments(&p[..2504], 1000, 3);
        assert!(matches!(r.offer(0, NET, &short[2]), Offer::Dropped(2)));
        // A datagram longer than an IP packet can be.
        let big = v4_fragments(&data(65_600), 1480, 5);
        let n = big.len() as u64;
        let mut last = None;
        for f in &big {
            last = Some(r.offer(0, NET, f));
        }
        assert!(
            matches!(last, Some(Offer::Dropped(x)) if x == n),
            "{last:?} of {n}"
        );
        assert_eq!((r.pending(), r.take_lost()), (0, 0));
        // Truncated and not-IP frames.
        assert!(matches!(
            r.offer(0, NET, &frags[0][..40]),
            Offer::Dropped(1)
        ));
        assert!(matches!(r.offer(0, NET, &ETH), Offer::Dropped(1)));
    }

    #[test]
    fn late_datagrams_expire_and_the_oldest_is_evicted() {
        let p = data(2000);
        let mut r = Reassembly::new();
        let f = v4_fragments(&p, 1000, 1);
        assert!(matches!(r.offer(0, NET, &f[0]), Offer::Pending));
        assert!(matches!(r.offer(TIMEOUT_NS, NET, &f[1]), Offer::Pending));
        assert_eq!(
            (r.pending(), r.take_lost()),
            (1, 1),
            "the first half expired"
        );
        r.expire(2 * TIMEOUT_NS);
        assert_eq!((r.pending(), r.take_lost()), (0, 1));
        for id in 0..=MAX_DATAGRAMS as u16 {
            let f = v4_fragments(&p, 1000, 100 + id);
            assert!(matches!(r.offer(u64::from(id), NET, &f[0]), Offer::Pending));
        }
        assert_eq!((r.pending(), r.take_lost()), (MAX_DATAGRAMS, 1));
        // The evicted one's second half starts over; the next one completes.
        let f = v4_fragments(&p, 1000, 101);
        assert_eq!(&whole(&mut r, &f[1..])[34..], &p[..]);
    }

    proptest! {
        /// Any datagram cut at any 8-byte multiple, in any order, of
        /// either family, comes back whole and equal.
        #[test]
        fn any_fragmentation_in_any_order_reassembles(
            len in 1usize..9000,
            chunk8 in 1usize..200,
            v6 in any::<bool>(),
            order in any::<u64>(),
        ) {
            let p = data(len);
            let mut frags = if v6 {
                v6_fragments(&p, chunk8 * 8, 77)
            } else {
                v4_fragments(&p, chunk8 * 8, 77)
            };
            prop_assume!(frags.len() <= MAX_FRAGMENTS);
            // A deterministic shuffle.
            let mut x = order | 1;
            for i in (1..frags.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                frags.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembly::new();
            let got = whole(&mut r, &frags);
            let h = if v6 { 40 } else { 20 };
            prop_assert_eq!(&got[14 + h..], &p[..]);
        }

        /// Arbitrary frames never panic, and the bounds hold.
        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..64),
            now in proptest::collection::vec(0u64..60_000_000_000, 64),
        ) {
            let mut r = Reassembly::new();
            for (f, t) in frames.iter().zip(now) {
                let mut f = f.clone();
                if f.len() > 14 {
                    f[14] = if t % 2 == 0 { 0x45 } else { 0x60 };
                }
                if let Offer::Whole { buf, .. } = r.offer(t, NET, &f) {
                    r.recycle(buf);
                }
                prop_assert!(r.pending() <= MAX_DATAGRAMS);
            }
        }
    }
}
