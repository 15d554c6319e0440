//! Reaching connected devices: live describe, read, write, call, run and streams.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use twinlake_sdk::frame::Signal;
use twinlake_sdk::pson::Value;

use super::{Shared, resource_request};
use crate::Error;
use crate::event::DeviceKey;
use crate::queue::{Command, CommandQueue, Reply, ReplyFn, Responder};

/// The set of connected devices.
#[derive(Clone)]
pub struct Devices(Arc<Shared>);

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Devices").field(&self.list()).finish()
    }
}

impl Devices {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self(shared)
    }

    /// The handle of a connected device.
    pub fn get(&self, user: &str, device: &str) -> Option<DeviceHandle> {
        let key = DeviceKey::new(user, device);
        let queue = self.0.devices.lock().ok()?.get(&key).map(|(_, q)| q.clone())?;
        Some(DeviceHandle::new(key, queue, self.0.config.request_timeout))
    }

    /// The connected devices, sorted.
    pub fn list(&self) -> Vec<DeviceKey> {
        let mut v: Vec<DeviceKey> = self
            .0
            .devices
            .lock()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until a device is connected (polling every 10 ms), up to `timeout`.
    pub async fn wait_for(&self, user: &str, device: &str, timeout: Duration) -> Result<DeviceHandle, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(h) = self.get(user, device) {
                return Ok(h);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::DeviceOffline(format!("{user}/{device}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets a property the device can read with GET_PROPERTY.
    pub fn set_property(&self, user: &str, device: &str, property: &str, value: Value) {
        let key = DeviceKey::new(user, device);
        if let Ok(mut p) = self.0.properties.lock() {
            p.insert((key, property.into()), value);
        }
    }

    /// A property's value.
    pub fn property(&self, user: &str, device: &str, property: &str) -> Option<Value> {
        let key = DeviceKey::new(user, device);
        self.0.properties.lock().ok()?.get(&(key, property.into())).cloned()
    }
}

/// A connected device. Requests wait at most the listener's request timeout.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    key: DeviceKey,
    tx: Arc<CommandQueue>,
    timeout: Duration,
}

impl DeviceHandle {
    pub(super) fn new(key: DeviceKey, tx: Arc<CommandQueue>, timeout: Duration) -> Self {
        Self { key, tx, timeout }
    }

    /// Which device this is.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// Sends one request to the device and waits for its outcome.
    pub(crate) async fn request(
        &self,
        signal: Signal,
        path: &[&str],
        payload: Option<Value>,
    ) -> Result<Option<Value>, Error> {
        let (reply, rx) = oneshot::channel();
        let message = resource_request(signal, path, payload);
        // A full command queue waits: the device is busy, and the reply deadline still holds.
        let sent = self
            .tx
            .send(Command {
                message: Box::new(message),
                reply: Responder::Wait(reply),
            })
            .await;
        if sent.is_err() {
            return Err(Error::DeviceOffline(self.key.to_string()));
        }
        self.outcome(path.join("/"), rx.await.ok())
    }

    /// Sends one request to the device and has `done` called with its outcome, on the
    /// connection's task, with no task waiting for it. A full command queue is waited on by
    /// a task of its own.
    pub(crate) fn request_then(
        &self,
        signal: Signal,
        path: &[&str],
        payload: Option<Value>,
        done: impl FnOnce(Result<Option<Value>, Error>) + Send + Sync + 'static,
    ) {
        let this = self.clone();
        let joined = path.join("/");
        let reply = ReplyFn::new(move |r| done(this.outcome(joined, r)));
        let message = Box::new(resource_request(signal, path, payload));
        let command = Command {
            message,
            reply: Responder::Call(reply),
        };
        match self.tx.try_send(command) {
            Ok(()) => {}
            // Dropped: its function reports the device gone.
            Err((_, true)) => {}
            Err((command, false)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let queue = self.tx.clone();
                    rt.spawn(async move { queue.send(command).await });
                }
            }
        }
    }

    /// A request's outcome as callers see it: `None` is a request dropped unanswered.
    fn outcome(&self, path: String, reply: Option<Reply>) -> Result<Option<Value>, Error> {
        match reply {
            Some(Reply::Ok(v)) => Ok(v),
            Some(Reply::DeviceError) => Err(Error::DeviceError {
                device: self.key.to_string(),
                path,
            }),
            Some(Reply::Timeout) => Err(Error::DeviceTimeout {
                device: self.key.to_string(),
                timeout_ms: self.timeout.as_millis() as u64,
            }),
            None => Err(Error::Disconnected(self.key.to_string())),
        }
    }

    /// The device's resource list (`["api"]`).
    pub async fn describe(&self) -> Result<Value, Error> {
        Ok(self.request(Signal::None, &["api"], None).await?.unwrap_or_default())
    }

    /// A resource's I/O template with its current state (`[.., "api"]`).
    pub async fn template(&self, path: &[&str]) -> Result<Value, Error> {
        let mut p = path.to_vec();
        p.push("api");
        Ok(self.request(Signal::None, &p, None).await?.unwrap_or_default())
    }

    /// Reads an output (or runs an in/out with no input).
    pub async fn read(&self, path: &[&str]) -> Result<Option<Value>, Error> {
        self.request(Signal::None, path, None).await
    }

    /// Writes an input.
    pub async fn write(&self, path: &[&str], value: Value) -> Result<(), Error> {
        self.request(Signal::None, path, Some(value)).await.map(|_| ())
    }

    /// Calls an input/output with an input; returns its output.
    pub async fn call(&self, path: &[&str], input: Option<Value>) -> Result<Option<Value>, Error> {
        self.request(Signal::None, path, input).await
    }

    /// Runs a run resource.
    pub async fn run(&self, path: &[&str]) -> Result<(), Error> {
        self.request(Signal::None, path, None).await.map(|_| ())
    }

    /// Starts a stream: samples every `interval`, or events only with `None`.
    pub async fn start_stream(&self, path: &[&str], interval: Option<Duration>) -> Result<(), Error> {
        let payload = interval.map(|d| Value::from(d.as_millis() as u64));
        self.request(Signal::StartStream, path, payload).await.map(|_| ())
    }

    /// Stops a stream.
    pub async fn stop_stream(&self, path: &[&str]) -> Result<(), Error> {
        self.request(Signal::StopStream, path, None).await.map(|_| ())
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.tx.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// `request_then` hands the request to the connection without a task of its own; the
    /// function gets the answer, a full queue's request waits for room, and a request whose
    /// connection ends (queued, or sent after) reports the device gone, once each.
    #[tokio::test]
    async fn requests_with_a_function_are_answered_once_whatever_happens() {
        let queue = Arc::new(CommandQueue::new(1));
        let h = DeviceHandle::new(DeviceKey::new("u", "d"), queue.clone(), Duration::from_secs(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |n: u32| {
            let seen = seen.clone();
            move |r: Result<Option<Value>, Error>| seen.lock().unwrap().push((n, r.map_err(|e| e.to_string())))
        };
        h.request_then(Signal::None, &["temp"], None, record(1));
        h.request_then(Signal::None, &["temp"], None, record(2)); // the queue is full: it waits
        queue.ready().await;
        let first = queue.take(10).requests;
        assert_eq!(first.len(), 1);
        for c in first {
            c.reply.send(Reply::Ok(Some(Value::from(21))));
        }
        // The waiting one gets in once there is room; the device then errs on it.
        let second = loop {
            queue.ready().await;
            let t = queue.take(10).requests;
            if !t.is_empty() {
                break t;
            }
        };
        for c in second {
            c.reply.send(Reply::DeviceError);
        }
        h.request_then(Signal::None, &["temp"], None, record(3));
        queue.end(); // the connection ends with request 3 queued
        h.request_then(Signal::None, &["temp"], None, record(4));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], (1, Ok(Some(Value::from(21)))));
        assert!(matches!(&seen[1], (2, Err(e)) if e.contains("temp")), "{seen:?}");
        assert!(matches!(&seen[2], (3, Err(e)) if e.contains("u/d")), "{seen:?}");
        assert!(matches!(&seen[3], (4, Err(e)) if e.contains("u/d")), "{seen:?}");
    }
}
