//! What connections and the platform tell each other: the events devices cause, the rows
//! sources produce, the confirmations they wait for, and the commands a handle sends to its
//! connection's task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use twinlake_sdk::pson::{Value, ValueRef};

use crate::queue::CommandQueue;

/// Identifies a device: the user (account) and the device id, as in AUTH.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    pub user: String,
    pub device: String,
}

impl DeviceKey {
    /// The key of `device` in `user`'s account.
    pub fn new(user: &str, device: &str) -> Self {
        Self {
            user: user.into(),
            device: device.into(),
        }
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// A PSON value as it arrived, checked where it entered (it decodes under the frame's
/// limits): carried and written to the WAL as these bytes, with no tree built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue(Box<[u8]>);

impl RawValue {
    /// The bytes of a decoded value.
    pub fn from_ref(v: ValueRef<'_>) -> Self {
        let mut out = Vec::with_capacity(v.encoded_len());
        // A Vec takes every byte.
        let _ = v.encode(&mut out);
        Self(out.into())
    }

    /// The bytes of an owned value.
    pub fn from_value(v: &Value) -> Self {
        Self(v.to_bytes().into())
    }

    /// Its encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is PSON's "unset" (a resource with nothing to say).
    pub fn is_unset(&self) -> bool {
        *self.0 == [twinlake_sdk::pson::tag::UNSET]
    }
}

/// Something a device did, in arrival order per device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    pub device: DeviceKey,
    pub at: SystemTime,
    pub kind: DeviceEventKind,
}

/// The kinds of [`DeviceEvent`].
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEventKind {
    Connected {
        peer: SocketAddr,
        tls: bool,
        /// How it speaks: `thinger`, `mqtt`, `lorawan`.
        protocol: &'static str,
    },
    Disconnected {
        reason: String,
        rx_bytes: u64,
        tx_bytes: u64,
    },
    /// Stream data: `{"out": v}` / `{"in": v}` as the device wraps it.
    Stream {
        path: Vec<String>,
        payload: Option<Value>,
        sample: bool,
    },
    /// CALL_ENDPOINT. If `ack` is set the device waits for it: call [`Acker::ack`] once
    /// the call is safely queued.
    Endpoint {
        endpoint: String,
        payload: Option<Value>,
        ack: Option<Acker>,
    },
    /// BUCKET_DATA. If `ack` is set (a stream id on the message), confirm with
    /// [`Acker::ack`] once the record is durable. The payload goes on as the bytes it came
    /// in: the rows of a bucket are the bulk of ingest.
    Bucket {
        bucket: String,
        payload: Option<RawValue>,
        ack: Option<Acker>,
    },
    PropertySet {
        property: String,
        payload: Option<Value>,
    },
    CallDevice {
        target: String,
        path: Vec<String>,
        payload: Option<Value>,
    },
    /// Rows from a source other than the listener (an MQTT message, a LoRaWAN uplink, an
    /// HTTP request): stored together, then `delivery` (an MQTT message the broker may send
    /// again) or `ack` (a request whose answer waits) is confirmed once they are durable.
    Message {
        rows: Vec<SourceRow>,
        delivery: Option<Delivery>,
        ack: Option<Acker>,
    },
}

/// One row a source produced: a resource's value at a time. It lands in the table named
/// after the resource and is the resource's reported value in the device's twin.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// The device (of the event's user) the row is of.
    pub device: String,
    pub resource: String,
    pub at: SystemTime,
    pub payload: Value,
}

/// A message its source must confirm (an MQTT QoS 1 PUBLISH), and what identifies it if
/// the source delivers it again after a crash.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The source's name (one per configured broker).
    pub source: Arc<str>,
    /// The packet id the broker gave it.
    pub id: u16,
    /// A hash of the topic and payload.
    pub hash: u64,
    /// Whether the broker marked it as sent before (MQTT DUP).
    pub redelivered: bool,
    pub ack: Acker,
}

/// Confirms one request, later: a device gets REQUEST_OK or REQUEST_ERROR; a broker gets
/// its PUBACK (see [`Acker::from_fn`]).
#[derive(Clone)]
pub struct Acker(pub(crate) AckTarget);

#[derive(Clone)]
pub(crate) enum AckTarget {
    Device { acks: Arc<CommandQueue>, stream_id: u32 },
    Fn(Arc<dyn Fn(bool) + Send + Sync>),
}

impl Acker {
    /// An acker that calls `f` with the outcome (a source's own confirmation).
    pub fn from_fn(f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        Self(AckTarget::Fn(Arc::new(f)))
    }

    /// Sends the confirmation. If the device is gone, there is no one to tell.
    pub fn ack(self, ok: bool) {
        match self.0 {
            AckTarget::Fn(f) => f(ok),
            AckTarget::Device { acks, stream_id } => acks.ack(stream_id, ok),
        }
    }
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            AckTarget::Device { stream_id, .. } => f.debug_struct("Acker").field("stream_id", stream_id).finish(),
            AckTarget::Fn(_) => f.write_str("Acker(fn)"),
        }
    }
}

impl PartialEq for Acker {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (AckTarget::Device { acks: a, stream_id: x }, AckTarget::Device { acks: b, stream_id: y }) => {
                x == y && Arc::ptr_eq(a, b)
            }
            (AckTarget::Fn(a), AckTarget::Fn(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
