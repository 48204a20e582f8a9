//! Model-based test: random event sequences drive the connection table
//! and a reference model (a `HashMap` of flows and linear scans); after
//! every step their lookups, views, counts and expiries must agree.
//!
//! The model reuses the table's pure transition functions (unit-tested on
//! their own): what is checked here is the bookkeeping around them —
//! indexes, slots and generations, limits, accounting and timers.

use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tapnet_nat::conntrack::*;
use tapnet_switch::NetworkId;

const S: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Create {
        key: usize,
        inbound: bool,
    },
    Tcp {
        flow: usize,
        flags: u8,
        remote: bool,
        bytes: u16,
    },
    Socket {
        flow: usize,
        ev: u8,
    },
    Udp {
        flow: usize,
        remote: bool,
        bytes: u16,
    },
    Icmp {
        flow: usize,
        remote: bool,
        bytes: u16,
    },
    Remove {
        flow: usize,
    },
    RemoveContainer {
        c: usize,
    },
    Advance {
        ms: u32,
        back: bool,
    },
    PollOne,
    ExpireAll,
}

fn op() -> impl Strategy<Value = Op> {
    let flags = prop::sample::select(vec![0x02u8, 0x12, 0x10, 0x11, 0x01, 0x04, 0x14, 0x13]);
    prop_oneof![
        4 => (0..48usize, any::<bool>()).prop_map(|(key, inbound)| Op::Create { key, inbound }),
        4 => (any::<usize>(), flags, any::<bool>(), 0..1500u16)
            .prop_map(|(flow, flags, remote, bytes)| Op::Tcp { flow, flags, remote, bytes }),
        1 => (any::<usize>(), 0..4u8).prop_map(|(flow, ev)| Op::Socket { flow, ev }),
        2 => (any::<usize>(), any::<bool>(), 0..1500u16)
            .prop_map(|(flow, remote, bytes)| Op::Udp { flow, remote, bytes }),
        1 => (any::<usize>(), any::<bool>(), 0..1500u16)
            .prop_map(|(flow, remote, bytes)| Op::Icmp { flow, remote, bytes }),
        1 => any::<usize>().prop_map(|flow| Op::Remove { flow }),
        1 => (0..8usize).prop_map(|c| Op::RemoveContainer { c }),
        3 => (0..200_000u32, prop::bool::weighted(0.1))
            .prop_map(|(ms, back)| Op::Advance { ms, back }),
        1 => Just(Op::PollOne),
        1 => Just(Op::ExpireAll),
    ]
}

fn containers() -> Vec<(NetworkId, IpAddr)> {
    let mut v = vec![];
    for n in [1, 2] {
        for c in [2, 3] {
            v.push((NetworkId(n), IpAddr::V4(Ipv4Addr::new(172, 18, 0, c))));
        }
    }
    v
}

/// 48 keys: 3 protocols × 4 containers × 2 ports × 2 remotes.
fn keys() -> Vec<FlowKey> {
    let remotes: [IpAddr; 2] = ["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
    let mut v = vec![];
    for p in Protocol::ALL {
        for (network, container_ip) in containers() {
            for port in [1000, 1001] {
                for remote_ip in remotes {
                    v.push(FlowKey {
                        protocol: p,
                        network,
                        container_ip,
                        container_port: port,
                        remote_ip,
                        remote_port: if p == Protocol::Icmp { 0 } else { 80 },
                    });
                }
            }
        }
    }
    v
}

#[derive(Clone, Debug)]
struct MFlow {
    key: FlowKey,
    direction: Direction,
    state: FlowState,
    created: u64,
    last: u64,
    from_container: Traffic,
    to_container: Traffic,
    /// When it reached TCP `Closed` (an order), while it is there.
    closed_seq: Option<u64>,
}

struct Model {
    flows: HashMap<FlowHandle, MFlow>,
    cap: usize,
    per: usize,
    timeouts: Timeouts,
    expired: [u64; FlowState::COUNT],
    stale: u64,
    /// The next `closed_seq`.
    seq: u64,
    evicted: u64,
}

impl Model {
    fn deadline(&self, f: &MFlow) -> u64 {
        f.last
            .saturating_add(self.timeouts.of(f.state).as_nanos() as u64)
    }
    fn lookup(&self, k: &FlowKey) -> Option<FlowHandle> {
        self.flows
            .iter()
            .find(|(_, f)| f.key == *k)
            .map(|(h, _)| *h)
    }
    /// The container's flow that reached TCP `Closed` first, of those
    /// still there.
    fn oldest_closed(&self, n: NetworkId, ip: IpAddr) -> Option<FlowHandle> {
        self.flows
            .iter()
            .filter(|(_, f)| f.key.network == n && f.key.container_ip == ip)
            .filter_map(|(h, f)| Some((f.closed_seq?, *h)))
            .min()
            .map(|(_, h)| h)
    }
    fn per_container(&self, n: NetworkId, ip: IpAddr) -> usize {
        self.flows
            .values()
            .filter(|f| f.key.network == n && f.key.container_ip == ip)
            .count()
    }
    /// Expired flows in (deadline, slot) order.
    fn due(&self, now: u64) -> Vec<(u64, FlowHandle)> {
        let mut v: Vec<_> = self
            .flows
            .iter()
            .map(|(h, f)| (self.deadline(f), *h))
            .filter(|(d, _)| *d <= now)
            .collect();
        v.sort_by_key(|(d, h)| (*d, h.index()));
        v
    }
    fn event(
        &mut self,
        h: FlowHandle,
        now: u64,
        expect: Protocol,
        packet: Option<(Side, u16)>,
        next: impl FnOnce(FlowState, Direction) -> FlowState,
    ) -> Result<FlowState, EventError> {
        let Some(f) = self.flows.get_mut(&h) else {
            self.stale += 1;
            return Err(EventError::StaleHandle);
        };
        if f.state.protocol() != expect {
            return Err(EventError::WrongProtocol {
                flow: f.state.protocol(),
            });
        }
        if let Some((side, bytes)) = packet {
            let t = match side {
                Side::Container => &mut f.from_container,
                Side::Remote => &mut f.to_container,
            };
            t.packets += 1;
            t.bytes += u64::from(bytes);
        }
        f.last = f.last.max(now);
        let old = f.state;
        f.state = next(f.state, f.direction);
        const CLOSED: FlowState = FlowState::Tcp(TcpState::Closed);
        if old != CLOSED && f.state == CLOSED {
            f.closed_seq = Some(self.seq);
            self.seq += 1;
        } else if old == CLOSED && f.state != CLOSED {
            f.closed_seq = None;
        }
        Ok(f.state)
    }
}

fn side(remote: bool) -> Side {
    if remote {
        Side::Remote
    } else {
        Side::Container
    }
}

fn check(t: &ConnTrack, m: &Model, keys: &[FlowKey], issued: &[FlowHandle]) {
    for k in keys {
        assert_eq!(t.lookup(k), m.lookup(k), "lookup {k:?}");
    }
    assert_eq!(t.len(), m.flows.len());
    for h in issued {
        let got = t.get(*h);
        match m.flows.get(h) {
            None => assert_eq!(got, None),
            Some(f) => {
                let v = got.expect("live flow");
                assert_eq!(v.handle, *h);
                assert_eq!(v.key, f.key);
                assert_eq!(v.direction, f.direction);
                assert_eq!(v.state, f.state);
                assert_eq!(v.created_ns, f.created);
                assert_eq!(v.last_activity_ns, f.last);
                assert_eq!(v.deadline_ns, m.deadline(f));
                assert_eq!(v.from_container, f.from_container);
                assert_eq!(v.to_container, f.to_container);
            }
        }
    }
    let mut by_state = [0u32; FlowState::COUNT];
    let mut by_protocol = [0u32; 3];
    for f in m.flows.values() {
        by_state[f.state.index()] += 1;
        by_protocol[f.key.protocol as usize] += 1;
    }
    assert_eq!(t.gauges().by_state, by_state);
    assert_eq!(t.gauges().by_protocol, by_protocol);
    for (n, ip) in containers() {
        assert_eq!(t.container_flows(n, ip) as usize, m.per_container(n, ip));
        assert_eq!(t.iter_container(n, ip).count(), m.per_container(n, ip));
    }
    assert_eq!(t.iter().count(), m.flows.len());
    let earliest = m.flows.values().map(|f| m.deadline(f)).min();
    match earliest {
        None => assert_eq!(t.poll_timeout(), None),
        Some(d) => assert!(t.poll_timeout().is_some_and(|p| p <= d)),
    }
    assert_eq!(t.counters().expired, m.expired);
    assert_eq!(t.counters().stale_handle, m.stale);
    assert_eq!(t.counters().evicted_closed, m.evicted);
}

fn run(ops: Vec<Op>, short: bool) {
    let timeouts = if short {
        // Timeouts in the same range as the time steps, so that expiry
        // interleaves with events; distinct so that state changes move
        // timers both ways.
        Timeouts {
            tcp_syn_sent: Duration::from_secs(20),
            tcp_established: Duration::from_secs(300),
            tcp_closing: Duration::from_secs(40),
            tcp_closed: Duration::from_secs(5),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    } else {
        Timeouts::default()
    };
    let cfg = Config {
        capacity: 10,
        max_per_container: 4,
        timeouts,
        hash_seed: 7,
    };
    let mut t = ConnTrack::new(cfg);
    let mut m = Model {
        flows: HashMap::new(),
        cap: 10,
        per: 4,
        timeouts,
        expired: [0; FlowState::COUNT],
        stale: 0,
        seq: 0,
        evicted: 0,
    };
    let keys = keys();
    let mut issued: Vec<FlowHandle> = vec![];
    let mut now = 1_000 * S;
    let pick = |issued: &[FlowHandle], i: usize| {
        // Now and then a handle that was never issued (any bits).
        if issued.is_empty() || i % 16 == 15 {
            FlowHandle::from_u64(i as u64)
        } else {
            issued[i % issued.len()]
        }
    };
    for op in ops {
        match op {
            Op::Create { key, inbound } => {
                let k = keys[key];
                let dir = if inbound {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                let exists = m.lookup(&k);
                let full = m.flows.len() >= m.cap;
                let at_limit = m.per_container(k.network, k.container_ip) >= m.per;
                let victim = (exists.is_none() && (full || at_limit))
                    .then(|| m.oldest_closed(k.network, k.container_ip))
                    .flatten();
                let want = if let Some(h) = exists {
                    Err(CreateError::Exists(h))
                } else if let Some(v) = victim {
                    // The container's oldest closed flow makes room.
                    m.flows.remove(&v);
                    m.evicted += 1;
                    Ok(())
                } else if full {
                    Err(CreateError::TableFull { limit: 10 })
                } else if at_limit {
                    Err(CreateError::ContainerLimit { limit: 4 })
                } else {
                    Ok(())
                };
                let got = t.create(k, dir, now);
                assert_eq!(t.take_evicted(), victim);
                match (want, got) {
                    (Ok(()), Ok(h)) => {
                        assert!(!m.flows.contains_key(&h));
                        assert!(!issued.contains(&h), "handle reused: {h:?}");
                        m.flows.insert(
                            h,
                            MFlow {
                                key: k,
                                direction: dir,
                                state: FlowState::initial(k.protocol),
                                created: now,
                                last: now,
                                from_container: Traffic::default(),
                                to_container: Traffic::default(),
                                closed_seq: None,
                            },
                        );
                        issued.push(h);
                    }
                    (want, got) => assert_eq!(want.map(|_| unreachable!()), got),
                }
            }
            Op::Tcp {
                flow,
                flags,
                remote,
                bytes,
            } => {
                let h = pick(&issued, flow);
                let (fl, sd) = (TcpFlags(flags), side(remote));
                let want = m
                    .event(h, now, Protocol::Tcp, Some((sd, bytes)), |s, d| match s {
                        FlowState::Tcp(x) => FlowState::Tcp(tcp_transition(x, fl, sd, d)),
                        s => s,
                    })
                    .map(|s| match s {
                        FlowState::Tcp(x) => x,
                        _ => unreachable!(),
                    });
                assert_eq!(t.handle_tcp(h, now, fl, sd, bytes.into()), want);
            }
            Op::Socket { flow, ev } => {
                let h = pick(&issued, flow);
                let ev = [
                    SocketEvent::Connected,
                    SocketEvent::Refused,
                    SocketEvent::Eof,
                    SocketEvent::Reset,
                ][ev as usize % 4];
                let want = m
                    .event(h, now, Protocol::Tcp, None, |s, d| match s {
                        FlowState::Tcp(x) => FlowState::Tcp(tcp_socket_transition(x, ev, d)),
                        s => s,
                    })
                    .map(|s| match s {
                        FlowState::Tcp(x) => x,
                        _ => unreachable!(),
                    });
                assert_eq!(t.handle_tcp_socket(h, now, ev), want);
            }
            Op::Udp {
                flow,
                remote,
                bytes,
            }
            | Op::Icmp {
                flow,
                remote,
                bytes,
            } => {
                let h = pick(&issued, flow);
                let sd = side(remote);
                let proto = if matches!(op, Op::Udp { .. }) {
                    Protocol::Udp
                } else {
                    Protocol::Icmp
                };
                let want = m
                    .event(h, now, proto, Some((sd, bytes)), |s, d| match s {
                        FlowState::Udp(x) => FlowState::Udp(datagram_transition(x, sd, d)),
                        FlowState::Icmp(x) => FlowState::Icmp(datagram_transition(x, sd, d)),
                        s => s,
                    })
                    .map(|s| match s {
                        FlowState::Udp(x) | FlowState::Icmp(x) => x,
                        _ => unreachable!(),
                    });
                let got = if proto == Protocol::Udp {
                    t.handle_udp(h, now, sd, bytes.into())
                } else {
                    t.handle_icmp(h, now, sd, bytes.into())
                };
                assert_eq!(got, want);
            }
            Op::Remove { flow } => {
                let h = pick(&issued, flow);
                let want = m.flows.remove(&h);
                if want.is_none() {
                    m.stale += 1;
                }
                let got = t.remove(h);
                assert_eq!(got.is_ok(), want.is_some());
                if let (Ok(v), Some(f)) = (got, want) {
                    assert_eq!((v.key, v.state), (f.key, f.state));
                }
            }
            Op::RemoveContainer { c } => {
                let (n, ip) = containers()[c % 4];
                let mut want: Vec<FlowHandle> = m
                    .flows
                    .iter()
                    .filter(|(_, f)| f.key.network == n && f.key.container_ip == ip)
                    .map(|(h, _)| *h)
                    .collect();
                want.sort_by_key(|h| h.index());
                m.flows
                    .retain(|_, f| !(f.key.network == n && f.key.container_ip == ip));
                let mut got = vec![];
                assert_eq!(
                    t.remove_container(n, ip, |v| got.push(v.handle)),
                    want.len()
                );
                assert_eq!(got, want);
            }
            Op::Advance { ms, back } => {
                let d = u64::from(ms) * 1_000_000;
                now = if back {
                    now.saturating_sub(d.min(S))
                } else {
                    now + d
                };
            }
            Op::PollOne => {
                let want = m.due(now).first().copied();
                let got = t.poll_expired(now);
                assert_eq!(got.map(|v| v.handle), want.map(|(_, h)| h));
                if let Some((d, h)) = want {
                    let f = m.flows.remove(&h).unwrap();
                    let v = got.unwrap();
                    assert_eq!((v.state, v.deadline_ns), (f.state, d));
                    m.expired[f.state.index()] += 1;
                }
            }
            Op::ExpireAll => {
                let want = m.due(now);
                let got: Vec<FlowView> = t.expire(now).collect();
                assert_eq!(
                    got.iter().map(|v| v.handle).collect::<Vec<_>>(),
                    want.iter().map(|(_, h)| *h).collect::<Vec<_>>()
                );
                for (d, h) in want {
                    let f = m.flows.remove(&h).unwrap();
                    assert_eq!(m.deadline(&f), d);
                    m.expired[f.state.index()] += 1;
                }
            }
        }
        check(&t, &m, &keys, &issued);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn table_agrees_with_model_short_timeouts(ops in prop::collection::vec(op(), 1..300)) {
        run(ops, true);
    }

    #[test]
    fn table_agrees_with_model_default_timeouts(ops in prop::collection::vec(op(), 1..300)) {
        run(ops, false);
    }
}
