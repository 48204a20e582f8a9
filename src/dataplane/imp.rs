use super::*;

/// Handle to the running worker threads. Cloning is cheap.
#[derive(Clone)]
pub struct Dataplane {}

impl Dataplane {
    /// Starts `workers` worker threads (>= 1).
    pub fn start(workers: usize) -> anyhow::Result<Dataplane> {
        let _ = workers;
        Ok(Dataplane {})
    }
    /// Number of workers = number of queues each TAP port must be opened with.
    pub fn workers(&self) -> usize {
        1
    }
    /// Adds or replaces a network.
    pub fn add_network(&self, id: NetId, spec: NetworkSpec) {
        let _ = (id, spec);
    }
    /// Removes a network (its ports must have been removed).
    pub fn remove_network(&self, id: NetId) {
        let _ = id;
    }
    /// Adds a port whose frames come from and go to `queues` (one TAP queue
    /// fd per worker, opened with IFF_VNET_HDR, non-blocking or not: the
    /// dataplane sets O_NONBLOCK).
    pub fn add_port(&self, spec: PortSpec, queues: Vec<OwnedFd>) -> anyhow::Result<PortId> {
        let _ = (spec, queues);
        Ok(0)
    }
    /// Removes a port and closes its queues.
    pub fn remove_port(&self, id: PortId) {
        let _ = id;
    }
}
