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

/// The gateway's per-packet paths allocate nothing once a flow exists
/// and a frame buffer was made (they are made when first needed): a
/// container's datagram in, the remote's answer out as a frame, the frame
/// buffer given back, timers.
#[test]
fn gateway_datagram_paths_do_not_allocate() {
    use std::net::SocketAddrV4;
    use tapnet_nat::gateway::{Config, Gateway, NetInfo};
    use tapnet_switch::{build, gateway_mac, PortId};
    let gw_ip = Ipv4Addr::new(10, 1, 0, 1);
    let c_ip = Ipv4Addr::new(10, 1, 0, 2);
    let c_mac = build::mac(2);
    let mut gw = Gateway::new(Config {
        table: tapnet_nat::Config {
            capacity: 64,
            ..Default::default()
        },
        tx_buffers: 4,
        ..Default::default()
    });
    gw.set_network(
        NetworkId(1),
        NetInfo {
            gateway: gw_ip,
            prefix: 24,
            mtu: 1500,
            masquerade: true,
            internal: false,
            v6: None,
        },
    );
    gw.add_endpoint(NetworkId(1), c_ip, None, c_mac.0, PortId(3));
    let remote = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 53);
    let frame = build::udp(
        gateway_mac(gw_ip),
        c_mac,
        (c_ip, 5000),
        (*remote.ip(), 53),
        b"q",
    );
    assert_eq!(datagram_exchange_allocations(&mut gw, &frame), 0);
}

/// The same for IPv6: a dual-stack container's datagrams over its IPv6
/// address allocate nothing once the flow exists.
#[test]
fn gateway_ipv6_datagram_paths_do_not_allocate() {
    use std::net::Ipv6Addr;
    use tapnet_nat::gateway::{Config, Gateway, NetInfo};
    use tapnet_nat::ip6;
    use tapnet_switch::wire::EtherType;
    use tapnet_switch::{build, gateway_mac, Ipv6Config, PortId};
    let gw_ip = Ipv4Addr::new(10, 1, 0, 1);
    let c_ip = Ipv4Addr::new(10, 1, 0, 2);
    let gw6: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
    let c_ip6: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
    let remote: Ipv6Addr = "2001:db8:9::1".parse().unwrap();
    let c_mac = build::mac(2);
    let mut gw = Gateway::new(Config {
        table: tapnet_nat::Config {
            capacity: 64,
            ..Default::default()
        },
        tx_buffers: 4,
        ..Default::default()
    });
    gw.set_network(
        NetworkId(1),
        NetInfo {
            gateway: gw_ip,
            prefix: 24,
            mtu: 1500,
            masquerade: true,
            internal: false,
            v6: Some(Ipv6Config {
                subnet: "2001:db8:1::".parse().unwrap(),
                prefix_len: 64,
                gateway: gw6,
            }),
        },
    );
    gw.add_endpoint(NetworkId(1), c_ip, Some(c_ip6), c_mac.0, PortId(3));
    let mut p = vec![0u8; 40 + 9];
    ip6::emit_header(&mut p, c_ip6, remote, ip6::next_header::UDP, 9, 64).unwrap();
    p[40..48].copy_from_slice(&[0x13, 0x88, 0, 53, 0, 9, 0, 0]);
    p[48] = b'q';
    let frame = build::ethernet(gateway_mac(gw_ip), c_mac, EtherType::Ipv6, &p);
    assert_eq!(datagram_exchange_allocations(&mut gw, &frame), 0);
}

/// Opens the UDP flow of `frame` (a container's datagram to the gateway's
/// MAC, from port 3) through `gw`, makes one exchange (the container's
/// datagram out, the remote's answer back as a frame, its buffer given
/// back, timers: the first one makes the frame buffer the rest reuse),
/// then counts what 1000 more exchanges allocate.
fn datagram_exchange_allocations(gw: &mut tapnet_nat::gateway::Gateway, frame: &[u8]) -> u64 {
    use tapnet_nat::gateway::{FrameAction, SocketId, SocketOp};
    use tapnet_switch::{wire::VnetHdr, PortId};
    let mut f = frame.to_vec();
    let meta = VnetHdr::default();
    // The first datagram opens the flow (allocations allowed).
    let _ = gw.handle_frame(1, NetworkId(1), 0, &meta, &mut f);
    let flow = match gw.poll_socket_op() {
        Some(SocketOp::OpenUdp { flow, .. }) => flow,
        op => panic!("{op:?}"),
    };
    let mut exchange = |now: u64| {
        f.copy_from_slice(frame);
        let a = gw.handle_frame(now, NetworkId(1), 0, &meta, &mut f);
        assert!(matches!(a, FrameAction::Send { .. }));
        let buf = gw.recv_buffer(SocketId::Flow(flow)).unwrap();
        buf[..6].copy_from_slice(b"answer");
        gw.handle_datagram(now, SocketId::Flow(flow), 6, None);
        let t = gw.poll_transmit().unwrap();
        assert_eq!(t.port, PortId(3));
        gw.recycle(t.buf);
        gw.handle_timeout(now);
        assert!(gw.poll_socket_op().is_none());
    };
    exchange(2_000);
    counted(|| {
        for i in 0..1000 {
            exchange(3_000 + i * 1_000);
        }
    })
}
