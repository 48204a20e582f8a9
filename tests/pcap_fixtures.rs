//! Replays every case of `pcap-fixtures/` (made by `cargo run -p
//! tapnet-switch --example gen_fixtures -- pcap-fixtures`, expected
//! outputs written by hand from the rules) through `tapnet::replay::run`
//! and through the real binary (`tapnet replay`), and compares the output
//! with `expected.pcapng` frame by frame: interface name, timestamp, bytes
//! and virtio-net metadata.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use tapnet_switch::pcapng::{self, Capture};

const FILES: [&str; 4] = ["topology.toml", "in.pcapng", "expected.pcapng", "README"];

/// Every case directory; panics if one lacks a file.
fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcap-fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures in {}", root.display());
    let missing: Vec<String> = dirs
        .iter()
        .flat_map(|d| FILES.iter().map(move |f| d.join(f)))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(missing.is_empty(), "fixture files missing: {missing:?}");
    dirs
}

fn out_path(case: &Path, how: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pcap-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!(
        "{}-{how}.pcapng",
        case.file_name().unwrap().to_string_lossy()
    ))
}

/// One frame, as compared.
#[derive(PartialEq)]
struct Row {
    interface: String,
    ts_ns: u64,
    vnet: Option<String>,
    data: Vec<u8>,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let shown = self.data.len().min(48);
        write!(
            f,
            "{:<6} t={}.{:09} len={:<5} {}{}",
            self.interface,
            self.ts_ns / 1_000_000_000,
            self.ts_ns % 1_000_000_000,
            self.data.len(),
            hex(&self.data[..shown]),
            if shown < self.data.len() { "…" } else { "" },
        )?;
        if let Some(v) = &self.vnet {
            write!(f, " [{v}]")?;
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn rows(cap: &Capture) -> Vec<Row> {
    cap.packets
        .iter()
        .map(|p| Row {
            interface: p.interface_name.clone().unwrap_or_default(),
            ts_ns: p.timestamp_ns,
            vnet: pcapng::vnet_comment(&p.vnet_hdr().expect("vnet_hdr comment")),
            data: p.data.clone(),
        })
        .collect()
}

/// `None` if equal, else a readable diff.
fn compare(expected: &[u8], actual: &[u8]) -> Option<String> {
    let e = pcapng::read(expected).expect("expected.pcapng");
    let a = match pcapng::read(actual) {
        Ok(a) => a,
        Err(err) => return Some(format!("output is not pcapng: {err}")),
    };
    let mut diff = String::new();
    let names = |c: &Capture| -> Vec<Option<String>> {
        c.interfaces.iter().map(|i| i.name.clone()).collect()
    };
    if names(&e) != names(&a) {
        let _ = writeln!(
            diff,
            "interfaces: expected {:?}, got {:?}",
            names(&e),
            names(&a)
        );
    }
    let (er, ar) = (rows(&e), rows(&a));
    for i in 0..er.len().max(ar.len()) {
        match (er.get(i), ar.get(i)) {
            (Some(x), Some(y)) if x == y => {
                let _ = writeln!(diff, "  #{i:<3} {x}");
            }
            (x, y) => {
                if let Some(x) = x {
                    let _ = writeln!(diff, "- #{i:<3} {x}");
                }
                if let Some(y) = y {
                    let _ = writeln!(diff, "+ #{i:<3} {y}");
                }
                if let (Some(x), Some(y)) = (x, y) {
                    if let Some(off) = x.data.iter().zip(&y.data).position(|(p, q)| p != q) {
                        let _ = writeln!(diff, "       first differing byte at offset {off}");
                    }
                }
            }
        }
    }
    (names(&e) != names(&a) || er != ar).then_some(diff)
}

fn check_all(how: &str, replay: impl Fn(&Path, &Path) -> Result<(), String>) {
    let mut failures = Vec::new();
    for case in cases() {
        let out = out_path(&case, how);
        let _ = std::fs::remove_file(&out);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = replay(&case, &out) {
            failures.push(format!("{name}: replay failed: {e}"));
            continue;
        }
        let expected = std::fs::read(case.join("expected.pcapng")).unwrap();
        let actual = match std::fs::read(&out) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{name}: no output {}: {e}", out.display()));
                continue;
            }
        };
        if let Some(diff) = compare(&expected, &actual) {
            let readme = std::fs::read_to_string(case.join("README")).unwrap_or_default();
            failures.push(format!(
                "{name}: output differs (- expected, + got)\n  {}{diff}",
                readme
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn fixtures_through_replay_function() {
    check_all("fn", |case, out| {
        tapnet::replay::run(&case.join("topology.toml"), &case.join("in.pcapng"), out)
            .map_err(|e| format!("{e:#}"))
    });
}

#[test]
fn fixtures_through_binary() {
    check_all("bin", |case, out| {
        let o = Command::new(env!("CARGO_BIN_EXE_tapnet"))
            .arg("replay")
            .arg("--topology")
            .arg(case.join("topology.toml"))
            .arg(case.join("in.pcapng"))
            .arg("-w")
            .arg(out)
            .output()
            .map_err(|e| format!("cannot run tapnet: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`tapnet replay` exited with {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    });
}

/// The binary reports a bad topology as one line on stderr and a non-zero
/// exit.
#[test]
fn binary_reports_errors_in_one_line() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pcap-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let topo = dir.join("bad-topology.toml");
    std::fs::write(&topo, "[[port]]\nname = \"a\"\nnetwork = \"nowhere\"\n").unwrap();
    let case = &cases()[0];
    let o = Command::new(env!("CARGO_BIN_EXE_tapnet"))
        .arg("replay")
        .arg("--topology")
        .arg(&topo)
        .arg(case.join("in.pcapng"))
        .arg("-w")
        .arg(dir.join("never.pcapng"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unknown network \"nowhere\""),
        "stderr: {err:?}"
    );
    assert_eq!(err.trim().lines().count(), 1, "stderr: {err:?}");
}
