//! `null`: containers have only `lo`. Only the predefined network `none`
//! exists; it has no dataplane state.

use super::{Attachment, DriverError, DriverKind, NetworkDriver, Services};
use crate::daemon::types::NetworkCreate;
use crate::model::Network;
use crate::state::State;

pub struct Null;

impl NetworkDriver for Null {
    fn kind(&self) -> DriverKind {
        DriverKind::Null
    }

    fn attachment(&self) -> Attachment {
        Attachment::Isolated
    }

    fn validate(&self, _: &State, _: &NetworkCreate, _: Network) -> Result<Network, DriverError> {
        Err(DriverError::OnlyOne(DriverKind::Null))
    }

    fn services(&self, _: &Network) -> Services {
        Services::default()
    }
}
