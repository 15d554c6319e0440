//! Failed logins, counted per client address and per device id, with lockouts
//! (`[auth]`): the listener asks before it checks a credential.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::event::DeviceKey;

/// `[auth]`: refusals are rate-limited per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Failed attempts an address may make within `failure_window` (many devices may share
    /// one address behind NAT)...
    pub max_failures: u32,
    /// ...and attempts at one device id, from any address...
    pub max_failures_per_device: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// ...before the address or the device is refused without a check for this long.
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            max_failures: 20,
            max_failures_per_device: 5,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
        }
    }
}

/// Failed authentications per key, with lockouts; bounded.
#[derive(Debug)]
struct Strikes<K> {
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    state: Mutex<HashMap<K, Strike>>,
}

#[derive(Debug, Clone, Copy)]
struct Strike {
    since: Instant,
    count: u32,
    locked_until: Option<Instant>,
}

/// Entries kept before old ones are pruned: bounds memory under a spray of addresses or
/// device ids.
const MAX_TRACKED: usize = 65_536;

impl<K: std::hash::Hash + Eq> Strikes<K> {
    fn new(max_failures: u32, window: Duration, lockout: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            lockout,
            state: Mutex::default(),
        }
    }

    fn is_locked(&self, key: &K) -> bool {
        let now = Instant::now();
        self.state
            .lock()
            .ok()
            .and_then(|s| s.get(key).and_then(|e| e.locked_until))
            .is_some_and(|until| until > now)
    }

    fn failure(&self, key: K) -> bool {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if state.len() >= MAX_TRACKED {
            let window = self.window;
            state.retain(|_, e| now.duration_since(e.since) < window || e.locked_until.is_some_and(|u| u > now));
        }
        let e = state.entry(key).or_insert(Strike {
            since: now,
            count: 0,
            locked_until: None,
        });
        if now.duration_since(e.since) >= self.window && e.locked_until.is_none_or(|u| u <= now) {
            *e = Strike {
                since: now,
                count: 0,
                locked_until: None,
            };
        }
        e.count += 1;
        if e.count >= self.max_failures {
            e.locked_until = Some(now + self.lockout);
            true
        } else {
            false
        }
    }

    fn forget(&self, key: &K) {
        if let Ok(mut s) = self.state.lock()
            && s.get(key).is_some_and(|e| e.locked_until.is_none())
        {
            s.remove(key);
        }
    }
}

/// Counts failed logins per client address and per device id, and locks out either past
/// its limit. A success forgets the device's failures only: an attacker with one valid
/// device cannot wipe its address's record by logging that device in between guesses.
#[derive(Debug)]
pub struct RateLimiter {
    addrs: Strikes<IpAddr>,
    devices: Strikes<DeviceKey>,
}

impl RateLimiter {
    /// `max_failures` per address and `per_device` per device id within `window` lock
    /// either out for `lockout`.
    pub fn new(max_failures: u32, per_device: u32, window: Duration, lockout: Duration) -> Self {
        Self {
            addrs: Strikes::new(max_failures, window, lockout),
            devices: Strikes::new(per_device, window, lockout),
        }
    }

    /// The limiter an `[auth]` section describes.
    pub fn from_config(auth: &AuthSection) -> Self {
        Self::new(
            auth.max_failures,
            auth.max_failures_per_device,
            auth.failure_window,
            auth.lockout,
        )
    }

    /// Whether logins from `ip`, or of `device`, are locked out now.
    pub fn is_locked(&self, ip: IpAddr, device: &DeviceKey) -> bool {
        self.addrs.is_locked(&ip) || self.devices.is_locked(device)
    }

    /// Records a failure; true when it locks the address or the device out.
    pub fn failure(&self, ip: IpAddr, device: &DeviceKey) -> bool {
        let a = self.addrs.failure(ip);
        let d = self.devices.failure(device.clone());
        a || d
    }

    /// Forgets the device's failures after it authenticated.
    pub fn success(&self, device: &DeviceKey) {
        self.devices.forget(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_locks_out_addresses_and_devices() {
        let l = RateLimiter::new(3, 2, Duration::from_secs(60), Duration::from_secs(60));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let (a, b, c) = (
            DeviceKey::new("u", "a"),
            DeviceKey::new("u", "b"),
            DeviceKey::new("u", "c"),
        );
        assert!(!l.failure(ip, &a));
        assert!(!l.is_locked(ip, &a));
        // The device's second failure locks the device, from any address.
        assert!(l.failure(other, &a));
        assert!(l.is_locked([10, 9, 9, 9].into(), &a));
        assert!(!l.is_locked(other, &b));
        // The address's third failure locks the address, for any device; a success of
        // another device from it does not wipe that.
        assert!(!l.failure(ip, &b));
        l.success(&c);
        assert!(l.failure(ip, &c));
        assert!(l.is_locked(ip, &DeviceKey::new("u", "d")));
        let short = RateLimiter::new(1, 1, Duration::from_millis(1), Duration::from_millis(1));
        assert!(short.failure(ip, &a));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.is_locked(ip, &a));
    }
}
