//! A real Docker engine (Debian's docker.io, dockerd 20.10) using tapnet as
//! its network driver, all inside namespaces the test makes:
//!
//! - the tapnet daemon runs in its private network namespace
//!   (`ctl_support::Daemon`), with its plugin socket in a directory of the
//!   test (`--docker-plugin unix://DIR/plugins/tapnet.sock`);
//! - dockerd runs in that same network namespace and in a private mount
//!   namespace, held by a process of the test (`holder`), where a tmpfs
//!   covers `/run` (nothing dockerd makes there touches the host's),
//!   `DIR/plugins` is bind-mounted on `/run/docker/plugins` (dockerd finds
//!   driver `tapnet` as it would on a host) and a resolv.conf of the test
//!   is bind-mounted on `/etc/resolv.conf` (Docker's DNS forwards only to a
//!   resolver the test starts); `--data-root`/`--exec-root` in the test's
//!   directory, `--storage-driver vfs`, `--live-restore`;
//! - the image `bb` is `docker import` of a tarball holding
//!   `/bin/busybox` and its applet links.
//!
//! On drop: every container and network removed through dockerd, dockerd
//! stopped (SIGTERM, then SIGKILL), its containerd killed by PID (found by
//! its command line naming the test's directory: it is ours), the holder
//! killed, then the tapnet daemon and its namespace go.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ctl_support::*;

/// Debian's docker client (the one that matches its dockerd).
pub const DOCKER: &str = "/usr/bin/docker";

pub struct DockerHost {
    dockerd: Option<Child>,
    holder: Option<Bg>,
    /// The tapnet daemon (its namespace is dockerd's too).
    pub d: Daemon,
    pub dir: TempDir,
    pub sock: PathBuf,
}

impl DockerHost {
    /// tapnet first, then dockerd; `resolv` is the nameserver line of the
    /// resolv.conf dockerd sees (a resolver of the test's).
    pub fn start(resolv: &str) -> DockerHost {
        require_root("tests/docker.rs");
        assert!(
            std::path::Path::new("/usr/sbin/dockerd").exists(),
            "tests/docker.rs needs Debian's docker.io (sudo ./scripts/test.sh installs it)"
        );
        let dir = TempDir::new();
        for sub in ["plugins", "data", "exec", "img/bin", "config"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        std::fs::write(dir.0.join("resolv.conf"), format!("{resolv}\n")).unwrap();
        let plugin = format!("unix://{}/plugins/tapnet.sock", dir.0.display());
        let d = Daemon::start_with(&["--docker-plugin", &plugin], |_| {});
        let ready = dir.0.join("holder-ready");
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins && \
             mount --bind {p} /run/docker/plugins && mount --bind {r} /etc/resolv.conf && \
             touch {ready} && exec sleep 100000",
            p = dir.0.join("plugins").display(),
            r = dir.0.join("resolv.conf").display(),
            ready = ready.display()
        );
        let holder = Bg::spawn(&[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
        wait_until(
            "the mount namespace holder",
            Duration::from_secs(10),
            || ready.exists(),
        );
        let mut h = DockerHost {
            dockerd: None,
            holder: Some(holder),
            sock: dir.0.join("docker.sock"),
            d,
            dir,
        };
        h.start_dockerd();
        h.import_image();
        h
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().expect("holder").pid()
    }

    /// Starts dockerd (again) in the namespaces described above.
    pub fn start_dockerd(&mut self) {
        assert!(self.dockerd.is_none());
        let dir = &self.dir.0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.d.netns().name))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder_pid()))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["--storage-driver", "vfs", "--live-restore"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if self.docker(&["version"]).code == 0 {
                return;
            }
            if let Some(st) = self.dockerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({st}): {}", self.dockerd_log());
            }
            assert!(
                Instant::now() < end,
                "dockerd did not start: {}",
                self.dockerd_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd (SIGTERM; containers keep running: live-restore).
    pub fn stop_dockerd(&mut self) {
        if let Some(mut c) = self.dockerd.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn dockerd_log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.0.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn import_image(&self) {
        let img = self.dir.0.join("img");
        std::fs::copy("/bin/busybox", img.join("bin/busybox")).expect("copy /bin/busybox");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for a in String::from_utf8_lossy(&list.stdout).lines() {
            if a != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", img.join("bin").join(a));
            }
        }
        let tar = self.dir.0.join("img.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&img)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        self.ok(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            &tar.display().to_string(),
            "bb:latest",
        ]);
    }

    /// `docker ARGS...` against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Out {
        let o = Command::new(DOCKER)
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.dir.0.join("config"))
            .stdin(Stdio::null())
            .output()
            .expect("run docker");
        Out::from(o)
    }

    /// Like [`DockerHost::docker`], asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.code == 0,
            "docker {args:?} failed ({}): {}{}\n--- dockerd:\n{}\n--- tapnet:\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.dockerd_log(),
            self.d.log()
        );
        o.stdout
    }

    /// `docker run -d --name NAME --network NET EXTRA... bb sleep 600`.
    pub fn sleeper(&self, name: &str, net: &str, extra: &[&str]) {
        let mut a = vec!["run", "-d", "--name", name, "--network", net];
        a.extend(extra);
        a.extend(["bb", "sleep", "600"]);
        self.ok(&a);
    }

    /// `docker exec C sh -c SCRIPT`.
    pub fn sh(&self, c: &str, script: &str) -> Out {
        self.docker(&["exec", c, "sh", "-c", script])
    }

    /// Whether `script` succeeds in container `c`.
    pub fn works(&self, c: &str, script: &str) -> bool {
        self.sh(c, script).code == 0
    }

    /// `docker-compose` in `dir` against this dockerd.
    pub fn compose(&self, dir: &std::path::Path, args: &[&str]) -> Out {
        let o = Command::new("docker-compose")
            .args(args)
            .current_dir(dir)
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.dir.0.join("config"))
            .stdin(Stdio::null())
            .output()
            .expect("run docker-compose (apt-get install docker-compose)");
        Out::from(o)
    }

    /// Processes of ours whose command line names this test's directory
    /// (dockerd's containerd, left running by a live-restore shutdown).
    fn our_processes(&self) -> Vec<i32> {
        let needle = format!("{}/", self.dir.0.display());
        let mut out = vec![];
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]).stdout;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut a = vec!["rm", "-f"];
                a.extend(ids);
                let _ = self.docker(&a);
            }
            let _ = self.docker(&["network", "prune", "-f"]);
            self.stop_dockerd();
        }
        let tapnet = self.d.running_pid();
        for pid in self
            .our_processes()
            .into_iter()
            .filter(|p| Some(*p) != tapnet)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.holder.take();
    }
}
