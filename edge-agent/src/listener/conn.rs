//! One device connection's task: reads frames into the session, takes commands (acks,
//! requests, close) from its queue, and writes what the session has to say, with the
//! login, idle, request and write deadlines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info};
use twinlake_sdk::frame::FrameDecoder;

use super::session::Session;
use super::{Shared, emit, handle_frames};
use crate::event::{AckQueue, Command, DeviceEventKind, DeviceKey, Reply};

/// Waits for acks to write (never, without a queue).
async fn ready(acks: Option<&AckQueue>) {
    match acks {
        Some(a) => a.ready().await,
        None => std::future::pending().await,
    }
}

/// The first read of a busy connection, and the most one read takes.
const READ_CHUNK: usize = 8192;
const MAX_READ_CHUNK: usize = 256 << 10;

/// Per-connection state outside the session.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) key: Option<DeviceKey>,
    pub(super) session: Session,
    pub(super) pending: HashMap<u32, (Instant, oneshot::Sender<Reply>)>,
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
    /// Confirmations waiting to be written; made at the first request that wants one.
    pub(super) acks: Option<Arc<AckQueue>>,
}

impl Conn {
    fn new(id: u64) -> Self {
        Self {
            id,
            key: None,
            session: Session::new(),
            pending: HashMap::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            acks: None,
        }
    }
}

/// Commands (requests) a connection takes from its queue before it writes.
const MAX_COMMANDS_PER_WRITE: usize = 1024;

/// Serves one device connection until it closes, times out or the agent stops.
pub(super) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(shared.config.command_capacity.max(1));
    let mut conn = Conn::new(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let mut taken_acks = Vec::new();
    let mut decoder = FrameDecoder::new(shared.config.limits);
    // The read buffer grows while the device is busy and is freed when it goes quiet, so an
    // idle connection costs little memory (BENCHMARKS.md: agent memory per device).
    let mut buf: Vec<u8> = Vec::new();
    let idle = shared.config.idle_timeout;
    let mut idle_deadline = Instant::now() + idle;
    let login_deadline = Instant::now() + shared.config.login_timeout;
    let write_timeout = shared.config.write_timeout;
    let reason: String = loop {
        let next_request_deadline = conn.pending.values().map(|(d, _)| *d).min();
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                let n = match read {
                    Ok(0) => break "closed by device".into(),
                    Ok(n) => n,
                    Err(e) => break format!("read error: {e}"),
                };
                conn.rx_bytes += n as u64;
                idle_deadline = Instant::now() + idle;
                decoder.push(&buf);
                let full = buf.len() >= buf.capacity();
                buf.clear();
                if full {
                    // Busy: read bigger chunks next time.
                    buf.reserve((n * 2).clamp(READ_CHUNK, MAX_READ_CHUNK));
                } else if n < READ_CHUNK / 8 {
                    buf = Vec::new();
                }
                // Boxed: the handling state lives only while frames are handled, not in
                // every idle connection's task.
                if let Err(reason) = Box::pin(handle_frames(&mut decoder, &mut conn, &shared, &cmd_tx, peer, tls)).await {
                    // Flush what the session still has to say (an auth refusal, say).
                    let _ = tokio::time::timeout(write_timeout, flush(&mut wr, &mut conn)).await;
                    break reason;
                }
                decoder.release();
            }
            Some(cmd) = cmd_rx.recv() => {
                // Take what else waits (up to a bound), so it goes out in one write.
                let mut next = Some(cmd);
                let mut taken = 0;
                let mut closed = false;
                while let Some(cmd) = next.take() {
                    match cmd {
                        Command::Request { message, reply } => {
                            let sid = conn.session.request(*message);
                            conn.pending.insert(sid, (Instant::now() + shared.config.request_timeout, reply));
                        }
                        Command::Close => {
                            closed = true;
                            break;
                        }
                    }
                    taken += 1;
                    if taken < MAX_COMMANDS_PER_WRITE {
                        next = cmd_rx.try_recv().ok();
                    }
                }
                if closed {
                    break "replaced by a newer connection".into();
                }
            }
            _ = ready(conn.acks.as_deref()), if conn.acks.is_some() => {
                // Every ack that waits, in one write.
                if let Some(acks) = &conn.acks {
                    acks.take(&mut taken_acks);
                }
                for (stream_id, ok) in taken_acks.drain(..) {
                    conn.session.ack(stream_id, ok);
                }
            }
            _ = tokio::time::sleep_until(next_request_deadline.unwrap_or(idle_deadline)), if next_request_deadline.is_some() => {
                expire_requests(&mut conn);
            }
            _ = tokio::time::sleep_until(idle_deadline) => break format!("idle for {} s", idle.as_secs()),
            _ = tokio::time::sleep_until(login_deadline), if conn.key.is_none() => break "no login in time".into(),
            _ = stop.changed() => break "shutting down".into(),
        }
        match tokio::time::timeout(write_timeout, flush(&mut wr, &mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break format!("write error: {e}"),
            Err(_) => break "the device stopped reading (write timed out)".into(),
        }
    };
    let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
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
        if let Some((_, tx)) = conn.pending.remove(&sid) {
            let _ = tx.send(Reply::Timeout);
        }
    }
}

/// Writes what the session has to say in one write: whole frames only, since stock clients
/// treat a short read inside a frame as a drop.
async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, conn: &mut Conn) -> std::io::Result<()> {
    let Some(first) = conn.session.poll_transmit() else {
        return Ok(());
    };
    let mut out = first;
    while let Some(frame) = conn.session.poll_transmit() {
        out.extend_from_slice(&frame);
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
