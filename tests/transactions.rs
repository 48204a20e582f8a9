//! Control-plane changes are transactions through the whole stack: when
//! the dataplane refuses a change (forced here with the daemon's test
//! setting `TAPNET_DATAPLANE_FAULTS`), nothing is committed: the one-line
//! error names the refusal, the state is as before, also after a restart,
//! and the addresses are free.

mod ctl_support;

use ctl_support::*;
use std::time::Duration;

/// Restarts `d` with the dataplane refusing `ops` (empty: none).
fn restart_with_faults(d: &mut Daemon, ops: &str) {
    d.stop();
    d.env = if ops.is_empty() {
        vec![]
    } else {
        vec![("TAPNET_DATAPLANE_FAULTS".into(), ops.into())]
    };
    d.spawn();
}

#[test]
fn a_dataplane_refusal_commits_nothing() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.93.0.0/24", "n1"]);
    let before = d.inspect_network("n1");

    // A network the dataplane refuses.
    restart_with_faults(&mut d, "add_network");
    let e = d.fails(&["network", "create", "--subnet", "10.94.0.0/24", "refused"]);
    assert!(e.contains("dataplane refused network refused"), "{e}");
    assert!(!d.network_names().contains(&"refused".to_string()));

    // A container whose port the dataplane refuses: run fails, nothing of
    // it stays (record, address, interface).
    restart_with_faults(&mut d, "add_port");
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "n1",
        "--ip",
        "10.93.0.7",
        "--",
        "sleep",
        "60",
    ]);
    assert!(e.contains("cannot add port"), "{e}");
    assert_eq!(d.ok(&["ps", "-a", "-q"]).trim(), "");
    assert_eq!(d.inspect_network("n1"), before);
    // Connecting a running container: refused, the container unchanged.
    restart_with_faults(&mut d, "");
    d.sleeper("c2", &["bridge"], &[]);
    let c2 = d.inspect_container("c2");
    // (Its one port is reopened at start; the next one is refused.)
    restart_with_faults(&mut d, "add_port+1");
    let e = d.fails(&["network", "connect", "--ip", "10.93.0.8", "n1", "c2"]);
    assert!(e.contains("cannot add port"), "{e}");
    assert_eq!(
        d.inspect_container("c2")["NetworkSettings"],
        c2["NetworkSettings"]
    );
    let o = d.exec_sh("c2", "ip -o link show");
    assert!(
        o.stdout.contains("eth0") && !o.stdout.contains("eth1"),
        "{o:?}"
    );

    // After a restart without faults: the same state, and the refused
    // names and addresses are free.
    restart_with_faults(&mut d, "");
    assert!(!d.network_names().contains(&"refused".to_string()));
    assert_eq!(d.inspect_network("n1")["Containers"], before["Containers"]);
    d.ok(&["network", "create", "--subnet", "10.94.0.0/24", "refused"]);
    d.sleeper("c1", &["n1"], &["--ip", "10.93.0.7"]);
    d.ok(&["network", "connect", "--ip", "10.93.0.8", "n1", "c2"]);
}

#[test]
fn unknown_fault_names_are_refused() {
    let mut d = Daemon::start();
    d.stop();
    d.env = vec![("TAPNET_DATAPLANE_FAULTS".into(), "nope".into())];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.spawn()));
    assert!(r.is_err(), "the daemon started with an unknown fault name");
    assert!(
        d.log().contains("unknown operation \"nope\""),
        "{}",
        d.log()
    );
}

/// A panic in a dataplane thread stops the daemon, with one error line
/// and exit status 70, instead of leaving it up with ports nobody reads
/// (a worker that died took its ports' traffic with it, silently); the
/// next daemon on the same root takes up the state and the running
/// containers, and they talk again.
#[test]
fn a_panicking_worker_stops_the_daemon_and_a_restart_loses_nothing() {
    let mut d = Daemon::start();
    d.ok(&["network", "create", "--subnet", "10.95.0.0/24", "n1"]);
    d.sleeper("c1", &["n1"], &[]);
    d.sleeper("c2", &["n1"], &[]);
    let ip2 = d.ip_of("c2", "n1");
    let ping = format!("ping -c 1 -W 2 {ip2}");
    assert_eq!(d.exec_sh("c1", &ping).code, 0, "c1 cannot ping c2");
    let before = (
        d.inspect_network("n1"),
        d.inspect_container("c1"),
        d.inspect_container("c2"),
    );

    // The worker panics at the first frame it reads.
    restart_with_faults(&mut d, "worker_panic");
    let _ = d.exec_sh("c1", &ping);
    let st = d
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the daemon runs on without its worker: {}", d.log()));
    assert_eq!(st.code(), Some(70), "{st}: {}", d.log());
    let log = d.log();
    assert!(
        log.contains("thread tapnet-worker-0 panicked: the daemon stops (exit status 70)"),
        "{log}"
    );

    restart_with_faults(&mut d, "");
    let after = (
        d.inspect_network("n1"),
        d.inspect_container("c1"),
        d.inspect_container("c2"),
    );
    assert_eq!(after, before);
    retry(
        "c1 pings c2 after the restart",
        Duration::from_secs(10),
        || {
            let o = d.exec_sh("c1", &ping);
            if o.code == 0 {
                Ok(())
            } else {
                Err(format!("{o:?}"))
            }
        },
    );
}
