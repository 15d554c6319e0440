//! Commands waiting for HTTP devices: what the platform wrote to a device (a desired
//! value, a live write), held until the device long-polls for it, and the ids of those
//! sent, so its reply can say which resource it answers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value as Json;
use tokio::sync::Notify;

use crate::event::DeviceKey;

/// A command as the device receives it (ThingsBoard's server-side RPC shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub id: u32,
    /// The resource written.
    pub method: String,
    /// The value written.
    pub params: Json,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Command>,
    /// Sent and not replied to: id → resource, the newest `max` kept.
    sent: VecDeque<(u32, String)>,
    next_id: u32,
    ready: Arc<Notify>,
}

/// Every online HTTP device's commands, at most `max` waiting (and `max` sent) per device.
/// Entries exist only for devices online through the API: [`Commands::forget`] drops a
/// device's when it goes offline.
#[derive(Debug)]
pub struct Commands {
    devices: Mutex<HashMap<DeviceKey, Queue>>,
    max: usize,
}

impl Commands {
    pub fn new(max: usize) -> Self {
        Self {
            devices: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Queues a write of `params` to `method` for `key`; its id, or why not.
    pub fn push(&self, key: &DeviceKey, method: &str, params: Json) -> Result<u32, String> {
        let mut d = self.devices.lock().map_err(|_| "poisoned".to_owned())?;
        let q = d.entry(key.clone()).or_default();
        if q.waiting.len() >= self.max {
            return Err(format!(
                "{} commands already wait for the device to poll",
                q.waiting.len()
            ));
        }
        q.next_id = q.next_id.wrapping_add(1);
        let id = q.next_id;
        q.waiting.push_back(Command {
            id,
            method: method.to_owned(),
            params,
        });
        q.ready.notify_one();
        Ok(id)
    }

    /// The oldest waiting command (now counted as sent), or what to wait on for one.
    pub fn take(&self, key: &DeviceKey) -> Result<Command, Arc<Notify>> {
        let Ok(mut d) = self.devices.lock() else {
            return Err(Arc::new(Notify::new()));
        };
        let q = d.entry(key.clone()).or_default();
        match q.waiting.pop_front() {
            Some(c) => {
                if q.sent.len() >= self.max {
                    q.sent.pop_front();
                }
                q.sent.push_back((c.id, c.method.clone()));
                Ok(c)
            }
            None => Err(q.ready.clone()),
        }
    }

    /// The resource command `id` wrote, if it was sent to `key` and not replied to yet;
    /// a reply is taken once.
    pub fn replied(&self, key: &DeviceKey, id: u32) -> Option<String> {
        let mut d = self.devices.lock().ok()?;
        let q = d.get_mut(key)?;
        let at = q.sent.iter().position(|(i, _)| *i == id)?;
        q.sent.remove(at).map(|(_, m)| m)
    }

    /// Drops `key`'s commands (it went offline; the platform writes again when it is back).
    pub fn forget(&self, key: &DeviceKey) {
        if let Ok(mut d) = self.devices.lock() {
            d.remove(key);
        }
    }

    /// How many devices have an entry.
    pub fn len(&self) -> usize {
        self.devices.lock().map(|d| d.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_queue_are_bounded_and_replies_name_their_resource() {
        let c = Commands::new(2);
        let k = DeviceKey::new("u", "d");
        assert!(c.take(&k).is_err(), "nothing yet");
        let a = c.push(&k, "led", Json::Bool(true)).unwrap();
        let b = c.push(&k, "fan", Json::from(3)).unwrap();
        assert!(c.push(&k, "x", Json::Null).is_err(), "a third waits for none");
        let first = c.take(&k).unwrap();
        assert_eq!((first.id, first.method.as_str()), (a, "led"));
        assert_eq!(c.take(&k).unwrap().id, b);
        assert_eq!(c.replied(&k, a).as_deref(), Some("led"));
        assert_eq!(c.replied(&k, a), None, "a reply is taken once");
        assert_eq!(c.replied(&DeviceKey::new("u", "other"), b), None);
        assert_eq!(c.replied(&k, 999), None);
        c.forget(&k);
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn a_poller_waiting_is_woken_by_a_push() {
        let c = Arc::new(Commands::new(4));
        let k = DeviceKey::new("u", "d");
        let ready = c.take(&k).unwrap_err();
        let c2 = c.clone();
        let k2 = k.clone();
        tokio::spawn(async move { c2.push(&k2, "led", Json::Bool(false)) });
        ready.notified().await;
        assert_eq!(c.take(&k).unwrap().method, "led");
    }
}
