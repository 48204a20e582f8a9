//! The TCP and UDP views on arbitrary bytes: `new_checked` either refuses
//! or gives a view whose getters, options walk, payload and checksum
//! helpers stay within the buffer (the same checks as the `wire_views`
//! fuzz target, on stable with proptest).

use proptest::prelude::*;
use std::net::Ipv4Addr;
use tapnet_switch::wire::{TcpPacket, UdpPacket};

fn check(bytes: &[u8]) {
    let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    if let Ok(t) = TcpPacket::new_checked(bytes) {
        assert!(t.header_len() >= 20 && t.header_len() <= bytes.len());
        assert_eq!(t.options().len() + t.payload().len() + 20, bytes.len());
        let _ = (t.src_port(), t.dst_port(), t.seq_number(), t.ack_number());
        let _ = (t.flags(), t.window_len(), t.urgent_at(), t.segment_len());
        let _ = (t.mss_option(), t.verify_checksum(a, b));
        let mut m = bytes.to_vec();
        let mut t = TcpPacket::new_checked(&mut m[..]).unwrap();
        if t.set_mss_option_updating(1000).is_some() {
            assert_eq!(t.mss_option(), Some(1000));
        }
        t.fill_checksum(a, b);
        assert!(t.verify_checksum(a, b));
    }
    if let Ok(u) = UdpPacket::new_checked(bytes) {
        assert!(usize::from(u.len()) <= bytes.len());
        assert_eq!(u.payload().len() + 8, usize::from(u.len()));
        let _ = (u.src_port(), u.dst_port(), u.verify_checksum(a, b));
        let mut m = bytes.to_vec();
        let mut u = UdpPacket::new_checked(&mut m[..]).unwrap();
        u.fill_checksum(a, b);
        assert!(u.verify_checksum(a, b));
    }
}

proptest! {
    #[test]
    fn views_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        check(&bytes);
    }

    #[test]
    fn tcp_headers_with_options(doff in 5u8..16, opts in prop::collection::vec(any::<u8>(), 40), tail in 0usize..40) {
        let mut b = vec![0u8; 20];
        b[12] = doff << 4;
        b.extend_from_slice(&opts[..usize::from(doff) * 4 - 20]);
        b.extend(std::iter::repeat_n(7u8, tail));
        check(&b);
    }
}
