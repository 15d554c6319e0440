//! The CoAP source's state between datagrams, without I/O: message ids remembered to answer
//! retransmissions (RFC 7252 §4.5), block-wise uploads put together (RFC 7959 Block1), the
//! routes of the path, and payloads by Content-Format. Everything here is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value as Json;
use twinlake_sdk::pson::Value;

use crate::sources::telemetry::{plain, thingsboard};

/// Content-Format numbers (RFC 7252 §12.3, the IANA registry).
pub mod format {
    pub const TEXT: u16 = 0;
    pub const JSON: u16 = 50;
    pub const CBOR: u16 = 60;
    /// PSON has no registered number: one from the experimental range (65000–65535).
    pub const PSON: u16 = 65_000;
}

/// A Block1/Block2 option value (RFC 7959 §2.2): block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// The block size is `16 << szx` (16 to 1024 bytes).
    pub szx: u8,
}

impl Block {
    /// Reads an option value (0 to 3 bytes, big-endian); `None` for a reserved size (7) or
    /// a longer value.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > 3 {
            return None;
        }
        let v = bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let szx = (v & 0x7) as u8;
        (szx < 7).then_some(Self {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    /// The option value, in as few bytes as it takes.
    pub fn encode(&self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx);
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
        bytes.get(skip..).unwrap_or_default().to_vec()
    }

    pub fn size(&self) -> usize {
        16usize << self.szx
    }
}

/// What is known of a message id from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: handle it.
    New,
    /// Being handled: a retransmission, dropped (the answer is on its way).
    InProgress,
    /// Answered: send the same answer again, store nothing.
    Answered(Vec<u8>),
}

/// Message ids of the last `lifetime`, at most `max` (the oldest go first).
#[derive(Debug)]
pub struct Dedup {
    entries: HashMap<(SocketAddr, u16), Option<Vec<u8>>>,
    order: VecDeque<(Instant, (SocketAddr, u16))>,
    lifetime: Duration,
    max: usize,
}

impl Dedup {
    pub fn new(lifetime: Duration, max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            lifetime,
            max: max.max(1),
        }
    }

    /// Looks `mid` from `peer` up, and remembers it if it is new.
    pub fn check(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> Seen {
        self.expire(now);
        match self.entries.get(&(peer, mid)) {
            Some(None) => Seen::InProgress,
            Some(Some(answer)) => Seen::Answered(answer.clone()),
            None => {
                while self.entries.len() >= self.max {
                    let Some((_, old)) = self.order.pop_front() else { break };
                    self.entries.remove(&old);
                }
                self.entries.insert((peer, mid), None);
                self.order.push_back((now, (peer, mid)));
                Seen::New
            }
        }
    }

    /// Keeps the answer to `mid` for its retransmissions.
    pub fn answered(&mut self, peer: SocketAddr, mid: u16, answer: Vec<u8>) {
        if let Some(slot) = self.entries.get_mut(&(peer, mid)) {
            *slot = Some(answer);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.lifetime {
                break;
            }
            self.entries.remove(key);
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a block-wise upload stands after a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// Send 2.31 Continue for this block.
    Continue(Block),
    /// The last block came: the whole body.
    Done(Vec<u8>),
    /// The body would pass `max_body` (4.13).
    TooLarge,
    /// A block out of order, or a non-final block of the wrong size (4.08).
    Incomplete,
    /// `max` uploads are under way (5.03).
    Busy,
}

#[derive(Debug)]
struct Transfer {
    body: Vec<u8>,
    at: Instant,
}

/// Block-wise uploads being put together, per peer and path: at most `max`, each at most
/// `max_body` bytes, each forgotten `lifetime` after its last block.
#[derive(Debug)]
pub struct Transfers {
    open: HashMap<(SocketAddr, String), Transfer>,
    max: usize,
    max_body: usize,
    lifetime: Duration,
}

impl Transfers {
    pub fn new(max: usize, max_body: usize, lifetime: Duration) -> Self {
        Self {
            open: HashMap::new(),
            max: max.max(1),
            max_body,
            lifetime,
        }
    }

    /// Adds a block of the upload to `path` from `peer`.
    pub fn add(&mut self, peer: SocketAddr, path: &str, block: Block, payload: &[u8], now: Instant) -> Assembled {
        let lifetime = self.lifetime;
        self.open.retain(|_, t| now.saturating_duration_since(t.at) < lifetime);
        let key = (peer, path.to_owned());
        let offset = (block.num as usize).saturating_mul(block.size());
        if offset.saturating_add(payload.len()) > self.max_body {
            self.open.remove(&key);
            return Assembled::TooLarge;
        }
        if block.more && payload.len() != block.size() {
            self.open.remove(&key);
            return Assembled::Incomplete;
        }
        if block.num == 0 {
            if !self.open.contains_key(&key) && self.open.len() >= self.max {
                return Assembled::Busy;
            }
            self.open.insert(
                key.clone(),
                Transfer {
                    body: Vec::new(),
                    at: now,
                },
            );
        }
        let Some(t) = self.open.get_mut(&key) else {
            return Assembled::Incomplete;
        };
        if t.body.len() != offset {
            self.open.remove(&key);
            return Assembled::Incomplete;
        }
        t.body.extend_from_slice(payload);
        t.at = now;
        if block.more {
            return Assembled::Continue(block);
        }
        self.open
            .remove(&key)
            .map_or(Assembled::Incomplete, |t| Assembled::Done(t.body))
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// What a request's path asks for: `api/v1/{token}/…`, ThingsBoard's CoAP device API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `telemetry[/{table}]`
    Telemetry { token: String, table: Option<String> },
    /// `attributes`
    Attributes { token: String },
    /// `rpc`: GET (with Observe, to be notified of commands).
    Rpc { token: String },
    /// `rpc/{id}`: POST the reply to a command.
    Reply { token: String, id: u32 },
}

impl Route {
    /// Reads the Uri-Path segments.
    pub fn parse(path: &[&str]) -> Option<Self> {
        let ["api", "v1", token, rest @ ..] = path else {
            return None;
        };
        let token = (*token).to_owned();
        Some(match rest {
            ["telemetry"] => Self::Telemetry { token, table: None },
            ["telemetry", table] => Self::Telemetry {
                token,
                table: Some((*table).to_owned()),
            },
            ["attributes"] => Self::Attributes { token },
            ["rpc"] => Self::Rpc { token },
            ["rpc", id] => Self::Reply {
                token,
                id: id.parse().ok()?,
            },
            _ => return None,
        })
    }

    pub fn token(&self) -> &str {
        match self {
            Self::Telemetry { token, .. }
            | Self::Attributes { token }
            | Self::Rpc { token }
            | Self::Reply { token, .. } => token,
        }
    }
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadPayload {
    /// A Content-Format this source does not read (4.15).
    Unsupported(u16),
    /// The bytes are not what the format says (4.00).
    Malformed(String),
}

/// A payload as JSON, by its Content-Format (none: JSON). PSON and plain text are read
/// as one value; JSON and CBOR in ThingsBoard's telemetry shapes.
pub fn json(format: Option<u16>, body: &[u8]) -> Result<Json, BadPayload> {
    match format.unwrap_or(format::JSON) {
        format::JSON => serde_json::from_slice(body).map_err(|e| BadPayload::Malformed(format!("not JSON: {e}"))),
        format::CBOR => {
            ciborium::from_reader::<Json, _>(body).map_err(|e| BadPayload::Malformed(format!("not CBOR: {e}")))
        }
        f => Err(BadPayload::Unsupported(f)),
    }
}

/// The values a telemetry payload holds, with their times (`now` where it gives none).
pub fn values(format: Option<u16>, body: &[u8], now: SystemTime) -> Result<Vec<(SystemTime, Value)>, BadPayload> {
    match format {
        Some(format::PSON) => {
            let v = Value::decode(body).map_err(|e| BadPayload::Malformed(format!("not PSON: {e}")))?;
            Ok(vec![(now, v)])
        }
        Some(format::TEXT) => {
            let text = std::str::from_utf8(body).map_err(|_| BadPayload::Malformed("not UTF-8 text".into()))?;
            Ok(vec![(now, plain(text))])
        }
        f => {
            let j = json(f, body)?;
            let mut out = Vec::new();
            thingsboard(&j, now, &mut |at, v| out.push((at, v))).map_err(BadPayload::Malformed)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn block_options_read_and_write_back() {
        for b in [
            Block {
                num: 0,
                more: true,
                szx: 6,
            },
            Block {
                num: 1,
                more: false,
                szx: 2,
            },
            Block {
                num: 4095,
                more: true,
                szx: 0,
            },
            Block {
                num: (1 << 20) - 1,
                more: false,
                szx: 6,
            },
        ] {
            assert_eq!(Block::parse(&b.encode()), Some(b));
        }
        assert_eq!(
            Block::parse(&[]),
            Some(Block {
                num: 0,
                more: false,
                szx: 0
            })
        );
        assert_eq!(Block::parse(&[0x07]), None, "size exponent 7 is reserved");
        assert_eq!(Block::parse(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn retransmissions_get_the_first_answer_and_ids_are_bounded() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 2);
        assert_eq!(d.check(peer(1), 7, t0), Seen::New);
        assert_eq!(d.check(peer(1), 7, t0), Seen::InProgress);
        assert_eq!(d.check(peer(2), 7, t0), Seen::New, "ids are per peer");
        d.answered(peer(1), 7, vec![1, 2]);
        assert_eq!(d.check(peer(1), 7, t0), Seen::Answered(vec![1, 2]));
        assert_eq!(d.check(peer(1), 8, t0), Seen::New);
        assert_eq!(d.len(), 2, "the oldest forgotten past the cap");
        assert_eq!(
            d.check(peer(1), 8, t0 + Duration::from_secs(11)),
            Seen::New,
            "after the lifetime"
        );
    }

    #[test]
    fn block_uploads_are_put_together_in_order_and_bounded() {
        let t0 = Instant::now();
        let mut t = Transfers::new(1, 100, Duration::from_secs(60));
        let b = |num, more| Block { num, more, szx: 1 }; // 32 bytes
        let x = [b'x'; 32];
        assert_eq!(t.add(peer(1), "p", b(0, true), &x, t0), Assembled::Continue(b(0, true)));
        assert_eq!(
            t.add(peer(2), "p", b(0, true), &x, t0),
            Assembled::Busy,
            "one upload at a time"
        );
        assert_eq!(t.add(peer(1), "p", b(1, true), &x, t0), Assembled::Continue(b(1, true)));
        match t.add(peer(1), "p", b(2, false), b"end", t0) {
            Assembled::Done(body) => assert_eq!(body.len(), 67),
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
        assert_eq!(
            t.add(peer(1), "p", b(1, true), &x, t0),
            Assembled::Incomplete,
            "no block 0"
        );
        assert_eq!(
            t.add(peer(1), "p", b(0, true), &x[..5], t0),
            Assembled::Incomplete,
            "short"
        );
        assert_eq!(t.add(peer(1), "p", b(4, false), &x, t0), Assembled::TooLarge);
        assert_eq!(
            t.add(peer(1), "p", b(u32::MAX >> 4, false), &x, t0),
            Assembled::TooLarge
        );
        assert!(t.is_empty());
    }

    #[test]
    fn routes_are_thingsboards() {
        let p = |s: &str| Route::parse(&s.split('/').collect::<Vec<_>>());
        assert_eq!(
            p("api/v1/a:b:c/telemetry"),
            Some(Route::Telemetry {
                token: "a:b:c".into(),
                table: None
            })
        );
        assert_eq!(
            p("api/v1/t/rpc/12"),
            Some(Route::Reply {
                token: "t".into(),
                id: 12
            })
        );
        assert_eq!(p("api/v1/t/rpc"), Some(Route::Rpc { token: "t".into() }));
        assert_eq!(p("api/v1/t/rpc/x"), None);
        assert_eq!(p("api/v2/t/telemetry"), None);
        assert_eq!(p("api/v1/t"), None);
    }

    #[test]
    fn payloads_by_content_format() {
        let now = SystemTime::UNIX_EPOCH;
        let v = values(None, br#"{"t":1}"#, now).unwrap();
        assert_eq!(v[0].1.get("t"), Some(&Value::Int(1)));
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &serde_json::json!([{"ts": 1_700_000_000_000u64, "values": {"t": 2.5}}]),
            &mut cbor,
        )
        .unwrap();
        let v = values(Some(format::CBOR), &cbor, now).unwrap();
        assert_eq!(v[0].1.get("t").and_then(Value::as_f64), Some(2.5));
        assert_ne!(v[0].0, now);
        let v = values(Some(format::PSON), &Value::Int(7).to_bytes(), now).unwrap();
        assert_eq!(v[0].1, Value::Int(7));
        assert_eq!(
            values(Some(format::TEXT), b" 21.5 ", now).unwrap()[0].1,
            Value::Double(21.5)
        );
        assert_eq!(values(Some(41), b"<x/>", now), Err(BadPayload::Unsupported(41)));
        assert!(matches!(
            values(Some(format::CBOR), &[0xff], now),
            Err(BadPayload::Malformed(_))
        ));
        assert!(matches!(values(None, b"[1]", now), Err(BadPayload::Malformed(_))));
    }

    proptest::proptest! {
        /// Any option value: a block that writes back the same, or none.
        #[test]
        fn block_options_round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..5)) {
            if let Some(b) = Block::parse(&bytes) {
                proptest::prop_assert_eq!(Block::parse(&b.encode()), Some(b));
                proptest::prop_assert!(b.size() >= 16 && b.size() <= 1024);
            }
        }

        /// Any sequence of blocks from a few peers: at most `max` uploads open, and a body
        /// handed out is never over `max_body` and is the blocks in order.
        #[test]
        fn uploads_stay_bounded(steps in proptest::collection::vec(
            (0u16..4, 0u32..6, proptest::bool::ANY, 0u8..3, 0usize..70), 0..40,
        )) {
            let t0 = Instant::now();
            let mut t = Transfers::new(2, 200, Duration::from_secs(60));
            for (p, num, more, szx, len) in steps {
                let block = Block { num, more, szx };
                let payload = vec![num as u8; len];
                if let Assembled::Done(body) = t.add(peer(p), "x", block, &payload, t0) {
                    proptest::prop_assert!(body.len() <= 200);
                    proptest::prop_assert_eq!(body.len(), num as usize * block.size() + len);
                }
                proptest::prop_assert!(t.len() <= 2);
            }
        }

        /// Any payload in any format: an answer, never a panic.
        #[test]
        fn any_payload_is_answered(format in proptest::option::of(proptest::sample::select(vec![0u16, 50, 60, 65_000, 41])),
                                   body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = values(format, &body, SystemTime::UNIX_EPOCH);
        }
    }
}
