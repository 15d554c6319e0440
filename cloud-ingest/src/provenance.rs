//! Which rows a gateway's files may hold: checked before a file is catalogued (announced,
//! or found by listing), so a gateway cannot put rows into SQL under another gateway's or
//! another device's name. A file that fails is quarantined by the lake and counted.

use std::collections::{BTreeSet, HashSet};

use twinlake_query::catalog::FileMeta;

use crate::server::AppState;
use crate::store::{DEVICES, DeviceRecord, GATEWAYS, GatewayRecord};

/// What gateway `g` may write rows for: the devices registered to it, and (when an admin
/// bound users to it) any device, since those devices' rows carry no user.
#[derive(Debug)]
pub struct Allowed {
    devices: HashSet<String>,
    any_device: bool,
}

impl Allowed {
    pub fn allows(&self, device: &str) -> bool {
        self.any_device || self.devices.contains(device)
    }
}

/// Each gateway's [`Allowed`], as of a registry version: rebuilt only when the registry
/// changed, so the link's fresh rows are checked without reading the registry each batch.
#[derive(Debug, Default)]
pub struct AllowedCache(std::sync::Mutex<std::collections::HashMap<String, (u64, std::sync::Arc<Allowed>)>>);

/// What gateway `g` may write rows for, from the cache when the registry has not changed.
pub fn allowed_now(state: &AppState, g: &str) -> std::sync::Arc<Allowed> {
    let version = *state.gateways.registry_version.borrow();
    let cache = &state.gateways.allowed;
    if let Ok(c) = cache.0.lock()
        && let Some((v, a)) = c.get(g)
        && *v == version
    {
        return a.clone();
    }
    let a = std::sync::Arc::new(allowed(state, g));
    if let Ok(mut c) = cache.0.lock() {
        c.insert(g.to_owned(), (version, a.clone()));
    }
    a
}

fn allowed(state: &AppState, g: &str) -> Allowed {
    let local = state.local_gateway.as_str();
    let devices = state
        .db
        .scan::<DeviceRecord>(DEVICES, "")
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, d)| d.gateway.as_deref().unwrap_or(local) == g)
        .map(|(_, d)| d.device)
        .collect();
    let any_device = state
        .db
        .get::<GatewayRecord>(GATEWAYS, g)
        .ok()
        .flatten()
        .is_some_and(|r| !r.users.is_empty());
    Allowed { devices, any_device }
}

/// The check for a file announced by `announced` (none: found by listing, where the file
/// name says which gateway wrote it). The cloud's own pipeline and compacted files (written
/// by the cloud) pass.
pub fn check(
    state: &AppState,
    announced: Option<String>,
) -> impl Fn(&FileMeta, &BTreeSet<(String, String)>) -> Result<(), String> + Sync + '_ {
    move |meta, pairs| {
        let Some(g) = announced.clone().or_else(|| meta.gateway.clone()) else {
            return Ok(());
        };
        if g == state.local_gateway {
            return Ok(());
        }
        if meta.gateway.as_deref().is_some_and(|w| w != g) {
            return Err(format!("announced by {g}, named for {:?}", meta.gateway));
        }
        let allowed = allowed_now(state, &g);
        for (gw, device) in pairs {
            if *gw != g {
                return Err(format!("{g}'s file holds rows of gateway {gw:?}"));
            }
            if !allowed.allows(device) {
                return Err(format!("{g}'s file holds rows of {device:?}, not a device of {g}"));
            }
        }
        Ok(())
    }
}
