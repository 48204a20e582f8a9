//! Overlay networks across tapnet hosts (issue 18), end to end: hosts are
//! namespaces on an underlay the test makes, each with its own daemon;
//! etcd runs in its own namespace on it (`overlay_support`). Containers on
//! different hosts talk over VXLAN (and ESP with `-o encrypted`) through
//! tapnet's switch; names come from the cluster's state; leases, etcd
//! outages and restarts behave as the issue says. Root only.

mod ctl_support;
mod overlay_support;

use std::time::Duration;

use ctl_support::*;
use overlay_support::*;

/// `sh -c SCRIPT` in container `c` on `d` succeeds.
fn works(d: &Daemon, c: &str, script: &str) -> bool {
    d.exec_sh(c, script).code == 0
}

#[test]
fn containers_on_two_hosts_share_an_overlay() {
    let u = Underlay::new();
    let _etcd = Etcd::start(&u);
    let h1 = host(&u, 1, &[]);
    let h2 = host(&u, 2, &[]);

    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.120.0.0/24",
        "ov",
    ]);
    // Created on every host: global scope, the VNI shown.
    eventually(&h2, "ov on host 2", 10, || {
        h2.network_names().contains(&"ov".to_string())
    });
    let v = h2.inspect_network("ov");
    assert_eq!(v["Scope"], "global");
    assert_eq!(v["Driver"], "overlay");
    assert_eq!(
        v["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );
    assert_eq!(v["Options"]["com.docker.network.driver.mtu"], "1450");
    let e = h2.fails(&["network", "create", "-d", "overlay", "ov"]);
    assert!(e.contains("already exists"), "{e}");

    h1.sleeper("a1", &["ov"], &["--network-alias", "alpha"]);
    h2.sleeper("b1", &["ov"], &[]);
    assert!(!h2.ip_of("b1", "ov").is_empty());
    assert_ne!(h1.ip_of("a1", "ov"), h2.ip_of("b1", "ov"));
    // ARP answered locally, ping, names and aliases across hosts.
    eventually(&h1, "a1 reaching b1 by name", 15, || {
        works(&h1, "a1", "ping -c1 -W1 b1")
    });
    assert!(works(&h2, "b1", "ping -c2 -W2 alpha"), "{}", h2.log());
    // TCP across (a few MiB: TSO super-frames segmented before the tunnel)
    // and UDP.
    h2.ok(&["exec", "b1", "--", "sh", "-c", "mkdir -p /tmp/w && head -c 4194304 /dev/zero > /tmp/w/big && (busybox httpd -f -p 8080 -h /tmp/w &)"]);
    retry("HTTP across hosts", Duration::from_secs(10), || {
        let o = h1.exec_sh("a1", "curl -s -m 10 http://b1:8080/big | wc -c");
        (o.stdout.trim() == "4194304")
            .then_some(())
            .ok_or(format!("{o:?}"))
    });
    h2.ok(&[
        "exec",
        "b1",
        "--",
        "sh",
        "-c",
        "(busybox nc -u -l -p 9000 > /tmp/w/udp &)",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    h1.exec_sh("a1", "echo hello-udp | busybox nc -u -w1 b1 9000");
    retry("UDP across hosts", Duration::from_secs(5), || {
        let o = h2.exec_sh("b1", "cat /tmp/w/udp");
        o.stdout.contains("hello-udp").then_some(()).ok_or(o.stdout)
    });

    // Isolation: another overlay, and a bridge network, are not reached.
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.121.0.0/24",
        "other",
    ]);
    eventually(&h2, "other on host 2", 10, || {
        h2.network_names().contains(&"other".to_string())
    });
    h2.sleeper("c1", &["other"], &[]);
    let c1 = h2.ip_of("c1", "other");
    assert!(!works(&h1, "a1", &format!("ping -c1 -W1 {c1}")));
    assert!(!works(&h1, "a1", "getent hosts c1"));
    h1.ok(&["network", "create", "--subnet", "10.122.0.0/24", "br"]);
    h1.sleeper("d1", &["br"], &[]);
    let d1 = h1.ip_of("d1", "br");
    assert!(!works(&h2, "b1", &format!("ping -c1 -W1 {d1}")));

    // ICC off on an overlay, across hosts: no IP between containers, the
    // gateway still answers.
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.123.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "quiet",
    ]);
    eventually(&h2, "quiet on host 2", 10, || {
        h2.network_names().contains(&"quiet".to_string())
    });
    h1.sleeper("q1", &["quiet"], &[]);
    h2.sleeper("q2", &["quiet"], &[]);
    let q1 = h1.ip_of("q1", "quiet");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!works(&h2, "q2", &format!("ping -c1 -W1 {q1}")));
    assert!(works(&h2, "q2", "ping -c1 -W1 10.123.0.1"));

    // rm is refused while any host has an endpoint; a non-attachable
    // overlay refuses containers with Docker's message.
    let e = h1.fails(&["network", "rm", "ov"]);
    assert!(e.contains("endpoints"), "{e}");
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable=false",
        "fixed",
    ]);
    let e = h1.fails(&["run", "-d", "--network", "fixed", "--", "sleep", "60"]);
    assert!(e.contains("not manually attachable"), "{e}");

    // Addresses are never handed out twice, even at the same moment.
    let runs: Vec<_> = [(&h1, "x"), (&h2, "y")]
        .into_iter()
        .flat_map(|(h, p)| (0..5).map(move |i| (h, format!("{p}{i}"))))
        .collect();
    std::thread::scope(|s| {
        for (h, name) in &runs {
            s.spawn(move || h.sleeper(name, &["ov"], &[]));
        }
    });
    let mut ips: Vec<String> = runs.iter().map(|(h, n)| h.ip_of(n, "ov")).collect();
    ips.push(h1.ip_of("a1", "ov"));
    ips.push(h2.ip_of("b1", "ov"));
    let all = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), all, "{ips:?}");
}

#[test]
fn a_host_without_a_cluster_store_refuses_overlays() {
    let d = Daemon::start();
    let e = d.fails(&["network", "create", "-d", "overlay", "x"]);
    assert!(e.contains("--cluster-store"), "{e}");
    let o = d.tapnet(&["daemon", "--cluster-store", "etcd://10.0.0.1:2379"]);
    assert!(
        o.code != 0 && o.stderr.contains("--advertise-addr"),
        "{o:?}"
    );
    let o = d.tapnet(&[
        "daemon",
        "--cluster-store",
        "consul://x:1",
        "--advertise-addr",
        "10.0.0.1",
    ]);
    assert!(o.code != 0 && o.stderr.contains("etcd://"), "{o:?}");
}

#[test]
fn leases_outages_and_restarts() {
    let u = Underlay::new();
    let etcd = Etcd::start(&u);
    let mut h1 = host(&u, 1, &[]);
    let h2 = host(&u, 2, &[]);
    h1.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        "10.124.0.0/24",
        "ov",
    ]);
    eventually(&h2, "ov on host 2", 10, || {
        h2.network_names().contains(&"ov".to_string())
    });
    h1.sleeper("a1", &["ov"], &[]);
    h2.sleeper("b1", &["ov"], &[]);
    eventually(&h2, "b1 reaching a1", 15, || {
        works(&h2, "b1", "ping -c1 -W1 a1")
    });

    // Host 1's daemon dies: its endpoints leave host 2's DNS within the
    // lease time (10 s).
    h1.kill9();
    let t = std::time::Instant::now();
    eventually(&h2, "a1 leaving host 2's DNS", 20, || {
        !works(&h2, "b1", "getent hosts a1")
    });
    assert!(t.elapsed() < Duration::from_secs(16), "{:?}", t.elapsed());
    // Restarted, it registers the containers it still has.
    h1.spawn();
    eventually(&h2, "a1 back", 15, || works(&h2, "b1", "ping -c1 -W1 a1"));

    // etcd unreachable: traffic goes on, changes fail with one line.
    etcd.pause(true);
    assert!(works(&h2, "b1", "ping -c3 -W2 a1"));
    let t = std::time::Instant::now();
    let e = h1.fails(&["network", "create", "-d", "overlay", "later"]);
    assert!(
        e.contains("cluster store") && e.contains("unreachable"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // Back: the hosts catch up.
    etcd.pause(false);
    retry(
        "a change after etcd is back",
        Duration::from_secs(20),
        || {
            let o = h1.tapnet(&["network", "create", "-d", "overlay", "later"]);
            (o.code == 0).then_some(()).ok_or(o.stderr)
        },
    );
    eventually(&h2, "later on host 2", 15, || {
        h2.network_names().contains(&"later".to_string())
    });
    assert!(works(&h2, "b1", "ping -c1 -W2 a1"));
}
