//! Runs a script of this repository as an ordinary user, for the rootless
//! tests. As root: the user `tapnettest` (made by `scripts/test.sh`), inside a
//! network namespace made here, so a daemon started by the script has no
//! route anywhere. Not root: the current user, once unprivileged user
//! namespaces are known to work. FAILS (never skips) when neither can run.
//!
//! The script gets `TAPNET_BIN` (a world-readable copy of the binary) and
//! `WORK` (a directory the user owns, also its `HOME` and
//! `XDG_RUNTIME_DIR`). Everything is removed when the [`UserRun`] drops.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

/// The user the rootless tests run as when the test runs as root.
pub const USER: &str = "tapnettest";

/// A finished script run; its files stay until drop.
pub struct UserRun {
    pub status: ExitStatus,
    /// stdout then stderr.
    pub text: String,
    /// The script's `WORK` directory.
    pub work: PathBuf,
    /// The user it ran as.
    pub user: String,
    _env: UserEnv,
}

/// Where commands run as the test user: a private directory (`work`,
/// also its `HOME` and `XDG_RUNTIME_DIR`, so the rootless defaults of the
/// socket and state land in it), a world-readable copy of the binary, and
/// as root a network namespace made for it. Removed on drop (namespace
/// first).
pub struct UserEnv {
    /// The user's `WORK`/`HOME`/`XDG_RUNTIME_DIR`.
    pub work: PathBuf,
    /// The user commands run as.
    pub user: String,
    /// The copy of `tapnet` the user can run.
    pub bin: PathBuf,
    /// The network namespace commands run in (as root only).
    pub netns: Option<String>,
    /// Enter it with `nsenter --net` instead of `ip netns exec`, which
    /// remounts `/sys` and so hides the cgroup mounts (dockerd needs them).
    pub nsenter: bool,
    dir: PathBuf,
}

impl Drop for UserEnv {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl UserEnv {
    /// Prepares the directory, the binary's copy and (as root) the
    /// namespace; `before` gets the namespace's name and runs as root
    /// before anything runs in it. Panics (never skips) when no ordinary
    /// user can run: as root without the user `tapnettest` or without
    /// `/dev/net/tun` mode 0666, else without unprivileged user namespaces.
    pub fn new(tag: &str, before: impl FnOnce(&str)) -> UserEnv {
        let dir = std::env::temp_dir().join(format!("tapnet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let bin = dir.join("tapnet");
        std::fs::copy(env!("CARGO_BIN_EXE_tapnet"), &bin).unwrap();
        for p in [&dir, &bin] {
            chmod(p, 0o755);
        }
        let mut env = UserEnv {
            work,
            user: String::new(),
            bin,
            netns: None,
            nsenter: false,
            dir,
        };
        if nix::unistd::geteuid().is_root() {
            assert!(
                Command::new("id")
                    .arg(USER)
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "the rootless tests need the user {USER} (useradd -m {USER}; scripts/test.sh does it)"
            );
            let mode = std::fs::metadata("/dev/net/tun")
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(
                mode & 0o006,
                0o006,
                "rootless TAPs need /dev/net/tun mode 0666 (chmod 0666 /dev/net/tun)"
            );
            assert!(Command::new("chown")
                .arg(USER)
                .arg(&env.work)
                .status()
                .unwrap()
                .success());
            let ns = format!("tnrl{tag}{}", std::process::id());
            assert!(
                Command::new("ip")
                    .args(["netns", "add", &ns])
                    .status()
                    .unwrap()
                    .success(),
                "ip netns add {ns}"
            );
            env.netns = Some(ns.clone());
            before(&ns);
            env.user = USER.into();
        } else {
            assert!(
                Command::new("unshare")
                    .args(["--user", "--map-current-user", "--net", "--", "true"])
                    .status()
                    .is_ok_and(|s| s.success()),
                "the rootless tests need root or unprivileged user namespaces"
            );
            env.user =
                String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout)
                    .trim()
                    .to_string();
        }
        env
    }

    /// `program` as the user: as root, in the namespace with a clean
    /// environment of `PATH` (`path_first` before the system's), `HOME`
    /// and `XDG_RUNTIME_DIR` (both `work`); else as the current user with
    /// its environment. Add arguments and `env` pairs after it.
    pub fn command(&self, path_first: Option<&std::path::Path>, program: &str) -> Command {
        let mut path = String::new();
        if let Some(p) = path_first {
            path = format!("{}:", p.display());
        }
        let mut cmd;
        if let Some(ns) = &self.netns {
            path.push_str("/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
            if self.nsenter {
                cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).arg("setpriv");
            } else {
                cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "setpriv"]);
            }
            cmd.arg(format!("--reuid={USER}"))
                .arg(format!("--regid={USER}"))
                .args(["--init-groups", "env", "-i"])
                .arg(format!("PATH={path}"))
                .arg(format!("HOME={}", self.work.display()))
                .arg(format!("XDG_RUNTIME_DIR={}", self.work.display()));
        } else {
            path.push_str(&std::env::var("PATH").unwrap_or_default());
            cmd = Command::new("env");
            cmd.arg(format!("PATH={path}"));
        }
        cmd.arg(program);
        cmd
    }
}

/// Runs `bash scripts/NAME` (a copy of `script`, a path relative to the
/// repository) as the test user; `tag` names its temporary directory.
pub fn run_as_user(tag: &str, script: &str) -> UserRun {
    run_as_user_with(tag, script, |_| {})
}

/// Like [`run_as_user`]; when running as root, `before` gets the name of
/// the network namespace made for the script and runs (as root) before the
/// script starts, e.g. to bring `lo` up or set a per-namespace sysctl.
pub fn run_as_user_with(tag: &str, script: &str, before: impl FnOnce(&str)) -> UserRun {
    run_in(UserEnv::new(tag, before), script)
}

/// Runs `bash scripts/NAME` (a copy of `script`) as the user of `env`.
pub fn run_in(env: UserEnv, script: &str) -> UserRun {
    let scripts = env.dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let name = std::path::Path::new(script).file_name().unwrap();
    let copy = scripts.join(name);
    std::fs::copy(format!("{}/{script}", env!("CARGO_MANIFEST_DIR")), &copy).unwrap();
    for p in [&scripts, &copy] {
        chmod(p, 0o755);
    }
    let out = env
        .command(None, "env")
        .arg(format!("TAPNET_BIN={}", env.bin.display()))
        .arg(format!("WORK={}", env.work.display()))
        .arg("bash")
        .arg(&copy)
        .output()
        .expect("run the script as the test user");
    UserRun {
        status: out.status,
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        work: env.work.clone(),
        user: env.user.clone(),
        _env: env,
    }
}
