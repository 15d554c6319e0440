//! Durable delivery queues (endpoint calls, alarm emails): jobs are written in the same
//! transaction as what caused them, and one worker per queue takes them oldest first,
//! retrying with back-off, until each is delivered, refused for good, or out of attempts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

use crate::Error;
use crate::state::AppState;
use crate::store::{decode, encode};

/// A job that counts its attempts.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    fn attempts(&self) -> u32;
    fn set_attempts(&mut self, n: u32);
}

/// How one delivery went.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// Refused for good: dropped.
    Refused(String),
    /// May work later.
    Failed(String),
}

/// What the worker did with a job, for the queue's metrics and logs.
#[derive(Debug)]
pub enum Event<'a> {
    Delivered,
    Dropped(&'a str),
    GaveUp(&'a str),
    Retrying(&'a str, Duration),
}

/// A queue: its table and its retry policy.
#[derive(Clone, Copy)]
pub struct Queue {
    pub table: TableDefinition<'static, u64, &'static [u8]>,
    pub name: &'static str,
    pub attempts: u32,
    pub retry_min: Duration,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Appends `job` in `tx` (the caller commits, then wakes the worker); past `max` the
/// oldest goes. Whether one went.
pub fn push<T: Job>(tx: &redb::WriteTransaction, q: &Queue, job: &T, max: u64) -> Result<bool, Error> {
    let mut t = tx.open_table(q.table)?;
    let next = t.last()?.map_or(1, |(k, _)| k.value() + 1);
    t.insert(next, encode(job).as_slice())?;
    Ok(t.len()? > max && t.pop_first()?.is_some())
}

fn first<T: Job>(state: &AppState, q: &Queue) -> Result<Option<(u64, T)>, Error> {
    let tx = state.db.0.begin_read()?;
    let t = tx.open_table(q.table)?;
    let Some((k, v)) = t.first()? else { return Ok(None) };
    let id = k.value();
    Ok(Some((id, decode(q.name, &id.to_string(), v.value())?)))
}

fn update<T: Job>(state: &AppState, q: &Queue, id: u64, job: Option<&T>) -> Result<(), Error> {
    let tx = state.db.0.begin_write()?;
    {
        let mut t = tx.open_table(q.table)?;
        match job {
            Some(j) => {
                t.insert(id, encode(j).as_slice())?;
            }
            None => {
                t.remove(id)?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Works through `q` until the cloud stops: each job to `deliver`, what happened to `on`.
pub async fn work<T, D, F>(state: Arc<AppState>, q: Queue, wake: &Notify, mut deliver: D, on: impl Fn(&T, Event<'_>))
where
    T: Job,
    D: FnMut(T) -> F,
    F: Future<Output = Outcome>,
{
    let mut backoff = q.retry_min;
    let mut stop = state.stop.subscribe();
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let notified = wake.notified();
        let (id, job) = match first::<T>(&state, &q) {
            Ok(Some(j)) => j,
            Ok(None) => {
                tokio::select! {
                    _ = notified => continue,
                    _ = crate::state::stopped(&mut stop) => return,
                }
            }
            Err(e) => {
                warn!(queue = q.name, error = %e, "cannot read the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let done = match deliver(job.clone()).await {
            Outcome::Delivered => {
                on(&job, Event::Delivered);
                backoff = q.retry_min;
                true
            }
            Outcome::Refused(why) => {
                on(&job, Event::Dropped(&why));
                true
            }
            Outcome::Failed(why) if job.attempts() + 1 >= q.attempts => {
                on(&job, Event::GaveUp(&why));
                true
            }
            Outcome::Failed(why) => {
                on(&job, Event::Retrying(&why, backoff));
                let mut again = job.clone();
                again.set_attempts(job.attempts() + 1);
                if let Err(e) = update(&state, &q, id, Some(&again)) {
                    warn!(queue = q.name, error = %e, "cannot update the queue");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::state::stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                false
            }
        };
        if done && let Err(e) = update::<T>(&state, &q, id, None) {
            warn!(queue = q.name, error = %e, "cannot update the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
