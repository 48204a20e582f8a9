//! The overlay datapath between hosts, on real namespaces: two tapnet
//! dataplanes ("hosts" A and B, each in its own network namespace) joined
//! by an underlay (veths on a kernel bridge in a third namespace, H3),
//! containers (TAPs in namespaces) on each; ping, TCP and UDP across, ICC
//! off across, an isolated second overlay, a Linux kernel `vxlan` device
//! in H3 talking to tapnet containers, and an encrypted overlay (ESP)
//! whose underlay is captured to check nothing leaves in clear.
//!
//! Needs root (namespaces, raw sockets); otherwise it FAILS with a
//! message. Everything lives in namespaces the test creates (removed on
//! drop, even when the test fails); helper processes are killed by PID.
//!
//! The kernel here has no CONFIG_INET_ESP: interop of the ESP path with
//! the kernel's xfrm cannot be tested on this machine (the switch's unit
//! tests check the RFC 4106 test vectors instead).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tapnet::dataplane::{
    Dataplane, DataplaneConfig, DataplaneError, EspKey, NetworkSpec, OverlaySpec, PortSpec,
    RemoteEndpoint, VtepConfig,
};
use tapnet::sandbox::{self, NetTarget, TapConfig};
use tapnet_switch::DropReason;

fn require_root() {
    sandbox::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_tapnet")));
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, veths, a kernel vxlan device, raw sockets)"
    );
}

fn run(cmd: &str) -> (i32, String) {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), s)
}

fn must(cmd: &str) {
    let (rc, out) = run(cmd);
    assert_eq!(rc, 0, "{cmd}: {out}");
}

/// Named network namespaces, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> String {
        must(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = run(&format!("ip netns del {n}"));
        }
    }
}

/// A helper process, killed by its PID (and reaped) on drop.
struct Pid(std::process::Child);

impl Drop for Pid {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// Starts `cmd` in namespace `ns` in the background (`ip netns exec`
/// execs it: the PID is the command's).
fn spawn_in(ns: &str, cmd: &str) -> Pid {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    Pid(child)
}

fn exec(ns: &str, script: &str) -> i32 {
    run(&format!("ip netns exec {ns} sh -c '{script}'")).0
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes belong there).
fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let fd = tapnet::sys::ns::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        tapnet::sys::ns::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET, "net").expect("setns");
        f()
    })
    .join()
    .unwrap()
}

fn start(ns: &str, vtep: SocketAddr) -> Dataplane {
    in_ns(ns, move || {
        Dataplane::start_with(DataplaneConfig {
            workers: 2,
            vtep: Some(VtepConfig::new(vtep)),
            ..Default::default()
        })
        .expect("start dataplane")
    })
}

struct Net {
    id: u32,
    name: &'static str,
    subnet: &'static str,
    vni: u32,
    icc: bool,
    encrypted: bool,
}

fn add_net(dp: &Dataplane, n: &Net) -> Result<(), DataplaneError> {
    let subnet: ipnet::Ipv4Net = n.subnet.parse().unwrap();
    let gw = subnet.hosts().next().unwrap();
    dp.add_network(
        n.id,
        NetworkSpec {
            name: n.name.into(),
            subnet,
            gateway: gw,
            icc: n.icc,
            mtu: 1450,
            internal: false,
            masquerade: false,
            dns: true,
            overlay: Some(OverlaySpec {
                vni: n.vni,
                encrypted: n.encrypted,
            }),
            v6: None,
        },
    )
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0x42, 0x0a, 0x12, 0x00, n]
}

struct Ctr {
    ns: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
    port: u32,
}

/// A container: namespace `ns` with eth0 (MTU 1450) on network `net`.
fn container(
    nss: &mut Namespaces,
    dp: &Dataplane,
    name: String,
    net: &Net,
    ip: &str,
    m: u8,
) -> Ctr {
    let ns = nss.add(name);
    let subnet: ipnet::Ipv4Net = net.subnet.parse().unwrap();
    let ip: Ipv4Addr = ip.parse().unwrap();
    let mut fds = sandbox::create_taps(
        &NetTarget::Path(format!("/run/netns/{ns}").into()),
        &[TapConfig {
            name: "eth0".into(),
            mac: mac(m),
            mtu: 1450,
            addr: Some(ipnet::Ipv4Net::new(ip, subnet.prefix_len()).unwrap()),
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
    )
    .expect("create tap");
    let port = dp
        .add_port(
            PortSpec {
                name: format!("{ns}/eth0"),
                network: net.id,
                mac: Some(mac(m)),
                ip: Some(ip),
                ip6: None,
                link_local6: None,
            },
            fds.remove(0),
        )
        .expect("add port");
    Ctr {
        ns,
        mac: mac(m),
        ip,
        port,
    }
}

/// Tells `dp` about container `c` behind `vtep`, and makes `vtep` a peer.
fn remote(dp: &Dataplane, net: u32, c: &Ctr, vtep: SocketAddr) {
    dp.add_remote_endpoint(
        net,
        RemoteEndpoint {
            mac: c.mac,
            ipv4: c.ip,
            ipv6: None,
            vtep,
        },
    )
    .expect("remote endpoint");
    dp.set_peers(net, &[vtep]).expect("peers");
}

fn tunnel_drops(dp: &Dataplane, r: DropReason) -> u64 {
    let t = dp.tunnel_stats().expect("tunnel stats");
    t.total.drop_count(r) + t.peers.iter().map(|p| p.stats.drop_count(r)).sum::<u64>()
}

/// Counts, on every interface of a namespace, UDP frames to the VXLAN
/// port carrying VNI `vni` and ESP frames (AF_PACKET, all protocols).
struct Capture {
    stop: Arc<AtomicBool>,
    vxlan: Arc<AtomicU64>,
    esp: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &str, vni: u32) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let vxlan = Arc::new(AtomicU64::new(0));
        let esp = Arc::new(AtomicU64::new(0));
        let (s2, v2, e2) = (stop.clone(), vxlan.clone(), esp.clone());
        let sock = in_ns(ns, || {
            let p = socket2::Protocol::from(i32::from((libc::ETH_P_ALL as u16).to_be()));
            socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, Some(p))
                .expect("AF_PACKET socket")
        });
        sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                let Ok(n) = (&sock).read(&mut buf) else {
                    continue;
                };
                let f = &buf[..n];
                if n < 34 || f[12..14] != [0x08, 0x00] {
                    continue;
                }
                let ihl = usize::from(f[14] & 0x0f) * 4;
                match f[23] {
                    50 => {
                        e2.fetch_add(1, Ordering::Relaxed);
                    }
                    17 if n >= 14 + ihl + 16 => {
                        let u = &f[14 + ihl..];
                        let dport = u16::from_be_bytes([u[2], u[3]]);
                        let v = u32::from_be_bytes([0, u[12], u[13], u[14]]);
                        if dport == 4789 && v == vni {
                            v2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        });
        Capture {
            stop,
            vxlan,
            esp,
            thread: Some(thread),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn overlay_across_hosts_kernel_vxlan_and_esp() {
    require_root();
    let tag = format!("tn18v{}", std::process::id() % 100000);
    let mut nss = Namespaces(Vec::new());
    let (h1, h2, h3) = (
        nss.add(format!("{tag}h1")),
        nss.add(format!("{tag}h2")),
        nss.add(format!("{tag}h3")),
    );
    // Underlay: H3 bridges H1 and H2 (and has an address of its own).
    must(&format!(
        "ip -n {h3} link add br0 type bridge && ip -n {h3} link set br0 up && \
         ip -n {h3} addr add 10.201.0.3/24 dev br0 && \
         ip -n {h3} link add v1 type veth peer name u1 netns {h1} && \
         ip -n {h3} link add v2 type veth peer name u2 netns {h2} && \
         ip -n {h3} link set v1 master br0 up && ip -n {h3} link set v2 master br0 up && \
         ip -n {h1} addr add 10.201.0.1/24 dev u1 && ip -n {h1} link set u1 up && \
         ip -n {h2} addr add 10.201.0.2/24 dev u2 && ip -n {h2} link set u2 up"
    ));
    let va: SocketAddr = "10.201.0.1:4789".parse().unwrap();
    let vb: SocketAddr = "10.201.0.2:4789".parse().unwrap();
    let a = start(&h1, va);
    let b = start(&h2, vb);
    assert_eq!(a.vtep_addr(), Some(va));

    let ov = Net {
        id: 1,
        name: "ov",
        subnet: "10.210.0.0/24",
        vni: 4242,
        icc: true,
        encrypted: false,
    };
    // Same subnet, another VNI: must stay apart.
    let ov2 = Net {
        id: 2,
        name: "ov2",
        subnet: "10.210.0.0/24",
        vni: 4243,
        icc: true,
        encrypted: false,
    };
    let oicc = Net {
        id: 3,
        name: "ovicc",
        subnet: "10.212.0.0/24",
        vni: 4244,
        icc: false,
        encrypted: false,
    };
    let oenc = Net {
        id: 4,
        name: "ovenc",
        subnet: "10.213.0.0/24",
        vni: 4245,
        icc: true,
        encrypted: true,
    };
    for n in [&ov, &ov2, &oicc, &oenc] {
        add_net(&a, n).expect("add network on A");
        add_net(&b, n).expect("add network on B");
    }
    let a1 = container(&mut nss, &a, format!("{tag}a1"), &ov, "10.210.0.2", 1);
    let b1 = container(&mut nss, &b, format!("{tag}b1"), &ov, "10.210.0.3", 2);
    let a2 = container(&mut nss, &a, format!("{tag}a2"), &ov2, "10.210.0.9", 3);
    let a3 = container(&mut nss, &a, format!("{tag}a3"), &oicc, "10.212.0.2", 4);
    let b3 = container(&mut nss, &b, format!("{tag}b3"), &oicc, "10.212.0.3", 5);
    let a4 = container(&mut nss, &a, format!("{tag}a4"), &oenc, "10.213.0.2", 6);
    let b4 = container(&mut nss, &b, format!("{tag}b4"), &oenc, "10.213.0.3", 7);
    remote(&a, 1, &b1, vb);
    remote(&b, 1, &a1, va);
    remote(&a, 3, &b3, vb);
    remote(&b, 3, &a3, va);
    remote(&a, 4, &b4, vb);
    remote(&b, 4, &a4, va);
    // ov2 on B has a peer too (flooding would reach it if VNIs mixed).
    b.set_peers(2, &[va]).unwrap();

    // Ping both ways (proxy ARP answers locally), and a large one
    // (fragments of 1450-byte frames).
    assert_eq!(
        exec(&a1.ns, "ping -c 2 -W 2 10.210.0.3 >/dev/null"),
        0,
        "a1 -> b1"
    );
    assert_eq!(
        exec(&b1.ns, "ping -c 1 -W 2 10.210.0.2 >/dev/null"),
        0,
        "b1 -> a1"
    );
    assert_eq!(
        exec(&a1.ns, "ping -c 1 -W 2 10.210.0.1 >/dev/null"),
        0,
        "gateway"
    );
    assert_eq!(
        exec(&a1.ns, "ping -c 1 -W 2 -s 4000 10.210.0.3 >/dev/null"),
        0,
        "big ping"
    );

    // TCP: b1 serves 4 MiB, a1 fetches it (TSO frames segmented).
    let www = std::env::temp_dir().join(format!("{tag}-www"));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("blob"), vec![7u8; 4 << 20]).unwrap();
    let w = www.display().to_string();
    let _httpd_b1 = spawn_in(&b1.ns, &format!("busybox httpd -f -p 8080 -h {w}"));
    let _httpd_b4 = spawn_in(&b4.ns, &format!("busybox httpd -f -p 8080 -h {w}"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let fetch = |ns: &str, url: &str, n: usize| {
        exec(
            ns,
            &format!("n=$(curl -sS -m 20 {url} | wc -c); [ \"$n\" = {n} ]"),
        )
    };
    assert_eq!(
        fetch(&a1.ns, "http://10.210.0.3:8080/blob", 4 << 20),
        0,
        "TCP a1 <- b1: {:?} {:?}",
        a.tunnel_stats(),
        b.tunnel_stats()
    );

    // UDP: a datagram to b1 and its echo back.
    let _echo = spawn_in(
        &b1.ns,
        "python3 -c \"import socket;s=socket.socket(2,2);s.bind(('10.210.0.3',9999));\
         [s.sendto(d[::-1],a) for d,a in iter(lambda: s.recvfrom(2000),None)]\"",
    );
    let udp = exec(
        &a1.ns,
        "python3 -c \"import socket,sys;s=socket.socket(2,2);s.settimeout(0.5)
ok=False
for i in range(10):
    s.sendto(b\\\"hello\\\",(\\\"10.210.0.3\\\",9999))
    try: ok=s.recvfrom(100)[0]==b\\\"olleh\\\"; break
    except Exception: pass
sys.exit(0 if ok else 1)\"",
    );
    assert_eq!(udp, 0, "UDP a1 <-> b1");

    // The isolated overlay (same subnet, other VNI) does not reach b1.
    assert_ne!(
        exec(&a2.ns, "ping -c 1 -W 1 10.210.0.3 >/dev/null 2>&1"),
        0,
        "ov2 -> ov"
    );

    // ICC off across hosts.
    assert_ne!(
        exec(&a3.ns, "ping -c 1 -W 1 10.212.0.3 >/dev/null 2>&1"),
        0,
        "icc off"
    );
    let st = a.port_stats(a3.port).unwrap();
    assert!(st.drop_count(DropReason::IccDisabled) >= 1, "{st:?}");
    let _ = &b3;

    // A Linux kernel vxlan device in H3 on VNI 4242, flooding to A and B.
    must(&format!(
        "ip -n {h3} link add vx0 type vxlan id 4242 dstport 4789 local 10.201.0.3 nolearning && \
         ip -n {h3} link set vx0 mtu 1450 up && ip -n {h3} addr add 10.210.0.50/24 dev vx0 && \
         bridge -n {h3} fdb append 00:00:00:00:00:00 dev vx0 dst 10.201.0.1 && \
         bridge -n {h3} fdb append 00:00:00:00:00:00 dev vx0 dst 10.201.0.2"
    ));
    assert_eq!(
        exec(&h3, "ping -c 2 -W 2 10.210.0.2 >/dev/null"),
        0,
        "kernel -> a1"
    );
    assert_eq!(
        exec(&a1.ns, "ping -c 1 -W 2 10.210.0.50 >/dev/null"),
        0,
        "a1 -> kernel"
    );
    assert_eq!(
        fetch(&h3, "http://10.210.0.3:8080/blob", 4 << 20),
        0,
        "TCP kernel <- b1: {:?}",
        b.tunnel_stats()
    );
    std::fs::write(www.join("small"), vec![1u8; 1 << 20]).unwrap();
    let _httpd_k = spawn_in(&h3, &format!("busybox httpd -f -p 8081 -h {w}"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        fetch(&a1.ns, "http://10.210.0.50:8081/small", 1 << 20),
        0,
        "TCP a1 <- kernel"
    );
    let t = a.tunnel_stats().unwrap();
    assert!(
        t.peers
            .iter()
            .any(|p| p.learned && p.vtep == "10.201.0.3:4789".parse::<SocketAddr>().unwrap()),
        "kernel VTEP learned: {t:?}"
    );

    // Encrypted overlay: no key yet, nothing leaves (counted).
    let cap = Capture::start(&h3, 4245);
    assert_ne!(
        exec(&a4.ns, "ping -c 1 -W 1 10.213.0.3 >/dev/null 2>&1"),
        0,
        "no keys"
    );
    assert!(tunnel_drops(&a, DropReason::EspNoKey) >= 1);
    let k = |b: u8| EspKey {
        spi: 0x1000_0001,
        key: [b; 20],
    };
    a.set_esp_keys(4, &[k(1)], 0x1000_0001).unwrap();
    b.set_esp_keys(4, &[k(1)], 0x1000_0001).unwrap();
    assert_eq!(
        exec(&a4.ns, "ping -c 2 -W 2 10.213.0.3 >/dev/null"),
        0,
        "ESP ping"
    );
    assert_eq!(
        fetch(&a4.ns, "http://10.213.0.3:8080/blob", 4 << 20),
        0,
        "TCP over ESP: {:?}",
        b.tunnel_stats()
    );
    // A wrong key on B: dropped and counted.
    b.set_esp_keys(4, &[k(2)], 0x1000_0001).unwrap();
    assert_ne!(
        exec(&a4.ns, "ping -c 1 -W 1 10.213.0.3 >/dev/null 2>&1"),
        0,
        "wrong key"
    );
    assert!(
        tunnel_drops(&b, DropReason::EspAuthFailed) >= 1,
        "{:?}",
        b.tunnel_stats()
    );
    let (esp, clear) = (
        cap.esp.load(Ordering::Relaxed),
        cap.vxlan.load(Ordering::Relaxed),
    );
    drop(cap);
    assert!(esp > 100, "ESP on the underlay: {esp}");
    assert_eq!(
        clear, 0,
        "plain VXLAN of the encrypted network on the underlay"
    );

    // Refusals: no VTEP, no ESP socket, a taken port.
    let plain = Dataplane::start(1).unwrap();
    assert!(matches!(add_net(&plain, &ov), Err(DataplaneError::NoVtep)));
    plain.shutdown();
    let noesp = in_ns(&h1, || {
        let mut c = VtepConfig::new("10.201.0.1:4790".parse().unwrap());
        c.esp = false;
        Dataplane::start_with(DataplaneConfig {
            vtep: Some(c),
            ..Default::default()
        })
        .unwrap()
    });
    assert!(matches!(
        add_net(&noesp, &oenc),
        Err(DataplaneError::EncryptionUnavailable(_))
    ));
    noesp.shutdown();
    let taken = in_ns(&h1, move || {
        Dataplane::start_with(DataplaneConfig {
            vtep: Some(VtepConfig::new(va)),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
    });
    assert!(
        taken
            .as_deref()
            .is_some_and(|e| e.contains("cannot bind the VXLAN socket")),
        "{taken:?}"
    );

    eprintln!("A: {}", a.tunnel_stats_json());
    eprintln!("B: {}", b.tunnel_stats_json());
    eprintln!("underlay: {esp} ESP frames, {clear} plain VXLAN of VNI 4245");
    let _ = std::fs::remove_dir_all(&www);
    a.shutdown();
    b.shutdown();
}
