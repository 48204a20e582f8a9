//! `tapnet capture` and `tapnet stats`.
//!
//! The daemon streams pcapng (`GET /tapnet/capture`); the CLI copies it
//! block by block to `-w FILE` or `-w -` (flushed per block, so `tapnet
//! capture -w - | tshark -r -` is live), or prints one line per frame.
//! SIGINT/SIGTERM ask the daemon to end the capture (`DELETE
//! /tapnet/capture/{id}`), which finishes the stream with its statistics
//! blocks; the last line on stderr says how many frames were captured
//! and how many the capture lost (never the network).

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::client::{enc, Client};

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Capture the ports of this network.
    #[arg(long, conflicts_with = "container")]
    network: Option<String>,
    /// Capture this container's ports.
    #[arg(long)]
    container: Option<String>,
    /// Only this interface of the container (ethN).
    #[arg(long, requires = "container")]
    interface: Option<String>,
    /// Capture the frames the switch or the NAT dropped, with the reason
    /// as a packet comment, instead of the traffic.
    #[arg(long)]
    drops: bool,
    /// Write pcapng to FILE (`-` for stdout) instead of printing frames.
    #[arg(short = 'w', value_name = "FILE|-")]
    write: Option<String>,
    /// Stop after COUNT frames.
    #[arg(short = 'c', value_name = "COUNT")]
    count: Option<u64>,
    /// Keep at most SNAPLEN bytes of each frame.
    #[arg(short = 's', value_name = "SNAPLEN")]
    snaplen: Option<u32>,
    /// A filter in tcpdump's language (e.g. `icmp or tcp port 80`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    filter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only this container's ports.
    #[arg(long, conflicts_with = "network")]
    container: Option<String>,
    /// Only this network's ports.
    #[arg(long)]
    network: Option<String>,
    /// `json` for the raw object.
    #[arg(long)]
    format: Option<String>,
}

/// The pcapng blocks the CLI looks at.
const BT_IDB: u32 = 1;
const BT_ISB: u32 = 5;
const BT_EPB: u32 = 6;

pub fn capture(c: &Client, a: CaptureArgs) -> anyhow::Result<ExitCode> {
    let mut q = vec![];
    for (k, v) in [
        ("network", a.network.clone()),
        ("container", a.container.clone()),
        ("interface", a.interface.clone()),
        ("count", a.count.map(|n| n.to_string())),
        ("snaplen", a.snaplen.map(|n| n.to_string())),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(&v)));
        }
    }
    if a.drops {
        q.push("drops=1".into());
    }
    let filter = a.filter.join(" ");
    if !filter.trim().is_empty() {
        q.push(format!("filter={}", enc(&filter)));
    }
    let path = format!("/tapnet/capture?{}", q.join("&"));
    // Signals go to one thread, which asks the daemon to stop: blocked
    // here before any thread exists, so every thread inherits the mask.
    use nix::sys::signal::{SigSet, Signal};
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().context("block signals")?;
    let mut resp = c.stream("GET", &path)?;
    let id = resp
        .header(crate::daemon::api::CAPTURE_ID_HEADER)
        .map(str::to_string);
    {
        let socket = c.socket().to_path_buf();
        std::thread::spawn(move || {
            let Ok(_) = sigs.wait() else { return };
            if let Some(id) = id {
                let _ = Client::new(socket).delete(&format!("/tapnet/capture/{id}"));
            }
            // A second signal (or no capture to stop): leave now.
            let _ = sigs.wait();
            std::process::exit(130);
        });
    }
    let mut out: Option<Box<dyn Write>> = match a.write.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout().lock())),
        Some(f) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(f).with_context(|| format!("cannot create {f}"))?,
        ))),
    };
    let mut names: Vec<String> = vec![];
    let (mut captured, mut lost) = (0u64, 0u64);
    let mut block = Vec::with_capacity(1 << 16);
    let stdout = std::io::stdout();
    loop {
        block.clear();
        block.resize(8, 0);
        match read_full(&mut resp.body, &mut block[..8])? {
            0 => break,
            8 => {}
            _ => anyhow::bail!("the capture stream ended inside a block"),
        }
        let bt = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let len = u32::from_le_bytes([block[4], block[5], block[6], block[7]]) as usize;
        if !(12..=(1 << 24)).contains(&len) || !len.is_multiple_of(4) {
            anyhow::bail!("malformed capture stream (block length {len})");
        }
        block.resize(len, 0);
        if read_full(&mut resp.body, &mut block[8..])? != len - 8 {
            anyhow::bail!("the capture stream ended inside a block");
        }
        match bt {
            BT_IDB => names.push(idb_name(&block).unwrap_or_else(|| "?".into())),
            BT_EPB => captured += 1,
            BT_ISB => lost += isb_ifdrop(&block),
            _ => {}
        }
        match &mut out {
            Some(w) => {
                // Per block: `-w -` is live, and a file shows the capture
                // has started (its section header) at once.
                w.write_all(&block)?;
                w.flush()?;
            }
            None if bt == BT_EPB => {
                if let Some(line) = describe_epb(&block, &names) {
                    let mut o = stdout.lock();
                    writeln!(o, "{line}")?;
                    o.flush()?;
                }
            }
            None => {}
        }
    }
    if let Some(mut w) = out {
        w.flush()?;
    }
    eprintln!("{captured} frames captured, {lost} lost by the capture");
    Ok(ExitCode::SUCCESS)
}

/// Reads until `buf` is full or the end; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the capture from the daemon"),
        }
    }
    Ok(n)
}

/// Options of a block starting at `at` (up to the trailer).
fn options(b: &[u8], at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let end = b.len().saturating_sub(4);
    let mut i = at;
    std::iter::from_fn(move || {
        let h = b.get(i..i + 4)?;
        let code = u16::from_le_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_le_bytes([h[2], h[3]]));
        if code == 0 || i + 4 + len > end {
            return None;
        }
        let v = &b[i + 4..i + 4 + len];
        i += 4 + ((len + 3) & !3);
        Some((code, v))
    })
}

fn idb_name(b: &[u8]) -> Option<String> {
    options(b, 16)
        .find(|(c, _)| *c == 2)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn isb_ifdrop(b: &[u8]) -> u64 {
    options(b, 20)
        .find(|(c, v)| *c == 5 && v.len() == 8)
        .map(|(_, v)| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

/// One line for an EPB: time, port, direction, a short decode, and the
/// drop reason if any.
fn describe_epb(b: &[u8], names: &[String]) -> Option<String> {
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let iface = u32_at(8)? as usize;
    let ts = (u64::from(u32_at(12)?) << 32) | u64::from(u32_at(16)?);
    let cap = u32_at(20)? as usize;
    let orig = u32_at(24)?;
    let data = b.get(28..28 + cap)?;
    let mut dir = "";
    let mut note = String::new();
    for (code, v) in options(b, 28 + ((cap + 3) & !3)) {
        match code {
            2 if v.len() == 4 => {
                dir = match u32::from_le_bytes([v[0], v[1], v[2], v[3]]) & 3 {
                    1 => "In ",
                    2 => "Out",
                    _ => "",
                }
            }
            1 => {
                let c = String::from_utf8_lossy(v);
                if let Some(r) = c.strip_prefix("drop_reason=") {
                    note = format!(" [dropped: {r}]");
                }
            }
            _ => {}
        }
    }
    let t =
        chrono::DateTime::from_timestamp((ts / 1_000_000_000) as i64, (ts % 1_000_000_000) as u32)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%H:%M:%S%.6f")
                    .to_string()
            })
            .unwrap_or_default();
    let port = names.get(iface).map(String::as_str).unwrap_or("?");
    Some(format!("{t} {port} {dir} {}{note}", decode(data, orig)))
}

/// A tcpdump-like one-line decode of an Ethernet frame.
pub fn decode(f: &[u8], orig_len: u32) -> String {
    let Some(eth) = f.get(..14) else {
        return format!("truncated frame, length {orig_len}");
    };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let p = &f[14..];
    let ip4 = |b: &[u8]| format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]);
    match ethertype {
        0x0806 if p.len() >= 28 => {
            let op = u16::from_be_bytes([p[6], p[7]]);
            let (sip, tip) = (ip4(&p[14..18]), ip4(&p[24..28]));
            match op {
                1 => format!("ARP, Request who-has {tip} tell {sip}, length {orig_len}"),
                2 => format!(
                    "ARP, Reply {sip} is-at {}, length {orig_len}",
                    mac(&p[8..14])
                ),
                _ => format!("ARP, op {op}, length {orig_len}"),
            }
        }
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let (src, dst) = (ip4(&p[12..16]), ip4(&p[16..20]));
            let total = u16::from_be_bytes([p[2], p[3]]);
            let l4 = p.get(ihl..).unwrap_or(&[]);
            match p[9] {
                1 if l4.len() >= 8 => {
                    let kind = match l4[0] {
                        0 => "echo reply".to_string(),
                        8 => "echo request".to_string(),
                        3 => format!("destination unreachable (code {})", l4[1]),
                        t => format!("type {t}"),
                    };
                    let id = u16::from_be_bytes([l4[4], l4[5]]);
                    let seq = u16::from_be_bytes([l4[6], l4[7]]);
                    format!("IP {src} > {dst}: ICMP {kind}, id {id}, seq {seq}, length {total}")
                }
                6 if l4.len() >= 20 => {
                    let sp = u16::from_be_bytes([l4[0], l4[1]]);
                    let dp = u16::from_be_bytes([l4[2], l4[3]]);
                    let fl = l4[13];
                    let mut flags = String::new();
                    for (bit, c) in [(2, 'S'), (1, 'F'), (4, 'R'), (8, 'P'), (16, '.')] {
                        if fl & bit != 0 {
                            flags.push(c);
                        }
                    }
                    let doff = usize::from(l4[12] >> 4) * 4;
                    let len = usize::from(total).saturating_sub(ihl + doff);
                    format!("IP {src}.{sp} > {dst}.{dp}: Flags [{flags}], length {len}")
                }
                17 if l4.len() >= 8 => {
                    let sp = u16::from_be_bytes([l4[0], l4[1]]);
                    let dp = u16::from_be_bytes([l4[2], l4[3]]);
                    let len = u16::from_be_bytes([l4[4], l4[5]]).saturating_sub(8);
                    let what = if sp == 53 || dp == 53 { "DNS" } else { "UDP" };
                    format!("IP {src}.{sp} > {dst}.{dp}: {what}, length {len}")
                }
                proto => format!("IP {src} > {dst}: proto {proto}, length {total}"),
            }
        }
        0x86dd => format!("IP6, length {orig_len}"),
        t => format!(
            "{} > {}, ethertype {t:#06x}, length {orig_len}",
            mac(&eth[6..12]),
            mac(&eth[..6])
        ),
    }
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The columns of a port's and a network's row after its first two.
const COUNTER_COLUMNS: [&str; 6] = [
    "RX PKTS",
    "RX BYTES",
    "TX PKTS",
    "TX BYTES",
    "DROPS",
    "RING DROPS",
];

pub fn stats(c: &Client, a: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut q = vec![];
    if let Some(v) = &a.container {
        q.push(format!("container={}", enc(v)));
    }
    if let Some(v) = &a.network {
        q.push(format!("network={}", enc(v)));
    }
    let v: serde_json::Value = c.get(&format!("/tapnet/stats?{}", q.join("&")))?;
    match a.format.as_deref() {
        Some("json") => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        None | Some("table") => {}
        Some(f) => anyhow::bail!("unsupported --format {f:?} (json or table)"),
    }
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0).to_string();
    let drops = |x: &serde_json::Value| {
        x.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let rows = |k: &str, first: &str| -> Vec<Vec<String>> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        let mut r = vec![p[first].as_str().unwrap_or("").to_string()];
                        if k == "ports" {
                            r.push(p["network"].as_str().unwrap_or("").to_string());
                        } else {
                            r.push(n(&p["ports"]));
                        }
                        for f in ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"] {
                            r.push(n(&p[f]));
                        }
                        r.push(drops(&p["drops"]));
                        r.push(match p["ring_drops"].as_u64() {
                            Some(x) => x.to_string(),
                            None => "-".into(),
                        });
                        r
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    super::print_table(
        &[&["PORT", "NETWORK"][..], &COUNTER_COLUMNS].concat(),
        &rows("ports", "port"),
    );
    println!();
    super::print_table(
        &[&["NETWORK", "PORTS"][..], &COUNTER_COLUMNS].concat(),
        &rows("networks", "network"),
    );
    println!();
    let workers: Vec<Vec<String>> = v["workers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    vec![
                        n(&w["worker"]),
                        format!("{:.1}%", w["busy_share"].as_f64().unwrap_or(0.0) * 100.0),
                        format!("{:.3}", w["busy_seconds"].as_f64().unwrap_or(0.0)),
                        format!("{:.1}%", w["spin_share"].as_f64().unwrap_or(0.0) * 100.0),
                        w["cpu"].as_u64().map_or("-".into(), |c| c.to_string()),
                        n(&w["nat_frames"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    super::print_table(
        &[
            "WORKER",
            "BUSY",
            "BUSY SECONDS",
            "SPIN",
            "CPU",
            "NAT FRAMES",
        ],
        &workers,
    );
    println!();
    let d = &v["dns"];
    println!(
        "DNS: queries {} local {} forwarded {} refused {} errors {} tcp {}",
        n(&d["queries"]),
        n(&d["local"]),
        n(&d["forwarded"]),
        n(&d["refused"]),
        n(&d["errors"]),
        n(&d["tcp"])
    );
    let nat_drops = v["nat"]["drops"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) != 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    println!("NAT: flows {} drops {nat_drops}", n(&v["nat"]["flows"]));
    let sw = drops(&v["switch_drops"]);
    if sw != "-" {
        println!("Switch (no port): drops {sw}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_icmp_and_arp() {
        let mut f = vec![0u8; 42];
        f[12..14].copy_from_slice(&[8, 6]);
        f[14 + 7] = 1;
        f[14 + 14..14 + 18].copy_from_slice(&[10, 1, 0, 2]);
        f[14 + 24..14 + 28].copy_from_slice(&[10, 1, 0, 1]);
        assert_eq!(
            decode(&f, 42),
            "ARP, Request who-has 10.1.0.1 tell 10.1.0.2, length 42"
        );
        assert!(decode(&f[..10], 10).starts_with("truncated"));
    }
}
