//! The pcapng reader never panics, and everything it reads survives a
//! write/read roundtrip (names, timestamps, data, comments).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapnet_switch::pcapng;

fuzz_target!(|data: &[u8]| {
    let Ok(cap) = pcapng::read(data) else { return };
    for p in &cap.packets {
        let _ = p.vnet_hdr();
    }
    // Roundtrip: one interface per packet's name, in order of appearance.
    let mut w = pcapng::Writer::new(Vec::new()).unwrap();
    let mut names: Vec<Option<String>> = Vec::new();
    for p in &cap.packets {
        if !names.contains(&p.interface_name) {
            names.push(p.interface_name.clone());
            if w.add_interface(p.interface_name.as_deref().unwrap_or(""))
                .is_err()
            {
                return; // a name longer than an option can hold
            }
        }
    }
    for p in &cap.packets {
        let i = names.iter().position(|n| *n == p.interface_name).unwrap() as u32;
        let comments: Vec<&str> = p.comments.iter().map(String::as_str).collect();
        if w.write_packet(i, p.timestamp_ns, &p.data, &comments)
            .is_err()
        {
            return; // a comment longer than an option can hold
        }
    }
    let again = pcapng::read(&w.into_inner().unwrap()).expect("reading what we wrote");
    assert_eq!(again.packets.len(), cap.packets.len());
    for (a, b) in again.packets.iter().zip(&cap.packets) {
        assert_eq!(
            a.interface_name.as_deref().unwrap_or(""),
            b.interface_name.as_deref().unwrap_or("")
        );
        assert_eq!(
            (a.timestamp_ns, &a.data, &a.comments),
            (b.timestamp_ns, &b.data, &b.comments)
        );
    }
});
