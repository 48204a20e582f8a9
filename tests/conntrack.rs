//! The connection table's settings as a user sets them (`tapnet daemon
//! --conntrack-*`): idle timeouts expire flows, the per-container limit
//! refuses new connections at once (RST), bad values are one-line errors.
//! Servers listen on the daemon namespace's loopback, reached through the
//! gateway (host loopback), so nothing leaves the test's namespaces.

mod ctl_support;

use ctl_support::*;
use std::time::Duration;

fn flows(d: &Daemon, c: &str) -> Vec<serde_json::Value> {
    let out = d.ok(&["conntrack", "--container", c, "--format", "json"]);
    match serde_json::from_str::<serde_json::Value>(&out) {
        Ok(serde_json::Value::Array(v)) => v,
        _ => out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("conntrack json line"))
            .collect(),
    }
}

#[test]
fn bad_conntrack_settings_are_one_line_errors() {
    for args in [
        &["--conntrack-timeout", "nope=5"][..],
        &["--conntrack-timeout", "tcp_established"][..],
        &["--conntrack-timeout", "udp_replied=0"][..],
        &["--conntrack-max", "0"][..],
        &["--conntrack-max-per-container", "0"][..],
    ] {
        let dir = TempDir::new();
        let sock = format!("unix://{}/s.sock", dir.0.display());
        let root = dir.0.join("root");
        let o = std::process::Command::new(BIN)
            .args(["daemon", "--root", root.to_str().unwrap(), "-H", &sock])
            .args(["--docker-plugin", "none"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("conntrack"), "{args:?}: {err}");
        assert!(!root.exists(), "{args:?} created state");
    }
}

#[test]
fn timeouts_expire_flows_and_the_container_limit_refuses_at_once() {
    require_root("tests/conntrack.rs");
    let d = Daemon::start_with(
        &[
            "--conntrack-timeout",
            "udp_unreplied=1",
            "--conntrack-timeout",
            "udp_replied=2",
            "--conntrack-max-per-container",
            "3",
        ],
        |_| {},
    );
    let ns = d.netns();
    ns.lo_up();
    let _servers = [
        ns.spawn(&["socat", "UDP4-RECVFROM:7007,bind=127.0.0.1,fork", "PIPE"]),
        ns.spawn(&[
            "socat",
            "TCP4-LISTEN:7008,bind=127.0.0.1,fork,reuseaddr",
            "PIPE",
        ]),
    ];
    d.ok(&["network", "create", "--subnet", "10.91.0.0/24", "ct"]);
    d.sleeper("c1", &["ct"], &[]);
    let gw = d.gateway_of("ct");

    // A UDP exchange: the flow is listed, then gone once idle past the
    // replied timeout (2 s; expiry is checked at least every second).
    let o = retry("udp echo", Duration::from_secs(10), || {
        let o = d.exec_sh(
            "c1",
            &format!("echo ping | socat -t 1 -T 3 - UDP4:{gw}:7007"),
        );
        (o.stdout.trim() == "ping")
            .then_some(o.stdout.clone())
            .ok_or(format!("{o:?}"))
    });
    assert_eq!(o.trim(), "ping");
    let udp = |d: &Daemon| {
        flows(d, "c1")
            .into_iter()
            .filter(|r| r["protocol"] == "udp" && r["remote_port"] == 7007)
            .count()
    };
    assert!(udp(&d) >= 1, "no UDP flow listed: {:?}", flows(&d, "c1"));
    wait_until("the UDP flow to expire", Duration::from_secs(10), || {
        udp(&d) == 0
    });

    // Three TCP connections held open fill the container's quota; a
    // fourth is refused at once (curl exit 7), not left to time out.
    let hold = format!("for i in 1 2 3; do (sleep 30 | socat - TCP4:{gw}:7008) & done; sleep 30");
    let _held = Bg::spawn(&[BIN, "-H", &d.host(), "exec", "c1", "--", "sh", "-c", &hold]);
    wait_until("three TCP flows", Duration::from_secs(10), || {
        flows(&d, "c1")
            .iter()
            .filter(|r| r["protocol"] == "tcp" && r["state"] == "established")
            .count()
            == 3
    });
    let o = d.exec_sh(
        "c1",
        &format!("curl -sS --max-time 5 http://{gw}:7008/ ; echo rc=$?"),
    );
    assert!(
        o.stdout.contains("rc=7"),
        "a 4th connection over the limit of 3: want refused (curl 7): {o:?}\n{}",
        d.log()
    );
    // The accounting: what was created, refused, expired.
    let st: serde_json::Value =
        serde_json::from_str(&d.ok(&["conntrack", "stats", "--format", "json"])).unwrap();
    let n = |p: &str| st.pointer(p).and_then(|v| v.as_u64()).unwrap_or(0);
    assert!(n("/refused_container_limit") >= 1, "{st:#}");
    assert!(n("/created/udp") >= 1 && n("/created/tcp") >= 3, "{st:#}");
    assert!(n("/expired/udp_replied") >= 1, "{st:#}");
    assert_eq!(n("/max_per_container"), 3, "{st:#}");
    assert!(n("/flows_by_state/tcp_established") >= 3, "{st:#}");
    let text = d.ok(&["conntrack", "stats"]);
    assert!(text.contains("refused_container_limit "), "{text}");
    d.fails(&["conntrack", "stats", "--container", "c1"]);
}
