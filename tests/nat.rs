//! Outbound masquerade and published ports through host sockets, end to
//! end with real programs (issue 5).
//!
//! Topology, all made here: the daemon runs in its private namespace (its
//! "host"); a veth pair wires that namespace to an "outside" namespace
//! (host end 198.51.100.1/24 and .3/24, outside end 198.51.100.2/24:
//! TEST-NET-2, documentation addresses; the daemon's namespace has no
//! other route). Servers in "outside": busybox httpd on :80, a socat UDP
//! and TCP echo on :7, a python3 asyncio echo for the load test.
//! Containers reach them through their gateway: tapnet terminates TCP and
//! relays over ordinary host sockets, UDP over connected UDP sockets, ICMP
//! echo over ping sockets. Published ports (`-p`) are host sockets of the
//! daemon's namespace relayed into the container, which sees the client's
//! real address. Every process is killed by PID (process group for socat's
//! forks) and every namespace removed on drop, also when a test fails.
//!
//! Root only (veth pairs into the daemon's namespace), except
//! `rootless_host_loopback_and_published_port` which runs
//! `tests/rootless_nat.sh` as an ordinary user (see `rootless_support`).
//! Programs: curl, socat, ping, busybox (httpd, nc), python3 (`.ci/run`).

mod ctl_support;
mod rootless_support;

use ctl_support::*;
use std::time::Duration;

/// The host's (daemon namespace's) end of the veth pair.
const HOST: &str = "198.51.100.1";
/// A second address on the host's end (two containers, one port).
const HOST2: &str = "198.51.100.3";
/// The outside namespace.
const OUTSIDE: &str = "198.51.100.2";
/// What `http://OUTSIDE/file` serves.
const PAGE: &str = "tapnet-nat-outside";
/// The system python (not a user's shim), for the load test.
const PYTHON: &str = "/usr/bin/python3";

/// A daemon, an outside namespace wired to it and the outside servers.
/// Fields drop in order: servers, then the outside namespace, then the
/// daemon (its containers, process and namespace), then the files.
struct World {
    servers: Vec<Bg>,
    outside: Outside,
    d: Daemon,
    files: TempDir,
}

impl World {
    fn new(extra: &[&str]) -> World {
        require_root("tests/nat.rs");
        let d = Daemon::start_with(extra, |_| {});
        let outside = Outside::connect(
            d.netns(),
            &[&format!("{HOST}/24"), &format!("{HOST2}/24")],
            &format!("{OUTSIDE}/24"),
        );
        let files = TempDir::new();
        std::fs::write(files.0.join("file"), format!("{PAGE}\n")).unwrap();
        let www = files.0.display().to_string();
        let ns = &outside.ns;
        let servers = vec![
            ns.spawn(&["busybox", "httpd", "-f", "-p", "80", "-h", &www]),
            ns.spawn(&["socat", "UDP4-RECVFROM:7,fork", "PIPE"]),
            ns.spawn(&["socat", "TCP4-LISTEN:7,fork,reuseaddr", "PIPE"]),
        ];
        let w = World {
            servers,
            outside,
            d,
            files,
        };
        // The servers answer inside "outside" before any container asks.
        retry("the outside servers", Duration::from_secs(10), || {
            let o = w.outside.ns.sh(&format!(
                "curl -sS --max-time 2 http://{OUTSIDE}/file && echo u | socat -t 1 - UDP4:{OUTSIDE}:7"
            ));
            (o.code == 0 && o.stdout == format!("{PAGE}\nu\n"))
                .then_some(())
                .ok_or(format!("{} {}{}", o.code, o.stdout, o.stderr))
        });
        w
    }

    /// Everything useful when a test fails: the daemon log, the servers'
    /// output.
    fn context(&self) -> String {
        let mut s = format!("--- daemon log:\n{}", self.d.log());
        for b in &self.servers {
            s += &b.log();
        }
        s
    }

    /// Writes `script` to the file `name` among the world's files: its
    /// path.
    fn script(&self, name: &str, script: &str) -> String {
        let path = self.files.0.join(name).display().to_string();
        std::fs::write(&path, script).unwrap();
        path
    }

    /// Writes `script` to the file `name` among the world's files, and
    /// starts container `c` on a new network of its own (`subnet`), with
    /// `run`'s `extra` flags: the script's path.
    fn script_container(
        &self,
        name: &str,
        script: &str,
        subnet: &str,
        c: &str,
        extra: &[&str],
    ) -> String {
        let path = self.script(name, script);
        let net = format!("{c}-net");
        self.d.ok(&["network", "create", "--subnet", subnet, &net]);
        self.d.sleeper(c, &[&net], extra);
        path
    }

    /// Writes `script` to the file `name` among the world's files and runs
    /// it with `args` in the outside namespace, a server kept until the
    /// world drops, once it listens on `port` (UDP with `udp`, else TCP).
    fn outside_server(&mut self, name: &str, script: &str, args: &[&str], port: u16, udp: bool) {
        let path = self.script(name, script);
        let mut argv = vec![PYTHON, path.as_str()];
        argv.extend(args);
        let server = self.outside.ns.spawn(&argv);
        self.servers.push(server);
        let proto = if udp { 'u' } else { 't' };
        let check = format!("ss -Hl{proto}n 'sport = :{port}' | grep -q .");
        wait_until(&format!("{name} listens"), Duration::from_secs(10), || {
            self.outside.ns.sh(&check).code == 0
        });
    }

    /// What the NAT dropped for `reason` (`conntrack stats`).
    fn nat_drops(&self, reason: &str) -> u64 {
        let stats: serde_json::Value =
            serde_json::from_str(&self.d.ok(&["conntrack", "stats", "--format", "json"])).unwrap();
        stats["drop_reasons"][reason].as_u64().unwrap()
    }

    /// `SCRIPT` in `sh -c` inside container `c`, asserting success.
    fn exec_ok(&self, c: &str, script: &str) -> String {
        let o = self.d.exec_sh(c, script);
        if o.code != 0 {
            panic!(
                "in {c}: `{script}` failed ({}): {}{}\n{}",
                o.code,
                o.stdout,
                o.stderr,
                self.context()
            );
        }
        o.stdout
    }
}

/// `curl` from container `c`: (exit code, stdout, stderr).
fn curl(d: &Daemon, c: &str, url: &str, max_time: u32) -> Out {
    d.tapnet(&[
        "exec",
        c,
        "--",
        "curl",
        "-sS",
        "--max-time",
        &max_time.to_string(),
        url,
    ])
}

/// `curl` from `c` that must succeed (retried for a few seconds: the first
/// request of a fresh container may race its own start); returns the body.
fn curl_ok(d: &Daemon, c: &str, url: &str) -> String {
    retry(
        &format!("curl {url} from {c}"),
        Duration::from_secs(15),
        || {
            let o = curl(d, c, url, 5);
            (o.code == 0)
                .then(|| o.stdout.clone())
                .ok_or(format!("exit {}: {}{}", o.code, o.stdout, o.stderr))
        },
    )
}

/// One TCP exchange: connects, half-closes, prints what the server sent.
fn tcp_read(addr: &str, port: u16) -> String {
    format!("socat -t 5 -T 10 - TCP4:{addr}:{port} </dev/null")
}

/// One UDP datagram, prints the reply (waits 2 s after sending).
fn udp_ask(addr: &str, port: u16, what: &str) -> String {
    format!("echo {what} | socat -t 2 -T 10 - UDP4:{addr}:{port}")
}

/// Runs `script` (via `run`) until its output is not empty; returns it
/// trimmed. Published-port servers start asynchronously after `run -d`.
fn answer(what: &str, mut run: impl FnMut() -> Out) -> String {
    retry(what, Duration::from_secs(15), || {
        let o = run();
        let t = o.stdout.trim().to_string();
        (!t.is_empty())
            .then(|| t.clone())
            .ok_or(format!("exit {}: {:?} {}", o.code, o.stdout, o.stderr))
    })
}

/// `tapnet conntrack [ARGS] --format json`: the rows (a JSON array, or one
/// object per line).
fn conntrack(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["conntrack"];
    a.extend(args);
    a.extend(["--format", "json"]);
    let out = d.ok(&a);
    let t = out.trim();
    if t.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(t).unwrap_or_else(|e| panic!("conntrack json: {e}: {out}"));
        return v.as_array().unwrap().clone();
    }
    t.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("conntrack json: {e}: {l}")))
        .collect()
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("conntrack row without a number {k}: {v}"))
}

/// Outbound TCP, UDP and ICMP echo from a container on a user-defined
/// network to a namespace beyond the host, a refused connection reported as
/// refused (not a timeout), and `tapnet conntrack` listing the flows.
#[test]
fn outbound_tcp_udp_icmp_and_conntrack() {
    let w = World::new(&[]);
    w.d.ok(&["network", "create", "--subnet", "10.81.0.0/24", "nat1"]);
    w.d.sleeper("c1", &["nat1"], &[]);
    w.d.sleeper("other", &["nat1"], &[]);
    let ip = w.d.ip_of("c1", "nat1");

    // TCP: an HTTP GET through the gateway.
    let page = curl_ok(&w.d, "c1", &format!("http://{OUTSIDE}/file"));
    assert_eq!(page.trim(), PAGE, "{}", w.context());
    // UDP: an echo round trip.
    let echo = w.exec_ok("c1", &udp_ask(OUTSIDE, 7, "tapnet-udp-echo"));
    assert_eq!(echo.trim(), "tapnet-udp-echo", "{}", w.context());
    // ICMP echo.
    w.exec_ok("c1", &format!("ping -c 2 -W 3 {OUTSIDE}"));
    // A closed port: the host socket's ECONNREFUSED comes back as a RST,
    // so curl says "refused" (7), not "timeout" (28).
    let o = curl(&w.d, "c1", &format!("http://{OUTSIDE}:81/"), 15);
    assert_eq!(
        o.code,
        7,
        "curl to a closed port: want exit 7 (connection refused): {}{}\n{}",
        o.stdout,
        o.stderr,
        w.context()
    );

    // A closed UDP port: the remote's ICMP port unreachable comes back
    // (the host socket's ECONNREFUSED becomes ICMP to the container), so
    // the container's socket fails with "Connection refused" instead of
    // waiting out its timeout.
    let o =
        w.d.exec_sh("c1", &format!("echo x | socat -T 8 - UDP4:{OUTSIDE}:9"));
    assert!(
        o.code != 0 && o.stderr.contains("Connection refused"),
        "UDP to a closed port: want 'Connection refused': {o:?}\n{}",
        w.context()
    );

    // A TCP connection held open while conntrack is read.
    let _hold = Bg::spawn(&[
        BIN,
        "-H",
        &w.d.host(),
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        &format!("(echo held; sleep 30) | busybox nc {OUTSIDE} 7"),
    ]);
    let d = &w.d;
    let rows = retry("conntrack rows for c1", Duration::from_secs(10), || {
        let rows = conntrack(d, &["ls", "--container", "c1"]);
        let tcp = rows.iter().any(|r| {
            r["protocol"] == "tcp" && r["remote_port"] == 7 && r["state"] == "established"
        });
        let udp = rows.iter().any(|r| r["protocol"] == "udp");
        let icmp = rows.iter().any(|r| r["protocol"] == "icmp");
        (tcp && udp && icmp)
            .then(|| rows.clone())
            .ok_or(format!("{rows:#?}"))
    });
    let ctx = format!("{rows:#?}\n--- daemon log:\n{}", w.d.log());
    for r in &rows {
        assert_eq!(
            r["container_ip"],
            ip.as_str(),
            "--container c1 filter: {ctx}"
        );
        assert_eq!(r["direction"], "outbound", "{ctx}");
        assert_eq!(r["remote_ip"], OUTSIDE, "{ctx}");
        for k in [
            "container_port",
            "packets_out",
            "bytes_out",
            "packets_in",
            "bytes_in",
        ] {
            u(r, k);
        }
        for k in ["age_secs", "idle_secs", "expires_secs"] {
            assert!(r[k].as_f64().is_some(), "{k} in {r}: {ctx}");
        }
    }
    let udp = rows
        .iter()
        .find(|r| r["protocol"] == "udp" && r["remote_port"] == 7)
        .unwrap_or_else(|| panic!("no udp flow to {OUTSIDE}:7: {ctx}"));
    assert!(
        u(udp, "packets_out") >= 1 && u(udp, "packets_in") >= 1,
        "{ctx}"
    );
    assert!(
        u(udp, "bytes_out") >= 16 && u(udp, "bytes_in") >= 16,
        "udp bytes (16 of payload each way): {ctx}"
    );
    let host_addr = udp["host_addr"].as_str().unwrap_or_default();
    assert!(
        host_addr.starts_with(&format!("{HOST}:")),
        "the UDP host socket's address {host_addr:?} is not on {HOST}: {ctx}"
    );
    let icmp: Vec<_> = rows.iter().filter(|r| r["protocol"] == "icmp").collect();
    let (out, inn) = icmp.iter().fold((0, 0), |(a, b), r| {
        (a + u(r, "packets_out"), b + u(r, "packets_in"))
    });
    assert!(
        out >= 2 && inn >= 2,
        "ping -c 2: {out} out, {inn} in: {ctx}"
    );
    // The other container's flows are not listed under c1, but the full
    // table lists c1's.
    w.exec_ok("other", &udp_ask(OUTSIDE, 7, "x"));
    let all = conntrack(&w.d, &[]);
    assert!(
        all.iter().any(|r| r["container_ip"] == ip.as_str()),
        "{all:#?}"
    );
    let other_ip = w.d.ip_of("other", "nat1");
    assert!(
        all.iter().any(|r| r["container_ip"] == other_ip.as_str()),
        "{all:#?}"
    );
    assert!(
        !conntrack(&w.d, &["--container", "c1"])
            .iter()
            .any(|r| r["container_ip"] == other_ip.as_str()),
        "--container c1 lists another container's flow"
    );
    // The table form mentions the remote.
    let text = w.d.ok(&["conntrack"]);
    assert!(text.contains(OUTSIDE), "{text}");
}

/// TCP and UDP to the gateway address reach the host's (daemon
/// namespace's) loopback; `host.tapnet.internal` and
/// `host.docker.internal` name the gateway; `--no-host-loopback` turns it
/// off.
#[test]
fn host_loopback_through_the_gateway() {
    require_root("host_loopback_through_the_gateway");
    let files = TempDir::new();
    std::fs::write(files.0.join("file"), "tapnet-host-loopback\n").unwrap();
    let www = files.0.display().to_string();
    let servers = |d: &Daemon| -> Vec<Bg> {
        let ns = d.netns();
        ns.lo_up();
        let v = vec![
            ns.spawn(&["busybox", "httpd", "-f", "-p", "127.0.0.1:8081", "-h", &www]),
            ns.spawn(&["socat", "UDP4-RECVFROM:7007,bind=127.0.0.1,fork", "PIPE"]),
        ];
        retry("the loopback servers", Duration::from_secs(10), || {
            let o = ns.sh("curl -sS --max-time 2 http://127.0.0.1:8081/file");
            (o.code == 0).then_some(()).ok_or(o.stderr)
        });
        v
    };

    let d = Daemon::start();
    let _s = servers(&d);
    d.ok(&["network", "create", "--subnet", "10.82.0.0/24", "hl"]);
    d.sleeper("hc", &["hl"], &[]);
    let gw = d.gateway_of("hl");
    for host in ["host.tapnet.internal", "host.docker.internal", gw.as_str()] {
        let page = curl_ok(&d, "hc", &format!("http://{host}:8081/file"));
        assert_eq!(page.trim(), "tapnet-host-loopback", "via {host}");
    }
    let o = d.exec_sh("hc", &udp_ask(&gw, 7007, "lo-udp"));
    assert_eq!(
        o.stdout.trim(),
        "lo-udp",
        "UDP to {gw}:7007: {}\n{}",
        o.stderr,
        d.log()
    );
    // The names resolve to the gateway.
    let o = d.exec_sh(
        "hc",
        "getent hosts host.tapnet.internal || nslookup host.tapnet.internal",
    );
    assert!(o.stdout.contains(&gw), "{}{}", o.stdout, o.stderr);

    let off = Daemon::start_with(&["--no-host-loopback"], |_| {});
    let _s2 = servers(&off);
    off.ok(&["network", "create", "--subnet", "10.82.0.0/24", "hl"]);
    off.sleeper("hc", &["hl"], &[]);
    let gw = off.gateway_of("hl");
    // The container is up and its gateway answers pings...
    let o = off.exec_sh("hc", &format!("ping -c 1 -W 3 {gw}"));
    assert_eq!(o.code, 0, "ping the gateway: {}{}", o.stdout, o.stderr);
    // ...but the host's loopback is out of reach.
    for host in ["host.tapnet.internal", gw.as_str()] {
        let o = curl(&off, "hc", &format!("http://{host}:8081/file"), 3);
        assert_ne!(
            o.code, 0,
            "--no-host-loopback: {host}:8081 answered: {}",
            o.stdout
        );
    }
    let o = off.exec_sh("hc", &udp_ask(&gw, 7007, "lo-udp"));
    assert!(
        !o.stdout.contains("lo-udp"),
        "--no-host-loopback: UDP reached the loopback"
    );
}

/// Published ports: a client outside sees its own address reported by the
/// container (TCP and UDP), a loopback client shows up as the gateway,
/// hairpin from another container, two containers on one port of two host
/// addresses, `tapnet port`, and the port closes with the container.
#[test]
fn published_ports_keep_the_client_address() {
    let w = World::new(&[]);
    w.d.ok(&["network", "create", "--subnet", "10.83.0.0/24", "pub"]);
    let peer = |tag: &str| {
        format!(
            "socat TCP-LISTEN:80,fork,reuseaddr 'SYSTEM:echo {tag}$SOCAT_PEERADDR' & \
             exec socat UDP4-RECVFROM:53535,fork 'SYSTEM:echo {tag}$SOCAT_PEERADDR'"
        )
    };
    let web = peer("");
    w.d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pub",
        "-p",
        "8080:80",
        "-p",
        "5353:53535/udp",
        "--",
        "sh",
        "-c",
        &web,
    ]);
    let gw = w.d.gateway_of("pub");
    let outside = &w.outside.ns;

    let got = answer("TCP 8080 from outside", || {
        outside.sh(&tcp_read(HOST, 8080))
    });
    assert_eq!(
        got,
        OUTSIDE,
        "TCP: the container must see the client's address\n{}",
        w.context()
    );
    let got = answer("UDP 5353 from outside", || {
        outside.sh(&udp_ask(HOST, 5353, "who"))
    });
    assert_eq!(
        got,
        OUTSIDE,
        "UDP: the container must see the client's address\n{}",
        w.context()
    );
    // A client on the host's loopback shows up as the gateway.
    let host = w.d.netns();
    let got = answer("TCP 8080 from the host", || {
        host.sh(&tcp_read("127.0.0.1", 8080))
    });
    assert_eq!(got, gw, "loopback client\n{}", w.context());
    let got = answer("UDP 5353 from the host", || {
        host.sh(&udp_ask("127.0.0.1", 5353, "who"))
    });
    assert_eq!(got, gw, "loopback UDP client\n{}", w.context());
    // Hairpin: another container, through the host address.
    w.d.sleeper("client", &["pub"], &[]);
    let d = &w.d;
    let got = answer("hairpin", || d.exec_sh("client", &tcp_read(HOST, 8080)));
    assert!(
        got.parse::<std::net::Ipv4Addr>().is_ok(),
        "hairpin answer {got:?}\n{}",
        d.log()
    );
    let ports = w.d.ok(&["port", "web"]);
    for want in ["80/tcp -> 0.0.0.0:8080", "53535/udp -> 0.0.0.0:5353"] {
        assert!(ports.lines().any(|l| l.trim() == want), "port web: {ports}");
    }

    // One port, two host addresses, two containers.
    for (name, ip) in [("web1", HOST), ("web2", HOST2)] {
        let cmd = peer(&format!("{name} "));
        let p = format!("{ip}:9090:80");
        w.d.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "pub",
            "-p",
            &p,
            "--",
            "sh",
            "-c",
            &cmd,
        ]);
    }
    for (name, ip) in [("web1", HOST), ("web2", HOST2)] {
        let got = answer(&format!("{name} on {ip}:9090"), || {
            outside.sh(&tcp_read(ip, 9090))
        });
        assert_eq!(got, format!("{name} {OUTSIDE}"), "{}", w.context());
        let ports = w.d.ok(&["port", name]);
        assert!(
            ports
                .lines()
                .any(|l| l.trim() == format!("80/tcp -> {ip}:9090")),
            "port {name}: {ports}"
        );
    }

    // Removing the container closes its host sockets (within a few
    // seconds: `rm` may return before the relay has let go).
    w.d.ok(&["rm", "-f", "web"]);
    retry(
        "8080 and 5353 closed after rm",
        Duration::from_secs(5),
        || {
            let o = host.sh("ss -Hltun 'sport = :8080' 'or' 'sport = :5353'");
            o.stdout
                .trim()
                .is_empty()
                .then_some(())
                .ok_or(format!("still bound after rm: {}", o.stdout))
        },
    );
    let o = outside.sh(&tcp_read(HOST, 8080));
    assert!(
        o.code != 0 || o.stdout.trim().is_empty(),
        "8080 still answers after rm: {}",
        o.stdout
    );
}

/// A published-port server for container port 80/tcp and 53535/udp that
/// answers `ADDR PORT`, the peer as the container sees it (a space: a
/// colon would end socat's SYSTEM address).
const PEER_SERVER: &str =
    "socat TCP-LISTEN:80,fork,reuseaddr 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT' & \
     exec socat UDP4-RECVFROM:53535,fork 'SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT'";

/// `ADDR PORT` as `PEER_SERVER` answers it.
fn peer_of(answer: &str) -> (String, u16) {
    let (a, p) = answer
        .split_once(' ')
        .unwrap_or_else(|| panic!("not ADDR PORT: {answer:?}"));
    let p = p
        .parse()
        .unwrap_or_else(|e| panic!("not ADDR PORT: {answer:?}: {e}"));
    (a.to_string(), p)
}

/// Like [`answer`], with the client's source port chosen: `run(port)`
/// tries `first`, then `first + 1`, ... (a fresh port per attempt, so that
/// a retry never meets the lingering flow of the one before); returns the
/// port of the attempt that answered and its answer.
fn answer_from(what: &str, first: u16, mut run: impl FnMut(u16) -> Out) -> (u16, String) {
    let mut port = first;
    retry(what, Duration::from_secs(15), || {
        let p = port;
        port += 1;
        let o = run(p);
        let t = o.stdout.trim().to_string();
        (!t.is_empty()).then(|| (p, t.clone())).ok_or(format!(
            "port {p}: exit {}: {:?} {}",
            o.code, o.stdout, o.stderr
        ))
    })
}

/// UDP datagram from source port `sport` (see [`udp_ask`]).
fn udp_ask_from(addr: &str, port: u16, sport: u16, what: &str) -> String {
    format!("echo {what} | socat -t 2 -T 10 - UDP4:{addr}:{port},sourceport={sport}")
}

/// The inbound UDP flows to container port 53535 from `remote`.
fn inbound_udp(d: &Daemon, c: &str, remote: &str) -> Vec<serde_json::Value> {
    conntrack(d, &["--container", c])
        .into_iter()
        .filter(|r| {
            r["protocol"] == "udp"
                && r["direction"] == "inbound"
                && r["container_port"] == 53535
                && r["remote_ip"] == remote
        })
        .collect()
}

/// Published ports across a daemon restart (`kill -9`, started again on
/// the same state): the container keeps running, its TCP and UDP host
/// ports are bound again and answer the same outside client (its address
/// still seen by the container), `tapnet port` lists them, and outbound
/// traffic flows. Before the restart: a UDP published port answers two
/// datagrams from two client ports, two inbound flows in the table.
#[test]
fn published_ports_survive_a_daemon_restart() {
    let mut w = World::new(&[]);
    w.d.ok(&["network", "create", "--subnet", "10.88.0.0/24", "rst"]);
    w.d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "rst",
        "-p",
        "8080:80",
        "-p",
        "5353:53535/udp",
        "--",
        "sh",
        "-c",
        PEER_SERVER,
    ]);
    let ip = w.d.ip_of("web", "rst");

    let tcp = answer("TCP 8080 from outside", || {
        w.outside.ns.sh(&tcp_read(HOST, 8080))
    });
    assert_eq!(
        peer_of(&tcp).0,
        OUTSIDE,
        "TCP before the restart\n{}",
        w.context()
    );
    // Two datagrams from two client ports: two flows, two answers, each
    // with its client's port.
    let (p1, a1) = answer_from("UDP 5353 from outside (1)", 41000, |p| {
        w.outside.ns.sh(&udp_ask_from(HOST, 5353, p, "one"))
    });
    let (p2, a2) = answer_from("UDP 5353 from outside (2)", 42000, |p| {
        w.outside.ns.sh(&udp_ask_from(HOST, 5353, p, "two"))
    });
    assert_eq!(
        a1,
        format!("{OUTSIDE} {p1}"),
        "UDP client 1\n{}",
        w.context()
    );
    assert_eq!(
        a2,
        format!("{OUTSIDE} {p2}"),
        "UDP client 2\n{}",
        w.context()
    );
    let rows = inbound_udp(&w.d, "web", OUTSIDE);
    let ctx = format!("{rows:#?}\n{}", w.context());
    for p in [p1, p2] {
        let r = rows
            .iter()
            .find(|r| r["remote_port"] == p)
            .unwrap_or_else(|| panic!("no inbound UDP flow from {OUTSIDE}:{p}: {ctx}"));
        assert_eq!(r["container_ip"], ip.as_str(), "{ctx}");
        assert!(
            u(r, "packets_in") >= 1 && u(r, "packets_out") >= 1,
            "flow from port {p}: {ctx}"
        );
    }

    // The restart: the daemon dies with its host sockets; the new one
    // binds them again for the container that kept running (the same
    // process).
    let pid = w.d.inspect_container("web")["State"]["Pid"].clone();
    assert!(pid.as_u64().unwrap_or(0) > 0, "web's pid: {pid}");
    w.d.kill9();
    w.d.spawn();
    let state = w.d.inspect_container("web")["State"].clone();
    assert!(
        state["Running"] == true && state["Pid"] == pid,
        "web after the restart (pid {pid} before): {state}\n{}",
        w.context()
    );
    let tcp = answer("TCP 8080 from outside after the restart", || {
        w.outside.ns.sh(&tcp_read(HOST, 8080))
    });
    assert_eq!(
        peer_of(&tcp).0,
        OUTSIDE,
        "TCP after the restart\n{}",
        w.context()
    );
    let (p3, a3) = answer_from("UDP 5353 from outside after the restart", 43000, |p| {
        w.outside.ns.sh(&udp_ask_from(HOST, 5353, p, "three"))
    });
    assert_eq!(
        a3,
        format!("{OUTSIDE} {p3}"),
        "UDP after the restart\n{}",
        w.context()
    );
    let ports = w.d.ok(&["port", "web"]);
    for want in ["80/tcp -> 0.0.0.0:8080", "53535/udp -> 0.0.0.0:5353"] {
        assert!(
            ports.lines().any(|l| l.trim() == want),
            "port web after the restart: {ports}"
        );
    }
    assert!(
        inbound_udp(&w.d, "web", OUTSIDE)
            .iter()
            .any(|r| r["remote_port"] == p3),
        "no inbound UDP flow from port {p3} after the restart\n{}",
        w.context()
    );
    // Outbound after the restart.
    let page = curl_ok(&w.d, "web", &format!("http://{OUTSIDE}/file"));
    assert_eq!(page.trim(), PAGE, "{}", w.context());
}

/// IPv6 host addresses in front of an IPv4 container: `[::1]:18090`
/// (TCP), `[::1]:18091` (UDP) and `[::]` with a port the kernel picks
/// (read back from `tapnet port`). A client on the host's `::1` shows up
/// in the container as the network's gateway, with the client's port.
#[test]
fn ipv6_host_address_fronts_an_ipv4_container() {
    require_root("ipv6_host_address_fronts_an_ipv4_container");
    let d = Daemon::start();
    let host = d.netns();
    // `::1` must exist before `run` binds it.
    host.lo_up();
    host.sh_ok(
        "sysctl -qw net.ipv6.conf.lo.disable_ipv6=0 && ip -6 addr show dev lo | grep -q '::1/128'",
    );
    d.ok(&["network", "create", "--subnet", "10.89.0.0/24", "six"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web6",
        "--network",
        "six",
        "-p",
        "[::1]:18090:80",
        "-p",
        "[::1]:18091:53535/udp",
        "-p",
        "[::]::80",
        "--",
        "sh",
        "-c",
        PEER_SERVER,
    ]);
    let gw = d.gateway_of("six");
    let ports = d.ok(&["port", "web6"]);
    let any = ports
        .lines()
        .find_map(|l| l.trim().strip_prefix("80/tcp -> [::]:"))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no 80/tcp -> [::]:PORT in `port web6`: {ports}"));
    assert_ne!(any, 0, "{ports}");
    for want in ["80/tcp -> [::1]:18090", "53535/udp -> [::1]:18091"] {
        assert!(
            ports.lines().any(|l| l.trim() == want),
            "port web6: {ports}"
        );
    }
    let ctx = || format!("port web6: {ports}--- daemon log:\n{}", d.log());

    for (port, first) in [(18090, 44000), (any, 45000)] {
        let (p, a) = answer_from(&format!("TCP6 [::1]:{port}"), first, |p| {
            host.sh(&format!(
                "socat -t 5 -T 10 - TCP6:[::1]:{port},sourceport={p},reuseaddr </dev/null"
            ))
        });
        assert_eq!(
            a,
            format!("{gw} {p}"),
            "TCP6 to [::1]:{port}: the container must see the gateway and the client's port\n{}",
            ctx()
        );
    }
    let (p, a) = answer_from("UDP6 [::1]:18091", 46000, |p| {
        host.sh(&format!(
            "echo v6 | socat -t 2 -T 10 - UDP6:[::1]:18091,sourceport={p}"
        ))
    });
    assert_eq!(a, format!("{gw} {p}"), "UDP6 to [::1]:18091\n{}", ctx());
    let rows = conntrack(&d, &["--container", "web6"]);
    assert!(
        rows.iter().any(|r| r["protocol"] == "udp"
            && r["direction"] == "inbound"
            && r["remote_ip"] == gw.as_str()
            && r["remote_port"] == p),
        "no inbound UDP flow from {gw}:{p}: {rows:#?}\n{}",
        ctx()
    );
}

/// `enable_ip_masquerade=false` and `--internal` keep a network's
/// containers inside (a normal network beside them gets out), and an
/// internal network publishes no ports.
#[test]
fn masquerade_off_and_internal_networks_stay_inside() {
    let w = World::new(&[]);
    let d = &w.d;
    d.ok(&["network", "create", "--subnet", "10.84.0.0/24", "open"]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.85.0.0/24",
        "-o",
        "com.docker.network.bridge.enable_ip_masquerade=false",
        "nomasq",
    ]);
    d.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.86.0.0/24",
        "inner",
    ]);
    for (c, n) in [("co", "open"), ("cm", "nomasq"), ("ci", "inner")] {
        d.sleeper(c, &[n], &[]);
    }
    let url = format!("http://{OUTSIDE}/file");
    // The control: the same daemon masquerades for a normal network.
    assert_eq!(curl_ok(d, "co", &url).trim(), PAGE, "{}", w.context());
    for c in ["cm", "ci"] {
        let o = curl(&w.d, c, &url, 3);
        assert_ne!(o.code, 0, "{c} reached outside: {}", o.stdout);
        let o = w.d.exec_sh(c, &udp_ask(OUTSIDE, 7, "leak"));
        assert!(!o.stdout.contains("leak"), "{c}: UDP reached outside");
    }
    // Each refusal is counted under its reason (and the grouped key; the
    // internal network's container has no route out, so sends nothing).
    let st: serde_json::Value =
        serde_json::from_str(&w.d.ok(&["conntrack", "stats", "--format", "json"])).unwrap();
    let n = |p: &str| st.pointer(p).and_then(|v| v.as_u64()).unwrap_or(0);
    assert!(n("/drop_reasons/masquerade_off") >= 2, "{st:#}");
    assert!(n("/drops/blocked") >= 2, "{st:#}");
    // Published ports: on the open network it works; on the internal one
    // `run` succeeds (Docker's behaviour) but nothing is published.
    let srv = "exec socat TCP-LISTEN:80,fork,reuseaddr 'SYSTEM:echo $SOCAT_PEERADDR'";
    let d = &w.d;
    d.ok(&[
        "run",
        "-d",
        "--name",
        "po",
        "--network",
        "open",
        "-p",
        "8083:80",
        "--",
        "sh",
        "-c",
        srv,
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "pi",
        "--network",
        "inner",
        "-p",
        "8082:80",
        "--",
        "sh",
        "-c",
        srv,
    ]);
    let outside = &w.outside.ns;
    let got = answer("published port on the open network", || {
        outside.sh(&tcp_read(HOST, 8083))
    });
    assert_eq!(got, OUTSIDE, "{}", w.context());
    // The internal container's server is up (reached from inside its
    // network)...
    d.sleeper("ci2", &["inner"], &[]);
    let pi = d.ip_of("pi", "inner");
    answer("the internal server from its network", || {
        d.exec_sh("ci2", &tcp_read(&pi, 80))
    });
    // ...but not through the host.
    for (ns, addr) in [(outside, HOST), (d.netns(), "127.0.0.1")] {
        let o = ns.sh(&tcp_read(addr, 8082));
        assert!(
            o.stdout.trim().is_empty(),
            "internal network published 8082 on {addr}: {}",
            o.stdout
        );
    }
    let o = d.netns().sh("ss -Hltn 'sport = :8082'");
    assert!(o.stdout.trim().is_empty(), "8082 bound: {}", o.stdout);
    // Isolation on the NAT path: a container of another network cannot
    // reach the internal server through its own gateway (it gets an
    // ICMP "prohibited" at once, not a relayed connection), and no flow
    // to it appears in the table.
    let o = d.exec_sh(
        "co",
        &format!("socat -T 3 - TCP4:{pi}:80,connect-timeout=3 </dev/null"),
    );
    assert!(
        o.stdout.trim().is_empty() && o.code != 0,
        "co (network open) reached {pi} on network inner: {}{}",
        o.stdout,
        o.stderr
    );
    assert!(
        !conntrack(d, &["--container", "co"])
            .iter()
            .any(|r| r["remote_ip"] == pi.as_str()),
        "a flow from co to {pi} was relayed"
    );
}

/// A python3 asyncio TCP echo server (the outside's end of the load test).
const ECHO_SERVER: &str = r#"
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def handle(r, w):
    try:
        while True:
            line = await r.readline()
            if not line:
                break
            w.write(line)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("listening", flush=True)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#;

/// The load client: N connections open at once (opened at most 200 at a
/// time), then one line each way on every one of them.
const LOAD_CLIENT: &str = r#"
import asyncio, resource, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, n + 256), max(hard, n + 256)))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
gate = asyncio.Semaphore(200)
async def connect(i):
    async with gate:
        return await asyncio.open_connection(host, port)
async def talk(i, r, w):
    w.write(b"line %d\n" % i)
    await w.drain()
    got = await r.readline()
    w.close()
    return got == b"line %d\n" % i
async def main():
    conns = await asyncio.gather(*(connect(i) for i in range(n)), return_exceptions=True)
    errs = [repr(c) for c in conns if isinstance(c, BaseException)]
    ok = [(i, c) for i, c in enumerate(conns) if not isinstance(c, BaseException)]
    print("connected %d of %d; errors: %s" % (len(ok), n, sorted(set(errs))[:5]), flush=True)
    res = await asyncio.gather(*(talk(i, r, w) for i, (r, w) in ok), return_exceptions=True)
    bad = [repr(x) for x in res if x is not True]
    print("answered %d of %d; errors: %s" % (len(res) - len(bad), n, sorted(set(bad))[:5]), flush=True)
asyncio.run(asyncio.wait_for(main(), 240))
"#;

/// Load, bounded: 2000 TCP connections open at once from one container to
/// a server outside, every one answering. No timing assertions. Two
/// workers: the NAT runs in worker 0, and the connections whose frames the
/// TAP's queues give to worker 1 are handed over to it.
#[test]
fn two_thousand_concurrent_outbound_connections() {
    let mut w = World::new(&["--workers", "2"]);
    concurrent_connections(&mut w, 2000);
    let d = &w.d;
    // `tapnet stats` counts, per worker, the frames it gave the NAT: the
    // SYNs the kernel's hash put on worker 1's queues are handed over,
    // and a flow's later frames follow its replies to worker 0.
    // SYN, ACK, data and FIN at least, from each of 2000 connections; the
    // client's FINs may still be on their way when it has exited (its
    // closes do not wait for them), so the count is read until it is
    // there, for up to 10 s.
    let handed_now = || -> Vec<u64> {
        let v = d.stats();
        let handed: Vec<u64> = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["nat_frames"].as_u64().unwrap())
            .collect();
        assert_eq!(handed.len(), 2, "{v}");
        // Shown only if the test fails.
        eprintln!("NAT frames by worker: {handed:?}");
        handed
    };
    wait_until(
        "4 NAT frames a connection in tapnet stats",
        Duration::from_secs(10),
        || handed_now().iter().sum::<u64>() >= 2000 * 4,
    );
    let handed = handed_now();
    assert!(handed[0] + handed[1] >= 2000 * 4, "{handed:?}");
    assert!(handed[1] > 0, "no SYN on worker 1's queues? {handed:?}");
    assert!(
        handed[0] > handed[1] * 2,
        "flows did not follow the NAT: {handed:?}"
    );
    let table = d.ok(&["stats"]);
    assert!(table.contains("NAT FRAMES"), "{table}");
}

/// The other layout (`--nat-thread`): the NAT in a thread of its own,
/// two workers handing it frames. Outbound TCP, UDP and ICMP, a published
/// port, and 300 connections at once.
#[test]
fn the_nat_thread_layout_relays_too() {
    let mut w = World::new(&["--workers", "2", "--nat-thread"]);
    w.d.ok(&["network", "create", "--subnet", "10.88.0.0/24", "thr"]);
    w.d.sleeper("t1", &["thr"], &[]);
    let page = curl_ok(&w.d, "t1", &format!("http://{OUTSIDE}/file"));
    assert_eq!(page.trim(), PAGE, "{}", w.context());
    let echo = w.exec_ok("t1", &udp_ask(OUTSIDE, 7, "tapnet-thread-echo"));
    assert_eq!(echo.trim(), "tapnet-thread-echo", "{}", w.context());
    w.exec_ok("t1", &format!("ping -c 2 -W 3 {OUTSIDE}"));
    w.d.ok(&[
        "run",
        "-d",
        "--name",
        "tweb",
        "--network",
        "thr",
        "-p",
        "8181:80",
        "--",
        "sh",
        "-c",
        "exec socat TCP-LISTEN:80,fork,reuseaddr 'SYSTEM:echo $SOCAT_PEERADDR'",
    ]);
    let got = answer("TCP 8181 from outside", || {
        w.outside.ns.sh(&tcp_read(HOST, 8181))
    });
    assert_eq!(got, OUTSIDE, "{}", w.context());
    concurrent_connections(&mut w, 300);
}

/// One connection after another from a container, each closed with a
/// reset (`SO_LINGER` 0, as load balancers and health checkers do), 4000
/// of them with a limit of 64 flows per container: closed flows linger
/// 10 s in the NAT's table, and a new connection takes the place of the
/// container's oldest closed one (before, the 65th was refused: this
/// happened at the default limit, 8192, to any container opening more
/// than about 820 connections a second). The container's kernel also
/// hands a freed port out again at once, while the table still holds the
/// reset flow of that tuple. Every connection must answer, and the run
/// must really reuse ports. (The gateway's own tests cover a reset and a
/// new SYN arriving in one batch.)
#[test]
fn reset_connections_may_reuse_their_ports_at_once() {
    let mut w = World::new(&["--conntrack-max-per-container", "64"]);
    start_echo_server(&mut w);
    std::fs::write(w.files.0.join("reuse.py"), RESET_CLIENT).unwrap();
    let client = w.files.0.join("reuse.py").display().to_string();
    w.d.ok(&["network", "create", "--subnet", "10.86.0.0/24", "reuse"]);
    w.d.sleeper("reuser", &["reuse"], &[]);
    let out = w.exec_ok("reuser", &format!("{PYTHON} {client} {OUTSIDE} 7100 4000"));
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        out.starts_with("answered 4000 of 4000;"),
        "{out}\n{}",
        w.context()
    );
    let reused: u32 = words.last().and_then(|r| r.parse().ok()).unwrap_or(0);
    assert!(reused > 0, "no port was reused: {out}");
}

/// A container's `UDP_SEGMENT` send (UDP GSO, as QUIC stacks use it)
/// leaves its TAP as one super-frame; the NAT sends its datagrams one by
/// one, and the outside echo answers each.
#[test]
fn a_udp_segment_send_reaches_the_outside_as_its_datagrams() {
    let w = World::new(&[]);
    let script = w.script_container("gso.py", UDP_GSO_CLIENT, "10.91.0.0/24", "quic", &[]);
    let out = w.exec_ok("quic", &format!("{PYTHON} {script} {OUTSIDE} 7"));
    assert_eq!(
        out.trim(),
        "echoed 500 1000 1000 as sent",
        "{}",
        w.context()
    );
    assert_eq!(w.nat_drops("udp_gso"), 0, "{}", w.context());
}

/// Datagrams the outside sends in one `UDP_SEGMENT` write arrive at the
/// NAT's socket as one run (`UDP_GRO`) and reach the container as one
/// frame, which its kernel cuts into the datagrams: 40 of them in a
/// handful of frames on the container's eth0 (one by one, 40 frames),
/// each as sent, on an outbound flow and through a published port. On a
/// kernel whose TAPs refuse UDP super-frames (before 6.2) the NAT does
/// not ask for runs, and the datagrams still arrive, one frame each.
#[test]
fn datagrams_sent_at_once_reach_a_container_at_once() {
    runs_reach_a_container(&[], UDP_GSO_SERVER, 7400, "10.94.0.0/24", "gro", 9400);
}

/// Datagrams the outside writes one by one, back to back, wait in the
/// NAT's socket together when the NAT's worker falls behind, and the NAT
/// reads them into one run (the loopback and veths never coalesce
/// single datagrams; a NIC's GRO would): the same handful of frames on
/// the container's eth0. The outside's sender runs as a real-time task
/// on the worker's CPU (`--worker-cpus 0`), so that all of them wait.
#[test]
fn datagrams_sent_one_by_one_reach_a_container_as_a_run() {
    runs_reach_a_container(
        &["--workers", "1", "--worker-cpus", "0"],
        &format!("{REALTIME_BURST}{UDP_SINGLES_SERVER}"),
        7402,
        "10.96.0.0/24",
        "singles",
        9402,
    );
}

/// The outside's `server` (on `port`) sends 40 datagrams to container `c`
/// (a network of its own, `subnet`) on the flow its `go` opened, then
/// through published port `published` on `pub PORT`: each way they
/// arrive as sent, in a handful of frames on the container's eth0 where
/// the TAPs take UDP super-frames, else one frame each.
fn runs_reach_a_container(
    daemon: &[&str],
    server: &str,
    port: u16,
    subnet: &str,
    c: &str,
    published: u16,
) {
    let mut w = World::new(daemon);
    let p = port.to_string();
    w.outside_server("server.py", server, &[&p, HOST], port, true);
    let publish = format!("{published}:{published}/udp");
    let path = w.script_container("gro.py", UDP_GRO_CLIENT, subnet, c, &["-p", &publish]);
    let out = w.exec_ok(c, &format!("{PYTHON} {path} {OUTSIDE} {port} {published}"));
    let ctx = w.context();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}\n{ctx}");
    for (line, path) in lines.iter().zip(["outbound", "published"]) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[..4], [path, "40", "as", "sent"], "{path}: {line}\n{ctx}");
        let frames: u64 = f[f.len() - 1].parse().unwrap();
        if tapnet::sys::udp::taps_take_uso() {
            assert!(
                frames <= 6,
                "{path}: 40 datagrams came in {frames} frames, not as a run: {line}\n{ctx}"
            );
        } else {
            // A kernel before 6.2: its TAPs refuse UDP super-frames, so
            // the NAT reads and sends the datagrams one by one.
            assert!(frames >= 40, "{path}: {line}\n{ctx}");
        }
    }
    assert_eq!(w.nat_drops("host_recv"), 0, "{ctx}");
    assert_eq!(w.nat_drops("host_rcvbuf"), 0, "{ctx}");
}

/// What the senders of the run tests share (put before their script):
/// `burst(send, datagrams)` calls `send` on each datagram as a real-time
/// task on the first CPU the process may use (the worker's, with
/// `--worker-cpus 0`), so that they all wait for the worker until the
/// last is sent.
const REALTIME_BURST: &str = r#"
import os
cpu = min(os.sched_getaffinity(0))
def burst(send, datagrams):
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        for d in datagrams:
            send(d)
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
"#;

/// The outside's side of `datagrams_sent_one_by_one_reach_a_container_as_a_run`:
/// as `UDP_GSO_SERVER`, but one `sendto` a datagram, in a real-time burst
/// (after [`REALTIME_BURST`]).
const UDP_SINGLES_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
want = [bytes((k * 7 + i) % 251 for i in range(1000)) for k in range(40)]
while True:
    m, a = s.recvfrom(100)
    if m == b"go":
        burst(lambda d: s.sendto(d, a), want)
    elif m.startswith(b"pub "):
        o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        to = (sys.argv[2], int(m[4:]))
        burst(lambda d: o.sendto(d, to), want)
        o.close()
"#;

/// Datagrams a container writes one by one, back to back, leave the host
/// as one `UDP_SEGMENT` message (the NAT holds a run of them while it
/// reads the container's frames): a reader outside with `UDP_GRO` takes
/// them in a handful of reads (one by one: 41), each as sent, on an
/// outbound flow and through a published port; two flows written in
/// turn, a datagram each, get a run each. The container's sender runs as
/// a real-time task on the worker's CPU, so that its datagrams wait in
/// the TAP until it is done, as they do when the worker falls behind a
/// fast sender.
#[test]
fn datagrams_written_one_by_one_leave_the_host_as_a_run() {
    let mut w = World::new(&["--workers", "1", "--worker-cpus", "0"]);
    w.outside_server("run_server.py", UDP_RUN_SERVER, &["7401", HOST], 7401, true);
    let path = w.script_container(
        "run.py",
        &format!("{REALTIME_BURST}{UDP_RUN_CLIENT}"),
        "10.95.0.0/24",
        "runs",
        &["-p", "9401:9401/udp"],
    );
    let out = w.exec_ok("runs", &format!("{PYTHON} {path} {OUTSIDE} 7401 9401"));
    let ctx = w.context();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}\n{ctx}");
    // Two flows written in turn, a datagram each: a run each.
    let two: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(two[..3], ["two", "40", "40"], "{out}\n{ctx}");
    assert_eq!(two[4..], ["as", "sent"], "{out}\n{ctx}");
    let reads: u64 = two[3].parse().unwrap();
    assert!(
        reads <= 6,
        "two flows in turn took {reads} reads: {out}\n{ctx}"
    );
    for (line, path) in lines.iter().zip(["outbound", "published"]) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[..2], [path, "40"], "{path}: {line}\n{ctx}");
        assert_eq!(f[3..], ["as", "sent"], "{path}: {line}\n{ctx}");
        let reads: u64 = f[2].parse().unwrap();
        assert!(
            reads <= 6,
            "{path}: 41 datagrams took {reads} reads, not a run: {line}\n{ctx}"
        );
    }
    assert_eq!(w.nat_drops("host_send"), 0, "{ctx}");
}

/// The outside's side of `datagrams_written_one_by_one_leave_the_host_as_a_run`,
/// reading with `UDP_GRO`: on `ready?` it answers `ready`, reads the
/// datagrams up to `end` and reports them (how many, in how many reads,
/// whether as sent); on `pub PORT`, it sends `go` to the host's PORT from
/// a socket of its own, and reports what comes back to that socket; on
/// `two?`, as on `ready?` for two senders, each up to its `end`.
const UDP_RUN_SERVER: &str = r#"
import socket, sys
UDP_GRO = 104
want = [bytes((k * 7 + i) % 251 for i in range(1000)) for k in range(40)]
def collect(sock, senders):
    # Up to each sender's `end`: the datagrams, by sender, and the reads.
    sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    sock.settimeout(5)
    got, ended, reads = {}, set(), 0
    try:
        while len(ended) < senders:
            m, anc, _, a = sock.recvmsg(65536, socket.CMSG_SPACE(4))
            reads += 1
            seg = len(m)
            for level, kind, data in anc:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(data[:4], sys.byteorder)
            for part in [m[i:i + seg] for i in range(0, len(m), seg)] or [m]:
                if part == b"end":
                    ended.add(a)
                else:
                    got.setdefault(a, []).append(part)
    except socket.timeout:
        pass
    lists = (list(got.values()) + [[]] * senders)[:senders]
    sent = len(got) == senders and all(l == want for l in lists)
    counts = " ".join(str(len(l)) for l in lists)
    return "%s %d %s" % (counts, reads, "as sent" if sent else "changed")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    s.settimeout(None)
    m, a = s.recvfrom(100)
    if m == b"ready?":
        s.sendto(b"ready", a)
        s.sendto(("outbound " + collect(s, 1)).encode(), a)
        s.setsockopt(socket.SOL_UDP, UDP_GRO, 0)
    elif m == b"two?":
        s.sendto(b"ready", a)
        s.sendto(("two " + collect(s, 2)).encode(), a)
        s.setsockopt(socket.SOL_UDP, UDP_GRO, 0)
    elif m.startswith(b"pub "):
        o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        o.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        o.bind(("0.0.0.0", 0))
        o.sendto(b"go", (sys.argv[2], int(m[4:])))
        s.sendto(("published " + collect(o, 1)).encode(), a)
        o.close()
"#;

/// The container's side: 40 datagrams of 1000 bytes and `end`, one `send`
/// each, in a real-time burst (after [`REALTIME_BURST`]), each way, then
/// on two flows in turn; prints the outside's reports.
const UDP_RUN_CLIENT: &str = r#"
import socket, sys
want = [bytes((k * 7 + i) % 251 for i in range(1000)) for k in range(40)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
s.send(b"ready?")
assert s.recv(100) == b"ready"
burst(s.send, want + [b"end"])
print(s.recv(200).decode())
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
p.bind(("0.0.0.0", int(sys.argv[3])))
p.settimeout(10)
s.send(b"pub " + sys.argv[3].encode())
m, a = p.recvfrom(100)
assert m == b"go", m
burst(lambda d: p.sendto(d, a), want + [b"end"])
print(s.recv(200).decode())
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"two?")
assert s.recv(100) == b"ready"
burst(lambda d: (s.send(d), t.send(d)), want + [b"end"])
print(s.recv(200).decode())
"#;

/// The outside's side of `datagrams_sent_at_once_reach_a_container_at_once`:
/// on `go` it answers its sender with 40 datagrams of 1000 bytes in one
/// `UDP_SEGMENT` write; on `pub PORT`, it sends them to the host's PORT.
const UDP_GSO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
data = b"".join(bytes((k * 7 + i) % 251 for i in range(1000)) for k in range(40))
while True:
    m, a = s.recvfrom(100)
    o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    o.setsockopt(socket.SOL_UDP, 103, 1000)  # UDP_SEGMENT
    if m == b"go":
        s.setsockopt(socket.SOL_UDP, 103, 1000)
        s.sendto(data, a)
        s.setsockopt(socket.SOL_UDP, 103, 0)
    elif m.startswith(b"pub "):
        o.sendto(data, (sys.argv[2], int(m[4:])))
    o.close()
"#;

/// The container's side: the datagrams each way, whether they are as
/// sent, and how many frames eth0 received meanwhile.
const UDP_GRO_CLIENT: &str = r#"
import socket, sys
def frames():
    return int(open("/sys/class/net/eth0/statistics/rx_packets").read())
want = [bytes((k * 7 + i) % 251 for i in range(1000)) for k in range(40)]
def take(sock):
    got = []
    sock.settimeout(5)
    try:
        while len(got) < 40:
            got.append(sock.recv(65536))
    except socket.timeout:
        pass
    return got
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
p.bind(("0.0.0.0", int(sys.argv[3])))
for path, ask, sock in (("outbound", b"go", s), ("published", b"pub " + sys.argv[3].encode(), p)):
    before = frames()
    s.send(ask)
    got = take(sock)
    n = frames() - before
    print(path, len(got), "as sent" if got == want else "changed", n)
"#;

/// A datagram larger than the network's MTU leaves the container as IP
/// fragments; the NAT reassembles it and sends it whole (the host's
/// kernel fragments it again on its own route), and the answer comes
/// back: a 4000-byte UDP echo and `ping -s 3000`, both without drops.
#[test]
fn datagrams_larger_than_the_mtu_go_out_in_fragments() {
    let w = World::new(&[]);
    let script = w.script_container("big.py", BIG_DATAGRAM_CLIENT, "10.92.0.0/24", "big", &[]);
    let out = w.exec_ok("big", &format!("{PYTHON} {script} {OUTSIDE} 7 4000"));
    assert_eq!(out.trim(), "echoed 4000 as sent", "{}", w.context());
    w.exec_ok("big", &format!("ping -c 2 -W 3 -s 3000 {OUTSIDE}"));
    assert_eq!(w.nat_drops("ip_fragment"), 0, "{}", w.context());
}

/// A datagram to where the host has no route, or to a neighbour that
/// does not answer ARP, gets ICMP net or host unreachable back from the
/// gateway, as a router (Docker's host kernel) sends it: a container's
/// connected UDP socket that asks for errors (`IP_RECVERR`, as resolvers
/// and traceroute do; Linux passes these two to other sockets only as
/// ICMP) fails with ENETUNREACH, then EHOSTUNREACH, instead of waiting
/// out its timeout; `ping` reports "Destination Host Unreachable".
#[test]
fn unreachable_destinations_fail_a_containers_udp_at_once() {
    let w = World::new(&[]);
    let script = w.script_container(
        "unreach.py",
        UNREACHABLE_CLIENT,
        "10.93.0.0/24",
        "lost",
        &[],
    );
    // 203.0.113.9 (TEST-NET-3): no route in the daemon's namespace;
    // 198.51.100.99: on the outside link, but nobody has it.
    let out = w.exec_ok(
        "lost",
        &format!("{PYTHON} {script} 203.0.113.9 198.51.100.99"),
    );
    assert_eq!(out.trim(), "ENETUNREACH EHOSTUNREACH", "{}", w.context());
    // ping says so too, from the gateway.
    let ping = w.d.exec_sh("lost", "ping -c 1 -W 10 198.51.100.99");
    assert!(
        ping.code != 0 && ping.stdout.contains("Unreachable"),
        "{}{} (unreachable drops: {})\n{}",
        ping.stdout,
        ping.stderr,
        w.nat_drops("unreachable"),
        w.context()
    );
    assert_eq!(w.nat_drops("unreachable"), 3, "{}", w.context());
}

/// `traceroute` from a container, to a host two routers away (the
/// outside namespace forwards to a far one): the gateway answers the
/// first hop, the outside router the second (its time exceeded reaches
/// the NAT's socket and comes back from that router's address), the far
/// host the third (port unreachable, or its echo reply), as through
/// Docker's kernel NAT; with UDP probes and with ICMP echo. A router
/// beyond the host that has no route answers from its own address too.
#[test]
fn traceroute_from_a_container_shows_the_gateway_and_the_routers() {
    let w = World::new(&[]);
    let far = Outside::connect(&w.outside.ns, &["203.0.113.1/24"], "203.0.113.2/24");
    w.outside.ns.sh_ok("sysctl -qw net.ipv4.ip_forward=1");
    far.ns.sh_ok("ip route add default via 203.0.113.1");
    w.d.netns()
        .sh_ok(&format!("ip route add 203.0.113.0/24 via {OUTSIDE}"));
    w.d.ok(&["network", "create", "--subnet", "10.94.0.0/24", "trace"]);
    w.d.sleeper("tracer", &["trace"], &[]);
    let gw = w.d.gateway_of("trace");
    // UDP probes, then ICMP echo (`-I`: the NAT's ping or raw socket).
    for icmp in ["", "-I "] {
        let cmd = format!("busybox traceroute {icmp}-n -q 1 -w 3 -m 5 203.0.113.2");
        let out = w.exec_ok("tracer", &cmd);
        let hops: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        let want = [gw.as_str(), OUTSIDE, "203.0.113.2"];
        assert_eq!(hops, want, "{cmd}: {out}\n{}", w.context());
    }
    assert!(w.nat_drops("ttl_exceeded") >= 4, "{}", w.context());

    // A router beyond the host without a route (the outside one, for
    // 192.0.2.0/24): its net unreachable comes back from its address.
    w.d.netns()
        .sh_ok(&format!("ip route add 192.0.2.0/24 via {OUTSIDE}"));
    let script = w.files.0.join("offender.py").display().to_string();
    std::fs::write(&script, OFFENDER_CLIENT).unwrap();
    let out = w.exec_ok("tracer", &format!("{PYTHON} {script} 192.0.2.9"));
    assert_eq!(
        out.trim(),
        format!("ENETUNREACH from {OUTSIDE}"),
        "{}",
        w.context()
    );
}

/// `offender.py HOST`: one UDP datagram to HOST with `IP_RECVERR`; prints
/// the error its error queue reports and the address that sent it.
const OFFENDER_CLIENT: &str = r#"
import errno, select, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.connect((sys.argv[1], 9))
s.send(b"anyone?")
p = select.poll()
p.register(s, select.POLLERR)
p.poll(10000)
_, anc, _, _ = s.recvmsg(100, 512, socket.MSG_ERRQUEUE)
for level, kind, data in anc:
    if level == socket.IPPROTO_IP and kind == 11:
        ee_errno = struct.unpack("I", data[:4])[0]
        print(errno.errorcode.get(ee_errno, ee_errno), "from", socket.inet_ntoa(data[16 + 4:16 + 8]))
"#;

/// `unreach.py A B`: one datagram to A, then one to B, each on a
/// connected UDP socket with `IP_RECVERR`; prints what each recv ended
/// with (an errno name, "timeout" after 10 s, or "answer").
const UNREACHABLE_CLIENT: &str = r#"
import errno, socket, sys
def ask(host):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
    s.settimeout(10)
    s.connect((host, 9))
    s.send(b"anyone?")
    try:
        s.recv(100)
        return "answer"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print(ask(sys.argv[1]), ask(sys.argv[2]))
"#;

/// `big.py HOST PORT N`: one N-byte datagram to a UDP echo; prints
/// "echoed M as sent" (or "changed").
const BIG_DATAGRAM_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
data = bytes(i % 251 for i in range(int(sys.argv[3])))
s.send(data)
got = s.recv(65536)
print("echoed", len(got), "as sent" if got == data else "changed")
"#;

/// `gso.py HOST PORT`: one 2500-byte send with `UDP_SEGMENT` 1000 (three
/// datagrams) to a UDP echo; prints the sizes echoed and whether each
/// answer is one of the datagrams sent.
const UDP_GSO_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, 1000)  # UDP_SEGMENT
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
data = bytes(i % 251 for i in range(2500))
s.send(data)
chunks = [data[i:i + 1000] for i in range(0, 2500, 1000)]
got = []
try:
    while len(got) < 3:
        got.append(s.recv(65536))
except socket.timeout:
    pass
same = sorted(got) == sorted(chunks)
print("echoed", " ".join(str(n) for n in sorted(len(g) for g in got)), "as sent" if same else "changed")
"#;

/// A container uploads to a host that is not reading yet, closes its
/// side once the gateway has acknowledged everything (its FIN too), and
/// exits (`run --rm`): the data sits in the NAT's leg when the container
/// leaves, and must still reach the host in full, ending with FIN rather
/// than a reset.
#[test]
fn an_upload_acknowledged_before_the_container_left_arrives_whole() {
    let mut w = World::new(&[]);
    let uploader = w.script("upload.py", UPLOADER);
    let result = w.files.0.join("read.txt");
    let r = result.display().to_string();
    w.outside_server(
        "slow_reader.py",
        SLOW_READER,
        &["7200", "3", &r],
        7200,
        false,
    );
    w.d.ok(&["network", "create", "--subnet", "10.90.0.0/24", "up"]);
    let n = 768 * 1024;
    let up = w.d.ok(&[
        "run",
        "--rm",
        "--network",
        "up",
        "--",
        PYTHON,
        &uploader,
        OUTSIDE,
        "7200",
        &n.to_string(),
    ]);
    assert_eq!(
        up.trim(),
        format!("sent {n}; unacknowledged 0"),
        "{}",
        w.context()
    );
    wait_until("the slow reader's result", Duration::from_secs(30), || {
        std::fs::read_to_string(&result).is_ok_and(|s| s.ends_with('\n'))
    });
    let got = std::fs::read_to_string(&result).unwrap();
    assert_eq!(
        got.trim(),
        format!("read {n} ok; end of stream"),
        "{}",
        w.context()
    );
}

/// `sink.py PORT FILE`: accepts one connection, reads to the end and
/// writes to FILE "read N".
const SINK: &str = r#"
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port))
l.listen(1)
c, _ = l.accept()
b, n = bytearray(1 << 20), 0
while True:
    k = c.recv_into(b)
    if not k:
        break
    n += k
open(out, "w").write("read %d\n" % n)
"#;

/// `stream.py HOST PORT SECS`: sends 1 MiB writes for SECS seconds and
/// prints "sent N".
const STREAM: &str = r#"
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
b, n, end = bytes(1 << 20), 0, time.time() + secs
while time.time() < end:
    s.sendall(b)
    n += len(b)
s.close()
print("sent %d" % n)
"#;

/// A container's upload through the NAT on a crowded machine (more
/// threads runnable than CPUs; the test crowds it itself): what the
/// workers polled meanwhile, seconds, and the bytes that arrived.
fn crowded_upload(extra: &[&str]) -> (f64, u64) {
    let mut w = World::new(extra);
    let result = w.files.0.join("sink.txt");
    let r = result.display().to_string();
    w.outside_server("sink.py", SINK, &["7300", &r], 7300, false);
    let stream = w.script("stream.py", STREAM);
    w.d.ok(&["network", "create", "--subnet", "10.91.0.0/24", "up"]);
    w.d.sleeper("up1", &["up"], &[]);
    let (sent, spun) = crowded(|| {
        let before = w.d.spin_seconds();
        let sent = w.exec_ok("up1", &format!("{PYTHON} {stream} {OUTSIDE} 7300 3"));
        (sent, w.d.spin_seconds() - before)
    });
    wait_until("the sink's count", Duration::from_secs(30), || {
        std::fs::read_to_string(&result).is_ok_and(|s| s.ends_with('\n'))
    });
    let got = std::fs::read_to_string(&result).unwrap();
    let n: u64 = got.trim().strip_prefix("read ").unwrap().parse().unwrap();
    assert_eq!(sent.trim(), format!("sent {n}"), "{}", w.context());
    (spun, n)
}

/// On a crowded machine a worker stops busy-polling while a container
/// streams through the NAT (the default, `--sleep-when-crowded
/// streams`: its polling would take a CPU from the sender or the host's
/// reader), and polls on with `never`. `tests/capture.rs` has the ping
/// flood that keeps it polling by default.
#[test]
fn a_crowded_machine_stops_polling_while_a_container_streams_through_the_nat() {
    let (default, got) = crowded_upload(&[]);
    let (never, got_never) = crowded_upload(&["--sleep-when-crowded", "never"]);
    eprintln!(
        "polling during a crowded upload: {default} s by default ({got} bytes), \
         {never} s with never ({got_never} bytes)"
    );
    // A stream: far above the 0.8 Gbit/s the default looks for.
    assert!(
        got > 300_000_000 && got_never > 300_000_000,
        "{got} / {got_never} bytes in 3 s"
    );
    assert!(
        never > 4.0 * default && never > 0.002,
        "polled {default} s by default during a stream, {never} s with never"
    );
}

/// The daemon's resident memory, KiB.
fn rss_kib(pid: i32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {st}"))
}

/// Flows that moved megabytes and then went idle give their rings back
/// (issue 19: "the leg buffers grow with the data, then shrink"). A
/// container moves 3 MiB each way on each of 100 connections in turn
/// (through socat's echo outside: the leg's 1 MiB receive ring is written
/// all round, its 2 MiB transmit ring as far as it fills) and keeps them
/// open. Rings kept resident would grow the daemon by 100 MiB or more;
/// given back after two idle seconds, they cost nothing. The echoes are
/// checked byte for byte.
#[test]
fn idle_flows_give_their_rings_back() {
    const FLOWS: u64 = 100;
    let mut w = World::new(&[]);
    let client = w.script("hold.py", HOLD_CLIENT);
    let marker = w.files.0.join("moved");
    w.outside_server("echo_all.py", ECHO_ALL, &["7300"], 7300, false);
    w.d.ok(&["network", "create", "--subnet", "10.91.0.0/24", "idle"]);
    w.d.sleeper("warm", &["idle"], &[]);
    curl_ok(&w.d, "warm", &format!("http://{OUTSIDE}/file"));
    let before = rss_kib(w.d.pid());
    let m = marker.display().to_string();
    w.d.ok(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "idle",
        "--",
        PYTHON,
        &client,
        OUTSIDE,
        "7300",
        &FLOWS.to_string(),
        &(3 << 20).to_string(),
        &m,
    ]);
    wait_until("the client's transfers", Duration::from_secs(120), || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.ends_with('\n'))
    });
    let done = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(done.trim(), format!("moved {FLOWS} ok"), "{}", w.context());
    let released = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&w.d.ok(&["conntrack", "stats", "--format", "json"])).unwrap();
        v["rings_released"]["rings"].as_u64().unwrap()
    };
    // Two rings a flow, two seconds after its last byte.
    wait_until(
        "every flow's rings given back",
        Duration::from_secs(15),
        || released() >= 2 * FLOWS,
    );
    let after = rss_kib(w.d.pid());
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "{FLOWS} idle flows grew the daemon by {grown} KiB ({before} -> {after})"
    );
    let open = conntrack(&w.d, &["--container", "holder"])
        .iter()
        .filter(|f| f["protocol"] == "tcp" && f["state"] == "established")
        .count() as u64;
    assert_eq!(open, FLOWS, "the flows are still open");
}

/// `echo_all.py PORT`: echoes whatever each connection sends, as it comes.
const ECHO_ALL: &str = r#"
import asyncio, sys
async def handle(r, w):
    try:
        while (b := await r.read(1 << 16)):
            w.write(b)
            await w.drain()
    except ConnectionError:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]), backlog=1024)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#;

/// `hold.py HOST PORT N SIZE FILE`: N connections in turn, SIZE bytes
/// sent on each and its echo read back and compared, all kept open; then
/// writes "moved N ok" (or what went wrong) to FILE and sleeps.
const HOLD_CLIENT: &str = r#"
import socket, sys, threading, time
host, port, n, size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
data = bytes(i % 251 for i in range(size))
socks, result = [], "ok"
try:
    for i in range(n):
        s = socket.create_connection((host, port), timeout=30)
        t = threading.Thread(target=s.sendall, args=(data,))
        t.start()
        got = bytearray()
        while len(got) < size:
            b = s.recv(1 << 20)
            if not b:
                break
            got += b
        t.join()
        if got != data:
            result = "connection %d: %d bytes back, %s" % (i, len(got), "corrupt" if got[:len(data)] != data[:len(got)] else "short")
            break
        socks.append(s)
except OSError as e:
    result = repr(e)
open(out, "w").write("moved %d %s\n" % (len(socks), result))
time.sleep(3600)
"#;

/// `slow_reader.py PORT DELAY FILE`: accepts one connection with a tiny
/// receive buffer, waits DELAY seconds, reads to the end and writes to
/// FILE "read N ok|corrupt; end of stream" or the error it got.
const SLOW_READER: &str = r#"
import socket, sys, time
port, delay, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
l.bind(("0.0.0.0", port))
l.listen(1)
c, _ = l.accept()
time.sleep(delay)
n, ok, end = 0, True, "end of stream"
try:
    while True:
        b = c.recv(65536)
        if not b:
            break
        ok = ok and all(b[i] == (n + i) % 251 for i in range(len(b)))
        n += len(b)
except OSError as e:
    end = repr(e)
open(out, "w").write("read %d %s; %s\n" % (n, "ok" if ok else "corrupt", end))
"#;

/// `upload.py HOST PORT N`: sends N bytes (i mod 251), shuts its side
/// down, waits until the peer has acknowledged all of it and the FIN
/// (`SIOCOUTQ` 0, 10 s at most) and prints "sent N; unacknowledged U".
const UPLOADER: &str = r#"
import fcntl, socket, struct, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
s.sendall(bytes(i % 251 for i in range(n)))
s.shutdown(socket.SHUT_WR)
def outq():
    return struct.unpack("i", fcntl.ioctl(s.fileno(), 0x5411, b"\0" * 4))[0]
deadline = time.time() + 10
while outq() and time.time() < deadline:
    time.sleep(0.01)
print("sent %d; unacknowledged %d" % (n, outq()))
"#;

/// `n` connections in turn, each closed with a reset: "answered N of M;
/// ports reused R".
const RESET_CLIENT: &str = r#"
import socket, struct, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, seen, reused, errs = 0, set(), 0, {}
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        p = s.getsockname()[1]
        reused += p in seen
        seen.add(p)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"line %d\n" % i)
        ok += s.makefile("rb").readline() == b"line %d\n" % i
        s.close()
    except OSError as e:
        errs[repr(e)] = errs.get(repr(e), 0) + 1
print("answered %d of %d; %s; ports reused %d" % (ok, n, errs, reused))
"#;

/// The python echo server outside, on port 7100, answering.
fn start_echo_server(w: &mut World) {
    std::fs::write(w.files.0.join("echo.py"), ECHO_SERVER).unwrap();
    let server = w.files.0.join("echo.py").display().to_string();
    let echo = w.outside.ns.spawn(&[PYTHON, &server, "7100"]);
    w.servers.push(echo);
    retry("the python echo server", Duration::from_secs(15), || {
        let o = w
            .outside
            .ns
            .sh(&format!("echo ok | socat -t 2 - TCP4:{OUTSIDE}:7100"));
        (o.stdout.trim() == "ok")
            .then_some(())
            .ok_or(format!("{}{}", o.stdout, o.stderr))
    });
}

/// `n` TCP connections open at once from a new container to a python echo
/// server outside; every one must answer.
fn concurrent_connections(w: &mut World, n: u32) {
    start_echo_server(w);
    std::fs::write(w.files.0.join("load.py"), LOAD_CLIENT).unwrap();
    let client = w.files.0.join("load.py").display().to_string();
    w.d.ok(&["network", "create", "--subnet", "10.87.0.0/24", "load"]);
    w.d.sleeper("loader", &["load"], &[]);
    // Warm up: the path works for one connection first.
    curl_ok(&w.d, "loader", &format!("http://{OUTSIDE}/file"));
    let out = w.exec_ok("loader", &format!("{PYTHON} {client} {OUTSIDE} 7100 {n}"));
    assert!(
        out.contains(&format!("answered {n} of {n};")),
        "{out}\n{}",
        w.context()
    );
}

/// Rootless: `tests/rootless_nat.sh` as an ordinary user — a container
/// reaches a server on the namespace's 127.0.0.1 through
/// `host.tapnet.internal`, a published high port answers curl, and
/// publishing port 80 fails naming `ip_unprivileged_port_start`.
#[test]
fn rootless_host_loopback_and_published_port() {
    // As root the script gets a namespace of its own: lo up, and the
    // kernel's default for unprivileged ports, stated.
    let run = rootless_support::run_as_user_with("nat", "tests/rootless_nat.sh", |ns| {
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg("ip link set lo up && sysctl -qw net.ipv4.ip_unprivileged_port_start=1024")
            .status()
            .unwrap();
        assert!(st.success(), "set up the rootless namespace {ns}");
    });
    assert!(
        run.status.success() && run.text.contains("ROOTLESS NAT OK"),
        "rootless script: {}\n{}\n--- trace\n{}\n--- daemon log\n{}",
        run.status,
        run.text,
        std::fs::read_to_string(run.work.join("trace")).unwrap_or_default(),
        std::fs::read_to_string(run.work.join("daemon.log")).unwrap_or_default()
    );
}
