//! The live dataplane on real TAPs: two sandboxes on one network, a third
//! on another, a fourth with ICC off; ping, TCP, isolation, counters.
//!
//! Needs root (or unprivileged user namespaces with /dev/net/tun 0666);
//! otherwise it FAILS with a message. Everything lives in namespaces the
//! test creates; sandbox processes are killed by PID on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tapnet::dataplane::{Dataplane, NetworkSpec, PortSpec};
use tapnet::sandbox::{self, NetMode, NetTarget, Running, Sandbox, SandboxSpec, Stdio, TapConfig};
use tapnet_switch::DropReason;

/// Counts the bytes the egress capture hook sees on one port.
struct Egress {
    port: tapnet_switch::PortId,
    bytes: AtomicU64,
}

impl tapnet_switch::CaptureHook for Egress {
    fn on_egress(&self, port: &tapnet_switch::Port, _: &tapnet_switch::wire::VnetHdr, f: &[u8]) {
        if port.id == self.port {
            self.bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
        }
    }
}

fn require_privileges() {
    sandbox::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_tapnet")));
    let root = nix::unistd::geteuid().is_root();
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    assert!(
        root || userns,
        "this test needs root or unprivileged user namespaces (and /dev/net/tun mode 0666)"
    );
}

/// A sandbox running `sleep`, killed by PID on drop.
struct Box_ {
    pid: i32,
    _run: Option<Running>,
}

impl Drop for Box_ {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if let Some(r) = self._run.take() {
            let _ = r.wait();
        }
    }
}

fn sandbox(name: &str) -> Box_ {
    let sb = Sandbox::spawn(&SandboxSpec {
        hostname: name.into(),
        net: NetMode::New,
        files: vec![],
        hide: vec![],
        env: vec![],
        cmd: vec!["sleep".into(), "600".into()],
        stdio: Stdio::Inherit,
    })
    .expect("spawn sandbox");
    let pid = sb.pid;
    let run = sb.start().expect("start sandbox");
    Box_ {
        pid,
        _run: Some(run),
    }
}

fn mac(last: u8) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x00, 0x01, last]
}

/// Creates eth0 in `b` on `net` and plugs it into the dataplane.
fn plug(
    dp: &Dataplane,
    b: &Box_,
    net: u32,
    subnet: &str,
    gw: Ipv4Addr,
    ip: Ipv4Addr,
    m: u8,
) -> u32 {
    let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
    let mut fds = sandbox::create_taps(
        &NetTarget::Pid(b.pid),
        &[TapConfig {
            name: "eth0".into(),
            mac: mac(m),
            mtu: 1500,
            addr: Some(ipnet::Ipv4Net::new(ip, subnet.prefix_len()).unwrap()),
            default_gateway: Some(gw),
            addr6: None,
            default_gateway6: None,
            dns_route: None,
            noarp: false,
            default_dev: false,
            default_dev6: false,
            link_local6: None,
        }],
        dp.workers(),
    )
    .expect("create tap");
    dp.add_port(
        PortSpec {
            name: format!("p{m}"),
            network: net,
            mac: Some(mac(m)),
            ip: Some(ip),
            ip6: None,
            link_local6: None,
        },
        fds.remove(0),
    )
    .expect("add port")
}

fn sh(b: &Box_, script: &str) -> i32 {
    sandbox::exec_in(b.pid, &["sh".into(), "-c".into(), script.into()], &[]).expect("exec")
}

fn net(dp: &Dataplane, id: u32, name: &str, subnet: &str, gw: Ipv4Addr, icc: bool) {
    dp.add_network(
        id,
        NetworkSpec {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            gateway: gw,
            icc,
            mtu: 1500,
            internal: false,
            masquerade: true,
            dns: true,
            overlay: None,
            v6: None,
        },
    )
    .expect("add network");
}

#[test]
fn containers_talk_through_the_switch() {
    require_privileges();
    let dp = Dataplane::start(2).expect("start dataplane");
    let gw1 = Ipv4Addr::new(10, 97, 0, 1);
    let gw2 = Ipv4Addr::new(10, 98, 0, 1);
    let gw3 = Ipv4Addr::new(10, 99, 0, 1);
    net(&dp, 1, "n1", "10.97.0.0/24", gw1, true);
    net(&dp, 2, "n2", "10.98.0.0/24", gw2, true);
    net(&dp, 3, "n3", "10.99.0.0/24", gw3, false);
    let (a, b, c) = (sandbox("a"), sandbox("b"), sandbox("c"));
    let (d, e) = (sandbox("d"), sandbox("e"));
    let pa = plug(
        &dp,
        &a,
        1,
        "10.97.0.0/24",
        gw1,
        Ipv4Addr::new(10, 97, 0, 2),
        2,
    );
    let _pb = plug(
        &dp,
        &b,
        1,
        "10.97.0.0/24",
        gw1,
        Ipv4Addr::new(10, 97, 0, 3),
        3,
    );
    let _pc = plug(
        &dp,
        &c,
        2,
        "10.98.0.0/24",
        gw2,
        Ipv4Addr::new(10, 98, 0, 2),
        4,
    );
    let pd = plug(
        &dp,
        &d,
        3,
        "10.99.0.0/24",
        gw3,
        Ipv4Addr::new(10, 99, 0, 2),
        5,
    );
    let _pe = plug(
        &dp,
        &e,
        3,
        "10.99.0.0/24",
        gw3,
        Ipv4Addr::new(10, 99, 0, 3),
        6,
    );

    // Same network: ping both ways, and the gateway answers.
    assert_eq!(sh(&a, "ping -c 2 -W 2 10.97.0.3 >/dev/null"), 0, "a -> b");
    assert_eq!(sh(&b, "ping -c 1 -W 2 10.97.0.2 >/dev/null"), 0, "b -> a");
    assert_eq!(
        sh(&a, "ping -c 1 -W 2 10.97.0.1 >/dev/null"),
        0,
        "a -> gateway"
    );
    // A large ping crosses too (fragmented at 1500).
    assert_eq!(
        sh(&a, "ping -c 1 -W 2 -s 4000 10.97.0.3 >/dev/null"),
        0,
        "big ping"
    );

    // TCP: b serves 4 MiB over HTTP, a fetches it.
    let pb = _pb;
    let www = std::env::temp_dir().join(format!("tapnet-dp-www-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("blob"), vec![7u8; 4 << 20]).unwrap();
    let w = www.display();
    // Foreground httpd backgrounded by the shell, its PID in a file: it is
    // killed by PID below (a daemonized one would outlive the sandbox).
    assert_eq!(
        sh(
            &b,
            &format!("busybox httpd -f -p 8080 -h {w} >/dev/null 2>&1 & echo $! > {w}/pid")
        ),
        0,
        "httpd"
    );
    let httpd: i32 = std::fs::read_to_string(www.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ok = sh(
        &a,
        "n=$(curl -sS -m 10 http://10.97.0.3:8080/blob | wc -c); [ \"$n\" = 4194304 ]",
    );
    // Eight at once: flows on both workers' queues, each written on its
    // home worker's queue (flow placement), whichever worker sends it.
    let many = sh(
        &a,
        &format!(
            "for i in 1 2 3 4 5 6 7 8; do \
               (curl -sS -m 20 http://10.97.0.3:8080/blob | wc -c > {w}/n$i) & \
             done; wait; \
             for i in 1 2 3 4 5 6 7 8; do [ \"$(cat {w}/n$i)\" = 4194304 ] || exit 1; done"
        ),
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(httpd),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = std::fs::remove_dir_all(&www);
    assert_eq!(
        ok,
        0,
        "TCP exchange: a {:?} b {:?}",
        dp.port_stats(pa),
        dp.port_stats(pb)
    );
    assert_eq!(
        many,
        0,
        "eight TCP exchanges at once: a {:?} b {:?}",
        dp.port_stats(pa),
        dp.port_stats(pb)
    );

    // Other network: not reachable (no route between networks).
    assert_ne!(
        sh(&a, "ping -c 1 -W 1 10.98.0.2 >/dev/null 2>&1"),
        0,
        "a -> c must fail"
    );
    assert_eq!(
        sh(&c, "ping -c 1 -W 2 10.98.0.1 >/dev/null"),
        0,
        "c -> its gateway"
    );

    // ICC off: containers cannot talk, the gateway still answers.
    assert_ne!(
        sh(&d, "ping -c 1 -W 1 10.99.0.3 >/dev/null 2>&1"),
        0,
        "icc off"
    );
    assert_eq!(
        sh(&d, "ping -c 1 -W 2 10.99.0.1 >/dev/null"),
        0,
        "icc off: gateway"
    );
    let st = dp.port_stats(pd).unwrap();
    assert!(st.drop_count(DropReason::IccDisabled) >= 1, "{st:?}");

    // Counters moved.
    let st = dp.port_stats(pa).unwrap();
    assert!(st.rx_packets > 0 && st.tx_packets > 0, "{st:?}");

    // The NAT's frames leave through the port's transmit stage: 1 MiB from
    // this process's loopback (through the gateway address) shows in a's
    // tx counters and in the egress capture hook.
    let seen = Arc::new(Egress {
        port: tapnet_switch::PortId(pa),
        bytes: AtomicU64::new(0),
    });
    dp.switch().set_capture(Some(seen.clone()));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    let srv = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = l.accept().unwrap();
        let mut req = [0u8; 512];
        let _ = s.read(&mut req);
        let body = vec![b'n'; 1 << 20];
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(&body);
    });
    let before = dp.port_stats(pa).unwrap().tx_bytes;
    let ok = sh(
        &a,
        &format!("n=$(curl -sS -m 10 http://10.97.0.1:{lport}/ | wc -c); [ \"$n\" = 1048576 ]"),
    );
    let _ = srv.join();
    let st = dp.port_stats(pa).unwrap();
    assert_eq!(ok, 0, "through the NAT: {st:?}");
    assert!(
        st.tx_bytes - before >= 1 << 20,
        "NAT frames not counted: {st:?}"
    );
    assert!(
        seen.bytes.load(Ordering::Relaxed) >= 1 << 20,
        "NAT frames not captured: {}",
        seen.bytes.load(Ordering::Relaxed)
    );
    dp.switch().set_capture(None);

    dp.remove_port(pa).expect("remove port");
    assert_ne!(
        sh(&a, "ping -c 1 -W 1 10.97.0.3 >/dev/null 2>&1"),
        0,
        "port removed"
    );
    dp.shutdown();
}
