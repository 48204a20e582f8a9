//! `network connect|disconnect` of a container, also while it runs (its
//! interface is made or deleted at once, its files rewritten).

use std::collections::BTreeSet;

use super::super::core::{find_network, Core};
use super::super::endpoints::{self, DnsNames};
use super::super::error::ContainerError;
use super::super::overlay;
use super::super::types::*;
use super::{endpoints_of, files, find_container, net_target, owner};
use crate::drivers::{self, Attachment};
use crate::model::*;
use crate::sandbox;

impl Core {
    pub fn connect(&mut self, net: &str, req: NetworkConnect) -> Result<(), ContainerError> {
        let st0 = self.store.state().clone();
        let n = find_network(&st0, net)?.clone();
        let c = find_container(&st0, &req.container)?.clone();
        if c.net_mode != NetMode::Bridge || drivers::of(&n).attachment() != Attachment::Switched {
            return Err(ContainerError::CannotConnect {
                container: c.name.clone(),
                network: n.name.clone(),
            });
        }
        if c.networks.iter().any(|r| r.network_id == n.id) {
            return Err(ContainerError::AlreadyConnected {
                container: c.name.clone(),
                network: n.name.clone(),
            });
        }
        let ec = req.endpoint_config.clone().unwrap_or_default();
        let attach = NetworkAttach {
            network: n.id.clone(),
            ipv4_address: ec.ipam_config.as_ref().and_then(|i| i.ipv4_address.clone()),
            ipv6_address: ec.ipam_config.and_then(|i| i.ipv6_address),
            mac_address: ec.mac_address,
            aliases: ec.aliases.unwrap_or_default(),
            links: ec.links.unwrap_or_default(),
        };
        let r = endpoints::request(&st0, &attach)?;
        // Joining an overlay with no way out yet: docker_gwbridge too.
        let mut all = c.networks.clone();
        all.push(r.clone());
        let gw_needed = c.status != Status::Exited
            && overlay::needs_gwbridge(&st0, &all)
            && !endpoints_of(&st0, &c)
                .iter()
                .any(|e| overlay::gwbridge_of(&st0).is_some_and(|g| g.id == e.network_id));
        if gw_needed && overlay::gwbridge_of(&st0).is_none() {
            self.ensure_gwbridge()
                .map_err(|e| ContainerError::Gwbridge(e.to_string()))?;
            return self.connect(net, req);
        }
        let mut next = self.store.prepare();
        next.containers
            .get_mut(&c.id)
            .expect("found in this state")
            .networks
            .push(r.clone());
        if c.status == Status::Exited {
            self.store.commit(next)?;
            return Ok(());
        }
        let used: BTreeSet<String> = endpoints_of(&st0, &c)
            .iter()
            .map(|e| e.ifname.clone())
            .collect();
        let mut free = (0..)
            .map(|i| format!("eth{i}"))
            .filter(|n| !used.contains(n));
        let ifname = free.next().expect("an unused name");
        let ep = self.allocate_endpoint(&mut next, owner(&c.id), &r, ifname)?;
        let mut new_eps = vec![ep.id.clone()];
        if gw_needed {
            if let Some(g) = overlay::gwbridge_request(&next) {
                let ifname = free.next().expect("an unused name");
                match self.allocate_endpoint(&mut next, owner(&c.id), &g, ifname) {
                    Ok(gw) => new_eps.push(gw.id),
                    Err(e) => {
                        self.release_global(&next, &new_eps);
                        return Err(e.into());
                    }
                }
            }
        }
        next.containers
            .get_mut(&c.id)
            .expect("found in this state")
            .endpoints
            .extend(new_eps.iter().cloned());
        let nc = next.containers[&c.id].clone();
        let has_default = endpoints_of(&st0, &c).iter().any(|e| {
            st0.networks
                .get(&e.network_id)
                .is_some_and(|n| drivers::of(n).services(n).default_route)
        });
        let mut made = None;
        if c.status == Status::Running {
            if let Some(t) = net_target(&c) {
                let names = DnsNames::of(&nc);
                if let Err(e) = self.plug(&mut next, &new_eps, &t, Some(&names), has_default) {
                    self.release_global(&next, &new_eps);
                    return Err(e.into());
                }
                made = Some(t);
            }
        }
        let snapshot = next.clone();
        if let Err(e) = self.store.commit(next) {
            if let Some(t) = made {
                self.unplug_and_delete(&snapshot, &t, &new_eps);
            }
            self.release_global(&snapshot, &new_eps);
            return Err(e.into());
        }
        if c.kind == Kind::Run {
            let st = self.store.state().clone();
            let _ = files::write(&st, &self.root, &nc);
        }
        Ok(())
    }

    pub fn disconnect(&mut self, net: &str, req: NetworkDisconnect) -> Result<(), ContainerError> {
        let st0 = self.store.state().clone();
        let n = find_network(&st0, net)?.clone();
        let c = match find_container(&st0, &req.container) {
            Ok(c) => c.clone(),
            Err(e) if req.force => {
                // Force: drop endpoints of a container that no longer exists.
                let eps: Vec<Endpoint> = st0
                    .network_endpoints(&n.id)
                    .filter(|ep| {
                        !req.container.is_empty()
                            && ep
                                .owner
                                .container()
                                .is_some_and(|c| c.starts_with(&req.container))
                    })
                    .cloned()
                    .collect();
                if eps.is_empty() {
                    return Err(e.into());
                }
                for ep in &eps {
                    self.unplug(&st0, &ep.id);
                }
                let ids: Vec<String> = eps.iter().map(|e| e.id.clone()).collect();
                self.release_global(&st0, &ids);
                self.store.transact(|st| {
                    for ep in &eps {
                        endpoints::release(st, &ep.id);
                    }
                    Ok::<_, ContainerError>(())
                })?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let ep = endpoints_of(&st0, &c)
            .into_iter()
            .find(|e| e.network_id == n.id)
            .cloned();
        if ep.is_none() && !c.networks.iter().any(|r| r.network_id == n.id) {
            return Err(ContainerError::NotConnected {
                container: c.name.clone(),
                network: n.name.clone(),
            });
        }
        if let Some(ep) = &ep {
            if c.status == Status::Running {
                if let Some(t) = net_target(&c) {
                    if let Err(e) = sandbox::delete_taps(&t, std::slice::from_ref(&ep.ifname)) {
                        if !req.force {
                            return Err(ContainerError::DeleteInterface {
                                ifname: ep.ifname.clone(),
                                container: c.name.clone(),
                                reason: format!("{e:#}"),
                            });
                        }
                    }
                }
            }
            self.unplug(&st0, &ep.id);
            self.release_global(&st0, std::slice::from_ref(&ep.id));
        }
        let nc = self.store.transact(|st| {
            if let Some(ep) = &ep {
                endpoints::release(st, &ep.id);
            }
            let x = st.containers.get_mut(&c.id).expect("found in this state");
            x.networks.retain(|r| r.network_id != n.id);
            if let Some(ep) = &ep {
                x.endpoints.retain(|e| *e != ep.id);
            }
            Ok::<_, ContainerError>(x.clone())
        })?;
        if c.kind == Kind::Run && c.status != Status::Exited {
            let st = self.store.state().clone();
            let _ = files::write(&st, &self.root, &nc);
        }
        Ok(())
    }
}
