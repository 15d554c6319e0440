//! The streams the agent itself keeps on connected devices' resources (the `[streams]`
//! section applied to what each device described).
//!
//! A user's stream request on such a resource must not stop the agent's own stream, and
//! stopping the user's stream must put the agent's back: the link asks here. Only the
//! resources the agent streams are kept, not the whole description: a device the agent
//! keeps no stream on costs no entry, which matters at tens of thousands of idle devices.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::event::DeviceKey;

/// A device's own streams: the resource path (segments joined by `/`) and its interval
/// (`None` for an input streamed on change).
type Streams = Box<[(Box<str>, Option<Duration>)]>;

/// Per connected device, the streams the agent keeps on it.
#[derive(Debug, Default)]
pub struct OwnStreams {
    devices: Mutex<HashMap<DeviceKey, Streams>>,
}

impl OwnStreams {
    /// Records `key`'s own streams as of its latest description, replacing what was there.
    pub fn set<'a>(&self, key: &DeviceKey, streams: impl IntoIterator<Item = (&'a str, Option<Duration>)>) {
        let s: Streams = streams.into_iter().map(|(p, i)| (Box::from(p), i)).collect();
        let Ok(mut d) = self.devices.lock() else { return };
        if s.is_empty() {
            d.remove(key);
        } else {
            d.insert(key.clone(), s);
        }
    }

    /// The stream the agent keeps on `path` of `key`: `None` if it keeps none, else its
    /// interval. Empty segments are ignored, as the device requests ignore them.
    pub fn get(&self, key: &DeviceKey, path: &str) -> Option<Option<Duration>> {
        let d = self.devices.lock().ok()?;
        let own = d.get(key)?;
        own.iter().find(|(p, _)| same_path(p, path)).map(|(_, i)| *i)
    }
}

/// Whether the `/`-joined `kept` names the same resource as `asked`.
fn same_path(kept: &str, asked: &str) -> bool {
    kept.split('/').eq(asked.split('/').filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_streamed_resources_are_kept_and_a_new_description_replaces_them() {
        let own = OwnStreams::default();
        let key = DeviceKey::new("alice", "d1");
        let ten = Some(Duration::from_secs(10));
        own.set(&key, [("sensors/temp", ten), ("led", None)]);
        assert_eq!(own.get(&key, "sensors/temp"), Some(ten));
        assert_eq!(own.get(&key, "/sensors//temp/"), Some(ten));
        assert_eq!(own.get(&key, "led"), Some(None));
        assert_eq!(own.get(&key, "sensors"), None);
        assert_eq!(own.get(&DeviceKey::new("bob", "d1"), "led"), None);
        own.set(&key, []);
        assert_eq!(own.get(&key, "led"), None);
        assert!(
            own.devices.lock().unwrap().is_empty(),
            "a device with no own streams costs no entry"
        );
    }
}
