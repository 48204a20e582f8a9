//! The embedded DNS's I/O edge: the upstream forwarder. Workers answer
//! local names inline (`tapnet_dns::DnsHook`); names they cannot answer
//! arrive here as [`ForwardRequest`]s. Each is sent from the daemon's own
//! network namespace (so a 127.0.0.53 resolver works) to the querier's
//! upstreams in order (the container's `--dns`, else the daemon's
//! `--dns-upstream`, else the nameservers of the host's `/etc/resolv.conf`,
//! re-read when it changes), 4 s per server, moving on after a timeout,
//! SERVFAIL or REFUSED. The answer is relayed unchanged (truncated with TC
//! when it does not fit the querier's UDP size) as a frame injected into the
//! querier's port; when every server fails the querier gets SERVFAIL.
//!
//! A query that came over TCP (answered by the switch's stateless TCP,
//! [`tapnet_dns::tcp`]) is forwarded over TCP (length-prefixed, same
//! servers, order, timeout and rules), and its answer goes back as one TCP
//! frame (data + FIN; a GSO super-frame beyond the MSS).
//!
//! Queries that came over IPv6 (to a dual-stack network's IPv6 gateway
//! address) are answered over IPv6 the same way; the upstreams are chosen
//! by the querier's address of either family ([`Upstreams::set_querier`]
//! under both).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tapnet_dns::{ForwardRequest, ForwardRx};
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::NetworkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Time allowed to each upstream server.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Forwarded queries in flight at once; more are answered SERVFAIL.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Where forwarded queries go.
pub struct Upstreams {
    /// The daemon's `--dns-upstream` servers.
    daemon: Vec<SocketAddr>,
    /// Per querier (network, IPv4 or IPv6 address): the container's
    /// `--dns` servers.
    per_querier: Mutex<HashMap<(NetworkId, IpAddr), Vec<SocketAddr>>>,
    resolv_conf: PathBuf,
    host: Mutex<(Option<SystemTime>, Vec<SocketAddr>)>,
}

impl Upstreams {
    pub fn new(daemon: Vec<SocketAddr>) -> Upstreams {
        Upstreams {
            daemon,
            per_querier: Mutex::new(HashMap::new()),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            host: Mutex::new((None, Vec::new())),
        }
    }

    /// Sets (or, with no servers, clears) the upstreams of the querier at
    /// `ip` on `net`; a dual-stack endpoint is set under both its
    /// addresses (queries come from either).
    pub fn set_querier(&self, net: NetworkId, ip: impl Into<IpAddr>, servers: Vec<SocketAddr>) {
        let ip = ip.into();
        let mut m = self.per_querier.lock();
        if servers.is_empty() {
            m.remove(&(net, ip));
        } else {
            m.insert((net, ip), servers);
        }
    }

    /// The servers for a querier, in order.
    pub fn for_querier(&self, net: NetworkId, ip: impl Into<IpAddr>) -> Vec<SocketAddr> {
        if let Some(s) = self.per_querier.lock().get(&(net, ip.into())) {
            return s.clone();
        }
        if !self.daemon.is_empty() {
            return self.daemon.clone();
        }
        self.host_servers()
    }

    /// The host's resolvers, re-read when `/etc/resolv.conf` changes.
    fn host_servers(&self) -> Vec<SocketAddr> {
        let mtime = std::fs::metadata(&self.resolv_conf)
            .and_then(|m| m.modified())
            .ok();
        let mut h = self.host.lock();
        if h.0 != mtime || mtime.is_none() {
            let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
            h.1 = parse_resolv_conf(&text);
            h.0 = mtime;
        }
        h.1.clone()
    }
}

/// Nameservers of a resolv.conf, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let a: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(a, 53))
        })
        .collect()
}

/// Sends a finished answer frame (with its virtio-net metadata) to a port.
pub type Inject = Arc<dyn Fn(tapnet_switch::PortId, VnetHdr, Vec<u8>) + Send + Sync>;

/// The forwarder's counters.
#[derive(Debug, Default)]
pub struct ForwardStats {
    answered: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`ForwardStats`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ForwardCounts {
    /// Forwarded queries answered by an upstream.
    pub answered: u64,
    /// Forwarded queries no upstream answered (SERVFAIL sent back), or
    /// refused because too many were in flight.
    pub errors: u64,
}

impl ForwardStats {
    pub fn snapshot(&self) -> ForwardCounts {
        use std::sync::atomic::Ordering::Relaxed;
        ForwardCounts {
            answered: self.answered.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// Runs the forwarder until the queue's senders are gone.
pub fn run_forwarder(
    rx: ForwardRx,
    upstreams: Arc<Upstreams>,
    inject: Inject,
    stats: Arc<ForwardStats>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        // As any of the daemon's threads, it does not end quietly: the
        // panic stops the daemon (`daemon::stop_on_thread_panics`).
        Err(e) => panic!("dns forwarder: cannot start its runtime: {e}"),
    };
    let (tx, mut arx) = tokio::sync::mpsc::channel::<ForwardRequest>(MAX_IN_FLIGHT);
    // Bridge the workers' blocking queue into the async world.
    let bridge = std::thread::Builder::new()
        .name("tapnet-dns-bridge".into())
        .spawn(move || {
            while let Ok(req) = rx.recv() {
                if tx.blocking_send(req).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = bridge {
        panic!("dns forwarder: cannot start its bridge thread: {e}");
    }
    rt.block_on(async move {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(req) = arx.recv().await {
            let servers = upstreams.for_querier(req.network, req.querier_ip);
            let inject = inject.clone();
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                answer(&req, None, &inject);
                continue;
            };
            let stats = stats.clone();
            tokio::spawn(async move {
                let reply = if req.tcp.is_some() {
                    forward_tcp(&req.query, &servers).await
                } else {
                    forward(&req.query, &servers).await
                };
                let counter = match reply {
                    Some(_) => &stats.answered,
                    None => &stats.errors,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                answer(&req, reply.as_deref(), &inject);
                drop(permit);
            });
        }
    });
}

/// Sends `answer` (or SERVFAIL when None) back to the querier.
fn answer(req: &ForwardRequest, answer: Option<&[u8]>, inject: &Inject) {
    let mut msg = vec![0u8; 4096];
    let body: &[u8] = match answer {
        Some(a) => a,
        None => match tapnet_dns::responder::error_answer(&req.query, 2, true, &mut msg) {
            Some(n) => &msg[..n],
            None => return,
        },
    };
    let mut frame = vec![0u8; body.len() + 80];
    if let Some((n, meta)) = req.reply_frame(body, &mut frame) {
        frame.truncate(n);
        inject(req.port, meta, frame);
    }
}

/// Asks each server in turn; the first answer that is not SERVFAIL or
/// REFUSED wins, else the last SERVFAIL/REFUSED seen, else None.
async fn forward(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let mut last = None;
    for s in servers {
        let bind: SocketAddr = if s.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(s).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        let got = loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                // Only a response to this query counts (same id, QR set).
                Ok(Ok(n)) if is_response(&buf[..n], id) => break Some(buf[..n].to_vec()),
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break None,
            }
        };
        let Some(a) = got else { continue };
        let rcode = a[3] & 0x0f;
        if rcode == 2 || rcode == 5 {
            last = Some(a);
            continue;
        }
        return Some(a);
    }
    last
}

/// Whether `a` is the response to `id`: same id, QR set.
fn is_response(a: &[u8], id: &[u8]) -> bool {
    a.len() >= 12 && &a[..2] == id && a[2] & 0x80 != 0
}

/// [`forward`] over TCP: one connection per server, the query
/// length-prefixed, [`UPSTREAM_TIMEOUT`] for connect, send and answer.
async fn forward_tcp(query: &[u8], servers: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let len = u16::try_from(query.len()).ok()?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    let mut last = None;
    for s in servers {
        let ask = async {
            let mut c = tokio::net::TcpStream::connect(s).await.ok()?;
            c.write_all(&framed).await.ok()?;
            let mut n = [0u8; 2];
            c.read_exact(&mut n).await.ok()?;
            let mut a = vec![0u8; usize::from(u16::from_be_bytes(n))];
            c.read_exact(&mut a).await.ok()?;
            Some(a)
        };
        let Ok(Some(a)) = tokio::time::timeout(UPSTREAM_TIMEOUT, ask).await else {
            continue;
        };
        if !is_response(&a, id) {
            continue;
        }
        let rcode = a[3] & 0x0f;
        if rcode == 2 || rcode == 5 {
            last = Some(a);
            continue;
        }
        return Some(a);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# c\nsearch example.org\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver  10.0.0.2 \noptions ndots:1\n";
        let s = parse_resolv_conf(t);
        assert_eq!(
            s,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ]
        );
    }
}
