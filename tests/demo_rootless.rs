//! The README's demonstration (`scripts/demo.sh`) as a test: as an
//! unprivileged user when run as root (the user `tapnettest`, which
//! `.ci/run` creates), else as the current user. The whole demo (daemon,
//! CLI, containers) runs inside a network namespace this test makes, so the
//! daemon's namespace has no route anywhere.
//!
//! Needs root (to make the namespace and switch user) or, when not root,
//! unprivileged user namespaces and /dev/net/tun mode 0666; FAILS otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

struct Cleanup {
    dir: PathBuf,
    netns: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_demo(as_user: Option<&str>) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("tapnet-demo-test-{}", std::process::id()));
    let mut guard = Cleanup {
        dir: dir.clone(),
        netns: None,
    };
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::copy(
        format!("{root}/scripts/demo.sh"),
        dir.join("scripts/demo.sh"),
    )
    .unwrap();
    let bin = dir.join("tapnet");
    std::fs::copy(env!("CARGO_BIN_EXE_tapnet"), &bin).unwrap();
    for p in [&dir, &dir.join("scripts")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for p in [&bin, &dir.join("scripts/demo.sh")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = dir.join("scripts/demo.sh");
    let mut cmd;
    if let Some(user) = as_user {
        let ns = format!("tndemo{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {ns}");
        guard.netns = Some(ns.clone());
        let xdg = dir.join("xdg");
        std::fs::create_dir_all(&xdg).unwrap();
        let _ = Command::new("chown").arg(user).arg(&xdg).status();
        cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "setpriv"])
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .args(["--init-groups", "env", "-i"])
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", dir.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", xdg.display()))
            .arg(format!("TAPNET_BIN={}", bin.display()))
            .arg("bash")
            .arg(&script);
    } else {
        cmd = Command::new("unshare");
        cmd.args(["--user", "--map-current-user", "--net", "--"]);
        cmd.arg("true");
        assert!(
            cmd.status().map(|s| s.success()).unwrap_or(false),
            "this test needs root or unprivileged user namespaces"
        );
        cmd = Command::new("bash");
        cmd.arg(&script).env("TAPNET_BIN", &bin);
    }
    let out = cmd.output().expect("run demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    text
}

#[test]
fn demo_runs_rootless() {
    let user = nix::unistd::geteuid().is_root().then_some("tapnettest");
    if let Some(u) = user {
        assert!(
            Command::new("id")
                .arg(u)
                .output()
                .is_ok_and(|o| o.status.success()),
            "the rootless test needs the user {u} (useradd -m {u}; .ci/run does it)"
        );
        let mode = std::fs::metadata("/dev/net/tun")
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(
            mode & 0o006,
            0o006,
            "rootless TAPs need /dev/net/tun mode 0666 (chmod 0666 /dev/net/tun)"
        );
    }
    let text = run_demo(user);
    assert!(
        text.contains("hello from the web container"),
        "the client did not get the page:\n{text}"
    );
    assert!(text.contains("3 received"), "ping failed:\n{text}");
    assert!(text.contains("demo: OK (as "), "{text}");
    if let Some(u) = user {
        assert!(text.contains(&format!("demo: OK (as {u})")), "{text}");
    }
}
