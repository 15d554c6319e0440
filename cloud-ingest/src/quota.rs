//! Device quotas. Device ids arrive from gateways (MQTT topics, LoRaWAN) and from users, and
//! each device costs a twin, a location entry and properties, so how many there may be is
//! bounded:
//! - `registry.max_devices_per_user`: devices one user may register (the API answers 403);
//! - `link.max_unregistered_devices`: unregistered devices (the MQTT and LoRaWAN devices of
//!   the users an admin bound a gateway to) that one gateway may bring, each with a twin.
//!   Items for a new one past it are refused and counted as `device_quota_refusals`.
//!
//! A device counts against the gateway that brought its twin; deleting the twin (the API's
//! device DELETE) makes room.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable};

use twinlake_twin::{Twin, TwinKey};

use crate::Error;
use crate::store::{DEVICES, Db};

/// The unregistered devices each gateway brought.
#[derive(Debug)]
pub struct Unregistered {
    cap: usize,
    by_gateway: Mutex<HashMap<String, HashSet<TwinKey>>>,
}

impl Unregistered {
    /// Counts `twins` of unregistered devices by the gateway they were last seen at (one
    /// read of the registry's keys, no record decoded).
    pub fn load(cap: usize, twins: &[Twin], db: &Db) -> Result<Self, Error> {
        let tx = db.0.begin_read()?;
        let devices = tx.open_table(DEVICES)?;
        let mut by_gateway: HashMap<String, HashSet<TwinKey>> = HashMap::new();
        for twin in twins {
            let Some(gateway) = &twin.connection.gateway else {
                continue;
            };
            let key = twin.key();
            if devices.get(key.to_string().as_str())?.is_none() {
                by_gateway.entry(gateway.clone()).or_default().insert(key);
            }
        }
        Ok(Self {
            cap,
            by_gateway: Mutex::new(by_gateway),
        })
    }

    /// Whether `gateway` may bring `key`, a device with no twin yet; counts it if so.
    pub fn admit(&self, gateway: &str, key: &TwinKey) -> bool {
        let Ok(mut map) = self.by_gateway.lock() else {
            return false;
        };
        if let Some(set) = map.get_mut(gateway) {
            if set.contains(key) {
                return true;
            }
            if set.len() >= self.cap {
                return false;
            }
            set.insert(key.clone());
            return true;
        }
        if self.cap == 0 {
            return false;
        }
        map.insert(gateway.to_owned(), HashSet::from([key.clone()]));
        true
    }

    /// `key`'s twin is gone: it counts against no gateway.
    pub fn forget(&self, key: &TwinKey) {
        if let Ok(mut map) = self.by_gateway.lock() {
            for set in map.values_mut() {
                set.remove(key);
            }
            map.retain(|_, set| !set.is_empty());
        }
    }

    /// How many unregistered devices `gateway` brought.
    pub fn count(&self, gateway: &str) -> usize {
        self.by_gateway
            .lock()
            .map(|m| m.get(gateway).map_or(0, HashSet::len))
            .unwrap_or(0)
    }
}

/// How many devices `user` has registered, read in the registering transaction.
pub fn registered(tx: &redb::WriteTransaction, user: &str) -> Result<usize, Error> {
    let table = tx.open_table(DEVICES)?;
    let from = format!("{user}/");
    let mut n = 0;
    for entry in table.range(from.as_str()..)? {
        let (k, _) = entry?;
        if !k.value().starts_with(&from) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(cap: usize) -> Unregistered {
        Unregistered {
            cap,
            by_gateway: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn a_gateway_brings_at_most_its_quota_and_deleting_makes_room() {
        let q = empty(2);
        let k = |d: &str| TwinKey::new("alice", d);
        assert!(q.admit("gw1", &k("a")));
        assert!(q.admit("gw1", &k("b")));
        assert!(q.admit("gw1", &k("a")), "one already counted stays admitted");
        assert!(!q.admit("gw1", &k("c")), "a third is refused");
        assert!(q.admit("gw2", &k("c")), "another gateway has its own quota");
        assert_eq!(q.count("gw1"), 2);
        q.forget(&k("a"));
        assert!(q.admit("gw1", &k("c")));
        assert!(!empty(0).admit("gw1", &k("a")));
    }
}
