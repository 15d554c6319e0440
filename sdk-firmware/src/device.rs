//! The sans-IO device runtime: a [`Thing`] holds the resource tree and the protocol state,
//! takes frames and the time in, and hands frames and events out. A transport (such as
//! [`crate::client`]) moves the bytes; tests drive it directly.
//!
//! ## Protocol duties (device-protocol.md §2.4, §2.5)
//! * On connect, AUTH with `[user, device, credential]`; the next frame is the answer.
//! * Server requests (flags NONE, START_STREAM, STOP_STREAM) carry a stream id; the reply
//!   copies it with REQUEST_OK or REQUEST_ERROR, and a request with stream id 0 gets no reply.
//! * A path ending in `api` describes: `["api"]` lists the tree, `[.., name, "api"]` gives
//!   that resource's I/O template.
//! * Streams: START_STREAM with an interval samples at once and then every interval
//!   (STREAM_SAMPLE); on an input it sends the current state as a STREAM_EVENT; after that,
//!   each write to the input is followed by a STREAM_EVENT. Payloads are wrapped in
//!   `{"out": v}` / `{"in": v}`. Streams end on STOP_STREAM or disconnect.
//! * Keep-alive: `02 00` every [`Config::keep_alive_ms`]; if the last one got no answer by
//!   the next tick, the connection is declared dead.
//! * Device requests (endpoints, buckets, properties, device calls) use random non-zero
//!   stream ids when a confirmation is wanted. Replies are told apart by flag, not by id.

mod resource;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

pub use resource::{Access, Io, Outcome, Resource};

use crate::frame::{Frame, Message, Signal, path_value};
use crate::pson::Value;

/// Runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interval between keep-alives, in ms (stock clients: 60 000).
    pub keep_alive_ms: u64,
    /// Seed for request stream ids.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            keep_alive_ms: 60_000,
            seed: 0x2545_F491_4F6C_DD1D,
        }
    }
}

/// Identifies a device request that asked for confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u16);

/// What the runtime tells its transport or application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The server accepted the credentials.
    Authenticated,
    /// The server refused them; the transport should close and retry later.
    AuthRejected,
    /// The answer to [`Thing::get_property`] (`None` when the server sent no payload).
    Property { name: String, value: Option<Value> },
    /// The server confirmed (or refused) a confirmed request.
    Ack { request: RequestId, ok: bool },
    /// No keep-alive answer within an interval: the transport should reconnect.
    KeepAliveTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Authenticating,
    Connected,
}

#[derive(Debug, Clone)]
struct Stream {
    stream_id: u32,
    path: Vec<String>,
    /// 0 for event-only streams.
    interval_ms: u64,
    next_sample_ms: u64,
}

/// Why a server request failed; the reply is REQUEST_ERROR either way.
enum RequestError {
    NoResource,
}

/// A device: resources plus protocol state. See the module docs for the duties it carries.
#[derive(Debug)]
pub struct Thing {
    resources: Vec<Resource>,
    config: Config,
    state: State,
    streams: Vec<Stream>,
    outbox: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    last_keep_alive_ms: u64,
    keep_alive_pending: bool,
    pending_acks: Vec<u16>,
    pending_properties: VecDeque<String>,
    rng: u64,
}

impl Default for Thing {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Thing {
    /// A device with no resources yet.
    pub fn new(config: Config) -> Self {
        Self {
            resources: Vec::new(),
            rng: config.seed | 1,
            config,
            state: State::Disconnected,
            streams: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            last_keep_alive_ms: 0,
            keep_alive_pending: false,
            pending_acks: Vec::new(),
            pending_properties: VecDeque::new(),
        }
    }

    /// The top-level resource `name`, created if missing (`thing["name"]`).
    pub fn resource(&mut self, name: &str) -> &mut Resource {
        resource::child_mut(&mut self.resources, name)
    }

    /// Whether the server has accepted this device on the current connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// A transport connected: queue AUTH.
    pub fn connected(&mut self, user: &str, device: &str, credential: &str, now_ms: u64) {
        self.reset();
        self.state = State::Authenticating;
        self.last_keep_alive_ms = now_ms;
        self.send(&Message::auth(user, device, credential));
    }

    /// The transport closed: streams and pending requests end.
    pub fn disconnected(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.state = State::Disconnected;
        self.streams.clear();
        self.outbox.clear();
        self.keep_alive_pending = false;
        self.pending_acks.clear();
        self.pending_properties.clear();
    }

    /// The next whole frame to write, if any. Write each in one piece.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Thing::poll`] next has work to do, in ms on the caller's clock.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.state != State::Connected {
            return None;
        }
        let ka = self.last_keep_alive_ms + self.config.keep_alive_ms;
        let sample = self
            .streams
            .iter()
            .filter(|s| s.interval_ms > 0)
            .map(|s| s.next_sample_ms)
            .min();
        Some(sample.map_or(ka, |s| s.min(ka)))
    }

    /// Runs timers: keep-alives and interval samples.
    pub fn poll(&mut self, now_ms: u64) {
        if self.state != State::Connected {
            return;
        }
        if now_ms >= self.last_keep_alive_ms + self.config.keep_alive_ms {
            if self.keep_alive_pending {
                self.events.push_back(Event::KeepAliveTimeout);
                self.reset();
                return;
            }
            self.last_keep_alive_ms = now_ms;
            self.keep_alive_pending = true;
            self.outbox.push_back(crate::frame::KEEP_ALIVE.to_vec());
        }
        for i in 0..self.streams.len() {
            let Some(s) = self.streams.get(i) else { break };
            if s.interval_ms == 0 || now_ms < s.next_sample_ms {
                continue;
            }
            let (sid, path, interval) = (s.stream_id, s.path.clone(), s.interval_ms);
            self.send_stream(sid, &path, Signal::StreamSample);
            if let Some(s) = self.streams.get_mut(i) {
                // The next tick, or one interval from now after a stall: no burst of catch-up samples.
                let next = s.next_sample_ms + interval;
                s.next_sample_ms = if next > now_ms { next } else { now_ms + interval };
            }
        }
    }

    /// Handles one frame from the server.
    pub fn handle_frame(&mut self, frame: Frame, now_ms: u64) {
        match frame {
            Frame::KeepAlive => self.keep_alive_pending = false,
            Frame::Message(m) => self.handle_message(m, now_ms),
        }
    }

    fn handle_message(&mut self, m: Message, now_ms: u64) {
        if self.state == State::Authenticating {
            // The frame after AUTH is the answer, whatever its stream id.
            if m.signal == Signal::RequestOk {
                self.state = State::Connected;
                self.events.push_back(Event::Authenticated);
                // Like the Linux client, say hello with a keep-alive at once.
                self.last_keep_alive_ms = now_ms;
                self.keep_alive_pending = true;
                self.outbox.push_back(crate::frame::KEEP_ALIVE.to_vec());
            } else {
                self.events.push_back(Event::AuthRejected);
                self.reset();
            }
            return;
        }
        match m.signal {
            Signal::RequestOk | Signal::RequestError => self.handle_reply(m),
            Signal::None | Signal::StartStream | Signal::StopStream => self.handle_request(m, now_ms),
            // Device-to-server flags, or unknown ones: nothing for a device to do.
            _ => {}
        }
    }

    fn handle_reply(&mut self, m: Message) {
        let ok = m.signal == Signal::RequestOk;
        if m.stream_id == 0 {
            if let Some(name) = self.pending_properties.pop_front() {
                self.events.push_back(Event::Property { name, value: m.payload });
            }
            return;
        }
        let sid = m.stream_id as u16;
        if let Some(pos) = self.pending_acks.iter().position(|&p| p == sid) {
            self.pending_acks.swap_remove(pos);
            self.events.push_back(Event::Ack {
                request: RequestId(sid),
                ok,
            });
        }
    }

    fn handle_request(&mut self, m: Message, now_ms: u64) {
        let sid = m.stream_id;
        let result = match m.signal {
            Signal::StartStream => self.start_stream(&m, now_ms),
            Signal::StopStream => self.stop_stream(&m),
            _ => self.run_request(&m),
        };
        let (reply, follow) = match result {
            Ok((payload, follow)) => (Message::ok(sid, payload), follow),
            Err(RequestError::NoResource) => (Message::error(sid), None),
        };
        // A request with stream id 0 gets no reply at all (§2.4).
        if sid != 0 {
            self.send(&reply);
        }
        // Stream data follows the reply, as on the device.
        match follow {
            Some(FollowUp::Event(path)) => {
                self.notify_write(&path);
            }
            Some(FollowUp::StreamStarted(i)) => self.first_stream_data(i),
            None => {}
        }
    }

    /// The path of a request: a plain string counts as the empty path (§2.4).
    fn request_path(m: &Message) -> Result<Vec<String>, RequestError> {
        match &m.resource {
            Some(Value::Str(_)) => Ok(Vec::new()),
            Some(Value::Array(_)) => m
                .path()
                .map(|p| p.into_iter().map(String::from).collect())
                .ok_or(RequestError::NoResource),
            _ => Err(RequestError::NoResource),
        }
    }

    fn run_request(&mut self, m: &Message) -> Result<(Option<Value>, Option<FollowUp>), RequestError> {
        let path = Self::request_path(m)?;
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        match refs.split_last() {
            None => Ok((None, None)),
            Some((&"api", [])) => Ok((Some(resource::describe(&self.resources)), None)),
            Some((&"api", parent)) => {
                let r = resource::find_mut(&mut self.resources, parent).ok_or(RequestError::NoResource)?;
                Ok((Some(r.template()), None))
            }
            Some(_) => {
                let r = resource::find_mut(&mut self.resources, &path).ok_or(RequestError::NoResource)?;
                let outcome = r.invoke(m.payload.clone());
                let follow = outcome.wrote_input.then_some(FollowUp::Event(path));
                Ok((outcome.reply, follow))
            }
        }
    }

    fn start_stream(&mut self, m: &Message, now_ms: u64) -> Result<(Option<Value>, Option<FollowUp>), RequestError> {
        let path = Self::request_path(m)?;
        resource::find_mut(&mut self.resources, &path).ok_or(RequestError::NoResource)?;
        let interval_ms = m
            .payload
            .as_ref()
            .and_then(Value::as_i64)
            .map_or(0, |i| u64::try_from(i).unwrap_or(0));
        self.streams.retain(|s| s.path != path);
        self.streams.push(Stream {
            stream_id: m.stream_id,
            path,
            interval_ms,
            next_sample_ms: now_ms + interval_ms,
        });
        Ok((None, Some(FollowUp::StreamStarted(self.streams.len() - 1))))
    }

    fn stop_stream(&mut self, m: &Message) -> Result<(Option<Value>, Option<FollowUp>), RequestError> {
        let path = Self::request_path(m)?;
        self.streams.retain(|s| s.path != path);
        Ok((None, None))
    }

    /// Right after START_STREAM: a sample at once for interval streams, and the current
    /// state as an event for inputs.
    fn first_stream_data(&mut self, i: usize) {
        let Some(s) = self.streams.get(i) else { return };
        let (sid, path, interval) = (s.stream_id, s.path.clone(), s.interval_ms);
        let io = resource::find_mut(&mut self.resources, &path).map(|r| r.io());
        if interval > 0 {
            self.send_stream(sid, &path, Signal::StreamSample);
        } else if matches!(io, Some(Io::Input | Io::InputOutput)) {
            self.send_stream(sid, &path, Signal::StreamEvent);
        }
    }

    /// Sends the resource's current state as a STREAM_EVENT on every stream open on `path`
    /// (after an input was written, or when the application asks). Returns whether any was.
    fn notify_write<S: AsRef<str>>(&mut self, path: &[S]) -> bool {
        let sids: Vec<u32> = self
            .streams
            .iter()
            .filter(|s| same_path(&s.path, path))
            .map(|s| s.stream_id)
            .collect();
        for &sid in &sids {
            self.send_stream(sid, path, Signal::StreamEvent);
        }
        !sids.is_empty()
    }

    fn send_stream<S: AsRef<str>>(&mut self, sid: u32, path: &[S], signal: Signal) {
        if let Some(r) = resource::find_mut(&mut self.resources, path) {
            let payload = r.template();
            self.send(&Message::new(sid, signal).with_payload(payload));
        }
    }

    /// Streams the resource's current value now, if the server has a stream open on it
    /// (`thing.stream("x")`). Returns whether anything was sent.
    pub fn stream(&mut self, path: &[&str]) -> bool {
        self.notify_write(path)
    }

    /// Whether the server has a stream open on `path`.
    pub fn is_streaming(&self, path: &[&str]) -> bool {
        self.streams.iter().any(|s| same_path(&s.path, path))
    }

    /// The interval (ms) the server's stream on `path` samples at; 0 is on change only,
    /// `None` no stream.
    pub fn stream_interval(&self, path: &[&str]) -> Option<u64> {
        self.streams
            .iter()
            .find(|s| same_path(&s.path, path))
            .map(|s| s.interval_ms)
    }

    /// Calls a server endpoint (CALL_ENDPOINT). With `confirm`, the server acks, and an
    /// [`Event::Ack`] reports it.
    pub fn call_endpoint(&mut self, endpoint: &str, payload: Option<Value>, confirm: bool) -> Option<RequestId> {
        self.device_request(
            Message::new(0, Signal::CallEndpoint)
                .with_identifier(endpoint)
                .with_optional_payload(payload),
            confirm,
        )
    }

    /// Writes a record to a bucket (BUCKET_DATA).
    pub fn write_bucket(&mut self, bucket: &str, record: Value, confirm: bool) -> Option<RequestId> {
        self.device_request(
            Message::new(0, Signal::BucketData)
                .with_identifier(bucket)
                .with_payload(record),
            confirm,
        )
    }

    /// Sets a device property (SET_PROPERTY).
    pub fn set_property(&mut self, property: &str, value: Value, confirm: bool) -> Option<RequestId> {
        self.device_request(
            Message::new(0, Signal::SetProperty)
                .with_identifier(property)
                .with_payload(value),
            confirm,
        )
    }

    /// Calls a resource on another device (CALL_DEVICE).
    pub fn call_device(
        &mut self,
        device: &str,
        path: &[&str],
        payload: Option<Value>,
        confirm: bool,
    ) -> Option<RequestId> {
        let mut m = Message::new(0, Signal::CallDevice)
            .with_identifier(device)
            .with_optional_payload(payload);
        m.resource = Some(path_value(path));
        self.device_request(m, confirm)
    }

    /// Asks for a property (GET_PROPERTY); the answer arrives as [`Event::Property`].
    pub fn get_property(&mut self, property: &str) {
        self.pending_properties.push_back(property.into());
        self.send(&Message::new(0, Signal::GetProperty).with_identifier(property));
    }

    fn device_request(&mut self, mut m: Message, confirm: bool) -> Option<RequestId> {
        let id = confirm.then(|| self.next_request_id());
        if let Some(RequestId(sid)) = id {
            m.stream_id = u32::from(sid);
            self.pending_acks.push(sid);
        }
        self.send(&m);
        id
    }

    /// A random non-zero 16-bit id (xorshift64*), like the device's `rand()`.
    fn next_request_id(&mut self) -> RequestId {
        loop {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let id = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 48) as u16;
            if id != 0 && !self.pending_acks.contains(&id) {
                return RequestId(id);
            }
        }
    }

    fn send(&mut self, m: &Message) {
        self.outbox.push_back(m.to_frame());
    }
}

/// Whether a stream's path is `path`.
fn same_path<S: AsRef<str>>(stream: &[String], path: &[S]) -> bool {
    stream.iter().map(String::as_str).eq(path.iter().map(AsRef::as_ref))
}

/// What a handled request still has to do after its reply went out.
enum FollowUp {
    /// An input was written: send its new state on its streams.
    Event(Vec<String>),
    /// A stream was started (index into the streams).
    StreamStarted(usize),
}

#[cfg(test)]
mod tests;
