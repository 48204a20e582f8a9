//! The README's "Using it" block, run as written, line by line, so that the
//! README cannot drift from the code: the first ```sh block under
//! "## Using it"; each line runs with `sh -c LINE` in order, with a
//! directory holding a `tapnet` symlink to the binary under test first on
//! PATH and `HOME` a directory of the test's, and must exit 0 (the failure
//! names the line and shows its output).
//!
//! - As root: the first line (`tapnet daemon &`) is replaced by the test's
//!   own daemon (`ctl_support::Daemon`, in a private network namespace,
//!   `TAPNET_HOST` pointing at it); every other line runs in that
//!   namespace, so "the host" of the block is the daemon's namespace.
//! - As the ordinary user `tapnettest` (`rootless_support`): every line
//!   runs as written, the daemon line included, with the rootless
//!   defaults (socket and state under the user's `XDG_RUNTIME_DIR` and
//!   `HOME`, both the test's), in a network namespace made for it.
//!
//! Each line runs in a process group of its own; what a line leaves in the
//! background (`&`: the daemon, a server, an `unshare`d sleeper) is killed
//! by group at the end, after the containers are removed. Needs root (it
//! makes network namespaces); fails, never skips, otherwise.

mod ctl_support;
mod rootless_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctl_support::{require_root, retry, Daemon, TempDir};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long one line may run.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

/// The lines of the first ```sh block under `## Using it`.
fn using_it_block() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "## Using it")
        .expect("README.md has no '## Using it' heading");
    lines
        .by_ref()
        .find(|l| l.trim_end() == "```sh")
        .expect("no ```sh block under '## Using it'");
    let block: Vec<String> = lines
        .take_while(|l| l.trim_end() != "```")
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        block.first().is_some_and(|l| is_daemon_line(l)),
        "the 'Using it' block must start with `tapnet daemon &`: {block:?}"
    );
    block
}

fn is_daemon_line(l: &str) -> bool {
    l.trim_start().starts_with("tapnet daemon &")
}

/// A line that ran: its text and what it printed (stdout and stderr).
struct Ran {
    line: String,
    output: String,
}

/// Runs lines one by one and kills the process groups they leave at the
/// end (on drop too, when a line failed). Its directory holds `bin/tapnet`
/// and the lines' output files.
struct Runner {
    dir: TempDir,
    groups: Vec<Pid>,
    /// Runs first at the end (also after a failure), e.g. removing the
    /// containers while the daemon still runs.
    before_kill: Option<Command>,
}

impl Runner {
    fn new() -> Runner {
        let dir = TempDir::new();
        let bin = dir.0.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tapnet"), bin.join("tapnet")).unwrap();
        Runner {
            dir,
            groups: vec![],
            before_kill: None,
        }
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.0.join("bin")
    }

    /// Runs `sh -c LINE` built by `cmd`, in a process group of its own,
    /// output to a file (a background child keeps no pipe open), and
    /// panics with `context()` if it fails or hangs.
    fn run(&mut self, n: usize, line: &str, mut cmd: Command, context: &dyn Fn() -> String) -> Ran {
        use std::os::unix::process::CommandExt;
        let log = self.dir.0.join(format!("line{n}.log"));
        // Opened here: a line running as another user inherits the fd.
        let f = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .arg("-c")
            .arg(line)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("run `{line}`: {e}"));
        self.groups.push(Pid::from_raw(child.id() as i32));
        let end = Instant::now() + LINE_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            Some(st) if st.success() => {}
            Some(st) => panic!(
                "README line {n} failed ({st}):\n  {line}\n--- its output:\n{output}{}",
                context()
            ),
            None => panic!(
                "README line {n} did not finish within {LINE_TIMEOUT:?}:\n  {line}\n--- its output:\n{output}{}",
                context()
            ),
        }
        Ran {
            line: line.to_string(),
            output,
        }
    }

    /// SIGTERM then SIGKILL to every group a line left.
    fn kill_groups(&mut self) {
        if let Some(mut c) = self.before_kill.take() {
            let _ = c.stdin(Stdio::null()).output();
        }
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            for g in &self.groups {
                // Our own groups: each made by process_group(0) at spawn.
                let _ = killpg(*g, sig);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        self.groups.clear();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill_groups();
    }
}

/// What the block's results must show besides every line exiting 0.
fn check_outputs(ran: &[Ran]) {
    let out_of = |needle: &str| -> &str {
        &ran.iter()
            .find(|r| r.line.contains(needle))
            .unwrap_or_else(|| panic!("no README line contains {needle:?} any more"))
            .output
    };
    for needle in ["http://web/", "http://host.tapnet.internal:5000/"] {
        let out = out_of(needle);
        assert!(
            out.contains("hello from web"),
            "the line with {needle} did not get the page: {out}"
        );
    }
    let out = out_of("tapnet port api");
    assert!(
        out.contains("80/tcp -> 0.0.0.0:8080"),
        "tapnet port api: {out}"
    );
    let out = out_of("tapnet attach");
    assert_eq!(out.trim().len(), 64, "tapnet attach prints the ID: {out}");
}

#[test]
fn readme_using_it_runs_as_root() {
    require_root("the README test");
    let block = using_it_block();
    let d = Daemon::start();
    d.netns().lo_up();
    let mut r = Runner::new();
    let home = r.dir.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let path = format!(
        "{}:{}",
        r.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = vec![];
    for (i, line) in block.iter().enumerate().skip(1) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &d.netns().name, "sh"])
            .env("PATH", &path)
            .env("HOME", &home)
            .env("TAPNET_HOST", d.host())
            .current_dir(&home);
        ran.push(r.run(i + 1, line, cmd, &|| {
            format!("--- daemon log:\n{}", d.log())
        }));
    }
    check_outputs(&ran);
    // The containers go first (Daemon's drop), then what the lines left.
    drop(d);
}

#[test]
fn readme_using_it_runs_rootless() {
    require_root("the README test (rootless part: it runs the block as tapnettest)");
    let block = using_it_block();
    let env = rootless_support::UserEnv::new("readme", |ns| {
        let st = Command::new("ip")
            .args(["netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "lo up in {ns}");
    });
    let mut r = Runner::new();
    // The user reaches the symlink (and through it the binary's copy).
    std::fs::remove_file(r.bin_dir().join("tapnet")).unwrap();
    std::os::unix::fs::symlink(&env.bin, r.bin_dir().join("tapnet")).unwrap();
    for p in [&r.dir.0, &r.bin_dir()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let bin_dir = r.bin_dir();
    let sh = |env: &rootless_support::UserEnv| {
        let mut c = env.command(Some(&bin_dir), "sh");
        c.current_dir(&env.work);
        c
    };
    // The rootless defaults, under the user's XDG_RUNTIME_DIR and HOME.
    let socket = env.work.join("tapnet/tapnet.sock");
    let daemon_log = r.dir.0.join("line1.log");
    let ctx = || {
        format!(
            "--- daemon (line 1) output:\n{}",
            std::fs::read_to_string(&daemon_log).unwrap_or_default()
        )
    };
    // The containers go before the daemon, as the user.
    let mut rm = sh(&env);
    rm.arg("-c").arg("tapnet ps -aq | xargs -r tapnet rm -f");
    r.before_kill = Some(rm);
    let mut ran = vec![];
    for (i, line) in block.iter().enumerate() {
        ran.push(r.run(i + 1, line, sh(&env), &ctx));
        if i == 0 {
            // What a person does after `tapnet daemon &`: wait for it.
            retry("the daemon's socket", Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&socket)
                    .map(drop)
                    .map_err(|e| format!("{}: {e}", socket.display()))
            });
        }
    }
    check_outputs(&ran);
    drop(r);
}
