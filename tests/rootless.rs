//! Every container command, rootless: `tests/rootless_cli.sh` runs as the
//! ordinary user `tapnettest` (made by `.ci/run`) inside a network
//! namespace this test creates, so the daemon's namespace routes nowhere.
//! When the test itself is not root, the script runs as the current user.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

struct Cleanup(std::path::PathBuf, Option<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(ns) = &self.1 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_container_command_works_rootless() {
    let dir = std::env::temp_dir().join(format!("tapnet-rootless-{}", std::process::id()));
    let mut guard = Cleanup(dir.clone(), None);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("tapnet");
    let script = dir.join("rootless_cli.sh");
    std::fs::copy(env!("CARGO_BIN_EXE_tapnet"), &bin).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rootless_cli.sh"),
        &script,
    )
    .unwrap();
    for p in [&dir, &bin, &script] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut cmd;
    if nix::unistd::geteuid().is_root() {
        let user = "tapnettest";
        assert!(
            Command::new("id")
                .arg(user)
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs the user {user} (useradd -m {user}; .ci/run does it)"
        );
        let mode = std::fs::metadata("/dev/net/tun")
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o006,
            0o006,
            "rootless TAPs need /dev/net/tun mode 0666"
        );
        assert!(Command::new("chown")
            .args([user])
            .arg(&work)
            .status()
            .unwrap()
            .success());
        let ns = format!("tnrl{}", std::process::id());
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success());
        guard.1 = Some(ns.clone());
        cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "setpriv"])
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .args(["--init-groups", "env", "-i"])
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(format!("HOME={}", work.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", work.display()));
    } else {
        cmd = Command::new("env");
    }
    cmd.arg(format!("TAPNET_BIN={}", bin.display()))
        .arg(format!("WORK={}", work.display()))
        .arg("bash")
        .arg(&script);
    let out = cmd.output().expect("run rootless script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ROOTLESS OK"),
        "{text}"
    );
}
