//! Which rows a gateway's files may hold: checked before a file is catalogued (announced,
//! or found by listing), so a gateway cannot put rows into SQL under another gateway's or
//! another device's name. A file that fails is quarantined by the lake and counted.

use std::collections::{BTreeSet, HashSet};

use twinlake_query::catalog::FileMeta;

use crate::server::AppState;
use crate::store::{DEVICES, DeviceRecord, GATEWAYS, GatewayRecord};

/// What gateway `g` may write rows for: the devices registered to it, and (when an admin
/// bound users to it) any device, since those devices' rows carry no user.
struct Allowed {
    devices: HashSet<String>,
    any_device: bool,
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
        let allowed = allowed(state, &g);
        for (gw, device) in pairs {
            if *gw != g {
                return Err(format!("{g}'s file holds rows of gateway {gw:?}"));
            }
            if !allowed.any_device && !allowed.devices.contains(device) {
                return Err(format!("{g}'s file holds rows of {device:?}, not a device of {g}"));
            }
        }
        Ok(())
    }
}
