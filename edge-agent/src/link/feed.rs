//! What of a device event goes up the link: presence, stream values, properties, and the
//! resource values of source messages (their twins' reported state).
//!
//! Ingest calls [`forward`] for every event it handles, on its own task, before anything
//! else of the event: no channel stands between them, so no event is lost however hard
//! devices write (a lossy broadcast tap used to drop presence and values once a burst of
//! bucket writes put it 1,024 events behind). What [`Uplink`] holds is coalesced per device
//! and resource, so it stays bounded by the devices online.

use serde_json::Value as Json;
use twinlake_sdk::json::to_json;

use super::{Item, Uplink};
use crate::event::{DeviceEvent, DeviceEventKind, DeviceKey};

/// Hands `uplink` what the cloud's twins need of `ev`.
pub fn forward(uplink: &Uplink, ev: &DeviceEvent) {
    let at = crate::outbox::ms_since_epoch(ev.at);
    let key = &ev.device;
    let protocol = match &ev.kind {
        DeviceEventKind::Connected { protocol, .. } => Some((*protocol).to_owned()),
        _ => None,
    };
    let presence =
        |online: bool, ip: Option<String>, rx_bytes: u64, tx_bytes: u64, reason: Option<String>| Item::Presence {
            user: key.user.clone(),
            device: key.device.clone(),
            online,
            at,
            ip,
            rx_bytes,
            tx_bytes,
            reason,
            protocol: protocol.clone(),
        };
    match &ev.kind {
        DeviceEventKind::Connected { peer, .. } => {
            uplink.presence(key, presence(true, Some(peer.ip().to_string()), 0, 0, None));
        }
        DeviceEventKind::Disconnected {
            reason,
            rx_bytes,
            tx_bytes,
        } => uplink.presence(key, presence(false, None, *rx_bytes, *tx_bytes, Some(reason.clone()))),
        DeviceEventKind::Stream { path, payload, .. } => {
            let value = payload.as_ref().map(to_json).unwrap_or(Json::Null);
            uplink.reported(key, path.join("/"), at, value);
        }
        DeviceEventKind::PropertySet { property, payload } => {
            let value = payload.as_ref().map(to_json).unwrap_or(Json::Null);
            uplink.property(key, property.clone(), value);
        }
        DeviceEventKind::Message { rows, .. } => {
            for r in rows {
                let at = crate::outbox::ms_since_epoch(r.at);
                let key = DeviceKey::new(&key.user, &r.device);
                uplink.reported(&key, r.resource.clone(), at, to_json(&r.payload));
            }
        }
        DeviceEventKind::Endpoint { .. } | DeviceEventKind::Buckets(_) | DeviceEventKind::CallDevice { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use twinlake_sdk::pson::Value;

    use super::*;

    fn ev(device: &str, kind: DeviceEventKind) -> DeviceEvent {
        DeviceEvent {
            device: DeviceKey::new("u", device),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            kind,
        }
    }

    /// A presence change and a stream value between 20,000 bucket writes all go up: the
    /// tap this replaced would have dropped both.
    #[test]
    fn nothing_the_twins_need_is_lost_to_bucket_load() {
        let uplink = Uplink::new(16, 0, Arc::default());
        let bucket = || {
            let mut rows = crate::event::BucketRows::default();
            let one = Value::Int(1).to_bytes();
            rows.push(
                SystemTime::now(),
                "b",
                twinlake_sdk::pson::ValueRef::decode(&one).ok(),
                None,
            );
            ev("busy", DeviceEventKind::Buckets(rows))
        };
        for _ in 0..10_000 {
            forward(&uplink, &bucket());
        }
        let peer = "127.0.0.1:9".parse().unwrap();
        forward(
            &uplink,
            &ev(
                "quiet",
                DeviceEventKind::Connected {
                    peer,
                    tls: false,
                    protocol: "thinger",
                },
            ),
        );
        let stream = DeviceEventKind::Stream {
            path: vec!["temp".into()],
            payload: Some(Value::Float(21.5)),
            sample: false,
        };
        forward(&uplink, &ev("quiet", stream));
        for _ in 0..10_000 {
            forward(&uplink, &bucket());
        }
        let mut items = Vec::new();
        uplink.take(100, true, &mut items);
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(
            matches!(&items[0], Item::Presence { device, online: true, protocol: Some(p), .. } if device == "quiet" && p == "thinger")
        );
        assert!(
            matches!(&items[1], Item::Reported { device, path, value, .. } if device == "quiet" && path == "temp" && *value == serde_json::json!(21.5))
        );
    }
}
