//! After construction, the connection table allocates nothing: not on
//! lookups, events, expiry or removal, nor on creating flows of up to
//! 1024 containers — measured with a counting global allocator, on this
//! thread only.

use std::net::{IpAddr, Ipv4Addr};
use tapnet_nat::conntrack::*;
use tapnet_switch::NetworkId;

fn counted(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

fn key(c: u8, port: u16, p: Protocol) -> FlowKey {
    FlowKey {
        protocol: p,
        network: NetworkId(1),
        container_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, c)),
        container_port: port,
        remote_ip: "2001:db8::1".parse().unwrap(),
        remote_port: 443,
    }
}

#[test]
fn table_does_not_allocate_after_construction() {
    assert_eq!(counted(|| drop(std::hint::black_box(vec![0u8; 64]))), 1);
    let mut t = ConnTrack::new(Config {
        capacity: 4096,
        max_per_container: 64,
        ..Config::default()
    });
    let n = counted(|| {
        let mut now = 0;
        // Several rounds of fill, traffic, expiry and removal, so slots,
        // index entries, timers and container counts are all reused.
        for round in 0..4u16 {
            for c in 0..64u8 {
                for port in 0..64u16 {
                    let p = Protocol::ALL[usize::from(port % 3)];
                    match t.create(key(c, port + round, p), Direction::Outbound, now) {
                        Ok(h) => {
                            let _ = t.handle_tcp(h, now, TcpFlags::SYN, Side::Container, 0);
                            let _ = t.handle_udp(h, now, Side::Remote, 100);
                            let _ = t.handle_icmp(h, now, Side::Remote, 100);
                            let _ = t.handle_tcp_socket(h, now, SocketEvent::Connected);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            for c in 0..64u8 {
                for port in 0..64u16 {
                    let p = Protocol::ALL[usize::from(port % 3)];
                    let h = t.lookup(&key(c, port + round, p)).unwrap();
                    let _ = t.get(h);
                    if port % 2 == 0 {
                        let _ = t.remove(h);
                        let _ = t.remove(h);
                    }
                }
            }
            assert!(t
                .create(key(200, 0, Protocol::Udp), Direction::Inbound, now)
                .is_ok());
            now += 10_000_000_000_000;
            let _ = t.poll_timeout();
            while t.poll_expired(now).is_some() {}
            assert!(t.is_empty());
        }
        std::hint::black_box(&t);
    });
    assert_eq!(n, 0);
}
