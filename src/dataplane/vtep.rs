//! The VXLAN tunnel endpoint's I/O: one UDP socket per daemon (bound to
//! the advertise address and the VXLAN port) and, for encrypted overlays,
//! one raw IPv4 socket of protocol 50 (ESP in transport mode, as the
//! kernel's `ip xfrm` puts on the wire; needs CAP_NET_RAW).
//!
//! - Receive: worker 0 alone reads both sockets (`recvmmsg`, a batch at a
//!   time) and runs each datagram through
//!   [`tapnet_switch::Worker::process_vxlan`] / `process_esp`; one reader
//!   keeps each ESP SA's anti-replay window single-threaded.
//! - Send: every worker has a [`TunnelTx`]: a tunnel port's frames are
//!   segmented in software when offloaded ([`tapnet_switch::gso`]: the
//!   peer's TAP gets plain frames with valid checksums), encapsulated in
//!   the worker's batch buffers ([`tapnet_switch::tunnel::Egress::encap`])
//!   and sent with `sendmmsg` when the batch is full or the worker's
//!   round ends ([`TunnelTx::flush`]); on the UDP socket, runs of
//!   equal-sized datagrams to one peer (a segmented super-frame) go as one
//!   `UDP_SEGMENT` message each (UDP GSO: the kernel splits them late,
//!   about twice the TCP throughput of one datagram each).
//!
//! Both sockets fragment rather than refuse what exceeds the path MTU
//! (`IP_PMTUDISC_DONT`), as Linux's vxlan does by default: an encrypted
//! 1450-byte overlay frame is larger than a 1500-byte underlay.

use super::DataplaneError;
use super::VtepConfig;
use crate::sys::udp::{Batch, SLOT};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::Arc;
use tapnet_switch::wire::VnetHdr;
use tapnet_switch::{gso, DropReason, Port, Switch, Topology};

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const BATCH: usize = 32;
/// Receive batches per readiness before looking at the TAPs again.
pub const RX_ROUNDS: usize = 4;

/// The tunnel's sockets, shared by the workers.
pub struct Vtep {
    pub addr: SocketAddrV4,
    pub udp: Socket,
    pub esp: Option<Socket>,
    /// Why there is no ESP socket.
    pub esp_unavailable: Option<String>,
}

impl Vtep {
    pub fn open(cfg: &VtepConfig) -> Result<Vtep, DataplaneError> {
        let SocketAddr::V4(addr) = cfg.bind else {
            return Err(DataplaneError::PeerNotIpv4(cfg.bind));
        };
        let bind_err = |err| DataplaneError::VtepBind {
            addr: cfg.bind,
            err,
        };
        let udp = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))
            .map_err(bind_err)?;
        udp.set_nonblocking(true).map_err(bind_err)?;
        let _ = udp.set_recv_buffer_size(cfg.socket_buffer);
        let _ = udp.set_send_buffer_size(cfg.socket_buffer);
        crate::sys::udp::fragment_freely(udp.as_fd()).map_err(bind_err)?;
        udp.bind(&cfg.bind.into()).map_err(bind_err)?;
        let addr = match udp.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(SocketAddr::V4(a)) => a,
            _ => addr,
        };
        let (esp, esp_unavailable) = if cfg.esp {
            match open_esp(addr, cfg.socket_buffer) {
                Ok(s) => (Some(s), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "cannot open a raw IP socket for ESP (protocol 50): {e} \
                         (encrypted overlays need root or CAP_NET_RAW)"
                    )),
                ),
            }
        } else {
            (None, Some("ESP is turned off for this VTEP".to_string()))
        };
        Ok(Vtep {
            addr,
            udp,
            esp,
            esp_unavailable,
        })
    }
}

fn open_esp(addr: SocketAddrV4, buffer: usize) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW.cloexec(),
        Some(Protocol::from(i32::from(tapnet_switch::esp::IP_PROTOCOL))),
    )?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    crate::sys::udp::fragment_freely(s.as_fd())?;
    // Only ESP to this host's address (raw sockets bind the address only).
    s.bind(&SocketAddr::V4(SocketAddrV4::new(*addr.ip(), 0)).into())?;
    Ok(s)
}

/// One worker's sending side of the tunnel.
pub struct TunnelTx {
    vtep: Option<Arc<Vtep>>,
    sw: Arc<Switch>,
    worker: usize,
    /// One segment at a time (software segmentation).
    seg: Box<[u8]>,
    udp: Batch,
    esp: Batch,
}

impl TunnelTx {
    pub fn new(vtep: Option<Arc<Vtep>>, sw: Arc<Switch>, worker: usize) -> TunnelTx {
        let n = if vtep.is_some() { BATCH } else { 1 };
        TunnelTx {
            vtep,
            sw,
            worker,
            seg: vec![0u8; SLOT].into_boxed_slice(),
            udp: {
                let mut b = Batch::new(n);
                // Measured faster than a datagram each (README, overlay).
                b.use_udp_gso(true);
                b
            },
            esp: Batch::new(n),
        }
    }

    /// Queues a frame that leaves on tunnel port `port`.
    #[inline]
    pub fn transmit(
        &mut self,
        topo: &Topology,
        port: &Port,
        meta: &VnetHdr,
        frame: &[u8],
    ) -> Result<(), DropReason> {
        let TunnelTx {
            vtep,
            sw,
            worker,
            seg,
            udp,
            esp,
        } = self;
        let Some(vtep) = vtep.as_deref() else {
            return Err(DropReason::TunnelNoPeer);
        };
        let eg = topo.egress(port)?;
        let (batch, sock) = match (eg.sa.is_some(), &vtep.esp) {
            (false, _) => (udp, &vtep.udp),
            (true, Some(s)) => (esp, s),
            // Never in clear: keys are refused without the ESP socket.
            (true, None) => return Err(DropReason::EspNoKey),
        };
        let mut res = Ok(());
        gso::for_each_segment(meta, frame, seg, |s| {
            if batch.is_full() {
                send(batch, sock, sw, *worker);
            }
            let Some(slot) = batch.next_slot() else {
                res = Err(DropReason::TxFull);
                return;
            };
            match eg.encap(s, slot) {
                Ok(r) => batch.push(r, eg.remote),
                Err(e) => res = Err(e),
            }
        })?;
        res
    }

    /// Sends what is queued.
    pub fn flush(&mut self) {
        let Some(vtep) = self.vtep.as_deref() else {
            return;
        };
        if !self.udp.is_empty() {
            send(&mut self.udp, &vtep.udp, &self.sw, self.worker);
        }
        if let Some(s) = &vtep.esp {
            if !self.esp.is_empty() {
                send(&mut self.esp, s, &self.sw, self.worker);
            }
        }
    }
}

fn send(batch: &mut Batch, sock: &Socket, sw: &Switch, worker: usize) {
    batch.send(sock.as_fd(), |r| match r {
        Ok(n) => sw.count_tunnel_tx(worker, n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            sw.count_tunnel_drop(worker, DropReason::TxFull)
        }
        Err(e) => {
            tracing::debug!("vxlan: send: {e}");
            sw.count_tunnel_drop(worker, DropReason::TxError)
        }
    });
}

/// Worker 0's receiving side of the tunnel.
pub struct TunnelRx {
    pub vtep: Arc<Vtep>,
    pub udp: Batch,
    pub esp: Batch,
}

impl TunnelRx {
    pub fn new(vtep: Arc<Vtep>) -> TunnelRx {
        let esp = if vtep.esp.is_some() { BATCH } else { 1 };
        TunnelRx {
            vtep,
            udp: Batch::new(BATCH),
            esp: Batch::new(esp),
        }
    }
}
