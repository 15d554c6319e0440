//! What reaches a device connection's task from other tasks, through one queue with one
//! wake-up: requests from [`crate::listener::DeviceHandle`]s (bounded), confirmations of
//! the device's own requests once they are durable (the acks of one WAL sync leave in one
//! write), and a close request that always gets through.
//!
//! It replaces a tokio mpsc channel, whose first block of slots (about 1 KiB with its
//! shared state) was allocated for every connection up front, and a second queue for acks
//! with a wake-up of its own: an idle device's queue is one small allocation, and its
//! slots exist only while something waits (BENCHMARKS.md: agent memory per idle device).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, oneshot};
use twinlake_sdk::frame::Message;
use twinlake_sdk::pson::Value;

/// A request from a handle to a connection task.
#[derive(Debug)]
pub(crate) struct Command {
    // Boxed: a waiting request's slot stays small.
    pub message: Box<Message>,
    pub reply: Responder,
}

/// Where a request's outcome goes.
pub(crate) enum Responder {
    /// To a task that awaits it.
    Wait(oneshot::Sender<Reply>),
    /// Into a function, called on the connection's task: no task waits and no task is
    /// woken for it (the link writes a live request's answer this way). Called with `None`
    /// if the request is dropped unanswered (the connection ended).
    Call(ReplyFn),
}

/// A [`Responder::Call`]'s function: called once, with the reply or, when dropped
/// uncalled, with `None`.
pub(crate) struct ReplyFn(Option<Box<dyn FnOnce(Option<Reply>) + Send + Sync>>);

impl ReplyFn {
    pub(crate) fn new(f: impl FnOnce(Option<Reply>) + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(f)))
    }
}

impl Drop for ReplyFn {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(None);
        }
    }
}

impl Responder {
    /// Hands over the outcome.
    pub(crate) fn send(self, reply: Reply) {
        match self {
            Responder::Wait(tx) => {
                let _ = tx.send(reply);
            }
            Responder::Call(mut f) => {
                if let Some(f) = f.0.take() {
                    f(Some(reply));
                }
            }
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Responder::Wait(_) => "Responder::Wait",
            Responder::Call(_) => "Responder::Call",
        })
    }
}

/// The outcome of a request as the connection task sees it.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Option<Value>),
    DeviceError,
    Timeout,
}

/// Why a connection is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// A newer connection of the device took its place (or the agent closed it).
    Replaced,
    /// It did not authenticate within the login timeout.
    NoLogin,
    /// It was silent for the idle timeout.
    Idle,
    /// The agent is stopping.
    Stop,
}

#[derive(Debug, Default)]
struct State {
    waiting: VecDeque<Command>,
    /// Confirmations to write: at most one per request of the device not yet confirmed,
    /// and those are bounded by the ingest queue and the WAL's batch.
    acks: Vec<(u32, bool)>,
    close: Option<CloseReason>,
    /// The connection is gone: nothing more is taken.
    ended: bool,
}

/// The queue, shared by the connection task and its handles.
#[derive(Debug)]
pub(crate) struct CommandQueue {
    state: Mutex<State>,
    capacity: usize,
    /// The connection waits on it for commands.
    ready: Notify,
    /// Senders wait on it for room.
    room: Notify,
    /// Until when the connection may stay silent, and (0 once it has) until when it may
    /// stay unauthenticated, in ms of the listener's clock: its sweep closes the
    /// connection past either, so an idle connection keeps no timer of its own.
    idle_until: AtomicU64,
    login_until: AtomicU64,
}

/// What the connection takes in one go.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub requests: Vec<Command>,
    pub acks: Vec<(u32, bool)>,
    pub close: Option<CloseReason>,
}

impl CommandQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            room: Notify::new(),
            idle_until: AtomicU64::new(u64::MAX),
            login_until: AtomicU64::new(0),
        }
    }

    /// Sets when the connection times out if silent (ms of the listener's clock).
    pub(crate) fn idle_until(&self, ms: u64) {
        self.idle_until.store(ms, Ordering::Relaxed);
    }

    /// Sets when the connection times out unauthenticated; 0 once it has authenticated.
    pub(crate) fn login_until(&self, ms: u64) {
        self.login_until.store(ms, Ordering::Relaxed);
    }

    /// Why the connection should close at `now_ms`, if a deadline has passed.
    pub(crate) fn expired(&self, now_ms: u64) -> Option<CloseReason> {
        let login = self.login_until.load(Ordering::Relaxed);
        if login != 0 && login <= now_ms {
            return Some(CloseReason::NoLogin);
        }
        (self.idle_until.load(Ordering::Relaxed) <= now_ms).then_some(CloseReason::Idle)
    }

    /// Queues `cmd`, waiting while the queue is full. `Err` gives it back once the
    /// connection has ended.
    pub(crate) async fn send(&self, mut cmd: Command) -> Result<(), Command> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a take between the check and the wait is seen.
            room.as_mut().enable();
            match self.try_send(cmd) {
                Ok(()) => return Ok(()),
                Err((c, true)) => return Err(c),
                Err((c, false)) => cmd = c,
            }
            room.await;
        }
    }

    /// Queues `cmd` if there is room, without waiting; `Err` gives it back with whether the
    /// connection has ended (else the queue was full).
    pub(crate) fn try_send(&self, cmd: Command) -> Result<(), (Command, bool)> {
        {
            let Ok(mut s) = self.state.lock() else {
                return Err((cmd, true));
            };
            if s.ended {
                return Err((cmd, true));
            }
            if s.waiting.len() >= self.capacity {
                return Err((cmd, false));
            }
            s.waiting.push_back(cmd);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Confirms the device's request `stream_id` (without waiting). Once the connection
    /// has ended there is no one to tell.
    pub(crate) fn ack(&self, stream_id: u32, ok: bool) {
        if let Ok(mut s) = self.state.lock() {
            if s.ended {
                return;
            }
            s.acks.push((stream_id, ok));
        }
        self.ready.notify_one();
    }

    /// Asks the connection to close (a newer connection of the device replaced it).
    pub(crate) fn close(&self) {
        self.close_for(CloseReason::Replaced);
    }

    /// Asks the connection to close for `why` (the first reason given stands).
    pub(crate) fn close_for(&self, why: CloseReason) {
        if let Ok(mut s) = self.state.lock() {
            s.close.get_or_insert(why);
        }
        self.ready.notify_one();
    }

    /// Waits until something was queued since the last wait.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes up to `max` requests, every ack, and the close request.
    pub(crate) fn take(&self, max: usize) -> Taken {
        let mut taken = Taken::default();
        if let Ok(mut s) = self.state.lock() {
            let n = s.waiting.len().min(max);
            taken.requests.extend(s.waiting.drain(..n));
            if s.waiting.is_empty() {
                // An idle connection keeps no slots.
                s.waiting = VecDeque::new();
            } else {
                // More than `max` waited: the connection comes back for the rest.
                self.ready.notify_one();
            }
            taken.acks = std::mem::take(&mut s.acks);
            taken.close = s.close;
        }
        self.room.notify_waiters();
        taken
    }

    /// The connection is gone: waiting requests are dropped (their callers see the device
    /// disconnected) and later sends fail.
    pub(crate) fn end(&self) {
        let dropped = self.state.lock().map(|mut s| {
            s.ended = true;
            std::mem::take(&mut s.waiting)
        });
        drop(dropped);
        self.room.notify_waiters();
    }
}

/// Ends the queue when the connection task ends, however it ends (a stop aborts it).
pub(crate) struct EndOnDrop<'a>(pub &'a CommandQueue);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    fn request() -> (Command, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let message = Box::new(twinlake_sdk::frame::Message::ok(1, None));
        (
            Command {
                message,
                reply: Responder::Wait(reply),
            },
            rx,
        )
    }

    /// A full queue holds its senders until the connection takes; an ended one refuses
    /// them and drops what waited, so callers see the device gone.
    #[tokio::test]
    async fn bounded_then_ended() {
        let q = Arc::new(CommandQueue::new(2));
        let (a, _ra) = request();
        let (b, _rb) = request();
        q.send(a).await.unwrap();
        q.send(b).await.unwrap();
        let (c, mut rc) = request();
        let q2 = q.clone();
        let third = tokio::spawn(async move { q2.send(c).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a full queue makes the sender wait");
        q.ready().await;
        assert_eq!(q.take(10).requests.len(), 2);
        assert!(third.await.unwrap(), "room was made");
        q.end();
        assert!(
            matches!(rc.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "what waited is dropped"
        );
        let (d, _rd) = request();
        assert!(q.send(d).await.is_err(), "an ended queue refuses");
    }

    /// Acks wait for the connection without a bound of their own and leave together; an
    /// ended queue takes none.
    #[tokio::test]
    async fn acks_are_taken_together() {
        let q = CommandQueue::new(1);
        for sid in 1..=3 {
            q.ack(sid, sid != 2);
        }
        q.ready().await;
        assert_eq!(q.take(10).acks, vec![(1, true), (2, false), (3, true)]);
        q.end();
        q.ack(4, true);
        assert!(q.take(10).acks.is_empty());
    }

    /// A close request gets through a full queue.
    #[tokio::test]
    async fn close_gets_through() {
        let q = CommandQueue::new(1);
        let (a, _ra) = request();
        q.send(a).await.unwrap();
        q.close();
        let t = q.take(0);
        assert!(t.close == Some(CloseReason::Replaced) && t.requests.is_empty());
        assert_eq!(q.take(5).requests.len(), 1);
    }

    /// A request with a reply function: it is called once, with the reply, or with `None`
    /// when the request is dropped unanswered (its connection ended); `try_send` refuses
    /// at once when full or ended and gives the request back.
    #[tokio::test]
    async fn reply_functions_run_once_even_when_dropped() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let command = |n: u32| {
            let calls = calls.clone();
            Command {
                message: Box::new(twinlake_sdk::frame::Message::ok(n, None)),
                reply: Responder::Call(ReplyFn::new(move |r| {
                    calls.lock().unwrap().push((n, matches!(r, Some(Reply::Ok(_)))));
                })),
            }
        };
        let q = CommandQueue::new(1);
        q.try_send(command(1)).unwrap();
        let Err((full, false)) = q.try_send(command(2)) else {
            panic!("full")
        };
        drop(full);
        let taken = q.take(5);
        for cmd in taken.requests {
            cmd.reply.send(Reply::Ok(None));
        }
        q.try_send(command(3)).unwrap();
        q.end();
        let Err((_, true)) = q.try_send(command(4)) else {
            panic!("ended")
        };
        assert_eq!(
            *calls.lock().unwrap(),
            vec![(2, false), (1, true), (3, false), (4, false)]
        );
    }
}
