//! tapnet as an installed program and a service: `tapnet version` (with and
//! without a daemon), `tapnet completion`, the daemon under systemd
//! (journald's log form, READY=1/STOPPING=1, clean exit on SIGTERM),
//! `scripts/install.sh` into a `DESTDIR` (never into the real system) and
//! `systemd-analyze verify` of the units. No real service is started.

mod ctl_support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ctl_support::*;
use serde_json::Value;

const API_VERSION: &str = tapnet::daemon::api::API_VERSION;
const MIN_API_VERSION: &str = tapnet::daemon::api::MIN_API_VERSION;

fn tapnet(args: &[&str]) -> Out {
    Out::from(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tapnet"),
    )
}

#[test]
fn version_shows_client_server_and_api_range() {
    let d = Daemon::start();
    let out = d.ok(&["version"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(out.starts_with("Client:\n"), "{out}");
    assert!(out.contains("\nServer:\n"), "{out}");
    assert_eq!(
        out.matches(&format!(" Version:      {version}\n")).count(),
        2,
        "{out}"
    );
    assert!(
        out.contains(&format!(
            " API version:  {API_VERSION} (minimum version {MIN_API_VERSION})\n"
        )),
        "{out}"
    );
    let v: Value = serde_json::from_str(&d.ok(&["version", "--format", "json"])).unwrap();
    assert_eq!(v["Client"]["Version"], version);
    assert_eq!(v["Client"]["ApiVersion"], API_VERSION);
    assert_eq!(v["Client"]["MinAPIVersion"], MIN_API_VERSION);
    assert_eq!(v["Server"]["Version"], version);
    assert_eq!(v["Server"]["ApiVersion"], API_VERSION);
    let e = d.fails(&["version", "--format", "yaml"]);
    assert!(e.contains("--format"), "{e}");
}

#[test]
fn version_without_a_daemon_prints_the_client_part_and_fails() {
    let dir = TempDir::new();
    let host = format!("unix://{}/none.sock", dir.0.display());
    let o = tapnet(&["-H", &host, "version"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stdout.starts_with("Client:\n"), "{o:?}");
    assert!(!o.stdout.contains("Server:"), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(o.stderr.contains("cannot connect"), "{o:?}");
    let o = tapnet(&["-H", &host, "version", "--format", "json"]);
    assert_eq!(o.code, 1, "{o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["Client"]["ApiVersion"], API_VERSION);
    assert_eq!(v["Server"], Value::Null);
}

/// Command lines the parser refuses get one line and status 2, like every
/// other error; help and version still print in full.
#[test]
fn usage_errors_are_one_line() {
    for (args, want) in [
        (
            &["network", "create", "--bogus", "x"][..],
            "unexpected argument '--bogus'",
        ),
        (&["network", "create"][..], "<NAME>"),
        (
            &["daemon", "--busy-poll-us", "2000000"][..],
            "--busy-poll-us",
        ),
        (&["daemon", "--tx-batch", "5000"][..], "--tx-batch"),
        (&["daemon", "--worker-cpus", "3-1"][..], "--worker-cpus"),
        (
            &["daemon", "--tap-steering", "sideways"][..],
            "--tap-steering",
        ),
        (&["nosuch"][..], "unrecognized subcommand 'nosuch'"),
    ] {
        let o = tapnet(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stderr.trim().lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.contains(want), "{args:?}: {o:?}");
    }
    let o = tapnet(&["network", "create", "--help"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("Usage: tapnet network create"), "{o:?}");
    let o = tapnet(&["--version"]);
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn completion_scripts_cover_the_cli_but_not_the_hidden_entry_points() {
    for shell in ["bash", "zsh", "fish"] {
        let o = tapnet(&["completion", shell]);
        assert_eq!(o.code, 0, "completion {shell}: {o:?}");
        for word in ["network", "conntrack", "version", "completion", "subnet"] {
            assert!(o.stdout.contains(word), "completion {shell} lacks {word}");
        }
        assert!(
            !o.stdout.contains("__sandbox") && !o.stdout.contains("__netns"),
            "completion {shell} shows a hidden entry point"
        );
    }
    // bash can at least parse its script.
    let dir = TempDir::new();
    let f = dir.0.join("tapnet.bash");
    std::fs::write(&f, tapnet(&["completion", "bash"]).stdout).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success(), "bash -n on the completion script");
    let e = tapnet(&["completion", "tcsh"]);
    assert_ne!(e.code, 0);
}

/// A daemon started by hand in a namespace of its own, its stderr in a
/// file, with extra environment.
struct Raw {
    child: std::process::Child,
    dir: TempDir,
    socket: std::path::PathBuf,
    _ns: Netns,
}

impl Raw {
    /// `journal`: set `JOURNAL_STREAM` to the log file's device:inode (as
    /// systemd does when stderr goes to the journal), else to another
    /// file's. `NOTIFY_SOCKET` is a datagram socket in the directory.
    fn start(journal: bool) -> (Raw, UnixDatagram) {
        require_root("the service tests");
        let dir = TempDir::new();
        let ns = Netns::new();
        let log = dir.0.join("daemon.log");
        let f = std::fs::File::create(&log).unwrap();
        let meta = if journal {
            f.metadata().unwrap()
        } else {
            std::fs::metadata(&dir.0).unwrap()
        };
        let notify_path = dir.0.join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let socket = dir.0.join("tapnet.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN, "daemon", "--workers", "1"])
            .arg("--root")
            .arg(dir.0.join("root"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--docker-plugin", "none"])
            .env("TAPNET_LOG", "info")
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        (
            Raw {
                child,
                dir,
                socket,
                _ns: ns,
            },
            notify,
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM; the exit status.
    fn term(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recv(s: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    // A signal with a handler (the full suite's run saw one) interrupts
    // the wait; that is no missing notification.
    let n = loop {
        match s.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("a notification"),
        }
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn under_systemd_the_daemon_logs_for_journald_notifies_and_stops_on_sigterm() {
    let (mut d, notify) = Raw::start(true);
    assert_eq!(recv(&notify), "READY=1", "{}", d.log());
    // READY=1 comes once clients can connect.
    std::os::unix::net::UnixStream::connect(&d.socket).expect("connect after READY=1");
    let st = d.term();
    assert_eq!(recv(&notify), "STOPPING=1");
    assert!(st.success(), "exit status after SIGTERM: {st}\n{}", d.log());
    assert!(!d.socket.exists(), "socket left after SIGTERM");
    let log = d.log();
    let want = format!("<6>INFO listening on unix://{}\n", d.socket.display());
    assert!(
        log.starts_with(&want),
        "journald form: want {want:?}, got:\n{log}"
    );
    assert!(log.contains("<6>INFO SIGTERM: shutting down"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI colour in the journal: {log:?}");
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_keeps_the_terminal_form() {
    let (mut d, notify) = Raw::start(false);
    assert_eq!(recv(&notify), "READY=1", "{}", d.log());
    assert!(d.term().success());
    let log = d.log();
    let first = log.lines().next().unwrap_or_default();
    // `2026-01-01T00:00:00.000000Z  INFO tapnet::daemon: listening on ...`
    assert!(
        first.contains("Z  INFO tapnet::daemon: listening on unix://") && !first.starts_with('<'),
        "{log}"
    );
}

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `scripts/install.sh` (with `--user` if `user`) into `destdir`, `HOME`
/// set to `home`, the binary under test instead of a build.
fn install(destdir: &Path, home: &Path, user: bool) -> Out {
    let mut c = Command::new("bash");
    c.arg(repo("scripts/install.sh"));
    if user {
        c.arg("--user");
    }
    let o = c
        .env("DESTDIR", destdir)
        .env("HOME", home)
        .env("TAPNET_BIN", BIN)
        .env_remove("CARGO_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("PREFIX")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let o = Out::from(o);
    assert_eq!(o.code, 0, "install.sh: {o:?}");
    o
}

fn exec_start(unit: &Path) -> String {
    std::fs::read_to_string(unit)
        .unwrap_or_else(|e| panic!("{}: {e}", unit.display()))
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .to_string()
}

#[test]
fn install_script_lays_out_files_under_destdir() {
    let dir = TempDir::new();
    let dest = dir.0.join("dest");
    let home = Path::new("/home/someone");
    install(&dest, home, false);
    install(&dest, home, true);
    let mut files = vec![];
    let mut stack = vec![dest.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p.strip_prefix(&dest).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "etc/systemd/system/tapnet.service",
            "home/someone/.cargo/bin/tapnet",
            "home/someone/.config/fish/completions/tapnet.fish",
            "home/someone/.config/systemd/user/tapnet.service",
            "home/someone/.local/share/bash-completion/completions/tapnet",
            "home/someone/.local/share/zsh/site-functions/_tapnet",
            "usr/local/bin/tapnet",
            "usr/local/share/bash-completion/completions/tapnet",
            "usr/local/share/fish/vendor_completions.d/tapnet.fish",
            "usr/local/share/zsh/site-functions/_tapnet",
        ]
    );
    // The units name the final paths, not the staging directory.
    assert_eq!(
        exec_start(&dest.join("etc/systemd/system/tapnet.service")),
        "/usr/local/bin/tapnet daemon"
    );
    assert_eq!(
        exec_start(&dest.join("home/someone/.config/systemd/user/tapnet.service")),
        "/home/someone/.cargo/bin/tapnet daemon"
    );
    let o = Command::new(dest.join("usr/local/bin/tapnet"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(dest.join("usr/local/share/bash-completion/completions/tapnet")).unwrap(),
        o.stdout
    );
}

/// `systemd-analyze [--user] verify` of a unit whose ExecStart is pointed
/// at the binary under test; must print nothing and succeed.
fn verify(unit: &str, user: bool) {
    let dir = TempDir::new();
    let text = std::fs::read_to_string(repo(unit)).unwrap();
    let mut fixed = String::new();
    for l in text.lines() {
        match l.strip_prefix("ExecStart=") {
            Some(rest) => {
                let args = rest.split_once(' ').map_or("", |(_, a)| a);
                fixed += &format!("ExecStart={BIN} {args}\n");
            }
            None => fixed += &format!("{l}\n"),
        }
    }
    let path = dir.0.join("tapnet.service");
    std::fs::write(&path, fixed).unwrap();
    let run = dir.0.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let mut c = Command::new("systemd-analyze");
    if user {
        c.arg("--user");
    }
    let o = c
        .arg("verify")
        .arg(&path)
        .env("XDG_RUNTIME_DIR", &run)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian package systemd; scripts/test.sh installs it): {e}")
        });
    let o = Out::from(o);
    assert!(
        o.code == 0 && o.stdout.trim().is_empty() && o.stderr.trim().is_empty(),
        "systemd-analyze verify {unit}: {o:?}"
    );
}

#[test]
fn systemd_units_verify() {
    verify("contrib/systemd/tapnet.service", false);
    verify("contrib/systemd/user/tapnet.service", true);
    let sys = std::fs::read_to_string(repo("contrib/systemd/tapnet.service")).unwrap();
    for line in [
        "Before=docker.service",
        "WantedBy=multi-user.target",
        "Type=notify",
        "ExecStart=/usr/local/bin/tapnet daemon",
    ] {
        assert!(
            sys.lines().any(|l| l == line),
            "tapnet.service lacks {line}"
        );
    }
    let user = std::fs::read_to_string(repo("contrib/systemd/user/tapnet.service")).unwrap();
    assert!(user.lines().any(|l| l == "WantedBy=default.target"));
}
