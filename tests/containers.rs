//! Containers end to end: `tapnet run` (foreground and `-d`), addresses,
//! files, `exec`, traffic between containers through the switch, `network
//! connect/disconnect` on a running container, exits noticed by the
//! daemon, `stop`/`rm`, `attach --netns`, network modes, and running
//! containers surviving a `kill -9` or a SIGTERM + restart of the daemon.
//!
//! Every test runs its own daemon inside its own network namespace; the
//! sandboxes get their own namespaces (or join the daemon's for `host`).

mod ctl_support;

use std::time::Duration;

use ctl_support::*;
use serde_json::Value;

fn inspect(d: &Daemon, c: &str) -> Value {
    d.inspect_container(c)
}

fn ip_of(d: &Daemon, c: &str, net: &str) -> String {
    d.ip_of(c, net)
}

fn ping(d: &Daemon, from: &str, to: &str) -> bool {
    d.tapnet(&["exec", from, "--", "ping", "-c", "1", "-W", "2", to])
        .code
        == 0
}

fn status(d: &Daemon, c: &str) -> String {
    inspect(d, c)["State"]["Status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn foreground_run_addresses_files_and_exit_code() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.40.0.0/24", "front"]);
    let o = d.tapnet(&["run", "--network", "front", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.code, 3, "{}", o.stderr);

    let out = d.ok(&[
        "run",
        "--rm",
        "--name",
        "web",
        "--hostname",
        "webhost",
        "--network",
        "front",
        "--ip",
        "10.40.0.50",
        "--mac-address",
        "02:aa:bb:cc:dd:ee",
        "--",
        "sh",
        "-c",
        "ip -4 -o addr show eth0; ip link show eth0; ip route; cat /etc/hosts /etc/resolv.conf; hostname",
    ]);
    assert!(out.contains("10.40.0.50/24"), "{out}");
    assert!(out.contains("02:aa:bb:cc:dd:ee"), "{out}");
    assert!(out.contains("default via 10.40.0.1 dev eth0"), "{out}");
    assert!(out.contains("10.40.0.50\twebhost"), "{out}");
    assert!(out.contains("nameserver 10.40.0.1"), "{out}");
    assert!(out.lines().any(|l| l == "webhost"), "{out}");
    // --rm: gone, and its address released.
    assert!(!d.ok(&["ps", "-a"]).contains("web"));
    assert_eq!(
        d.inspect_network("front")["Containers"],
        serde_json::json!({})
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "front",
        "--ip",
        "10.40.0.50",
        "--",
        "true",
    ]);
    assert_eq!(out, "");

    // -e and the default bridge network.
    let out = d.ok(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        "echo $GREETING; ip -4 -o addr show eth0",
    ]);
    assert!(out.contains("hi"), "{out}");
    assert!(out.contains("172.17.0."), "{out}");
}

#[test]
fn detached_containers_talk_and_stop() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.41.0.0/24", "lan"]);
    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "s1",
            "--network",
            "lan",
            "--",
            "sleep",
            "300",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "s2",
        "--network",
        "lan",
        "--network-alias",
        "db",
        "--",
        "sh",
        "-c",
        "echo hello-from-s2; sleep 300",
    ]);
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("s1") && ps.contains("s2"), "{ps}");
    assert!(ps.lines().next().unwrap().starts_with("CONTAINER ID"));

    let i = inspect(&d, "s1");
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["Name"], "/s1");
    assert_eq!(i["State"]["Running"], true);
    let n = &i["NetworkSettings"]["Networks"]["lan"];
    assert_eq!(n["IPAddress"], "10.41.0.2");
    assert_eq!(n["IPPrefixLen"], 24);
    assert_eq!(n["Gateway"], "10.41.0.1");
    assert_eq!(n["NetworkID"], d.inspect_network("lan")["Id"]);
    assert_eq!(n["EndpointID"].as_str().unwrap().len(), 64);
    assert!(n["MacAddress"].as_str().unwrap().len() == 17);
    assert_eq!(
        inspect(&d, "s2")["NetworkSettings"]["Networks"]["lan"]["Aliases"],
        serde_json::json!(["db"])
    );

    let ip2 = ip_of(&d, "s2", "lan");
    assert_eq!(ip2, "10.41.0.3");
    assert!(ping(&d, "s1", &ip2), "s1 cannot ping s2\n{}", d.log());
    assert!(ping(&d, "s2", "10.41.0.2"));
    // No qdisc on the interface, as on a veth (the kernel's default gives
    // each of a multi-queue TAP's 256 transmit queues one: 12 MiB), and
    // the TAP's own ring as deep as the switch asks.
    let tc = d.ok(&["exec", "s1", "--", "tc", "qdisc", "show", "dev", "eth0"]);
    assert!(tc.starts_with("qdisc noqueue "), "{tc}");
    let qlen = d.ok(&[
        "exec",
        "s1",
        "--",
        "cat",
        "/sys/class/net/eth0/tx_queue_len",
    ]);
    assert_eq!(qlen.trim(), "2048");

    wait_until("the log of s2", Duration::from_secs(5), || {
        d.ok(&["logs", "s2"]).contains("hello-from-s2")
    });

    // ps --format json
    let lines: Vec<Value> = d
        .ok(&["ps", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);

    // A duplicate name is refused with one line.
    let e = d.fails(&["run", "-d", "--name", "s1", "--", "sleep", "1"]);
    assert!(e.contains("already in use"), "{e}");

    // Processes started by `exec` belong to the container: stop and
    // rm -f end them too (Docker's cgroup), whatever their process group.
    let bg = |c: &str| -> i32 {
        d.ok(&[
            "exec",
            c,
            "--",
            "sh",
            "-c",
            "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .trim()
        .parse()
        .unwrap()
    };
    let (bg1, bg2) = (bg("s1"), bg("s2"));
    let gone = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    assert!(!gone(bg1) && !gone(bg2));

    // stop: exited, address released, network removable afterwards.
    assert_eq!(d.ok(&["stop", "-t", "2", "s1"]).trim(), "s1");
    wait_until(
        "exec'd process of s1 ended by stop",
        Duration::from_secs(5),
        || gone(bg1),
    );
    assert_eq!(status(&d, "s1"), "exited");
    let cs = d.inspect_network("lan")["Containers"].clone();
    assert_eq!(cs.as_object().unwrap().len(), 1, "{cs}");
    let e = d.fails(&["rm", "s2"]);
    assert!(e.contains("running"), "{e}");
    d.ok(&["rm", "-f", "s2"]);
    wait_until(
        "exec'd process of s2 ended by rm -f",
        Duration::from_secs(5),
        || gone(bg2),
    );
    d.ok(&["rm", "s1"]);
    assert_eq!(d.ok(&["ps", "-a", "-q"]), "");
    d.ok(&["network", "rm", "lan"]);
    // The name can be used again.
    d.ok(&["run", "--rm", "--name", "s1", "--", "true"]);
}

#[test]
fn connect_and_disconnect_a_running_container() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.42.0.0/24", "one"]);
    d.ok(&["network", "create", "--subnet", "10.43.0.0/24", "two"]);
    d.sleeper("ca", &["one"], &[]);
    d.sleeper("cb", &["two"], &[]);
    // Isolation: different networks do not reach each other.
    assert!(!ping(&d, "ca", &ip_of(&d, "cb", "two")));

    d.ok(&["network", "connect", "--ip", "10.43.0.99", "two", "ca"]);
    let out = d.ok(&["exec", "ca", "--", "ip", "-4", "-o", "addr", "show", "eth1"]);
    assert!(out.contains("10.43.0.99/24"), "{out}");
    let routes = d.ok(&["exec", "ca", "--", "ip", "route"]);
    assert!(
        routes.contains("default via 10.42.0.1 dev eth0"),
        "{routes}"
    );
    assert!(ping(&d, "ca", &ip_of(&d, "cb", "two")), "{}", d.log());
    let hosts = d.ok(&["exec", "ca", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains("10.43.0.99"), "{hosts}");

    d.ok(&["network", "disconnect", "two", "ca"]);
    let o = d.tapnet(&["exec", "ca", "--", "ip", "link", "show", "eth1"]);
    assert_ne!(o.code, 0, "eth1 still there: {}", o.stdout);
    assert!(inspect(&d, "ca")["NetworkSettings"]["Networks"]
        .get("two")
        .is_none());
    // The address is free again.
    d.ok(&["network", "connect", "--ip", "10.43.0.99", "two", "ca"]);
    let out = d.ok(&["exec", "ca", "--", "ip", "-4", "-o", "addr", "show", "eth1"]);
    assert!(out.contains("10.43.0.99/24"), "{out}");
    let e = d.fails(&["network", "connect", "two", "cb"]);
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn daemon_notices_exits() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.44.0.0/24", "short"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "brief",
        "--network",
        "short",
        "--",
        "sleep",
        "1",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "gone",
        "--network",
        "short",
        "--",
        "sleep",
        "1",
    ]);
    wait_until("the exit of brief", Duration::from_secs(15), || {
        status(&d, "brief") == "exited"
    });
    wait_until("the removal of gone", Duration::from_secs(15), || {
        !d.ok(&["ps", "-a"]).contains("gone")
    });
    assert_eq!(
        d.inspect_network("short")["Containers"],
        serde_json::json!({})
    );
    let e = d.fails(&["exec", "brief", "--", "true"]);
    assert!(e.contains("not running"), "{e}");
}

#[test]
fn running_containers_survive_a_daemon_kill9() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.45.0.0/24", "keep"]);
    d.sleeper("k1", &["keep"], &[]);
    d.sleeper("k2", &["keep"], &[]);
    d.sleeper("dies", &["keep"], &[]);
    let dies_pid = inspect(&d, "dies")["State"]["Pid"].as_i64().unwrap() as i32;
    assert!(ping(&d, "k1", "10.45.0.3"));

    d.kill9();
    // One container dies while the daemon is down.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dies_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.spawn();

    assert_eq!(status(&d, "k1"), "running");
    assert_eq!(status(&d, "k2"), "running");
    wait_until("dies marked exited", Duration::from_secs(10), || {
        status(&d, "dies") == "exited"
    });
    assert!(
        ping(&d, "k1", "10.45.0.3"),
        "no traffic after restart\n{}",
        d.log()
    );
    assert!(ping(&d, "k2", "10.45.0.2"));
    // Names resolve again: the embedded DNS registry is rebuilt from state.
    assert!(
        ping(&d, "k2", "k1"),
        "k2 -> k1 by name after restart\n{}",
        d.log()
    );
    let cs = d.inspect_network("keep")["Containers"].clone();
    assert_eq!(cs.as_object().unwrap().len(), 2, "{cs}");
    d.ok(&["rm", "-f", "k1", "k2", "dies"]);
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_leaves_containers_running() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.48.0.0/24", "term"]);
    d.sleeper("t1", &["term"], &[]);
    d.sleeper("t2", &["term"], &[]);
    let pid = inspect(&d, "t1")["State"]["Pid"].as_i64().unwrap();
    assert!(ping(&d, "t1", "10.48.0.3"));

    let st = d.stop().expect("the daemon was running");
    assert!(st.success(), "exit status after SIGTERM: {st}\n{}", d.log());
    assert!(
        !d.socket.exists(),
        "socket {} left after SIGTERM",
        d.socket.display()
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container t1 (pid {pid}) died with the daemon"
    );

    d.spawn();
    assert_eq!(status(&d, "t1"), "running");
    assert_eq!(status(&d, "t2"), "running");
    assert_eq!(inspect(&d, "t1")["State"]["Pid"].as_i64(), Some(pid));
    assert!(
        ping(&d, "t1", "10.48.0.3"),
        "no traffic after SIGTERM and restart\n{}",
        d.log()
    );
    assert!(ping(&d, "t2", "t1"), "t2 -> t1 by name after restart");
    d.ok(&["rm", "-f", "t1", "t2"]);
}

#[test]
fn attach_an_existing_namespace() {
    let d = Daemon::start();
    if d.privilege != Privilege::Root {
        // `ip netns add` needs root; the attach path is the same for --pid.
        eprintln!("attach_an_existing_namespace: needs root for ip netns; covered by --pid below");
    }
    d.ok(&["network", "create", "--subnet", "10.46.0.0/24", "att"]);
    d.sleeper("peer", &["att"], &[]);
    let ns = Netns::new();
    let id = d
        .ok(&[
            "attach",
            "--netns",
            ns.path().to_str().unwrap(),
            "--name",
            "outside",
            "--network",
            "att",
        ])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    let o = ns.exec(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("10.46.0.3/24"), "{out}");
    let o = ns.exec(&["ping", "-c", "1", "-W", "2", "10.46.0.2"]);
    assert!(
        o.status.success(),
        "attached namespace cannot reach the container"
    );
    assert!(ping(&d, "peer", "10.46.0.3"));
    assert_eq!(status(&d, "outside"), "running");
    // rm -f detaches: the interface goes away.
    d.ok(&["rm", "-f", "outside"]);
    let o = ns.exec(&["ip", "link", "show", "eth0"]);
    assert!(!o.status.success(), "eth0 still in the namespace");

    // --pid: a process in its own network namespace (made by this test,
    // killed by its pid at the end, even on failure).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let p = Kill(
        std::process::Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .spawn()
            .unwrap(),
    );
    let pid = p.0.id().to_string();
    wait_until("the unshared process", Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            != std::fs::read_link("/proc/self/ns/net").ok()
    });
    d.ok(&[
        "attach",
        "--pid",
        &pid,
        "--name",
        "bypid",
        "--network",
        "att",
    ]);
    let o = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "ip", "-4", "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    // Serial allocation: .3 was released just before, .4 comes next.
    assert!(out.contains("10.46.0.4/24"), "{out}");
    assert!(ping(&d, "peer", "10.46.0.4"));
    // The daemon notices the process's end.
    drop(p);
    wait_until("bypid marked exited", Duration::from_secs(10), || {
        status(&d, "bypid") == "exited"
    });
}

#[test]
fn network_modes() {
    let d = Daemon::start();
    let out = d.ok(&["run", "--rm", "--network", "none", "--", "ip", "-o", "link"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("lo"), "{out}");

    let inside = d.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--",
        "readlink",
        "/proc/self/ns/net",
    ]);
    let daemon_ns = std::fs::read_link(format!("/proc/{}/ns/net", d.pid())).unwrap();
    assert_eq!(inside.trim(), daemon_ns.to_str().unwrap());

    d.ok(&["network", "create", "--subnet", "10.47.0.0/24", "shared"]);
    d.sleeper("owner", &["shared"], &[]);
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:owner",
        "--",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(out.contains("10.47.0.2/24"), "{out}");

    let e = d.fails(&[
        "run",
        "--network",
        "none",
        "--network",
        "shared",
        "--",
        "true",
    ]);
    assert!(e.contains("conflicting"), "{e}");
    let e = d.fails(&["run", "-p", "80:80:tcp", "--", "true"]);
    assert!(e.contains("80:80:tcp"), "{e}");
    // -p is validated and stored.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "-p",
        "127.0.0.1:8080:80",
        "-p",
        "53/udp",
        "--",
        "sleep",
        "300",
    ]);
    let hc = inspect(&d, "pub")["HostConfig"]["PortBindings"].clone();
    assert_eq!(hc["80/tcp"][0]["HostPort"], "8080");
    assert_eq!(hc["80/tcp"][0]["HostIp"], "127.0.0.1");
    assert!(hc.get("53/udp").is_some(), "{hc}");
    d.ok(&["rm", "-f", "owner", "pub"]);
}

fn sleeper(d: &Daemon, name: &str, nets: &[&str], extra: &[&str]) {
    d.sleeper(name, nets, extra)
}

/// The seed scenario: A on n1, C on n2, B on both. B reaches A and C, A
/// cannot reach C (and C not A); TCP between B and A works.
#[test]
fn seed_hub_container_reaches_both_networks() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.47.0.0/24", "n1"]);
    d.ok(&["network", "create", "--subnet", "10.48.0.0/24", "n2"]);
    sleeper(&d, "hubA", &["n1"], &[]);
    sleeper(&d, "hubC", &["n2"], &[]);
    sleeper(&d, "hubB", &["n1", "n2"], &[]);
    let a = ip_of(&d, "hubA", "n1");
    let c = ip_of(&d, "hubC", "n2");
    assert!(ping(&d, "hubB", &a), "B -> A\n{}", d.log());
    assert!(ping(&d, "hubB", &c), "B -> C\n{}", d.log());
    assert!(!ping(&d, "hubA", &c), "A must not reach C");
    assert!(!ping(&d, "hubC", &a), "C must not reach A");
    // eth0 on n1 holds the default route, eth1 is on n2.
    // The sandbox's /sys is its own: its interfaces, not the host's.
    let sys = d.ok(&["exec", "hubB", "--", "ls", "/sys/class/net"]);
    assert_eq!(
        sys.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "eth1", "lo"],
        "{sys}"
    );
    let routes = d.ok(&["exec", "hubB", "--", "ip", "route"]);
    assert!(
        routes.contains("default via 10.47.0.1 dev eth0"),
        "{routes}"
    );
    // TCP from B to an HTTP server in A.
    let www = TempDir::new();
    std::fs::write(www.0.join("index.html"), "seed-ok\n").unwrap();
    let dir = www.0.display().to_string();
    // In the foreground, backgrounded by the shell: its PID is printed and
    // it is killed by PID at the end (a daemonized httpd would outlive the
    // sandbox: there is no PID namespace).
    let pid = d.ok(&[
        "exec",
        "hubA",
        "--",
        "sh",
        "-c",
        &format!("busybox httpd -f -p 8080 -h {dir} >/dev/null 2>&1 & echo $!"),
    ]);
    let _httpd = KillOnDrop(pid.trim().parse().expect("httpd pid"));
    let url = format!("http://{a}:8080/index.html");
    let page = d.ok(&[
        "exec",
        "hubB",
        "--",
        "curl",
        "-sS",
        "--retry",
        "5",
        "--retry-connrefused",
        "--retry-delay",
        "1",
        &url,
    ]);
    assert_eq!(page.trim(), "seed-ok");
}

/// `enable_icc=false`: containers of the network cannot talk to each other
/// (IP), but they still reach their gateway; ICC on another network is
/// unaffected.
#[test]
fn icc_off_blocks_containers_not_the_gateway() {
    let d = Daemon::start();
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.49.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "noicc",
    ]);
    sleeper(&d, "i1", &["noicc"], &[]);
    sleeper(&d, "i2", &["noicc"], &[]);
    let i2 = ip_of(&d, "i2", "noicc");
    assert!(ping(&d, "i1", "10.49.0.1"), "gateway\n{}", d.log());
    assert!(!ping(&d, "i1", &i2), "ICC off must block i1 -> i2");
    let v = d.inspect_network("noicc");
    assert_eq!(
        v["Options"]["com.docker.network.bridge.enable_icc"], "false",
        "{v}"
    );
}

/// Kills a process this test started, by PID, when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
