//! One device connection's task: reads frames into the session, takes commands (acks,
//! requests, close) from its queue, and writes what the session has to say, with the
//! request and write deadlines. The login and idle deadlines are kept by the listener's
//! sweep (`live.rs`), which closes the connection through its queue.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};
use twinlake_sdk::frame::FrameDecoder;

use super::session::{Session, remove_released};
use super::{Shared, emit, handle_frames};
use crate::event::{DeviceEventKind, DeviceKey};
use crate::queue::{CloseReason, Command, CommandQueue, EndOnDrop, Reply, Responder};

/// The first read of a busy connection, and the most one read takes.
const READ_CHUNK: usize = 8192;
const MAX_READ_CHUNK: usize = 256 << 10;

/// Per-connection state outside the session.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) key: Option<DeviceKey>,
    pub(super) session: Session,
    pub(super) pending: BTreeMap<u32, (Instant, Responder)>,
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
}

impl Conn {
    fn new(id: u64) -> Self {
        Self {
            id,
            key: None,
            session: Session::new(),
            pending: BTreeMap::new(),
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// Commands (requests) a connection takes from its queue before it writes.
const MAX_COMMANDS_PER_WRITE: usize = 1024;

/// Serves one device connection until it closes, times out or the agent stops.
///
/// An idle connection's task is most of what an idle device costs, so its state is kept
/// small (BENCHMARKS.md: agent memory per idle device): no timer while no request waits
/// (the listener's sweep closes it at its login or idle deadline, and at a stop, through
/// its queue), no read buffer while nothing has arrived on plain TCP, the stream read and
/// written in turn without a split, the command queue one small allocation, and the rarely
/// taken paths (frame handling, writing, closing) boxed so their state exists only while
/// they run.
pub(super) async fn serve<S>(mut stream: S, peer: SocketAddr, tls: bool, shared: Arc<Shared>)
where
    S: ReadSome + AsyncWrite + Send + Unpin,
{
    let queue = Arc::new(CommandQueue::new(shared.config.command_capacity));
    let _end = EndOnDrop(&queue);
    let slot = shared.conns.register(&queue);
    queue.idle_until(shared.conns.after(shared.config.idle_timeout));
    queue.login_until(shared.conns.after(shared.config.login_timeout));
    let mut conn = Conn::new(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let mut decoder = FrameDecoder::new(shared.config.limits);
    // The read buffer grows while the device is busy and is freed when it goes quiet, so an
    // idle connection costs little memory.
    let mut buf: Vec<u8> = Vec::new();
    // The nearest request deadline, only while requests wait for their answer.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let reason: String = loop {
        tokio::select! {
            read = std::future::poll_fn(|cx| stream.poll_read_some(cx, &mut buf)) => {
                let n = match read {
                    Ok(0) => break "closed by device".into(),
                    Ok(n) => n,
                    Err(e) => break format!("read error: {e}"),
                };
                conn.rx_bytes += n as u64;
                queue.idle_until(shared.conns.after(shared.config.idle_timeout));
                decoder.push(&buf);
                let full = buf.len() >= buf.capacity();
                buf.clear();
                if full {
                    // Busy: read bigger chunks next time.
                    buf.reserve((n * 2).clamp(READ_CHUNK, MAX_READ_CHUNK));
                } else if n < READ_CHUNK / 8 {
                    buf = Vec::new();
                }
                if let Err(reason) = Box::pin(handle_frames(&mut decoder, &mut conn, &shared, &queue, peer, tls)).await {
                    // Flush what the session still has to say (an auth refusal, say).
                    let _ = Box::pin(tokio::time::timeout(shared.config.write_timeout, flush(&mut stream, &mut conn))).await;
                    break reason;
                }
                decoder.release();
            }
            _ = queue.ready() => {
                // Take what else waits (up to a bound), so it goes out in one write.
                let taken = queue.take(MAX_COMMANDS_PER_WRITE);
                for cmd in taken.requests {
                    let Command { message, reply } = cmd;
                    let sid = conn.session.request(*message);
                    conn.pending.insert(sid, (Instant::now() + shared.config.request_timeout, reply));
                }
                // Every ack that waits: they go out in one write.
                for (stream_id, ok) in taken.acks {
                    conn.session.ack(stream_id, ok);
                }
                if let Some(why) = taken.close {
                    break close_reason(why, &shared);
                }
            }
            _ = std::future::poll_fn(|cx| match timer.as_mut() {
                Some(t) => t.as_mut().poll(cx),
                None => std::task::Poll::Pending,
            }), if timer.is_some() => expire_requests(&mut conn),
        }
        set_timer(&mut timer, &conn);
        if conn.session.has_transmit() {
            match Box::pin(tokio::time::timeout(
                shared.config.write_timeout,
                flush(&mut stream, &mut conn),
            ))
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write error: {e}"),
                Err(_) => break "the device stopped reading (write timed out)".into(),
            }
        }
    };
    drop((timer, slot));
    Box::pin(close(stream, conn, shared, reason)).await;
}

fn close_reason(why: CloseReason, shared: &Shared) -> String {
    match why {
        CloseReason::Replaced => "replaced by a newer connection".into(),
        CloseReason::NoLogin => "no login in time".into(),
        CloseReason::Idle => format!("idle for {} s", shared.config.idle_timeout.as_secs()),
        CloseReason::Stop => "shutting down".into(),
    }
}

/// Keeps `timer` at the nearest request deadline while requests wait; none otherwise.
fn set_timer(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, conn: &Conn) {
    match conn.pending.values().map(|(d, _)| *d).min() {
        None => *timer = None,
        Some(d) => match timer {
            Some(t) if t.deadline() == d => {}
            Some(t) => t.as_mut().reset(d),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(d))),
        },
    }
}

/// A stream that reads what has arrived, and on plain TCP reserves its buffer only once
/// bytes are there: an idle connection then holds none.
pub(super) trait ReadSome {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<std::io::Result<usize>>;
}

/// The least a read reserves (as `read_buf` does).
const MIN_READ: usize = 64;

impl ReadSome for tokio::net::TcpStream {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            if buf.len() == buf.capacity() {
                buf.reserve(MIN_READ);
            }
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Nothing after all: hold no buffer while waiting.
                    if buf.is_empty() {
                        *buf = Vec::new();
                    }
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReadSome for tokio_rustls::server::TlsStream<S> {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<std::io::Result<usize>> {
        // TLS keeps its own buffers; ours is reserved as the read starts.
        if buf.len() == buf.capacity() {
            buf.reserve(MIN_READ);
        }
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }
}

/// Shuts the stream down and reports the disconnection.
async fn close<S: AsyncWrite + Unpin>(mut stream: S, conn: Conn, shared: Arc<Shared>, reason: String) {
    let _ = tokio::time::timeout(shared.config.write_timeout, stream.shutdown()).await;
    finish(conn, &shared, reason).await;
}

fn expire_requests(conn: &mut Conn) {
    let now = Instant::now();
    let expired: Vec<u32> = conn
        .pending
        .iter()
        .filter(|(_, (d, _))| *d <= now)
        .map(|(k, _)| *k)
        .collect();
    for sid in expired {
        conn.session.forget(sid);
        if let Some((_, tx)) = remove_released(&mut conn.pending, &sid) {
            tx.send(Reply::Timeout);
        }
    }
}

/// Writes what the session has to say in one write: whole frames only, since stock clients
/// treat a short read inside a frame as a drop.
async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, conn: &mut Conn) -> std::io::Result<()> {
    let out = conn.session.take_transmit();
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(&out).await?;
    conn.tx_bytes += out.len() as u64;
    wr.flush().await
}

async fn finish(conn: Conn, shared: &Shared, reason: String) {
    let Some(key) = conn.key else {
        debug!(%reason, "connection closed before authentication");
        return;
    };
    // Only this connection's own registration: a newer connection may have replaced it.
    if let Ok(mut d) = shared.devices.lock()
        && d.get(&key).is_some_and(|(id, _)| *id == conn.id)
    {
        d.remove(&key);
    }
    shared.config.metrics.devices_connected.dec();
    info!(device = %key, %reason, "device disconnected");
    let kind = DeviceEventKind::Disconnected {
        reason,
        rx_bytes: conn.rx_bytes,
        tx_bytes: conn.tx_bytes,
    };
    emit(shared, &key, kind).await;
    // Pending requests see their reply channel dropped: `Error::Disconnected`.
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// Counts write calls.
    #[derive(Default)]
    struct Writes {
        calls: usize,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Writes {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A plain TCP connection holds no read buffer while nothing has arrived, and reads
    /// what has once it does.
    #[tokio::test]
    async fn a_quiet_tcp_connection_holds_no_read_buffer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut device = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut ours, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(ours.poll_read_some(&mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0);
        device.write_all(b"\x02\x00").await.unwrap();
        let n = std::future::poll_fn(|cx| ours.poll_read_some(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!((n, buf.as_slice()), (2, &b"\x02\x00"[..]));
        drop(device);
        buf.clear();
        let n = std::future::poll_fn(|cx| ours.poll_read_some(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 0, "the device closed");
    }

    /// The acks of one WAL sync leave in one write, whole frames each.
    #[tokio::test]
    async fn waiting_acks_go_out_in_one_write() {
        let mut conn = Conn::new(1);
        for sid in 1..=64 {
            conn.session.ack(sid, true);
        }
        let mut w = Writes::default();
        flush(&mut w, &mut conn).await.unwrap();
        assert_eq!(w.calls, 1);
        assert_eq!(conn.tx_bytes, w.bytes.len() as u64);
        let mut decoder = FrameDecoder::new(Default::default());
        decoder.push(&w.bytes);
        let mut frames = 0;
        while decoder.next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!(frames, 64);
        flush(&mut w, &mut conn).await.unwrap();
        assert_eq!(w.calls, 1, "nothing to say, nothing written");
    }
}
