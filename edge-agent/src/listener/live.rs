//! The listener's running connections: counted, so that a stop waits until none runs, and
//! reachable through their queues, so that one sweep closes those past their login or idle
//! deadline and a stop closes them all. An idle connection keeps no timer and no stop
//! receiver of its own (BENCHMARKS.md: agent memory per idle device).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::queue::{CloseReason, CommandQueue};

#[derive(Debug, Default)]
struct Slots {
    queues: Vec<Option<Weak<CommandQueue>>>,
    free: Vec<usize>,
    stopping: bool,
}

/// The running connections.
#[derive(Debug)]
pub(super) struct Conns {
    count: AtomicUsize,
    gone: Notify,
    epoch: Instant,
    slots: Mutex<Slots>,
}

impl Default for Conns {
    fn default() -> Self {
        Self {
            count: AtomicUsize::new(0),
            gone: Notify::new(),
            epoch: Instant::now(),
            slots: Mutex::default(),
        }
    }
}

/// One running connection task, counted until dropped.
pub(super) struct LiveTask(Arc<Conns>);

/// A connection's place in the sweep, given back when dropped.
pub(super) struct Slot<'a> {
    conns: &'a Conns,
    index: usize,
}

impl Conns {
    /// Counts a connection task (from before its TLS handshake) until the guard drops.
    pub(super) fn enter(self: &Arc<Self>) -> LiveTask {
        self.count.fetch_add(1, Ordering::AcqRel);
        LiveTask(self.clone())
    }

    /// Puts a connection's queue in the sweep. One that comes in once the listener is
    /// stopping is asked to close at once.
    pub(super) fn register(&self, queue: &Arc<CommandQueue>) -> Slot<'_> {
        let weak = Some(Arc::downgrade(queue));
        let (index, stopping) = match self.slots.lock() {
            Ok(mut s) => {
                let index = match s.free.pop() {
                    Some(i) => {
                        if let Some(slot) = s.queues.get_mut(i) {
                            *slot = weak;
                        }
                        i
                    }
                    None => {
                        s.queues.push(weak);
                        s.queues.len() - 1
                    }
                };
                (index, s.stopping)
            }
            Err(_) => (usize::MAX, true),
        };
        if stopping {
            queue.close_for(CloseReason::Stop);
        }
        Slot { conns: self, index }
    }

    /// The listener's clock, in ms (never 0: 0 marks no deadline).
    pub(super) fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// `d` from now on the listener's clock.
    pub(super) fn after(&self, d: Duration) -> u64 {
        self.now_ms().saturating_add(d.as_millis() as u64)
    }

    /// Asks every connection past its login or idle deadline to close.
    pub(super) fn sweep(&self) {
        let now = self.now_ms();
        let expired: Vec<(Arc<CommandQueue>, CloseReason)> = match self.slots.lock() {
            Ok(s) => s
                .queues
                .iter()
                .flatten()
                .filter_map(Weak::upgrade)
                .filter_map(|q| q.expired(now).map(|why| (q, why)))
                .collect(),
            Err(_) => return,
        };
        for (q, why) in expired {
            q.close_for(why);
        }
    }

    /// Asks every connection to close, and any that comes in later.
    pub(super) fn stop(&self) {
        let all: Vec<Arc<CommandQueue>> = match self.slots.lock() {
            Ok(mut s) => {
                s.stopping = true;
                s.queues.iter().flatten().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        for q in all {
            q.close_for(CloseReason::Stop);
        }
    }

    /// Waits until no connection task runs.
    pub(super) async fn wait(&self) {
        loop {
            let gone = self.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            gone.await;
        }
    }
}

/// How often the sweep runs: a quarter of the shorter deadline, between 10 ms and 1 s.
pub(super) fn sweep_every(login: Duration, idle: Duration) -> Duration {
    (login.min(idle) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Drop for LiveTask {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.gone.notify_waiters();
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.conns.slots.lock()
            && let Some(slot) = s.queues.get_mut(self.index)
        {
            *slot = None;
            s.free.push(self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_closes_only_connections_past_a_deadline() {
        let conns = Conns::default();
        let silent = Arc::new(CommandQueue::new(1));
        let busy = Arc::new(CommandQueue::new(1));
        let anonymous = Arc::new(CommandQueue::new(1));
        let _a = conns.register(&silent);
        let _b = conns.register(&busy);
        let _c = conns.register(&anonymous);
        silent.idle_until(1);
        busy.idle_until(conns.after(Duration::from_secs(60)));
        anonymous.idle_until(conns.after(Duration::from_secs(60)));
        anonymous.login_until(1);
        conns.sweep();
        assert_eq!(silent.take(1).close, Some(CloseReason::Idle));
        assert_eq!(busy.take(1).close, None);
        assert_eq!(anonymous.take(1).close, Some(CloseReason::NoLogin));
    }

    /// A stop closes every connection, and one that registers afterwards at once; a
    /// dropped slot is reused and no longer swept.
    #[test]
    fn a_stop_closes_every_connection_and_later_ones() {
        let conns = Conns::default();
        let a = Arc::new(CommandQueue::new(1));
        let gone = Arc::new(CommandQueue::new(1));
        let _a = conns.register(&a);
        drop(conns.register(&gone));
        assert_eq!(conns.slots.lock().unwrap().free, vec![1]);
        conns.stop();
        assert_eq!(a.take(1).close, Some(CloseReason::Stop));
        assert_eq!(gone.take(1).close, None, "its slot was given back");
        let late = Arc::new(CommandQueue::new(1));
        let _late = conns.register(&late);
        assert_eq!(late.take(1).close, Some(CloseReason::Stop));
        assert_eq!(conns.slots.lock().unwrap().queues.len(), 2, "the free slot was reused");
    }

    #[test]
    fn the_sweep_runs_often_enough_for_the_shorter_deadline() {
        let s = Duration::from_secs;
        assert_eq!(sweep_every(s(10), s(120)), Duration::from_millis(1000));
        assert_eq!(
            sweep_every(Duration::from_millis(400), s(120)),
            Duration::from_millis(100)
        );
        assert_eq!(sweep_every(Duration::ZERO, s(1)), Duration::from_millis(10));
    }
}
