//! In-memory ports: a [`Transmit`] that records what each port sent, and a
//! one-worker [`MemSwitch`] for tests, `tapnet replay` and benchmarks.

use crate::counters::DropReason;
use crate::pipeline::{GatewayHook, NoHook, Transmit, Worker};
use crate::topology::{Port, PortId, Switch, SwitchConfig};
use crate::wire::VnetHdr;
use std::sync::Arc;

/// A transmitted frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub port: PortId,
    pub meta: VnetHdr,
    pub frame: Vec<u8>,
}

/// Records every transmitted frame, in order.
#[derive(Default, Debug)]
pub struct MemTx {
    pub sent: Vec<Sent>,
}

impl Transmit for MemTx {
    fn transmit(&mut self, port: &Port, meta: &VnetHdr, frame: &[u8]) -> Result<(), DropReason> {
        self.sent.push(Sent {
            port: port.id,
            meta: *meta,
            frame: frame.to_vec(),
        });
        Ok(())
    }
}

/// Counts transmitted frames and bytes without keeping them (benchmarks).
#[derive(Default, Debug)]
pub struct CountTx {
    pub frames: u64,
    pub bytes: u64,
}

impl Transmit for CountTx {
    #[inline]
    fn transmit(&mut self, _: &Port, _: &VnetHdr, frame: &[u8]) -> Result<(), DropReason> {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        Ok(())
    }
}

/// A switch driven by one in-memory worker, deterministically: the caller
/// supplies the clock.
pub struct MemSwitch<H: GatewayHook = NoHook> {
    pub switch: Arc<Switch>,
    pub worker: Worker<H>,
}

impl MemSwitch<NoHook> {
    pub fn new(config: SwitchConfig) -> Self {
        let switch = Switch::new(config);
        MemSwitch {
            worker: Worker::new(switch.clone(), 0),
            switch,
        }
    }
}

impl<H: GatewayHook> MemSwitch<H> {
    pub fn with_hook(config: SwitchConfig, hook: H) -> Self {
        let switch = Switch::new(config);
        MemSwitch {
            worker: Worker::with_hook(switch.clone(), 0, hook),
            switch,
        }
    }

    /// Runs one frame entering on `port` at `now_ns`; returns what left.
    pub fn inject(&mut self, now_ns: u64, port: PortId, meta: VnetHdr, frame: &[u8]) -> Vec<Sent> {
        let mut tx = MemTx::default();
        let cx = self.worker.begin(now_ns);
        self.worker.process(&cx, port, &meta, frame, &mut tx);
        tx.sent
    }
}
