use super::*;
use std::net::Ipv4Addr;

const S: u64 = 1_000_000_000;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 18, 0, n))
}
fn remote() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
}
fn key(p: Protocol, c: u8, port: u16) -> FlowKey {
    FlowKey {
        protocol: p,
        network: NetworkId(1),
        container_ip: ip(c),
        container_port: port,
        remote_ip: remote(),
        remote_port: 443,
    }
}
fn table(cap: u32, per: u32) -> ConnTrack {
    ConnTrack::new(Config {
        capacity: cap,
        max_per_container: per,
        timeouts: Timeouts::default(),
        hash_seed: 42,
    })
}
fn state(t: &ConnTrack, h: FlowHandle) -> FlowState {
    t.get(h).unwrap().state
}
use Side::{Container as C, Remote as R};

#[test]
fn tcp_outbound_full_lifecycle() {
    let mut t = table(16, 16);
    let h = t
        .create(key(Protocol::Tcp, 2, 40000), Direction::Outbound, 0)
        .unwrap();
    assert_eq!(state(&t, h), FlowState::Tcp(TcpState::SynSent));
    assert_eq!(
        t.handle_tcp(h, 1, TcpFlags::SYN, C, 0),
        Ok(TcpState::SynSent)
    );
    // A SYN+ACK from the initiator's own side does not establish.
    assert_eq!(
        t.handle_tcp(h, 1, TcpFlags::SYN_ACK, C, 0),
        Ok(TcpState::SynSent)
    );
    assert_eq!(
        t.handle_tcp(h, 2, TcpFlags::SYN_ACK, R, 0),
        Ok(TcpState::Established)
    );
    assert_eq!(t.counters().tcp_established, 1);
    assert_eq!(
        t.handle_tcp(h, 3, TcpFlags::ACK, C, 100),
        Ok(TcpState::Established)
    );
    assert_eq!(
        t.handle_tcp(h, 4, TcpFlags::FIN_ACK, C, 0),
        Ok(TcpState::FinWait { fin_from: C })
    );
    // Retransmitted FIN from the same side: still half closed.
    assert_eq!(
        t.handle_tcp(h, 4, TcpFlags::FIN_ACK, C, 0),
        Ok(TcpState::FinWait { fin_from: C })
    );
    assert_eq!(
        t.handle_tcp(h, 5, TcpFlags::ACK, R, 50),
        Ok(TcpState::FinWait { fin_from: C })
    );
    assert_eq!(
        t.handle_tcp(h, 6, TcpFlags::FIN_ACK, R, 0),
        Ok(TcpState::Closing)
    );
    assert_eq!(
        t.handle_tcp(h, 6, TcpFlags::ACK, C, 0),
        Ok(TcpState::Closing)
    );
    assert_eq!(
        t.handle_tcp(h, 7, TcpFlags::RST, C, 0),
        Ok(TcpState::Closed)
    );
    assert_eq!(
        t.handle_tcp(h, 7, TcpFlags::SYN, C, 0),
        Ok(TcpState::Closed)
    );
    let v = t.get(h).unwrap();
    assert_eq!(
        v.from_container,
        Traffic {
            packets: 8,
            bytes: 100
        }
    );
    assert_eq!(
        v.to_container,
        Traffic {
            packets: 3,
            bytes: 50
        }
    );
    assert_eq!((v.created_ns, v.last_activity_ns), (0, 7));
    assert_eq!((v.age_ns(10), v.idle_ns(10)), (10, 3));
    assert_eq!(v.expires_in_ns(v.deadline_ns + 1), 0);
    assert_eq!(
        v.expires_in_ns(7),
        Timeouts::default().tcp_closed.as_nanos() as u64
    );
    assert_eq!(t.counters().tcp_reset, 1);
}

#[test]
fn tcp_half_close_from_remote_and_inbound_direction() {
    let mut t = table(16, 16);
    let h = t
        .create(key(Protocol::Tcp, 2, 80), Direction::Inbound, 0)
        .unwrap();
    // Inbound: the container is the responder.
    assert_eq!(
        t.handle_tcp(h, 1, TcpFlags::SYN_ACK, R, 0),
        Ok(TcpState::SynSent)
    );
    assert_eq!(
        t.handle_tcp(h, 1, TcpFlags::SYN_ACK, C, 0),
        Ok(TcpState::Established)
    );
    assert_eq!(
        t.handle_tcp(h, 2, TcpFlags::FIN, R, 0),
        Ok(TcpState::FinWait { fin_from: R })
    );
    assert_eq!(
        t.handle_tcp(h, 3, TcpFlags::FIN, C, 0),
        Ok(TcpState::Closing)
    );
    assert_eq!(t.counters().created_inbound, 1);
}

#[test]
fn tcp_socket_events() {
    let mut t = table(16, 16);
    let a = t
        .create(key(Protocol::Tcp, 2, 1), Direction::Outbound, 0)
        .unwrap();
    let b = t
        .create(key(Protocol::Tcp, 2, 2), Direction::Outbound, 0)
        .unwrap();
    assert_eq!(
        t.handle_tcp_socket(a, 1, SocketEvent::Connected),
        Ok(TcpState::Established)
    );
    assert_eq!(
        t.handle_tcp_socket(a, 1, SocketEvent::Connected),
        Ok(TcpState::Established)
    );
    assert_eq!(
        t.handle_tcp_socket(a, 2, SocketEvent::Eof),
        Ok(TcpState::FinWait { fin_from: R })
    );
    assert_eq!(
        t.handle_tcp(a, 3, TcpFlags::FIN_ACK, C, 0),
        Ok(TcpState::Closing)
    );
    assert_eq!(
        t.handle_tcp_socket(a, 4, SocketEvent::Reset),
        Ok(TcpState::Closed)
    );
    assert_eq!(
        t.handle_tcp_socket(b, 1, SocketEvent::Refused),
        Ok(TcpState::Closed)
    );
    // Socket events count no packets.
    assert_eq!(t.get(b).unwrap().to_container, Traffic::default());
    assert_eq!(
        t.gauges().by_state[FlowState::Tcp(TcpState::Closed).index()],
        2
    );
}

#[test]
fn udp_and_icmp_states() {
    let mut t = table(16, 16);
    let u = t
        .create(key(Protocol::Udp, 2, 5353), Direction::Outbound, 0)
        .unwrap();
    assert_eq!(t.handle_udp(u, 0, C, 10), Ok(DatagramState::Unreplied));
    assert_eq!(t.handle_udp(u, 1, R, 20), Ok(DatagramState::Replied));
    assert_eq!(t.handle_udp(u, 2, C, 10), Ok(DatagramState::Replied));
    let k = FlowKey::icmp_echo(NetworkId(1), ip(2), 7, remote());
    let i = t.create(k, Direction::Outbound, 0).unwrap();
    assert_eq!(t.handle_icmp(i, 0, C, 64), Ok(DatagramState::Unreplied));
    assert_eq!(t.handle_icmp(i, 1, R, 64), Ok(DatagramState::Replied));
    // Inbound UDP: the container answers.
    let v = t
        .create(key(Protocol::Udp, 3, 53), Direction::Inbound, 0)
        .unwrap();
    assert_eq!(t.handle_udp(v, 0, R, 10), Ok(DatagramState::Unreplied));
    assert_eq!(t.handle_udp(v, 0, C, 10), Ok(DatagramState::Replied));
    assert_eq!(t.counters().replied, 3);
    // Wrong protocol: refused, nothing changes.
    assert_eq!(
        t.handle_tcp(u, 9, TcpFlags::RST, C, 0),
        Err(EventError::WrongProtocol {
            flow: Protocol::Udp
        })
    );
    assert_eq!(
        t.handle_icmp(u, 9, R, 0),
        Err(EventError::WrongProtocol {
            flow: Protocol::Udp
        })
    );
    assert_eq!(
        t.handle_udp(i, 9, R, 0),
        Err(EventError::WrongProtocol {
            flow: Protocol::Icmp
        })
    );
    assert_eq!(t.get(u).unwrap().last_activity_ns, 2);
    assert_eq!(t.counters().wrong_protocol, 3);
}

/// Creates a flow in `s` at time 0 (last activity 0) and checks it
/// expires exactly at its state's timeout, with the right reason.
fn expires_after(s: FlowState, timeout: Duration) {
    let mut t = table(16, 16);
    let p = s.protocol();
    let h = t.create(key(p, 2, 1), Direction::Outbound, 0).unwrap();
    let steer = |t: &mut ConnTrack| match s {
        FlowState::Tcp(TcpState::SynSent) => {}
        FlowState::Tcp(ts) => {
            t.handle_tcp(h, 0, TcpFlags::SYN_ACK, R, 0).unwrap();
            match ts {
                TcpState::FinWait { fin_from } => {
                    t.handle_tcp(h, 0, TcpFlags::FIN, fin_from, 0).unwrap();
                }
                TcpState::Closing => {
                    t.handle_tcp(h, 0, TcpFlags::FIN, C, 0).unwrap();
                    t.handle_tcp(h, 0, TcpFlags::FIN, R, 0).unwrap();
                }
                TcpState::Closed => {
                    t.handle_tcp(h, 0, TcpFlags::RST, R, 0).unwrap();
                }
                _ => {}
            }
        }
        FlowState::Udp(DatagramState::Replied) => {
            t.handle_udp(h, 0, R, 0).unwrap();
        }
        FlowState::Icmp(DatagramState::Replied) => {
            t.handle_icmp(h, 0, R, 0).unwrap();
        }
        _ => {}
    };
    steer(&mut t);
    assert_eq!(state(&t, h), s);
    let ns = timeout.as_nanos() as u64;
    // The timer may be armed early (lazy re-arm), never late.
    assert!(t.poll_timeout() <= Some(ns), "{s:?}");
    assert_eq!(t.get(h).unwrap().deadline_ns, ns);
    assert!(t.poll_expired(ns - 1).is_none());
    assert_eq!(t.poll_timeout(), Some(ns), "{s:?}");
    assert!(t.lookup(&key(p, 2, 1)).is_some());
    let v = t.poll_expired(ns).unwrap();
    assert_eq!((v.handle, v.state), (h, s));
    assert_eq!(t.counters().expired_in(s), 1);
    assert!(t.lookup(&key(p, 2, 1)).is_none());
    assert!(t.is_empty() && t.poll_timeout().is_none());
}

#[test]
fn every_state_times_out_at_its_default() {
    let d = Timeouts::default();
    assert_eq!(d.tcp_established, Duration::from_secs(7440));
    for (s, to) in [
        (FlowState::Tcp(TcpState::SynSent), d.tcp_syn_sent),
        (FlowState::Tcp(TcpState::Established), d.tcp_established),
        (
            FlowState::Tcp(TcpState::FinWait { fin_from: C }),
            d.tcp_closing,
        ),
        (
            FlowState::Tcp(TcpState::FinWait { fin_from: R }),
            d.tcp_closing,
        ),
        (FlowState::Tcp(TcpState::Closing), d.tcp_closing),
        (FlowState::Tcp(TcpState::Closed), d.tcp_closed),
        (FlowState::Udp(DatagramState::Unreplied), d.udp_unreplied),
        (FlowState::Udp(DatagramState::Replied), d.udp_replied),
        (FlowState::Icmp(DatagramState::Unreplied), d.icmp),
        (FlowState::Icmp(DatagramState::Replied), d.icmp),
    ] {
        expires_after(s, to);
    }
}

#[test]
fn configured_timeouts_are_used() {
    let mut t = ConnTrack::new(Config {
        timeouts: Timeouts {
            udp_unreplied: Duration::from_secs(5),
            ..Timeouts::default()
        },
        ..Config::default()
    });
    let h = t
        .create(key(Protocol::Udp, 2, 1), Direction::Outbound, S)
        .unwrap();
    assert_eq!(t.poll_timeout(), Some(6 * S));
    assert_eq!(t.poll_expired(6 * S).map(|v| v.handle), Some(h));
}

#[test]
fn activity_postpones_expiry_lazily() {
    let mut t = table(16, 16);
    let h = t
        .create(key(Protocol::Udp, 2, 1), Direction::Outbound, 0)
        .unwrap();
    t.handle_udp(h, 20 * S, C, 1).unwrap();
    // The timer still says 30 s: an early wake-up that re-arms.
    assert_eq!(t.poll_timeout(), Some(30 * S));
    assert!(t.poll_expired(30 * S).is_none());
    assert_eq!(t.poll_timeout(), Some(50 * S));
    assert!(t.poll_expired(50 * S - 1).is_none());
    assert_eq!(t.poll_expired(50 * S).map(|v| v.handle), Some(h));
}

#[test]
fn shorter_timeout_moves_timer_up() {
    let mut t = table(16, 16);
    let h = t
        .create(key(Protocol::Tcp, 2, 1), Direction::Outbound, 0)
        .unwrap();
    t.handle_tcp_socket(h, 0, SocketEvent::Connected).unwrap();
    t.handle_tcp(h, 100 * S, TcpFlags::ACK, C, 1).unwrap();
    t.handle_tcp(h, 200 * S, TcpFlags::RST, R, 0).unwrap();
    assert_eq!(t.poll_timeout(), Some(210 * S));
    let v = t.poll_expired(210 * S).unwrap();
    assert_eq!(v.state, FlowState::Tcp(TcpState::Closed));
}

#[test]
fn expiry_order_is_deadline_then_slot() {
    let mut t = table(16, 16);
    let a = t
        .create(key(Protocol::Udp, 2, 1), Direction::Outbound, 10 * S)
        .unwrap();
    let b = t
        .create(key(Protocol::Icmp, 2, 2), Direction::Outbound, 0)
        .unwrap();
    let c = t
        .create(key(Protocol::Udp, 2, 3), Direction::Outbound, 0)
        .unwrap();
    let d = t
        .create(key(Protocol::Tcp, 2, 4), Direction::Outbound, 0)
        .unwrap();
    t.handle_udp(c, 0, R, 0).unwrap(); // 180 s
    t.handle_icmp(b, 5 * S, C, 0).unwrap(); // 35 s, armed at 30 s
    let got: Vec<_> = t.expire(1000 * S).map(|v| v.handle).collect();
    assert_eq!(got, vec![b, a, d, c]);
    // Ties: same deadline, lower slot first.
    let x = t
        .create(key(Protocol::Udp, 3, 1), Direction::Outbound, 0)
        .unwrap();
    let y = t
        .create(key(Protocol::Udp, 3, 2), Direction::Outbound, 0)
        .unwrap();
    let mut got: Vec<_> = t.expire(u64::MAX).map(|v| v.handle).collect();
    let mut want = vec![x, y];
    want.sort_by_key(|h| h.index());
    assert_eq!(got, want);
    got.clear();
}

#[test]
fn lookups_both_ways_and_duplicates() {
    let mut t = table(16, 16);
    let k = key(Protocol::Tcp, 2, 1);
    let h = t.create(k, Direction::Outbound, 0).unwrap();
    assert_eq!(t.lookup(&k), Some(h));
    assert_eq!(t.get(h).unwrap().key, k);
    assert_eq!(
        t.create(k, Direction::Inbound, 0),
        Err(CreateError::Exists(h))
    );
    assert_eq!(t.counters().refused_exists, 1);
    // Same ports, other protocol, network or address: distinct flows.
    let mut k2 = k;
    k2.protocol = Protocol::Udp;
    let mut k3 = k;
    k3.network = NetworkId(2);
    let mut k4 = k;
    k4.remote_ip = "2001:db8::1".parse().unwrap();
    for k in [k2, k3, k4] {
        assert!(t.lookup(&k).is_none());
        let h = t.create(k, Direction::Outbound, 0).unwrap();
        assert_eq!(t.lookup(&k), Some(h));
    }
    assert_eq!(FlowHandle::from_u64(h.to_u64()), h);
}

#[test]
fn stale_handles_never_alias() {
    let mut t = table(1, 1);
    let k = key(Protocol::Udp, 2, 1);
    let h = t.create(k, Direction::Outbound, 0).unwrap();
    assert_eq!(t.remove(h).map(|v| v.handle), Ok(h));
    assert_eq!(t.remove(h), Err(EventError::StaleHandle));
    let h2 = t.create(k, Direction::Outbound, 0).unwrap();
    assert_eq!(h2.index(), h.index());
    assert_ne!(h2, h);
    assert_eq!(t.handle_udp(h, 1, R, 1), Err(EventError::StaleHandle));
    assert_eq!(
        t.handle_tcp(h, 1, TcpFlags::RST, R, 1),
        Err(EventError::StaleHandle)
    );
    assert_eq!(
        t.handle_tcp_socket(h, 1, SocketEvent::Reset),
        Err(EventError::StaleHandle)
    );
    assert_eq!(t.handle_icmp(h, 1, R, 1), Err(EventError::StaleHandle));
    assert_eq!(t.get(h), None);
    // A handle never issued.
    let bogus = FlowHandle::from_u64(u64::MAX);
    assert_eq!(t.handle_udp(bogus, 1, R, 1), Err(EventError::StaleHandle));
    assert_eq!(t.get(bogus), None);
    assert_eq!(
        t.get(h2).unwrap().state,
        FlowState::Udp(DatagramState::Unreplied)
    );
    assert_eq!(t.counters().stale_handle, 6);
    assert_eq!(t.counters().removed, 1);
}

#[test]
fn limits_are_named_and_counted() {
    let mut t = table(3, 2);
    t.create(key(Protocol::Udp, 2, 1), Direction::Outbound, 0)
        .unwrap();
    t.create(key(Protocol::Udp, 2, 2), Direction::Outbound, 0)
        .unwrap();
    assert_eq!(
        t.create(key(Protocol::Udp, 2, 3), Direction::Outbound, 0),
        Err(CreateError::ContainerLimit { limit: 2 })
    );
    t.create(key(Protocol::Udp, 3, 1), Direction::Outbound, 0)
        .unwrap();
    assert_eq!(
        t.create(key(Protocol::Udp, 4, 1), Direction::Outbound, 0),
        Err(CreateError::TableFull { limit: 3 })
    );
    assert_eq!(t.counters().refused_container_limit, 1);
    assert_eq!(t.counters().refused_table_full, 1);
    assert_eq!(t.container_flows(NetworkId(1), ip(2)), 2);
    // The same address on another network is another container.
    assert_eq!(t.container_flows(NetworkId(2), ip(2)), 0);
    // Room again after expiry.
    assert_eq!(t.expire(u64::MAX).count(), 3);
    assert_eq!(t.container_flows(NetworkId(1), ip(2)), 0);
    t.create(key(Protocol::Udp, 2, 3), Direction::Outbound, 0)
        .unwrap();
    let z = table(0, 0).create(key(Protocol::Udp, 2, 3), Direction::Outbound, 0);
    assert_eq!(z, Err(CreateError::TableFull { limit: 0 }));
}

#[test]
fn accounting_listing_and_container_removal() {
    let mut t = table(16, 16);
    let a = t
        .create(key(Protocol::Tcp, 2, 1), Direction::Outbound, 0)
        .unwrap();
    t.create(key(Protocol::Udp, 2, 2), Direction::Outbound, 0)
        .unwrap();
    t.create(key(Protocol::Udp, 3, 2), Direction::Inbound, 0)
        .unwrap();
    t.handle_tcp_socket(a, 0, SocketEvent::Connected).unwrap();
    let g = *t.gauges();
    assert_eq!(g.flows, 3);
    assert_eq!(g.by_protocol, [1, 2, 0]);
    assert_eq!(g.by_state[FlowState::Tcp(TcpState::Established).index()], 1);
    assert_eq!(
        g.by_state[FlowState::Udp(DatagramState::Unreplied).index()],
        2
    );
    assert_eq!(t.counters().created, [1, 2, 0]);
    assert_eq!(t.iter().count(), 3);
    assert_eq!(t.iter_container(NetworkId(1), ip(2)).count(), 2);
    let mut seen = vec![];
    assert_eq!(
        t.remove_container(NetworkId(1), ip(2), |v| seen.push(v.handle)),
        2
    );
    assert_eq!(seen.len(), 2);
    assert_eq!(t.len(), 1);
    assert_eq!(t.gauges().by_protocol, [0, 1, 0]);
    assert_eq!(t.counters().removed, 2);
    assert_eq!(FlowState::NAMES.len(), FlowState::COUNT);
    assert_eq!(FlowState::Tcp(TcpState::Closing).as_str(), "tcp_closing");
}

#[test]
fn time_going_backwards_or_overflowing_does_not_panic() {
    let mut t = table(4, 4);
    let h = t
        .create(key(Protocol::Udp, 2, 1), Direction::Outbound, u64::MAX - 1)
        .unwrap();
    t.handle_udp(h, 5, C, usize::MAX).unwrap();
    assert_eq!(t.get(h).unwrap().last_activity_ns, u64::MAX - 1);
    assert_eq!(t.poll_timeout(), Some(u64::MAX));
    assert_eq!(t.poll_expired(u64::MAX).map(|v| v.handle), Some(h));
}

#[test]
fn churn_keeps_index_consistent() {
    let mut t = table(64, 64);
    let mut live: Vec<(FlowKey, FlowHandle)> = vec![];
    for i in 0..10_000u32 {
        let k = key(Protocol::Udp, (i % 7) as u8, (i * 7919 % 200) as u16);
        match t.lookup(&k) {
            Some(h) => {
                t.remove(h).unwrap();
                live.retain(|(_, x)| *x != h);
            }
            None => match t.create(k, Direction::Outbound, u64::from(i)) {
                Ok(h) => live.push((k, h)),
                Err(CreateError::TableFull { .. }) => {
                    let (_, h) = live.remove(0);
                    t.remove(h).unwrap();
                }
                Err(e) => panic!("{e}"),
            },
        }
        for (k, h) in &live {
            assert_eq!(t.lookup(k), Some(*h));
        }
        assert_eq!(t.len(), live.len());
    }
}

#[test]
fn capacity_is_clamped_and_memory_bounded() {
    let t = table(u32::MAX, 1);
    assert_eq!(t.config().capacity, MAX_CAPACITY);
    // A flow stays within two cache lines of slab.
    const { assert!(core::mem::size_of::<Slot>() <= 128) };
    const { assert!(BYTES_PER_FLOW <= 192) };
}
