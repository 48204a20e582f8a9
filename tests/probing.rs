//! Defects found by probing the API and the CLI with bad input and a seed
//! scenario (issue 13): prune filters, owner-only state, the embedded DNS
//! after `network connect`, API versions, the gateway's MAC, subnets and
//! names that cannot work, half-made containers after a crash, the state
//! lock after `kill -9`, and the small ones (405 bodies, non-object bodies,
//! long hostnames, huge port ranges, slow clients, the daemon's socket seen
//! from a container). Each test fails without its fix.

mod ctl_support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ctl_support::*;
use serde_json::{json, Value};

/// One raw HTTP/1.1 request over the daemon's socket: (status, body).
fn raw(d: &Daemon, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(&d.socket).expect("connect to the daemon");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Chunked bodies: take the JSON object in them.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    (status, body)
}

/// The `message` of an error body.
fn message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    v["message"].as_str().unwrap_or_default().to_string()
}

fn prune(d: &Daemon, filters: &str) -> (u16, String) {
    let q = tapnet::client::enc(filters);
    raw(
        d,
        "POST",
        &format!("/networks/prune?filters={q}"),
        Some("{}"),
    )
}

#[test]
fn prune_honours_its_filters() {
    let d = Daemon::start();
    d.ok(&["network", "create", "keepme"]);
    d.ok(&["network", "create", "--label", "team=a", "labelled"]);

    // Filters that select nothing delete nothing.
    for f in [
        r#"{"label":["nomatch=1"]}"#,
        r#"{"until":["1h"]}"#,
        r#"{"label":["team=a"],"label!":["team"]}"#,
    ] {
        let (st, body) = prune(&d, f);
        assert_eq!(st, 200, "{f}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["NetworksDeleted"].as_array().is_none_or(|a| a.is_empty()),
            "{f} deleted {body}"
        );
        assert!(d.network_names().contains(&"keepme".to_string()), "{f}");
    }
    // Unknown and malformed filters are refused, nothing removed.
    for f in [
        r#"{"zzz":["a"]}"#,
        "xx",
        r#"{"until":["soon"]}"#,
        r#"{"until":["1h","2h"]}"#,
    ] {
        let (st, body) = prune(&d, f);
        assert_eq!(st, 400, "{f}: {body}");
        assert!(!message(&body).is_empty());
    }
    assert!(d.network_names().contains(&"keepme".to_string()));
    assert!(d.network_names().contains(&"labelled".to_string()));

    // The CLI's --filter: label selects only the labelled one.
    let out = d.ok(&["network", "prune", "-f", "--filter", "label=team=a"]);
    assert!(out.contains("labelled") && !out.contains("keepme"), "{out}");
    let names = d.network_names();
    assert!(names.contains(&"keepme".to_string()) && !names.contains(&"labelled".to_string()));
    // label! keeps what matches.
    d.ok(&["network", "create", "--label", "keep", "kept"]);
    let out = d.ok(&["network", "prune", "-f", "--filter", "label!=keep"]);
    assert!(out.contains("keepme") && !out.contains("kept"), "{out}");
    // until: only networks created before the time.
    std::thread::sleep(Duration::from_millis(1500));
    d.ok(&["network", "create", "young"]);
    let out = d.ok(&["network", "prune", "-f", "--filter", "until=1s"]);
    assert!(out.contains("kept") && !out.contains("young"), "{out}");
    assert_eq!(
        d.network_names(),
        ["bridge", "host", "none", "young"].map(String::from)
    );
    let e = d.fails(&["network", "prune", "-f", "--filter", "zzz=1"]);
    assert!(e.contains("invalid filter 'zzz'"), "{e}");
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn state_is_owner_only() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "n1"]);
    d.sleeper("sec", &["n1"], &["-e", "SECRET=x"]);
    let c = d.inspect_container("sec");
    let id = c["Id"].as_str().unwrap();
    let cdir = d.root.join("containers").join(id);
    assert_eq!(mode(&d.root), 0o700);
    assert_eq!(mode(&d.root.join("state.redb")), 0o600);
    assert_eq!(mode(&d.root.join("containers")), 0o700);
    assert_eq!(mode(&cdir), 0o700);
    assert_eq!(mode(&cdir.join("log")), 0o600);
    // Bind-mounted into the container, readable there by any user; the
    // directories above keep other host users out.
    assert_eq!(mode(&cdir.join("hosts")), 0o644);

    // Looser modes found at start are fixed, and the log says so.
    d.kill9();
    let loosen = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    loosen(&d.root, 0o755);
    loosen(&d.root.join("state.redb"), 0o644);
    loosen(&d.root.join("containers"), 0o755);
    loosen(&cdir, 0o755);
    loosen(&cdir.join("log"), 0o644);
    d.spawn();
    assert_eq!(mode(&d.root), 0o700);
    assert_eq!(mode(&d.root.join("state.redb")), 0o600);
    assert_eq!(mode(&d.root.join("containers")), 0o700);
    assert_eq!(mode(&cdir), 0o700);
    assert_eq!(mode(&cdir.join("log")), 0o600);
    assert!(d.log().contains("owner-only"), "{}", d.log());
}

#[test]
fn embedded_dns_after_connect_and_back_after_disconnect() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.91.0.0/24", "n1"]);
    d.sleeper("web1", &["n1"], &[]);
    d.sleeper("client", &["bridge"], &[]);
    let resolv = |c: &str| d.exec_sh(c, "cat /etc/resolv.conf").stdout;
    assert!(
        !resolv("client").contains("10.91.0.1"),
        "{}",
        resolv("client")
    );

    d.ok(&["network", "connect", "n1", "client"]);
    let r = resolv("client");
    assert!(r.contains("nameserver 10.91.0.1\n"), "{r}");
    assert_eq!(r.matches("nameserver").count(), 1, "{r}");
    assert!(r.contains("ndots:0"), "{r}");
    let web1 = d.ip_of("web1", "n1");
    let o = d.exec_sh("client", "getent hosts web1");
    assert_eq!(o.code, 0, "{o:?}\n{}", d.log());
    assert!(o.stdout.starts_with(&web1), "{o:?}");

    d.ok(&["network", "disconnect", "n1", "client"]);
    let r = resolv("client");
    assert!(!r.contains("10.91.0.1") && !r.contains("ndots:0"), "{r}");
}

#[test]
fn api_versions_are_checked() {
    let d = Daemon::start();
    for (v, want) in [
        ("1.99", "too new. Maximum supported API version is 1.43"),
        ("99999999999999999999.1", "too new"),
        ("0.1", "too old. Minimum supported API version is"),
    ] {
        let (st, body) = raw(&d, "GET", &format!("/v{v}/networks"), None);
        assert_eq!(st, 400, "{v}: {body}");
        let m = message(&body);
        assert!(m.contains(&format!("client version {v} is")), "{m}");
        assert!(m.contains(want), "{m}");
    }
    for v in ["1.41", "1.43", "1.24"] {
        let (st, body) = raw(&d, "GET", &format!("/v{v}/networks"), None);
        assert_eq!(st, 200, "{v}: {body}");
    }
}

#[test]
fn the_gateway_mac_is_reserved() {
    let d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.90.0.0/24", "cc"]);
    let e = d.fails(&[
        "run",
        "-d",
        "--network",
        "cc",
        "--mac-address",
        "02:42:0a:5a:00:01",
        "--",
        "sleep",
        "60",
    ]);
    assert!(
        e.contains("02:42:0a:5a:00:01") && e.contains("gateway"),
        "{e}"
    );
    let ps = d.ok(&["ps", "-a", "-q"]);
    assert!(ps.trim().is_empty(), "{ps}");
    // Another network's gateway MAC is an ordinary MAC here.
    let r = d.client().post::<Value>(
        "/containers/create",
        &json!({"Networks": [{"Network": "cc", "MacAddress": "02:42:0a:5b:00:01"}], "Cmd": ["true"]}),
    );
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn subnets_that_cannot_work_are_refused() {
    let d = Daemon::start();
    for (subnet, why) in [
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/24", "multicast"),
        ("255.255.255.0/24", "broadcast"),
        ("169.254.0.0/16", "link-local"),
        ("010.073.000.000/24", "leading zeros"),
    ] {
        let e = d.fails(&["network", "create", "--subnet", subnet, "bad"]);
        assert!(e.contains(why), "{subnet}: {e}");
    }
    let e = d.fails(&[
        "network",
        "create",
        "--subnet",
        "10.73.0.0/24",
        "--gateway",
        "10.73.0.01",
        "bad",
    ]);
    assert!(e.contains("leading zeros"), "{e}");
    assert_eq!(
        d.network_names(),
        ["bridge", "host", "none"].map(String::from)
    );
}

#[test]
fn names_aliases_and_hostnames_follow_the_rules() {
    let d = Daemon::start();
    for bad in [".", "..", "-x", "a\u{200b}b", "\u{202e}abc", "a b", "a/b"] {
        let e = d.fails(&["network", "create", "--", bad]);
        assert!(e.contains("invalid network name"), "{bad:?}: {e}");
    }
    assert_eq!(
        d.network_names(),
        ["bridge", "host", "none"].map(String::from)
    );
    d.ok(&["network", "create", "n1"]);
    for alias in ["x y", "../z", "a..b", "-a"] {
        let e = d.fails(&[
            "run",
            "-d",
            "--network",
            "n1",
            "--network-alias",
            alias,
            "--",
            "sleep",
            "60",
        ]);
        assert!(e.contains("invalid alias"), "{alias:?}: {e}");
    }
    let long = "h".repeat(300);
    let e = d.fails(&[
        "run",
        "-d",
        "--network",
        "n1",
        "--hostname",
        &long,
        "--",
        "sleep",
        "60",
    ]);
    assert!(e.contains("longer than 64"), "{e}");
    let e = d.fails(&[
        "run",
        "-d",
        "--network",
        "n1",
        "--hostname",
        "a b",
        "--",
        "sleep",
        "60",
    ]);
    assert!(e.contains("invalid hostname"), "{e}");
    let e = d.fails(&["run", "-d", "--name", "-bad", "--", "sleep", "60"]);
    assert!(e.contains("Invalid container name"), "{e}");
    assert!(d.ok(&["ps", "-a", "-q"]).trim().is_empty());
    // Good ones work.
    d.sleeper(
        "okname",
        &["n1"],
        &["--network-alias", "db.local", "--hostname", "web-1"],
    );
}

#[test]
fn a_crash_between_create_and_start_leaves_nothing() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.92.0.0/24", "n1"]);
    // What `run -d` does first; the daemon dies before `start`.
    for i in 0..5 {
        let _: Value = d
            .client()
            .post(
                "/containers/create",
                &json!({"Name": format!("half{i}"), "Networks": [{"Network": "n1", "IPv4Address": format!("10.92.0.{}", 10 + i)}], "Cmd": ["true"]}),
            )
            .unwrap();
    }
    assert_eq!(d.ok(&["ps", "-a", "-q"]).lines().count(), 5);
    d.kill9();
    d.spawn();
    assert!(d.ok(&["ps", "-a", "-q"]).trim().is_empty(), "{}", d.log());
    assert!(d.log().contains("was being created"), "{}", d.log());
    // Their addresses are free again; their directories are gone.
    d.sleeper("again", &["n1"], &["--ip", "10.92.0.10"]);
    let dirs = std::fs::read_dir(d.root.join("containers"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1);
}

#[test]
fn a_new_daemon_waits_for_the_state_lock() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "n1"]);
    // A second daemon on the same state, started while the first holds the
    // lock (as after `kill -9`, while the old process is still exiting).
    let sock2 = d.dir.0.join("second.sock");
    let log2 = d.dir.0.join("second.log");
    let mut cmd = match &d.ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &ns.name, BIN]);
            c
        }
        None => {
            let mut c = std::process::Command::new("unshare");
            c.args(["--user", "--map-root-user", "--net", "--", BIN]);
            c
        }
    };
    let mut second = cmd
        .args(["daemon", "--workers", "1", "--root"])
        .arg(&d.root)
        .arg("-H")
        .arg(format!("unix://{}", sock2.display()))
        .args(["--docker-plugin", "none"])
        .env("TAPNET_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        "the second daemon to wait for the lock",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log2)
                .unwrap_or_default()
                .contains("waiting")
        },
    );
    assert!(second.try_wait().unwrap().is_none(), "it gave up at once");
    d.kill9();
    let t = Instant::now();
    wait_until(
        "the second daemon to listen",
        Duration::from_secs(20),
        || UnixStream::connect(&sock2).is_ok(),
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let c = tapnet::client::Client::new(sock2.clone());
    let nets: Vec<Value> = c.get("/networks").unwrap();
    assert!(nets.iter().any(|n| n["Name"] == "n1"));
    // Killed by its PID: ours.
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn small_defects() {
    let d = Daemon::start();
    // 405 with Docker's error body.
    let (st, body) = raw(&d, "PUT", "/networks", None);
    assert_eq!(st, 405, "{body}");
    assert!(message(&body).contains("not allowed"), "{body}");
    // A body that is not an object.
    let (st, body) = raw(&d, "POST", "/networks/create", Some("[]"));
    assert_eq!(st, 400);
    assert!(message(&body).contains("must be a JSON object"), "{body}");
    // A port range beyond the open-file limit: refused up front, at once.
    // (The limit is set here: the machine's hard limit may be large.)
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &d.pid().to_string(), "--nofile=4096:4096"])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let e = d.fails(&["run", "-d", "-p", "1-65535:1-65535", "--", "sleep", "60"]);
    assert!(e.contains("cannot publish 65535 ports"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(d.ok(&["ps", "-a", "-q"]).trim().is_empty());
    // A client that sends half its headers is dropped within seconds, and
    // so is one that sends nothing.
    for partial in ["GET /networks HTTP/1.1\r\nHost: x\r\n", ""] {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(partial.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = n;
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "held for {:?}",
            t.elapsed()
        );
    }
    // The daemon still serves.
    d.ok(&["network", "ls"]);
}

#[test]
fn containers_cannot_reach_the_daemon() {
    let d = Daemon::start();
    d.sleeper("c1", &["bridge"], &[]);
    let sock = d.socket.display().to_string();
    let root = d.root.display().to_string();
    let o = d.exec_sh(
        "c1",
        &format!("test -S {sock} && echo socket; ls -A {root}"),
    );
    assert!(!o.stdout.contains("socket"), "{o:?}");
    assert!(!o.stdout.contains("state.redb"), "{o:?}");
    // The container's own files still work.
    let o = d.exec_sh("c1", "cat /etc/hostname /etc/hosts");
    assert_eq!(o.code, 0, "{o:?}");
}
