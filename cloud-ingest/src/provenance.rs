//! Which rows a gateway's files may hold: checked before a file is catalogued (announced,
//! or found by listing), so a gateway cannot put rows into SQL under another gateway's or
//! another device's name. A file that fails is quarantined by the lake and counted.

use std::collections::{BTreeSet, HashMap, HashSet};

use twinlake_query::provenance::RowOrigin;

use twinlake_query::catalog::FileMeta;

pub use crate::links::{Allowed, AllowedCache};
use crate::state::AppState;
use crate::store::{DEVICES, DeviceRecord, GATEWAYS, GatewayRecord};

impl Allowed {
    pub fn allows(&self, owner: Option<&str>, device: &str) -> bool {
        match owner {
            Some(u) => self.users.contains(u) || self.registered.get(u).is_some_and(|d| d.contains(device)),
            None => !self.users.is_empty() || self.devices.contains(device),
        }
    }
}

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
    let mut registered: HashMap<String, HashSet<String>> = HashMap::new();
    let mut devices = HashSet::new();
    let records = state.db.scan::<DeviceRecord>(DEVICES, "").unwrap_or_default();
    for (_, d) in records
        .into_iter()
        .filter(|(_, d)| d.gateway.as_deref().unwrap_or(local) == g)
    {
        devices.insert(d.device.clone());
        registered.entry(d.user).or_default().insert(d.device);
    }
    let users = state
        .db
        .get::<GatewayRecord>(GATEWAYS, g)
        .ok()
        .flatten()
        .map(|r| r.users.into_iter().collect())
        .unwrap_or_default();
    Allowed {
        registered,
        devices,
        users,
    }
}

/// The check for a file announced by `announced` (none: found by listing, where the file
/// name says which gateway wrote it). The cloud's own pipeline and compacted files (written
/// by the cloud) pass.
pub fn check(
    state: &AppState,
    announced: Option<String>,
) -> impl Fn(&FileMeta, &BTreeSet<RowOrigin>) -> Result<(), String> + Sync + '_ {
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
        for o in pairs {
            if o.gateway != g {
                return Err(format!("{g}'s file holds rows of gateway {:?}", o.gateway));
            }
            if !allowed.allows(o.owner.as_deref(), &o.device) {
                return Err(format!(
                    "{g}'s file holds rows of {:?} (user {:?}), not a device of {g}",
                    o.device, o.owner
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<const N: usize>(items: [&str; N]) -> HashSet<String> {
        items.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn a_rows_user_must_be_one_the_gateway_may_speak_for() {
        let registered = HashMap::from([("acme".to_owned(), set(["d1"]))]);
        let plain = Allowed {
            devices: set(["d1"]),
            registered: registered.clone(),
            users: HashSet::new(),
        };
        assert!(plain.allows(Some("acme"), "d1"));
        // The same device name under another user is not this gateway's.
        assert!(!plain.allows(Some("globex"), "d1"));
        assert!(!plain.allows(Some("acme"), "d2"));
        // Rows from before the owner column: by device name, as before.
        assert!(plain.allows(None, "d1") && !plain.allows(None, "d2"));
        let bound = Allowed {
            devices: set(["d1"]),
            registered,
            users: set(["acme"]),
        };
        // Bound to acme: any device of acme's, none of another user's.
        assert!(bound.allows(Some("acme"), "sensor-9"));
        assert!(!bound.allows(Some("globex"), "sensor-9"));
    }
}
