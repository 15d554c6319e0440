//! Sources other than the Thinger listener: an MQTT broker ([`mqtt`]), LoRaWAN gateways
//! speaking the Semtech UDP protocol ([`lorawan`]) and the HTTP device API ([`http`]). Each source is one folder: its root
//! module runs it, `config.rs` holds its section of the agent's configuration, and its
//! decoders sit beside them; what they share (payload [`codec`]s, hex, RFC 3339 times, the
//! presence and southbound contract) is here.
//!
//! Both turn what arrives into [`DeviceEventKind::Message`](crate::event::DeviceEventKind)
//! events on the listener's own queue, so their rows take the same path (WAL, Arrow buffer,
//! Parquet, upload, fresh rows, twins) with the same metrics. Resource writes for their
//! devices come back through [`Southbound`].
//!
//! ```text
//! broker ─MQTT─▶ mqtt ─────┐                    ┌▶ WAL ─▶ buffer ─▶ Parquet
//! gateways ─UDP─▶ lorawan ─┤
//! devices ─HTTP─▶ http ────┼─ Message events ─▶ ingest
//! devices ─TCP─▶ listener ─┘                    └▶ link ─▶ twins (cloud)
//! ```

pub mod coap;
pub mod codec;
pub mod commands;
pub mod gate;
pub mod http;
pub mod lorawan;
pub mod mqtt;
pub mod telemetry;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::event::{DeviceEvent, DeviceEventKind, DeviceKey};
pub use crate::hex::{hex, random, random_hex, unhex};

/// Tells ingest (and through it the twins) that a source's device is online, the first
/// time the source hears from it; false if ingest has stopped.
pub async fn connected(
    events: &mpsc::Sender<DeviceEvent>,
    device: DeviceKey,
    at: SystemTime,
    peer: SocketAddr,
    tls: bool,
    protocol: &'static str,
) -> bool {
    let kind = DeviceEventKind::Connected { peer, tls, protocol };
    events.send(DeviceEvent { device, at, kind }).await.is_ok()
}

/// Tells ingest (and through it the twins) that a source's device went offline; false if
/// ingest has stopped.
pub async fn disconnected(events: &mpsc::Sender<DeviceEvent>, device: DeviceKey, at: SystemTime, reason: &str) -> bool {
    let kind = DeviceEventKind::Disconnected {
        reason: reason.to_owned(),
        rx_bytes: 0,
        tx_bytes: 0,
    };
    events.send(DeviceEvent { device, at, kind }).await.is_ok()
}

/// Which devices of a source are online: those heard from within `offline_after` (a source
/// has no connection per device to watch). `offline_after` zero: online once heard, for good.
///
/// Device ids come from what peers send (an MQTT topic), so at most `max_devices` are
/// online at once: a new device past that is [`Heard::Refused`] until one goes offline.
#[derive(Debug)]
pub struct Presence {
    last: HashMap<String, Instant>,
    offline_after: Duration,
    max_devices: usize,
    checked: Instant,
}

/// What hearing from a device means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It was online already.
    Again,
    /// It was offline (or never heard): it is online now.
    Online,
    /// It was offline and `max_devices` are online: its message is refused.
    Refused,
}

impl Presence {
    pub fn new(offline_after: Duration, max_devices: usize) -> Self {
        Self {
            last: HashMap::new(),
            offline_after,
            max_devices,
            checked: Instant::now(),
        }
    }

    /// Records that `device` was heard at `now`.
    pub fn heard(&mut self, device: &str, now: Instant) -> Heard {
        let full = self.last.len() >= self.max_devices;
        match self.last.get_mut(device) {
            Some(t) => {
                *t = now;
                Heard::Again
            }
            None if full => Heard::Refused,
            None => {
                self.last.insert(device.to_owned(), now);
                Heard::Online
            }
        }
    }

    /// Forgets `device` (it said it is going); true if it was online.
    pub fn gone(&mut self, device: &str) -> bool {
        self.last.remove(device).is_some()
    }

    /// The devices silent for `offline_after` at `now`, forgotten (they are offline now).
    /// Looks at most once a second.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        if self.offline_after.is_zero() || now.saturating_duration_since(self.checked) < Duration::from_secs(1) {
            return Vec::new();
        }
        self.checked = now;
        let limit = self.offline_after;
        let mut gone = Vec::new();
        self.last.retain(|d, t| {
            let keep = now.saturating_duration_since(*t) < limit;
            if !keep {
                gone.push(d.clone());
            }
            keep
        });
        gone
    }
}

/// Carries a resource write to a device of a source (an MQTT command topic).
pub trait Control: Send + Sync + std::fmt::Debug {
    /// Sends `value` to `path` of `device`; `Err` says why it could not be sent.
    fn write(&self, device: &str, path: &str, value: &Json) -> Result<(), String>;
}

/// The devices the sources have seen, with how to reach each of them.
#[derive(Debug, Default)]
pub struct Southbound {
    routes: RwLock<HashMap<DeviceKey, Arc<dyn Control>>>,
}

impl Southbound {
    /// Routes writes for `key` to `control`.
    pub fn insert(&self, key: DeviceKey, control: Arc<dyn Control>) {
        if let Ok(mut r) = self.routes.write() {
            r.insert(key, control);
        }
    }

    /// Forgets `key` (it went offline): the routes stay as few as the devices online.
    pub fn remove(&self, key: &DeviceKey) {
        if let Ok(mut r) = self.routes.write() {
            r.remove(key);
        }
    }

    /// How to reach `key`, if a source has seen it.
    pub fn get(&self, key: &DeviceKey) -> Option<Arc<dyn Control>> {
        self.routes.read().ok()?.get(key).cloned()
    }
}

/// Exactly `N` bytes from hex digits, as [`unhex`] reads them.
pub fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    unhex(s)?.try_into().ok()
}

/// A 64-bit FNV-1a hash (stable across runs and builds, unlike `DefaultHasher`).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `2024-01-01T12:00:00.123456Z` (UTC, optional fraction) as a time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(10) != Some(&b'T') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut nanos: i64 = 0;
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = frac.get(digits.len()..)?;
        let padded = format!("{digits:0<9}");
        nanos = padded.get(..9)?.parse().ok()?;
    }
    if rest != "Z" && rest != "+00:00" {
        return None;
    }
    let days = twinlake_lake::path::days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_goes_offline_after_silence_and_back_on_the_next_message() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(60), 10);
        assert_eq!(p.heard("a", t0), Heard::Online, "first heard: online");
        assert_eq!(p.heard("a", t0 + Duration::from_secs(30)), Heard::Again);
        assert_eq!(p.heard("b", t0 + Duration::from_secs(30)), Heard::Online);
        assert!(
            p.expire(t0 + Duration::from_millis(500)).is_empty(),
            "checks once a second"
        );
        assert_eq!(p.expire(t0 + Duration::from_secs(89)), Vec::<String>::new());
        let mut gone = p.expire(t0 + Duration::from_secs(91));
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
        assert_eq!(p.heard("a", t0 + Duration::from_secs(95)), Heard::Online, "back online");
        assert!(p.gone("a"));
        assert!(!p.gone("a"));
        let mut never = Presence::new(Duration::ZERO, 10);
        never.heard("x", t0);
        assert!(never.expire(t0 + Duration::from_secs(1 << 30)).is_empty());
    }

    #[test]
    fn presence_holds_at_most_max_devices_and_admits_again_when_one_leaves() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(60), 2);
        assert_eq!(p.heard("a", t0), Heard::Online);
        assert_eq!(p.heard("b", t0), Heard::Online);
        assert_eq!(p.heard("c", t0), Heard::Refused, "a third device id past the cap");
        assert_eq!(p.heard("c", t0), Heard::Refused, "and not remembered");
        assert_eq!(p.heard("a", t0), Heard::Again, "those online stay");
        assert!(p.gone("a"));
        assert_eq!(p.heard("c", t0), Heard::Online, "room again");
        assert_eq!(p.expire(t0 + Duration::from_secs(61)).len(), 2);
        assert_eq!(p.heard("d", t0 + Duration::from_secs(61)), Heard::Online);
    }
}
