//! What connections and the platform tell each other: the events devices cause, the rows
//! sources produce, the confirmations they wait for, and the commands a handle sends to its
//! connection's task.

use std::net::SocketAddr;
use std::ops::Range;
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

/// BUCKET_DATA writes of one device, their bucket names and payloads back to back in one
/// buffer (not an allocation each), each with its arrival time and confirmation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketRows {
    bytes: Vec<u8>,
    rows: Vec<BucketRow>,
}

#[derive(Debug, Clone, PartialEq)]
struct BucketRow {
    at: SystemTime,
    bucket: Range<usize>,
    /// None: the write carried no payload.
    payload: Option<Range<usize>>,
    ack: Option<Acker>,
}

/// One write of a [`BucketRows`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketWrite<'a> {
    pub at: SystemTime,
    pub bucket: &'a str,
    /// Its PSON payload, as it came in (checked where it entered).
    pub payload: Option<&'a [u8]>,
}

impl BucketRows {
    /// Room for about `bytes` of bucket names and payloads, and their writes (a write
    /// takes at least a few dozen bytes), so a read's writes do not grow it step by step.
    pub fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
        self.rows.reserve(bytes / 48);
    }

    /// Appends a write of a decoded payload.
    pub fn push(&mut self, at: SystemTime, bucket: &str, payload: Option<ValueRef<'_>>, ack: Option<Acker>) {
        let bucket = self.bucket_range(bucket);
        let payload = payload.map(|v| {
            let start = self.bytes.len();
            // A Vec takes every byte.
            let _ = v.encode(&mut self.bytes);
            start..self.bytes.len()
        });
        self.rows.push(BucketRow {
            at,
            bucket,
            payload,
            ack,
        });
    }

    /// The bytes of `bucket`: those of the write before when it is the same bucket, as it
    /// mostly is, else a copy.
    fn bucket_range(&mut self, bucket: &str) -> Range<usize> {
        if let Some(last) = self.rows.last()
            && self.bytes.get(last.bucket.clone()) == Some(bucket.as_bytes())
        {
            return last.bucket.clone();
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bucket.as_bytes());
        start..self.bytes.len()
    }

    /// The bytes of its bucket names and payloads.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// How many writes it holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The writes in order.
    pub fn iter(&self) -> impl Iterator<Item = BucketWrite<'_>> {
        self.rows.iter().map(|r| write(&self.bytes, r))
    }

    /// The writes in order, each with its confirmation, taken out.
    pub fn drain(&mut self) -> impl Iterator<Item = (BucketWrite<'_>, Option<Acker>)> {
        let bytes = &self.bytes;
        self.rows.drain(..).map(move |r| (write(bytes, &r), r.ack))
    }
}

/// The write `r` with its bucket and payload borrowed from `bytes`.
fn write<'a>(bytes: &'a [u8], r: &BucketRow) -> BucketWrite<'a> {
    BucketWrite {
        at: r.at,
        // Pushed from a &str, so whole UTF-8; the empty fallback cannot happen.
        bucket: bytes
            .get(r.bucket.clone())
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default(),
        payload: r.payload.clone().and_then(|p| bytes.get(p)),
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
    /// BUCKET_DATA writes that came in one read, in order. A write whose ack is set (a
    /// stream id on the message) is confirmed with [`Acker::ack`] once its record is
    /// durable. Payloads go on as the bytes they came in: the rows of buckets are the bulk
    /// of ingest, so a read's writes are one event and one buffer.
    Buckets(BucketRows),
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

impl DeviceEventKind {
    /// The rows it brings, at least one: what a batch of events is bounded by.
    pub fn rows(&self) -> usize {
        match self {
            Self::Buckets(rows) => rows.len().max(1),
            Self::Message { rows, .. } => rows.len().max(1),
            _ => 1,
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twinlake_sdk::pson::Value;

    use super::*;

    /// Writes come back in order with their buckets, payloads and confirmations; a bucket
    /// repeated from the write before is held once.
    #[test]
    fn bucket_rows_keep_each_write_and_hold_a_repeated_bucket_once() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let (a, b) = (Value::Int(1).to_bytes(), Value::from("x").to_bytes());
        let (a, b) = (a.as_slice(), b.as_slice());
        let decode = |v| ValueRef::decode(v).ok();
        let acker = Acker::from_fn(|_| {});
        let mut rows = BucketRows::default();
        rows.push(at(1), "b1", decode(a), None);
        rows.push(at(2), "b1", decode(b), Some(acker.clone()));
        let one_bucket = rows.bytes();
        assert_eq!(one_bucket, 2 + a.len() + b.len(), "b1 held once");
        rows.push(at(3), "b2", None, None);
        rows.push(at(4), "b1", decode(a), None);
        assert_eq!(rows.len(), 4);
        let writes: Vec<_> = rows.iter().map(|w| (w.at, w.bucket, w.payload)).collect();
        assert_eq!(
            writes,
            [
                (at(1), "b1", Some(a)),
                (at(2), "b1", Some(b)),
                (at(3), "b2", None),
                (at(4), "b1", Some(a))
            ]
        );
        let acks: Vec<bool> = rows.drain().map(|(_, ack)| ack == Some(acker.clone())).collect();
        assert_eq!(acks, [false, true, false, false]);
        assert!(rows.is_empty());
    }
}
