//! A link socket's sending half, shared by its writer task and by the tasks that have a
//! live request or answer ready, so that these go onto the socket from the task that has
//! them instead of waking the writer task first.
//!
//! The writer task stays the only one that ever waits on the socket. A direct write
//! ([`SharedSink::try_send`]) is made only while nobody waits on it, polls with a waker
//! that does nothing, and never waits itself:
//! * the socket has no room, or the writer task is waiting on it: the message is given back,
//!   and the caller queues it for the writer task as before;
//! * the socket took the message but could not write all of it at once: the rest stays in
//!   the socket's buffer and the writer task is told to flush it.
//!
//! Nothing that is taken is lost while the link stands. A broken socket gives direct writes
//! back, so that the caller learns from the queue that the link is gone.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::Sink;
use tokio::sync::{Notify, mpsc};

use super::wire::LinkMsg;

/// A write that happens now or not at all: the message is given back if it cannot.
pub trait DirectWrite: Send + Sync {
    fn try_write(&self, msg: LinkMsg) -> Result<(), LinkMsg>;
}

impl std::fmt::Debug for dyn DirectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectWrite")
    }
}

/// Where a link message goes: straight onto the socket when it takes it without waiting,
/// else into the writer task's queue.
#[derive(Clone)]
pub struct LinkTx {
    pub queue: mpsc::Sender<LinkMsg>,
    pub direct: Option<Arc<dyn DirectWrite>>,
}

impl std::fmt::Debug for LinkTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTx")
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl LinkTx {
    /// Only the writer task's queue.
    pub fn queued(queue: mpsc::Sender<LinkMsg>) -> Self {
        Self { queue, direct: None }
    }

    /// Writes `msg` now if the socket takes it; else gives it back, for the queue.
    pub fn try_direct(&self, msg: LinkMsg) -> Result<(), LinkMsg> {
        match &self.direct {
            Some(d) => d.try_write(msg),
            None => Err(msg),
        }
    }
}

/// The socket broke or was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

struct State<S> {
    sink: S,
    /// The writer task waits on the sink (its waker is the one registered): direct writes
    /// stay out, so that a waker that does nothing never takes the place of its own.
    owed: bool,
    broken: bool,
}

/// A sink shared by a writer task ([`SharedSink::send`], [`SharedSink::flush`]) and direct
/// writers ([`SharedSink::try_send`]).
pub struct SharedSink<S> {
    state: Mutex<State<S>>,
    /// A direct write left bytes in the sink's buffer: the writer task flushes them.
    flush_wanted: Notify,
}

impl<S> std::fmt::Debug for SharedSink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSink").finish_non_exhaustive()
    }
}

impl<S> SharedSink<S> {
    pub fn new(sink: S) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                sink,
                owed: false,
                broken: false,
            }),
            flush_wanted: Notify::new(),
        })
    }

    /// Waits until a direct write asks the writer task to flush.
    pub async fn flush_wanted(&self) {
        self.flush_wanted.notified().await
    }

    /// Writes `item` (as `convert` makes it) if the sink takes it without waiting; gives
    /// it back otherwise, and when the sink is broken (the queue then says whether the link
    /// is gone). An item the sink refuses as it breaks is dropped.
    pub fn try_send<T, M>(&self, item: T, convert: impl FnOnce(T) -> M) -> Result<(), T>
    where
        S: Sink<M> + Unpin,
    {
        let Ok(mut st) = self.state.try_lock() else {
            return Err(item);
        };
        if st.broken || st.owed {
            return Err(item);
        }
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut st.sink).poll_ready(&mut cx) {
            Poll::Pending => return Err(item),
            Poll::Ready(Err(_)) => {
                st.broken = true;
                return Err(item);
            }
            Poll::Ready(Ok(())) => {}
        }
        if Pin::new(&mut st.sink).start_send(convert(item)).is_err() {
            st.broken = true;
            return Ok(());
        }
        match Pin::new(&mut st.sink).poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => st.broken = true,
            Poll::Pending => {
                st.owed = true;
                drop(st);
                self.flush_wanted.notify_one();
            }
        }
        Ok(())
    }

    /// Sends `msg` and flushes, waiting for room: the writer task's way.
    pub async fn send<M>(&self, msg: M) -> Result<(), Broken>
    where
        S: Sink<M> + Unpin,
    {
        let mut msg = Some(msg);
        poll_fn(|cx| self.poll_send(cx, &mut msg)).await
    }

    /// Flushes what direct writes left in the sink's buffer.
    pub async fn flush<M>(&self) -> Result<(), Broken>
    where
        S: Sink<M> + Unpin,
    {
        let mut none: Option<M> = None;
        poll_fn(|cx| self.poll_send(cx, &mut none)).await
    }

    /// Closes the sink; direct writes are dropped from now on.
    pub async fn close<M>(&self)
    where
        S: Sink<M> + Unpin,
    {
        poll_fn(|cx| {
            let Ok(mut st) = self.state.lock() else {
                return Poll::Ready(());
            };
            st.owed = true;
            let r = Pin::new(&mut st.sink).poll_close(cx);
            if r.is_ready() {
                st.broken = true;
                st.owed = false;
            }
            r.map(|_| ())
        })
        .await
    }

    fn poll_send<M>(&self, cx: &mut Context<'_>, msg: &mut Option<M>) -> Poll<Result<(), Broken>>
    where
        S: Sink<M> + Unpin,
    {
        let Ok(mut st) = self.state.lock() else {
            return Poll::Ready(Err(Broken));
        };
        if st.broken {
            return Poll::Ready(Err(Broken));
        }
        if msg.is_some() {
            match Pin::new(&mut st.sink).poll_ready(cx) {
                Poll::Pending => {
                    st.owed = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(st.fail()),
                Poll::Ready(Ok(())) => {}
            }
            if let Some(m) = msg.take()
                && Pin::new(&mut st.sink).start_send(m).is_err()
            {
                return Poll::Ready(st.fail());
            }
        }
        match Pin::new(&mut st.sink).poll_flush(cx) {
            Poll::Pending => {
                st.owed = true;
                Poll::Pending
            }
            Poll::Ready(Err(_)) => Poll::Ready(st.fail()),
            Poll::Ready(Ok(())) => {
                st.owed = false;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Direct writes onto a shared sink of `M`s, each link message made one by `convert`.
pub struct Direct<S, M> {
    pub sink: Arc<SharedSink<S>>,
    pub convert: fn(LinkMsg) -> M,
}

impl<S, M> std::fmt::Debug for Direct<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl<S: Sink<M> + Unpin + Send, M> DirectWrite for Direct<S, M> {
    fn try_write(&self, msg: LinkMsg) -> Result<(), LinkMsg> {
        self.sink.try_send(msg, self.convert)
    }
}

/// A link socket's writer task: sends what is queued, flushes what direct writes left in
/// the sink's buffer, and pings every `ping.0` if asked, until the queue closes or the sink
/// breaks; then closes the sink.
pub async fn write_queued<S, M>(
    sink: Arc<SharedSink<S>>,
    mut queue: mpsc::Receiver<LinkMsg>,
    convert: fn(LinkMsg) -> M,
    ping: Option<(std::time::Duration, fn() -> M)>,
) where
    S: Sink<M> + Unpin,
{
    let period = ping.map_or(std::time::Duration::from_secs(3600), |(d, _)| d);
    let mut ticks = tokio::time::interval(period);
    loop {
        let sent = tokio::select! {
            m = queue.recv() => match m {
                Some(m) => sink.send(convert(m)).await,
                None => break,
            },
            _ = sink.flush_wanted() => sink.flush::<M>().await,
            _ = ticks.tick(), if ping.is_some() => match ping {
                Some((_, make)) => sink.send(make()).await,
                None => Ok(()),
            },
        };
        if sent.is_err() {
            break;
        }
    }
    sink.close::<M>().await;
}

impl<S> State<S> {
    fn fail(&mut self) -> Result<(), Broken> {
        self.broken = true;
        self.owed = false;
        Err(Broken)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A sink whose room and flushing the test decides.
    #[derive(Default)]
    struct Gate {
        room: bool,
        flushes: bool,
        broken: bool,
        buffered: Vec<u32>,
        written: Vec<u32>,
        waker: Option<Waker>,
    }

    impl Sink<u32> for Gate {
        type Error = ();
        fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.broken {
                return Poll::Ready(Err(()));
            }
            if self.room {
                Poll::Ready(Ok(()))
            } else {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        fn start_send(mut self: Pin<&mut Self>, item: u32) -> Result<(), ()> {
            self.buffered.push(item);
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.flushes {
                let b = std::mem::take(&mut self.buffered);
                self.written.extend(b);
                Poll::Ready(Ok(()))
            } else {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.poll_flush(cx)
        }
    }

    fn gate(room: bool, flushes: bool) -> Arc<SharedSink<Gate>> {
        SharedSink::new(Gate {
            room,
            flushes,
            ..Default::default()
        })
    }

    fn with<R>(s: &SharedSink<Gate>, f: impl FnOnce(&mut Gate) -> R) -> R {
        f(&mut s.state.lock().unwrap().sink)
    }

    fn open(s: &SharedSink<Gate>) {
        let w = with(s, |g| {
            g.room = true;
            g.flushes = true;
            g.waker.take()
        });
        if let Some(w) = w {
            w.wake();
        }
    }

    #[test]
    fn a_sink_with_room_takes_a_direct_write_at_once() {
        let s = gate(true, true);
        assert_eq!(s.try_send(7, |x| x), Ok(()));
        assert_eq!(with(&s, |g| g.written.clone()), vec![7]);
    }

    #[test]
    fn a_full_sink_gives_the_direct_write_back() {
        let s = gate(false, true);
        assert_eq!(s.try_send(7, |x| x), Err(7));
        assert!(with(&s, |g| g.buffered.is_empty() && g.written.is_empty()));
    }

    /// Taken but not written out: the writer task is asked to flush, and does once the
    /// sink can; until then direct writes stay out of its way.
    #[tokio::test]
    async fn a_direct_write_left_in_the_buffer_is_flushed_by_the_writer() {
        let s = gate(true, false);
        assert_eq!(s.try_send(1, |x| x), Ok(()));
        tokio::time::timeout(Duration::from_secs(5), s.flush_wanted())
            .await
            .expect("the writer task is asked to flush");
        assert_eq!(s.try_send(2, |x| x), Err(2), "the writer owes a flush");
        let writer = {
            let s = s.clone();
            tokio::spawn(async move { s.flush::<u32>().await })
        };
        tokio::task::yield_now().await;
        open(&s);
        assert_eq!(writer.await.unwrap(), Ok(()));
        assert_eq!(with(&s, |g| g.written.clone()), vec![1]);
        assert_eq!(s.try_send(3, |x| x), Ok(()), "direct writes again once flushed");
        assert_eq!(with(&s, |g| g.written.clone()), vec![1, 3]);
    }

    /// While the writer task waits for room, a direct write does not poll (its waker would
    /// replace the writer's, which would then never wake).
    #[tokio::test]
    async fn direct_writes_wait_out_a_waiting_writer() {
        let s = gate(false, false);
        let writer = {
            let s = s.clone();
            tokio::spawn(async move { s.send(1u32).await })
        };
        while !s.state.lock().unwrap().owed {
            tokio::task::yield_now().await;
        }
        assert_eq!(s.try_send(2, |x| x), Err(2));
        open(&s);
        assert_eq!(writer.await.unwrap(), Ok(()));
        assert_eq!(with(&s, |g| g.written.clone()), vec![1]);
    }

    #[tokio::test]
    async fn a_broken_sink_fails_the_writer_and_gives_direct_writes_back() {
        let s = gate(true, true);
        with(&s, |g| g.broken = true);
        assert_eq!(s.send(2u32).await, Err(Broken));
        assert_eq!(s.try_send(1, |x| x), Err(1), "the caller's queue says the link is gone");
        assert!(with(&s, |g| g.written.is_empty()));
    }

    /// Over a real WebSocket whose pipe holds less than one message: the direct write is
    /// taken, the writer task flushes the rest as the peer reads, and the peer gets the
    /// message whole, followed by what the writer sent itself.
    #[tokio::test]
    async fn a_websocket_gets_direct_writes_whole() {
        let (a, b) = tokio::io::duplex(64);
        let ours = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut theirs = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let (sink, _stream) = ours.split();
        let s = SharedSink::new(sink);
        let big = "x".repeat(10_000);
        assert_eq!(s.try_send(big.clone(), |t| Message::Text(t.into())), Ok(()));
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                s.flush_wanted().await;
                s.flush::<Message>().await?;
                s.send(Message::Text("after".into())).await
            })
        };
        let first = theirs.next().await.unwrap().unwrap();
        assert_eq!(first.into_text().unwrap().as_str(), big);
        let second = theirs.next().await.unwrap().unwrap();
        assert_eq!(second.into_text().unwrap().as_str(), "after");
        assert_eq!(writer.await.unwrap(), Ok(()));
        assert_eq!(s.try_send("small".to_owned(), |t| Message::Text(t.into())), Ok(()));
        let third = theirs.next().await.unwrap().unwrap();
        assert_eq!(third.into_text().unwrap().as_str(), "small");
    }
}
