//! The server's half of one device connection, free of I/O.
//!
//! Frames go in through [`Session::handle`], decisions and requests through the other
//! methods, and whole frames come out of [`Session::take_transmit`]. The rules it keeps
//! (device-protocol.md §2.4):
//! * AUTH comes first, and the next frame the device sees is the answer: REQUEST_OK, or
//!   REQUEST_ERROR before the connection closes. Nothing is sent before it.
//! * Server requests use non-zero stream ids in 1..=65535 that are not in use.
//! * Device messages are told apart by flag: 1/2 are replies to us, 6/7 stream data,
//!   5 and 8–12 device requests. A request (8, 9, 10, 12) is acked only when it carries a
//!   stream id; GET_PROPERTY is always answered, with stream id 0. Stream data is never
//!   answered.
//! * A keep-alive is answered with exactly `02 00`.

use std::collections::BTreeMap;

use twinlake_sdk::frame::{Frame, FrameRef, KEEP_ALIVE, Message, Signal};
use twinlake_sdk::pson::Value;

use crate::event::RawValue;

/// The credentials a device presented.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub device: String,
    pub credential: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log the credential.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// What the device said, for the layer above to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The device wants in; answer with [`Session::accept`] or [`Session::reject`].
    Auth(Credentials),
    /// A reply to one of our requests.
    Reply {
        stream_id: u32,
        ok: bool,
        payload: Option<Value>,
    },
    /// Data on a stream we started.
    Stream {
        stream_id: u32,
        path: Vec<String>,
        payload: Option<Value>,
        sample: bool,
    },
    /// CALL_ENDPOINT; `ack` is the stream id to confirm, if the device wants a confirmation.
    Endpoint {
        endpoint: String,
        payload: Option<Value>,
        ack: Option<u32>,
    },
    /// BUCKET_DATA, its payload as it came in.
    Bucket {
        bucket: String,
        payload: Option<RawValue>,
        ack: Option<u32>,
    },
    /// GET_PROPERTY; answer with [`Session::property`].
    GetProperty { property: String },
    /// SET_PROPERTY.
    SetProperty {
        property: String,
        payload: Option<Value>,
        ack: Option<u32>,
    },
    /// CALL_DEVICE.
    CallDevice {
        device: String,
        path: Vec<String>,
        payload: Option<Value>,
        ack: Option<u32>,
    },
}

/// A BUCKET_DATA write borrowed from the receive buffer ([`Session::bucket_ref`]).
#[derive(Debug, Clone, Copy)]
pub struct BucketRef<'a> {
    pub bucket: &'a str,
    pub payload: Option<twinlake_sdk::pson::ValueRef<'a>>,
    /// The stream id to confirm, if the device wants a confirmation.
    pub ack: Option<u32>,
}

/// A protocol violation; the connection should close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the first frame was not AUTH")]
    NotAuthenticated,
    #[error("AUTH without [user, device, credential]")]
    MalformedAuth,
    #[error("{0:?} without an identifier")]
    MissingIdentifier(Signal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingAuth,
    Deciding,
    Active,
    Rejected,
}

/// One device connection's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    last_sid: u16,
    in_flight: BTreeMap<u32, ()>,
    streams: BTreeMap<u32, Vec<String>>,
    /// Whole frames to write, back to back.
    outbox: Vec<u8>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A fresh connection, waiting for AUTH.
    pub fn new() -> Self {
        Self {
            state: State::AwaitingAuth,
            last_sid: 0,
            in_flight: BTreeMap::new(),
            streams: BTreeMap::new(),
            outbox: Vec::new(),
        }
    }

    /// Whether the device has been accepted.
    pub fn is_active(&self) -> bool {
        self.state == State::Active
    }

    /// Whether the device was refused (close after flushing the error reply).
    pub fn is_rejected(&self) -> bool {
        self.state == State::Rejected
    }

    /// Every whole frame to write, back to back, taken out: an idle connection keeps no
    /// memory for them.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether there is something to write.
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Handles one frame from the device.
    pub fn handle(&mut self, frame: Frame) -> Result<Option<SessionEvent>, SessionError> {
        let m = match frame {
            Frame::KeepAlive => {
                if self.state == State::Active {
                    self.outbox.extend_from_slice(&KEEP_ALIVE);
                }
                return Ok(None);
            }
            Frame::Message(m) => m,
        };
        match self.state {
            State::AwaitingAuth => self.handle_auth(m).map(Some),
            // Anything before our answer, or after a refusal, is dropped.
            State::Deciding | State::Rejected => Ok(None),
            State::Active => self.handle_active(m),
        }
    }

    /// Handles one frame borrowed from the receive buffer. BUCKET_DATA of an accepted device,
    /// the bulk of ingest, keeps its payload as the bytes it came in; every other frame is
    /// made owned and goes through [`Session::handle`].
    pub fn handle_ref(&mut self, frame: FrameRef<'_>) -> Result<Option<SessionEvent>, SessionError> {
        match self.bucket_ref(&frame)? {
            Some(b) => Ok(Some(SessionEvent::Bucket {
                bucket: b.bucket.into(),
                payload: b.payload.map(RawValue::from_ref),
                ack: b.ack,
            })),
            None => self.handle(Frame::from_ref(&frame)),
        }
    }

    /// BUCKET_DATA of an accepted device, borrowed from the receive buffer: the bucket, the
    /// payload and the stream id to confirm, if any. `None` for every other frame, which
    /// goes through [`Session::handle_ref`].
    pub fn bucket_ref<'a>(&self, frame: &FrameRef<'a>) -> Result<Option<BucketRef<'a>>, SessionError> {
        match frame {
            FrameRef::Message(m) if m.signal == Signal::BucketData && self.state == State::Active => {
                let bucket = m
                    .identifier
                    .and_then(|v| v.as_str())
                    .ok_or(SessionError::MissingIdentifier(m.signal))?;
                Ok(Some(BucketRef {
                    bucket,
                    payload: m.payload,
                    ack: (m.stream_id != 0).then_some(m.stream_id),
                }))
            }
            _ => Ok(None),
        }
    }

    fn handle_auth(&mut self, m: Message) -> Result<SessionEvent, SessionError> {
        if m.signal != Signal::Auth {
            return Err(SessionError::NotAuthenticated);
        }
        let Some([user, device, credential]) = m.path().and_then(|p| <[&str; 3]>::try_from(p).ok()) else {
            return Err(SessionError::MalformedAuth);
        };
        self.state = State::Deciding;
        Ok(SessionEvent::Auth(Credentials {
            user: user.into(),
            device: device.into(),
            credential: credential.into(),
        }))
    }

    /// Accepts the device: REQUEST_OK with stream id 0 (`01 02 10 01`).
    pub fn accept(&mut self) {
        self.state = State::Active;
        self.send(&Message::ok(0, None));
    }

    /// Refuses the device: REQUEST_ERROR (`01 02 10 02`); close after it is written.
    pub fn reject(&mut self) {
        self.state = State::Rejected;
        self.send(&Message::error(0));
    }

    fn handle_active(&mut self, m: Message) -> Result<Option<SessionEvent>, SessionError> {
        let ack = (m.stream_id != 0).then_some(m.stream_id);
        let ident = |m: &Message| {
            m.identifier_str()
                .map(String::from)
                .ok_or(SessionError::MissingIdentifier(m.signal))
        };
        let event = match m.signal {
            Signal::RequestOk | Signal::RequestError => {
                // A reply to something we did not ask (or a stray OK the device turned
                // into an error) is ignored.
                if remove_released(&mut self.in_flight, &m.stream_id).is_none() {
                    return Ok(None);
                }
                SessionEvent::Reply {
                    stream_id: m.stream_id,
                    ok: m.signal == Signal::RequestOk,
                    payload: m.payload,
                }
            }
            Signal::StreamEvent | Signal::StreamSample => {
                let Some(path) = self.streams.get(&m.stream_id) else {
                    return Ok(None);
                };
                SessionEvent::Stream {
                    stream_id: m.stream_id,
                    path: path.clone(),
                    payload: m.payload,
                    sample: m.signal == Signal::StreamSample,
                }
            }
            Signal::CallEndpoint => SessionEvent::Endpoint {
                endpoint: ident(&m)?,
                payload: m.payload,
                ack,
            },
            Signal::BucketData => SessionEvent::Bucket {
                bucket: ident(&m)?,
                payload: m.payload.as_ref().map(RawValue::from_value),
                ack,
            },
            Signal::GetProperty => SessionEvent::GetProperty { property: ident(&m)? },
            Signal::SetProperty => SessionEvent::SetProperty {
                property: ident(&m)?,
                payload: m.payload,
                ack,
            },
            Signal::CallDevice => SessionEvent::CallDevice {
                device: ident(&m)?,
                path: m.path().unwrap_or_default().into_iter().map(String::from).collect(),
                payload: m.payload,
                ack,
            },
            // Server-to-device flags, a second AUTH, unknown flags: nothing to do.
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    /// Sends a request (its stream id is assigned here) and returns the stream id.
    pub fn request(&mut self, mut m: Message) -> u32 {
        let sid = self.next_sid();
        m.stream_id = sid;
        self.in_flight.insert(sid, ());
        match m.signal {
            Signal::StartStream => {
                let path = m
                    .path()
                    .unwrap_or_default()
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>();
                // One stream per path: a new start replaces the old one.
                self.streams.retain(|_, p| *p != path);
                self.streams.insert(sid, path);
            }
            Signal::StopStream => {
                let path = m.path().unwrap_or_default();
                self.streams
                    .retain(|_, p| !p.iter().map(String::as_str).eq(path.iter().copied()));
            }
            _ => {}
        }
        self.send(&m);
        sid
    }

    /// Gives up waiting for a reply (timed out).
    pub fn forget(&mut self, stream_id: u32) {
        remove_released(&mut self.in_flight, &stream_id);
    }

    /// Confirms (or refuses) a device request that asked for it.
    pub fn ack(&mut self, stream_id: u32, ok: bool) {
        let m = if ok {
            Message::ok(stream_id, None)
        } else {
            Message::error(stream_id)
        };
        self.send(&m);
    }

    /// Answers GET_PROPERTY (stream id 0, as the device waits for).
    pub fn property(&mut self, value: Option<Value>) {
        self.send(&Message::ok(0, value));
    }

    /// The stream ids of the open streams and their paths.
    pub fn streams(&self) -> impl Iterator<Item = (u32, &[String])> {
        self.streams.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    fn next_sid(&mut self) -> u32 {
        loop {
            self.last_sid = self.last_sid.checked_add(1).unwrap_or(1);
            let sid = u32::from(self.last_sid);
            if !self.in_flight.contains_key(&sid) && !self.streams.contains_key(&sid) {
                return sid;
            }
        }
    }

    fn send(&mut self, m: &Message) {
        m.encode_frame_into(&mut self.outbox);
    }
}

/// Removes `key` from `map`; a map left empty gives its memory back. Std's BTreeMap keeps
/// its last node after the last removal (about 400 B for a connection's pending requests),
/// which every idle connection would hold once a request had come and gone.
pub(crate) fn remove_released<K: Ord, V>(map: &mut BTreeMap<K, V>, key: &K) -> Option<V> {
    let v = map.remove(key);
    if map.is_empty() {
        *map = BTreeMap::new();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlake_sdk::frame::Message;

    /// The frames written, one by one.
    fn drain(s: &mut Session) -> Vec<Vec<u8>> {
        let bytes = s.take_transmit();
        let mut rest = bytes.as_slice();
        let mut frames = Vec::new();
        while let Some((_, n)) = twinlake_sdk::frame::decode_frame(rest, &Default::default()).unwrap() {
            let (frame, tail) = rest.split_at(n);
            frames.push(frame.to_vec());
            rest = tail;
        }
        assert!(rest.is_empty(), "whole frames only");
        frames
    }

    fn active() -> Session {
        let mut s = Session::new();
        let ev = s
            .handle(Frame::Message(Message::auth("alice", "sensor1", "s3cr3t!")))
            .unwrap();
        assert!(matches!(ev, Some(SessionEvent::Auth(c)) if c.device == "sensor1"));
        assert!(drain(&mut s).is_empty(), "nothing before the auth answer");
        s.accept();
        assert_eq!(drain(&mut s), vec![vec![0x01, 0x02, 0x10, 0x01]]);
        s
    }

    #[test]
    fn auth_first() {
        let mut s = Session::new();
        assert_eq!(
            s.handle(Frame::Message(Message::new(1, Signal::None))),
            Err(SessionError::NotAuthenticated)
        );
        let mut s = Session::new();
        let bad = Message::new(0, Signal::Auth).with_path(&["only", "two"]);
        assert_eq!(s.handle(Frame::Message(bad)), Err(SessionError::MalformedAuth));
        let mut s = Session::new();
        s.handle(Frame::Message(Message::auth("a", "b", "c"))).unwrap();
        s.reject();
        assert!(s.is_rejected());
        assert_eq!(drain(&mut s), vec![vec![0x01, 0x02, 0x10, 0x02]]);
    }

    #[test]
    fn keep_alive_is_answered_exactly() {
        let mut s = active();
        s.handle(Frame::KeepAlive).unwrap();
        assert_eq!(drain(&mut s), vec![vec![0x02, 0x00]]);
    }

    #[test]
    fn stream_ids_are_nonzero_and_skip_those_in_use() {
        let mut s = active();
        s.last_sid = u16::MAX - 1;
        let a = s.request(Message::new(0, Signal::StartStream).with_path(&["temp"]));
        let b = s.request(Message::new(0, Signal::None).with_path(&["x"]));
        assert_eq!((a, b), (65535, 1));
        s.last_sid = 65534;
        // 65535 is a live stream, so it wraps past it and past 1 (in flight).
        assert_eq!(s.request(Message::new(0, Signal::None).with_path(&["y"])), 2);
    }

    /// BUCKET_DATA handled from the receive buffer keeps its payload's bytes as sent, only
    /// once the device is accepted; other frames take the owned path.
    fn frame(bytes: &[u8]) -> FrameRef<'_> {
        twinlake_sdk::frame::decode_frame(bytes, &Default::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn bucket_data_keeps_its_bytes_from_the_receive_buffer() {
        let payload = Value::object().with("t", 21.5).with("ok", true);
        let bucket = Message::new(7, Signal::BucketData)
            .with_identifier("b1")
            .with_payload(payload.clone())
            .to_frame();
        let mut s = Session::new();
        assert_eq!(s.handle_ref(frame(&bucket)), Err(SessionError::NotAuthenticated));
        let mut s = active();
        let Ok(Some(SessionEvent::Bucket {
            bucket: b,
            payload: Some(raw),
            ack: Some(7),
        })) = s.handle_ref(frame(&bucket))
        else {
            panic!("a bucket event")
        };
        assert_eq!((b.as_str(), raw.as_bytes()), ("b1", payload.to_bytes().as_slice()));
        let nameless = Message::new(0, Signal::BucketData).with_payload(1).to_frame();
        assert_eq!(
            s.handle_ref(frame(&nameless)),
            Err(SessionError::MissingIdentifier(Signal::BucketData))
        );
        let keep_alive = twinlake_sdk::frame::KEEP_ALIVE;
        assert_eq!(s.handle_ref(frame(&keep_alive)), Ok(None));
        assert_eq!(drain(&mut s), vec![keep_alive.to_vec()]);
    }

    #[test]
    fn device_messages_are_sorted_by_flag() {
        let mut s = active();
        let sid = s.request(
            Message::new(0, Signal::StartStream)
                .with_path(&["temp"])
                .with_payload(1000),
        );
        drain(&mut s);
        let reply = s.handle(Frame::Message(Message::ok(sid, None))).unwrap();
        assert_eq!(
            reply,
            Some(SessionEvent::Reply {
                stream_id: sid,
                ok: true,
                payload: None
            })
        );
        // A second reply with the same id is not ours any more.
        assert_eq!(s.handle(Frame::Message(Message::ok(sid, None))).unwrap(), None);
        let sample = Message::new(sid, Signal::StreamSample).with_payload(Value::object().with("out", 21.5));
        assert!(matches!(
            s.handle(Frame::Message(sample)).unwrap(),
            Some(SessionEvent::Stream { sample: true, ref path, .. }) if path == &["temp"]
        ));
        // A device request whose random id equals our stream id is still a device request.
        let call = Message::new(sid, Signal::CallEndpoint).with_identifier("email_alert");
        assert!(matches!(
            s.handle(Frame::Message(call)).unwrap(),
            Some(SessionEvent::Endpoint { ack: Some(x), .. }) if x == sid
        ));
        let bucket = Message::new(0, Signal::BucketData)
            .with_identifier("b1")
            .with_payload(1);
        assert!(matches!(
            s.handle(Frame::Message(bucket)).unwrap(),
            Some(SessionEvent::Bucket { ack: None, .. })
        ));
        assert!(
            drain(&mut s).is_empty(),
            "stream data and device requests are never answered by the session itself"
        );
        assert_eq!(
            s.handle(Frame::Message(Message::new(0, Signal::GetProperty))),
            Err(SessionError::MissingIdentifier(Signal::GetProperty))
        );
    }
}
