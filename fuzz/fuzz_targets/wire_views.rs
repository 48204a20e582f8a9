//! Arbitrary bytes through the TCP and UDP views: `new_checked` either
//! refuses or gives a view whose getters, options walk, payload and
//! checksum helpers stay within the buffer; a filled checksum verifies.
//! (`switch/tests/wire_views.rs` runs the same checks with proptest.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use tapnet_switch::wire::{TcpPacket, UdpPacket};

fuzz_target!(|bytes: &[u8]| {
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
});
