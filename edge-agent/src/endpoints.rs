//! Endpoint calls devices make, waiting (bounded) for the cloud link to carry them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;
use twinlake_sdk::pson::Value;

use crate::event::DeviceKey;
use crate::metrics::Metrics;

/// An endpoint call waiting for the cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointCall {
    pub device: DeviceKey,
    pub endpoint: String,
    pub payload: Option<Value>,
    pub at: SystemTime,
}

/// Endpoint calls for the cloud link: bounded, the oldest dropped (and counted) when full.
#[derive(Debug, Clone)]
pub struct EndpointQueue {
    inner: Arc<(Mutex<VecDeque<EndpointCall>>, Notify)>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl EndpointQueue {
    /// A queue of `capacity` calls.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
            metrics,
        }
    }

    pub(crate) fn push(&self, call: EndpointCall) {
        if let Ok(mut q) = self.inner.0.lock() {
            if q.len() >= self.capacity {
                q.pop_front();
                self.metrics.endpoint_queue_dropped.inc();
            }
            q.push_back(call);
        }
        self.inner.1.notify_one();
    }

    /// The next call, waiting for one.
    pub async fn pop(&self) -> EndpointCall {
        loop {
            let notified = self.inner.1.notified();
            if let Some(c) = self.inner.0.lock().ok().and_then(|mut q| q.pop_front()) {
                return c;
            }
            notified.await;
        }
    }

    /// The next call if one waits.
    pub fn try_pop(&self) -> Option<EndpointCall> {
        self.inner.0.lock().ok().and_then(|mut q| q.pop_front())
    }

    /// Waits until a call may have arrived.
    pub async fn notified(&self) {
        self.inner.1.notified().await;
    }

    /// Calls waiting.
    pub fn len(&self) -> usize {
        self.inner.0.lock().map(|q| q.len()).unwrap_or_default()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
