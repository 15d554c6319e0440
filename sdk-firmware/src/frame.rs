//! Frames and messages of the Thinger.io classic protocol (device-protocol.md §2).
//!
//! ## Format
//! `frame = varint type, varint body_length, body`. Type 1 is a MESSAGE, type 2 a
//! KEEP_ALIVE (always `02 00`); nothing else may be sent, because a device cannot skip an
//! unknown frame. A MESSAGE body is a run of fields keyed `(field << 3) | wire`:
//!
//! | field | key | value |
//! |---|---|---|
//! | 1 STREAM_ID | `08` | varint, left out when 0 |
//! | 2 SIGNAL_FLAG | `10` | varint [`Signal`], left out when NONE |
//! | 3 IDENTIFIER | `1E` | PSON (wire type 6) |
//! | 4 RESOURCE | `26` | PSON array of strings |
//! | 6 PAYLOAD | `36` | PSON |
//!
//! Fields are written in the order 1, 2, 3, 4, 6. The decoder accepts any order, skips
//! unknown fields of wire types 0, 1, 2 and 5 like the device, and rejects an unknown
//! field of wire type 6 (the device cannot skip those either).
//!
//! ## Sans-IO
//! [`decode_frame`] looks at the front of a receive buffer and returns a borrowed
//! [`FrameRef`] and the bytes it used, or `None` when more bytes are needed; a declared body
//! over the limit is an error as soon as its header arrives, so a peer cannot make us
//! buffer more than [`FrameLimits::max_body`]. With `alloc`, [`FrameDecoder`] keeps the
//! buffer for you: bytes in, frames out.

use crate::pson::{DecodeError, Limits, ValueRef};
use crate::varint::{self, VarintError};
use crate::{BufferFull, Sink};

#[cfg(feature = "alloc")]
mod owned;
#[cfg(feature = "alloc")]
pub use owned::{Frame, FrameDecoder, Message, path_value};

/// Frame type of a MESSAGE.
pub const TYPE_MESSAGE: u32 = 1;
/// Frame type of a KEEP_ALIVE.
pub const TYPE_KEEP_ALIVE: u32 = 2;
/// The one and only keep-alive frame.
pub const KEEP_ALIVE: [u8; 2] = [0x02, 0x00];

/// Message field keys.
pub mod key {
    pub const STREAM_ID: u8 = 0x08;
    pub const SIGNAL: u8 = 0x10;
    pub const IDENTIFIER: u8 = 0x1E;
    pub const RESOURCE: u8 = 0x26;
    pub const PAYLOAD: u8 = 0x36;
}

/// PSON-valued fields use this protocol-specific wire type.
const WIRE_PSON: u64 = 6;

/// The SIGNAL_FLAG of a message (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Signal {
    /// Run `RESOURCE` with optional input `PAYLOAD` (server request).
    #[default]
    None,
    RequestOk,
    RequestError,
    StartStream,
    StopStream,
    Auth,
    StreamEvent,
    StreamSample,
    CallEndpoint,
    CallDevice,
    BucketData,
    GetProperty,
    SetProperty,
    /// A flag this protocol does not define; kept so it can be logged and answered.
    Other(u32),
}

impl Signal {
    /// The flag's wire value.
    pub const fn code(self) -> u32 {
        match self {
            Signal::None => 0,
            Signal::RequestOk => 1,
            Signal::RequestError => 2,
            Signal::StartStream => 3,
            Signal::StopStream => 4,
            Signal::Auth => 5,
            Signal::StreamEvent => 6,
            Signal::StreamSample => 7,
            Signal::CallEndpoint => 8,
            Signal::CallDevice => 9,
            Signal::BucketData => 10,
            Signal::GetProperty => 11,
            Signal::SetProperty => 12,
            Signal::Other(c) => c,
        }
    }

    /// The flag for a wire value.
    pub const fn from_code(c: u32) -> Self {
        match c {
            0 => Signal::None,
            1 => Signal::RequestOk,
            2 => Signal::RequestError,
            3 => Signal::StartStream,
            4 => Signal::StopStream,
            5 => Signal::Auth,
            6 => Signal::StreamEvent,
            7 => Signal::StreamSample,
            8 => Signal::CallEndpoint,
            9 => Signal::CallDevice,
            10 => Signal::BucketData,
            11 => Signal::GetProperty,
            12 => Signal::SetProperty,
            c => Signal::Other(c),
        }
    }
}

/// Bounds for frames from an untrusted peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest MESSAGE body accepted, in bytes.
    pub max_body: usize,
    /// Nesting bound for the PSON fields.
    pub max_depth: usize,
}

impl FrameLimits {
    /// 64 KiB bodies, 32 levels.
    pub const DEFAULT: FrameLimits = FrameLimits {
        max_body: 64 * 1024,
        max_depth: 32,
    };

    fn pson(&self) -> Limits {
        Limits {
            max_depth: self.max_depth,
            max_size: self.max_body,
        }
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a frame was rejected. After any of these the stream cannot be trusted to be in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame type other than MESSAGE or KEEP_ALIVE.
    UnknownFrameType { frame_type: u32 },
    /// The declared body is over [`FrameLimits::max_body`].
    TooLarge { len: usize, limit: usize },
    /// A header varint is longer than 5 bytes or over `u32::MAX`.
    HeaderOverflow,
    /// The body ended inside a field.
    Truncated,
    /// A known field came with the wrong wire type, or an unknown wire type appeared.
    BadField { field: u64, wire: u64 },
    /// An unknown field with PSON wire type; the protocol cannot skip those.
    UnknownPsonField { field: u64 },
    /// A PSON field did not decode.
    Pson(DecodeError),
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownFrameType { frame_type } => write!(f, "unknown frame type {frame_type}"),
            Self::TooLarge { len, limit } => write!(f, "frame body of {len} bytes is over the {limit}-byte limit"),
            Self::HeaderOverflow => f.write_str("frame header varint overflow"),
            Self::Truncated => f.write_str("message body ends inside a field"),
            Self::BadField { field, wire } => {
                write!(f, "message field {field} with bad wire type {wire}")
            }
            Self::UnknownPsonField { field } => write!(f, "unknown PSON message field {field}"),
            Self::Pson(e) => write!(f, "message field: {e}"),
        }
    }
}

impl core::error::Error for FrameError {}

impl From<DecodeError> for FrameError {
    fn from(e: DecodeError) -> Self {
        FrameError::Pson(e)
    }
}

/// A decoded frame borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameRef<'a> {
    KeepAlive,
    Message(MessageRef<'a>),
}

/// A decoded MESSAGE borrowing its PSON fields from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MessageRef<'a> {
    pub stream_id: u32,
    pub signal: Signal,
    pub identifier: Option<ValueRef<'a>>,
    pub resource: Option<ValueRef<'a>>,
    pub payload: Option<ValueRef<'a>>,
}

/// Reads a 32-bit header varint; `Ok(None)` when more bytes are needed.
fn header_u32(buf: &[u8]) -> Result<Option<(u32, usize)>, FrameError> {
    match varint::decode_u32(buf) {
        Ok(v) => Ok(Some(v)),
        Err(VarintError::Truncated) => Ok(None),
        Err(VarintError::Overflow) => Err(FrameError::HeaderOverflow),
    }
}

/// Decodes the frame at the front of `buf`: the frame and the bytes it used, or `None` if
/// the frame is not complete yet.
pub fn decode_frame<'a>(buf: &'a [u8], limits: &FrameLimits) -> Result<Option<(FrameRef<'a>, usize)>, FrameError> {
    let Some((frame_type, n1)) = header_u32(buf)? else {
        return Ok(None);
    };
    let rest = buf.get(n1..).unwrap_or_default();
    let Some((len, n2)) = header_u32(rest)? else {
        return Ok(None);
    };
    let len = len as usize;
    if frame_type != TYPE_MESSAGE && frame_type != TYPE_KEEP_ALIVE {
        return Err(FrameError::UnknownFrameType { frame_type });
    }
    if len > limits.max_body {
        return Err(FrameError::TooLarge {
            len,
            limit: limits.max_body,
        });
    }
    let Some(body) = rest.get(n2..n2 + len) else {
        return Ok(None);
    };
    let used = n1 + n2 + len;
    if frame_type == TYPE_KEEP_ALIVE {
        // A keep-alive has no body; one that declares a body has it skipped.
        return Ok(Some((FrameRef::KeepAlive, used)));
    }
    let msg = MessageRef::decode_body(body, &limits.pson())?;
    Ok(Some((FrameRef::Message(msg), used)))
}

impl<'a> MessageRef<'a> {
    /// An empty message with this stream id and flag.
    pub const fn new(stream_id: u32, signal: Signal) -> Self {
        Self {
            stream_id,
            signal,
            identifier: None,
            resource: None,
            payload: None,
        }
    }

    /// Decodes a MESSAGE body (the fields only).
    pub fn decode_body(mut body: &'a [u8], limits: &Limits) -> Result<Self, FrameError> {
        let mut msg = MessageRef::new(0, Signal::None);
        while !body.is_empty() {
            let (k, n) = varint::decode_u64(body).map_err(field_err)?;
            body = body.get(n..).unwrap_or_default();
            let (field, wire) = (k >> 3, k & 7);
            match (field, wire) {
                (1, 0) | (2, 0) => {
                    let (v, n) = varint::decode_u32(body).map_err(field_err)?;
                    body = body.get(n..).unwrap_or_default();
                    if field == 1 {
                        msg.stream_id = v;
                    } else {
                        msg.signal = Signal::from_code(v);
                    }
                }
                (3 | 4 | 6, WIRE_PSON) => {
                    let (v, n) = ValueRef::decode_prefix(body, limits)?;
                    body = body.get(n..).unwrap_or_default();
                    let slot = match field {
                        3 => &mut msg.identifier,
                        4 => &mut msg.resource,
                        _ => &mut msg.payload,
                    };
                    *slot = Some(v);
                }
                (1..=4 | 6, _) => return Err(FrameError::BadField { field, wire }),
                (_, WIRE_PSON) => return Err(FrameError::UnknownPsonField { field }),
                (_, 0) => body = skip(body, varint::decode_u64(body).map_err(field_err)?.1)?,
                (_, 1) => body = skip(body, 8)?,
                (_, 5) => body = skip(body, 4)?,
                (_, 2) => {
                    let (len, n) = varint::decode_u32(body).map_err(field_err)?;
                    body = skip(body, n + len as usize)?;
                }
                _ => return Err(FrameError::BadField { field, wire }),
            }
        }
        Ok(msg)
    }

    /// The resource path, when RESOURCE is an array of strings.
    pub fn path(&self) -> Option<impl Iterator<Item = &'a str> + Clone> {
        let arr = self.resource?.as_array()?;
        arr.iter()
            .all(|v| v.as_str().is_some())
            .then(|| arr.iter().filter_map(|v| v.as_str()))
    }

    /// The size of the body (fields only).
    pub fn body_len(&self) -> usize {
        let mut n = 0;
        if self.stream_id != 0 {
            n += 1 + varint::len_u64(u64::from(self.stream_id));
        }
        if self.signal.code() != 0 {
            n += 1 + varint::len_u64(u64::from(self.signal.code()));
        }
        for v in [self.identifier, self.resource, self.payload].iter().flatten() {
            n += 1 + v.encoded_len();
        }
        n
    }

    /// Writes the whole frame (`01`, body length, fields) to `sink`.
    pub fn encode_frame<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<(), BufferFull> {
        sink.put_u8(TYPE_MESSAGE as u8)?;
        varint::write_u64(sink, self.body_len() as u64)?;
        write_header_fields(sink, self.stream_id, self.signal)?;
        for (key, v) in [
            (key::IDENTIFIER, self.identifier),
            (key::RESOURCE, self.resource),
            (key::PAYLOAD, self.payload),
        ] {
            if let Some(v) = v {
                sink.put_u8(key)?;
                v.encode(sink)?;
            }
        }
        Ok(())
    }
}

/// Fields 1 and 2, each left out when zero.
pub(crate) fn write_header_fields<S: Sink + ?Sized>(
    sink: &mut S,
    stream_id: u32,
    signal: Signal,
) -> Result<(), BufferFull> {
    if stream_id != 0 {
        sink.put_u8(key::STREAM_ID)?;
        varint::write_u64(sink, u64::from(stream_id))?;
    }
    if signal.code() != 0 {
        sink.put_u8(key::SIGNAL)?;
        varint::write_u64(sink, u64::from(signal.code()))?;
    }
    Ok(())
}

fn field_err(e: VarintError) -> FrameError {
    match e {
        VarintError::Truncated => FrameError::Truncated,
        VarintError::Overflow => FrameError::Pson(DecodeError::VarintOverflow),
    }
}

fn skip(body: &[u8], n: usize) -> Result<&[u8], FrameError> {
    body.get(n..).ok_or(FrameError::Truncated)
}

#[cfg(test)]
pub(crate) mod tests;
