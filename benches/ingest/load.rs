//! The load generator: every device's bytes are encoded before the clock starts; then each
//! device connects, logs in, and writes its acknowledged BUCKET_DATA frames as fast as TCP
//! takes them, while it reads the acks (and answers the agent's describe request, as the
//! SDK does). A device is done when every one of its rows is acknowledged: durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, Semaphore};

/// Connects at once at most: a thousand at the same instant overflow a listen queue.
const CONNECTS: usize = 64;

async fn connect(addr: &str, gate: &Semaphore) -> TcpStream {
    let _permit = gate.acquire().await.expect("the gate");
    let sock = TcpStream::connect(addr).await.expect("connect");
    let _ = sock.set_nodelay(true);
    sock
}
use twinlake_sdk::frame::{FrameDecoder, FrameLimits, FrameRef, Message, Signal};
use twinlake_sdk::pson::Value;

use crate::tsbs;

/// One device's pre-encoded bytes.
pub struct Stream {
    pub auth: Vec<u8>,
    pub frames: Vec<u8>,
    /// Where the ~64 KiB writes end: on frame boundaries, so a describe answer written
    /// between two of them never lands inside a frame.
    pub chunk_ends: Vec<usize>,
    pub rows: usize,
}

/// `rows` TSBS readings (7 floats) for `device`, each its own acknowledged BUCKET_DATA
/// (stream ids 1, 2, ...), as the SDK sends them.
pub fn stream(user: &str, device: &str, credential: &str, rows: usize, seed: u64) -> Stream {
    let mut rng = tsbs::Rng::new(seed);
    let mut truck = tsbs::Truck::new(&mut rng);
    let mut frames = Vec::with_capacity(rows * 150);
    let mut chunk_ends = Vec::new();
    for i in 0..rows {
        let v = truck.tick(&mut rng);
        let payload = tsbs::pson(v);
        let id = u32::try_from(i + 1).expect("fewer rows than u32");
        frames.extend_from_slice(
            &Message::new(id, Signal::BucketData)
                .with_identifier("readings")
                .with_payload(payload)
                .to_frame(),
        );
        if frames.len() - chunk_ends.last().copied().unwrap_or(0) >= 64 << 10 || i + 1 == rows {
            chunk_ends.push(frames.len());
        }
    }
    Stream {
        auth: Message::auth(user, device, credential).to_frame(),
        frames,
        chunk_ends,
        rows,
    }
}

/// Runs every device against the agent at `addr`: the time until the last row is acked.
pub async fn agent(addr: &str, streams: &[Arc<Stream>]) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECTS));
    for s in streams {
        tasks.spawn(device(addr.to_owned(), s.clone(), gate.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a device task");
    }
    start.elapsed()
}

async fn device(addr: String, s: Arc<Stream>, gate: Arc<Semaphore>) {
    let sock = connect(&addr, &gate).await;
    let (mut rd, wr) = sock.into_split();
    let wr = Arc::new(Mutex::new(wr));
    wr.lock().await.write_all(&s.auth).await.expect("auth");
    let mut dec = FrameDecoder::new(FrameLimits::DEFAULT);
    let mut buf = vec![0u8; 16 << 10];
    let mut acked = 0usize;
    let mut writer: Option<tokio::task::JoinHandle<()>> = None;
    while acked < s.rows {
        let n = rd.read(&mut buf).await.expect("read from the agent");
        assert!(
            n > 0,
            "the agent closed the connection after {acked} of {} acks",
            s.rows
        );
        dec.push(&buf[..n]);
        let mut replies = Vec::new();
        while let Some(f) = dec.next_ref().expect("a frame from the agent") {
            let FrameRef::Message(m) = f else { continue };
            match m.signal {
                Signal::RequestOk if writer.is_none() => {
                    // Logged in: the rows go out on their own task while acks come in.
                    let (wr, s) = (wr.clone(), s.clone());
                    writer = Some(tokio::spawn(async move { write_frames(&wr, &s).await }));
                }
                Signal::RequestOk => acked += 1,
                Signal::RequestError => panic!("the agent refused a frame (stream {})", m.stream_id),
                // The describe request: an empty resource tree.
                Signal::None => replies.push(Message::ok(m.stream_id, Some(Value::Object(Vec::new()))).to_frame()),
                _ => {}
            }
        }
        for r in replies {
            wr.lock().await.write_all(&r).await.expect("a reply");
        }
    }
    if let Some(w) = writer {
        w.await.expect("the writer");
    }
}

async fn write_frames(wr: &Mutex<OwnedWriteHalf>, s: &Stream) {
    let mut start = 0;
    for &end in &s.chunk_ends {
        wr.lock()
            .await
            .write_all(&s.frames[start..end])
            .await
            .expect("write rows");
        start = end;
    }
}

/// Sends the same bytes to the floor peer: the time until each device's last byte is durable.
pub async fn floor(addr: &str, streams: &[Arc<Stream>]) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECTS));
    for s in streams {
        let (addr, s, gate) = (addr.to_owned(), s.clone(), gate.clone());
        tasks.spawn(async move {
            let sock = connect(&addr, &gate).await;
            let (mut rd, mut wr) = sock.into_split();
            let total = (s.auth.len() + s.frames.len()) as u64;
            let writer = tokio::spawn(async move {
                wr.write_all(&s.auth).await.expect("write");
                for chunk in s.frames.chunks(64 << 10) {
                    wr.write_all(chunk).await.expect("write");
                }
                wr
            });
            let mut durable = [0u8; 8];
            loop {
                rd.read_exact(&mut durable).await.expect("the floor's ack");
                if u64::from_le_bytes(durable) == total {
                    break;
                }
            }
            drop(writer.await.expect("the writer"));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a floor device");
    }
    start.elapsed()
}
