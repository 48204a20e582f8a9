//! In-memory pipeline benchmarks (`cargo bench -p tapnet-switch`):
//! 64-byte frames between learned ports with 1 and 2 workers, a 256-port
//! network, and an FDB holding 1M MACs. Frames go to a counting sink, so
//! this measures the pipeline, not I/O. Throughput is reported in frames
//! (elements) per second.
//!
//! `2ports_1worker_idle_hook` is `2ports_1worker` with a capture hook
//! installed that selects nothing (as the daemon's with a capture of other
//! ports running): the price of a hook, against the one branch of no hook
//! at all (the daemon installs one only while a capture runs).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapnet_switch::build::{self, mac};
use tapnet_switch::mem::CountTx;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::*;

const BATCH: usize = 64;

/// A capture hook with no session interested in these frames, as the
/// daemon installs it: an immutable session list in the topology snapshot,
/// walked per call (one session, on another port).
struct IdleHook {
    sessions: Vec<u32>,
}

impl CaptureHook for IdleHook {
    fn on_ingress(&self, port: &Port, _: &VnetHdr, _: &[u8]) {
        for &s in &self.sessions {
            if s == port.id.0 {
                std::hint::black_box(s);
            }
        }
    }
    fn on_egress(&self, port: &Port, _: &VnetHdr, _: &[u8]) {
        for &s in &self.sessions {
            if s == port.id.0 {
                std::hint::black_box(s);
            }
        }
    }
}

/// A 64-byte frame on a cache line of its own, as in a ring of receive
/// buffers: the frames of 256 ports are one contiguous array, not 256
/// allocations, so the bench's own input costs the same with 2 ports as
/// with 256.
#[repr(C, align(64))]
struct Frame([u8; 64]);

struct Setup {
    sw: Arc<Switch>,
    /// Frames between learned endpoints, each with its ingress port
    /// (apart: a port id beside each frame would pad it to a second line).
    traffic: (Vec<PortId>, Vec<Frame>),
}

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + n)
}

/// `ports` endpoints on one /8 network, all learned; `extra_macs` more MACs
/// learned on an unchecked uplink to fill the table.
fn setup(ports: u32, extra_macs: u32, workers: usize) -> Setup {
    let sw = Switch::new(SwitchConfig {
        workers,
        fdb_capacity: ((ports + extra_macs) as usize * 2).next_power_of_two(),
        max_macs_per_port: extra_macs.max(64),
        ..Default::default()
    });
    let net = sw
        .add_network(NetworkConfig::new("bench", ip(0), 8, ip(1)))
        .unwrap();
    let ids: Vec<PortId> = (0..ports)
        .map(|i| {
            sw.add_port(PortConfig::endpoint(
                &format!("p{i}"),
                net,
                mac(10 + i),
                ip(10 + i),
            ))
            .unwrap()
        })
        .collect();
    let uplink = sw.add_port(PortConfig::unchecked("uplink", net)).unwrap();
    let mut w = Worker::new(sw.clone(), 0);
    let mut sink = CountTx::default();
    let cx = w.begin(0);
    for (i, &p) in ids.iter().enumerate() {
        let i = i as u32;
        let f = build::arp_request(mac(10 + i), ip(10 + i), ip(1));
        w.process(&cx, p, &VnetHdr::default(), &f, &mut sink);
    }
    for n in 0..extra_macs {
        let f = build::udp(
            mac(10),
            mac(0x0100_0000 + n),
            (ip(9), 1),
            (ip(10), 1),
            &[0; 18],
        );
        w.process(&cx, uplink, &VnetHdr::default(), &f, &mut sink);
    }
    // Pairs (i -> i+1): 64-byte UDP frames (18-byte payload).
    let traffic = (0..ports)
        .map(|i| {
            let j = (i + 1) % ports;
            let f = build::udp(
                mac(10 + j),
                mac(10 + i),
                (ip(10 + i), 5000),
                (ip(10 + j), 5001),
                &[0; 18],
            );
            assert_eq!(f.len(), 60);
            let mut frame = Frame([0; 64]);
            frame.0[..60].copy_from_slice(&f);
            (ids[i as usize], frame)
        })
        .unzip();
    Setup { sw, traffic }
}

/// Runs `iters` frames on each of `workers` threads; returns the wall time.
fn run(s: &Setup, workers: usize, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for wid in 0..workers {
            let sw = s.sw.clone();
            let traffic = &s.traffic;
            scope.spawn(move || {
                let mut w = Worker::new(sw, wid);
                let mut sink = CountTx::default();
                let (ports, frames) = traffic;
                let n = ports.len();
                // The next frame's index, wrapped by hand (a division per
                // frame would be the bench's cost, not the pipeline's).
                let mut k = (wid * 7) % n;
                let mut done = 0u64;
                while done < iters {
                    let cx = w.begin(1_000_000_000);
                    for _ in 0..BATCH {
                        let (p, f) = (ports[k], &frames[k]);
                        w.process(&cx, p, &VnetHdr::default(), &f.0, &mut sink);
                        k += 1;
                        if k == n {
                            k = 0;
                        }
                    }
                    done += BATCH as u64;
                }
                assert_eq!(sink.frames, done, "every frame forwarded once");
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_64B");
    g.measurement_time(Duration::from_secs(4));
    for (name, ports, extra, workers) in [
        ("2ports_1worker", 2, 0, 1),
        ("2ports_1worker_idle_hook", 2, 0, 1),
        ("2ports_2workers", 2, 0, 2),
        ("256ports_1worker", 256, 0, 1),
        ("fdb_1M_macs_1worker", 256, 1_000_000, 1),
    ] {
        let s = setup(ports, extra, workers);
        if name.ends_with("idle_hook") {
            s.sw.set_capture(Some(Arc::new(IdleHook {
                sessions: vec![u32::MAX],
            })));
        }
        g.throughput(Throughput::Elements(workers as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| run(&s, workers, iters.max(BATCH as u64)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
