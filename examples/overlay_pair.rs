//! Two tapnet dataplanes joined by the VXLAN overlay, for `bench/overlay.sh`
//! (the daemon's overlay wiring is the control plane's; this builds the
//! dataplanes directly).
//!
//! usage: overlay_pair H1NS VTEP1 H2NS VTEP2 C1NS C2NS [--encrypted]
//!
//! Starts one dataplane in named network namespace H1NS with its VTEP on
//! VTEP1 (IP:PORT) and one in H2NS on VTEP2; makes the overlay network
//! 10.210.0.0/24 (VNI 4242, MTU 1450) on both; creates eth0 in container
//! namespaces C1NS (10.210.0.2, on host 1) and C2NS (10.210.0.3, on host
//! 2); registers each container on the other host and the peers; with
//! `--encrypted`, the network is ESP-encrypted with one shared key. Prints
//! `ready` and runs until its standard input closes, then prints the
//! tunnel counters of both hosts (JSON) on stderr.
//! The tapnet binary (for TAP creation) is `TAPNET`, else
//! `target/release/tapnet` next to this example.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use tapnet::dataplane::{
    Dataplane, DataplaneConfig, EspKey, NetworkSpec, OverlaySpec, PortSpec, RemoteEndpoint,
    VtepConfig,
};
use tapnet::sandbox::{self, NetTarget, TapConfig};

fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let fd = tapnet::sys::ns::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        tapnet::sys::ns::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET, "net").expect("setns");
        f()
    })
    .join()
    .unwrap()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        anyhow::bail!("usage: overlay_pair H1NS VTEP1 H2NS VTEP2 C1NS C2NS [--encrypted]");
    }
    let encrypted = args.iter().any(|a| a == "--encrypted");
    let exe = match std::env::var_os("TAPNET") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .map(|p| p.join("tapnet"))
            .ok_or_else(|| anyhow::anyhow!("set TAPNET"))?,
    };
    sandbox::set_helper_exe(exe);
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let vteps: [SocketAddr; 2] = [args[1].parse()?, args[3].parse()?];
    let hosts = [args[0].clone(), args[2].clone()];
    let ctrs = [args[4].clone(), args[5].clone()];
    let ips = [Ipv4Addr::new(10, 210, 0, 2), Ipv4Addr::new(10, 210, 0, 3)];
    let macs = [[2, 0x42, 10, 210, 0, 2], [2, 0x42, 10, 210, 0, 3]];
    let subnet: ipnet::Ipv4Net = "10.210.0.0/24".parse()?;
    let mut dps = Vec::new();
    for i in 0..2 {
        let v = vteps[i];
        let dp = in_ns(&hosts[i], move || {
            Dataplane::start_with(DataplaneConfig {
                workers,
                vtep: Some(VtepConfig::new(v)),
                ..Default::default()
            })
        })?;
        dp.add_network(
            1,
            NetworkSpec {
                name: "ov".into(),
                subnet,
                gateway: Ipv4Addr::new(10, 210, 0, 1),
                icc: true,
                mtu: 1450,
                internal: false,
                masquerade: false,
                dns: true,
                overlay: Some(OverlaySpec {
                    vni: 4242,
                    encrypted,
                }),
                v6: None,
            },
        )?;
        let mut fds = sandbox::create_taps(
            &NetTarget::Path(format!("/run/netns/{}", ctrs[i]).into()),
            &[TapConfig {
                name: "eth0".into(),
                mac: macs[i],
                mtu: 1450,
                addr: Some(ipnet::Ipv4Net::new(ips[i], 24)?),
                default_gateway: None,
                addr6: None,
                default_gateway6: None,
                dns_route: None,
                noarp: false,
                default_dev: false,
                default_dev6: false,
                link_local6: None,
            }],
            dp.workers(),
        )?;
        dp.add_port(
            PortSpec {
                name: format!("c{i}"),
                network: 1,
                mac: Some(macs[i]),
                ip: Some(ips[i]),
                ip6: None,
                link_local6: None,
            },
            fds.remove(0),
        )?;
        if encrypted {
            let k = EspKey {
                spi: 0x4242_0001,
                key: [0x5a; 20],
            };
            dp.set_esp_keys(1, &[k], k.spi)?;
        }
        dps.push(dp);
    }
    for (i, dp) in dps.iter().enumerate() {
        let o = 1 - i;
        dp.add_remote_endpoint(
            1,
            RemoteEndpoint {
                mac: macs[o],
                ipv4: ips[o],
                ipv6: None,
                vtep: vteps[o],
            },
        )?;
        dp.set_peers(1, &[vteps[o]])?;
    }
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    for (i, dp) in dps.iter().enumerate() {
        eprintln!("host{}: {}", i + 1, dp.tunnel_stats_json());
        dp.shutdown();
    }
    Ok(())
}
