//! Owned messages and the buffering frame decoder.

use alloc::string::String;
use alloc::vec::Vec;

use super::{FrameError, FrameLimits, FrameRef, MessageRef, Signal, decode_frame, key, write_header_fields};
use crate::pson::Value;

/// An owned MESSAGE.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub stream_id: u32,
    pub signal: Signal,
    pub identifier: Option<Value>,
    pub resource: Option<Value>,
    pub payload: Option<Value>,
}

/// An owned frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    KeepAlive,
    Message(Message),
}

/// A resource path as the RESOURCE field carries it: an array of strings.
pub fn path_value<S: AsRef<str>>(path: &[S]) -> Value {
    Value::Array(path.iter().map(|s| Value::Str(String::from(s.as_ref()))).collect())
}

impl Message {
    /// A message with this stream id and flag and no other fields.
    pub fn new(stream_id: u32, signal: Signal) -> Self {
        Self {
            stream_id,
            signal,
            ..Self::default()
        }
    }

    /// Sets RESOURCE to a path.
    pub fn with_path<S: AsRef<str>>(mut self, path: &[S]) -> Self {
        self.resource = Some(path_value(path));
        self
    }

    /// Sets IDENTIFIER to a string.
    pub fn with_identifier(mut self, id: &str) -> Self {
        self.identifier = Some(Value::Str(id.into()));
        self
    }

    /// Sets PAYLOAD.
    pub fn with_payload(mut self, payload: impl Into<Value>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Sets PAYLOAD when there is one.
    pub fn with_optional_payload(mut self, payload: Option<Value>) -> Self {
        self.payload = payload;
        self
    }

    /// A REQUEST_OK reply.
    pub fn ok(stream_id: u32, payload: Option<Value>) -> Self {
        Self::new(stream_id, Signal::RequestOk).with_optional_payload(payload)
    }

    /// A REQUEST_ERROR reply.
    pub fn error(stream_id: u32) -> Self {
        Self::new(stream_id, Signal::RequestError)
    }

    /// The AUTH request: RESOURCE = [username, device id, credential], no stream id.
    pub fn auth(user: &str, device: &str, credential: &str) -> Self {
        Self::new(0, Signal::Auth).with_path(&[user, device, credential])
    }

    /// Copies a borrowed message.
    pub fn from_ref(m: &MessageRef<'_>) -> Self {
        Self {
            stream_id: m.stream_id,
            signal: m.signal,
            identifier: m.identifier.map(Value::from_ref),
            resource: m.resource.map(Value::from_ref),
            payload: m.payload.map(Value::from_ref),
        }
    }

    /// The resource path, when RESOURCE is an array of strings.
    pub fn path(&self) -> Option<Vec<&str>> {
        match self.resource.as_ref()? {
            Value::Array(items) => items.iter().map(Value::as_str).collect(),
            _ => None,
        }
    }

    /// IDENTIFIER as a string.
    pub fn identifier_str(&self) -> Option<&str> {
        self.identifier.as_ref()?.as_str()
    }

    /// Appends the whole frame to `out`, in one piece (stock clients need whole-frame writes).
    pub fn encode_frame_into(&self, out: &mut Vec<u8>) {
        out.push(super::TYPE_MESSAGE as u8);
        let at = out.len();
        out.push(0);
        // Writing to a Vec cannot fail.
        let _ = write_header_fields(out, self.stream_id, self.signal);
        for (key, v) in [
            (key::IDENTIFIER, &self.identifier),
            (key::RESOURCE, &self.resource),
            (key::PAYLOAD, &self.payload),
        ] {
            if let Some(v) = v {
                out.push(key);
                v.encode_into(out);
            }
        }
        crate::pson::end_container_at(out, at);
    }

    /// The whole frame as a new vector.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_frame_into(&mut out);
        out
    }
}

impl Frame {
    /// Copies a borrowed frame.
    pub fn from_ref(f: &FrameRef<'_>) -> Self {
        match f {
            FrameRef::KeepAlive => Frame::KeepAlive,
            FrameRef::Message(m) => Frame::Message(Message::from_ref(m)),
        }
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Frame::KeepAlive => super::KEEP_ALIVE.to_vec(),
            Frame::Message(m) => m.to_frame(),
        }
    }
}

/// Incremental frame decoder: push bytes as they arrive, pull complete frames out.
///
/// Memory is bounded: at most one frame over the limit is ever buffered before
/// [`FrameError::TooLarge`] is reported, because the check runs on the header.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    limits: FrameLimits,
}

impl FrameDecoder {
    /// A decoder with these limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            limits,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Frees the buffer when everything in it has been decoded: an idle connection then
    /// holds no buffer memory at all.
    pub fn release(&mut self) {
        if self.start >= self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, borrowed from the buffer; `None` until one is complete.
    pub fn next_ref(&mut self) -> Result<Option<FrameRef<'_>>, FrameError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        match decode_frame(pending, &self.limits)? {
            None => Ok(None),
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
        }
    }

    /// The next complete frame, owned.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        Ok(self.next_ref()?.map(|f| Frame::from_ref(&f)))
    }
}
