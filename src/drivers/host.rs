//! `host`: containers share the daemon's network namespace. Only the
//! predefined network `host` exists; it has no dataplane state.

use super::{Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::NetworkCreate;
use crate::model::Network;
use crate::state::State;

pub struct Host;

impl NetworkDriver for Host {
    fn kind(&self) -> DriverKind {
        DriverKind::Host
    }

    fn attachment(&self) -> Attachment {
        Attachment::HostNamespace
    }

    fn validate(&self, _: &State, _: &NetworkCreate, _: Network) -> Result<Network, DriverError> {
        Err(DriverError::OnlyOne(DriverKind::Host))
    }

    fn services(&self, _: &Network) -> Services {
        Services::default()
    }
}
