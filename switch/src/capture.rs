//! Capture hooks: called at ingress, egress and drop when installed with
//! [`crate::Switch::set_capture`]. With none installed the cost is one
//! predictable branch per stage. Implementations must not block: copy what
//! they need into a bounded queue and return.

use crate::counters::DropReason;
use crate::topology::Port;
use crate::wire::VnetHdr;

pub trait CaptureHook: Send + Sync {
    /// A frame entered the switch on `port`.
    fn on_ingress(&self, _port: &Port, _meta: &VnetHdr, _frame: &[u8]) {}
    /// A frame left the switch on `port`.
    fn on_egress(&self, _port: &Port, _meta: &VnetHdr, _frame: &[u8]) {}
    /// A frame that entered on `port` was dropped.
    fn on_drop(&self, _port: &Port, _meta: &VnetHdr, _frame: &[u8], _reason: DropReason) {}
    /// A frame could not leave on `port` (its transmit queue was full or
    /// the write failed): counted on `port` under `reason`.
    fn on_egress_drop(&self, _port: &Port, _meta: &VnetHdr, _frame: &[u8], _reason: DropReason) {}
}
