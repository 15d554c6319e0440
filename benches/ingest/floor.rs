//! The floor peer: the same bytes over TCP into one file, fsynced with the agent's group
//! commit (the first unsynced byte starts a `wal.fsync_interval` window; bytes that arrive
//! during an fsync share the next one, which starts at once). After each fsync every
//! connection hears how many of its bytes are durable (8 bytes, little-endian): its "ack".
//! It runs in its own process (this bench binary started again with [`ENV`] set) so that it
//! competes for the two cores the way the agent does.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};

/// Set to a directory: this process is the floor peer and writes its file there.
pub const ENV: &str = "TWINLAKE_BENCH_FLOOR_DIR";
/// The agent's default `wal.fsync_interval`.
pub const FSYNC_INTERVAL: Duration = Duration::from_millis(10);

struct Conn {
    written: AtomicU64,
    durable: watch::Sender<u64>,
}

struct Shared {
    file: Mutex<std::fs::File>,
    conns: Mutex<Vec<Arc<Conn>>>,
    dirty: Notify,
}

/// Serves until killed; prints `floor ready: <addr>` once listening.
pub fn serve(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let file = std::fs::File::create(dir.join("floor.log")).expect("the floor's file");
        let shared = Arc::new(Shared {
            file: Mutex::new(file),
            conns: Mutex::new(Vec::new()),
            dirty: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("floor ready: {}", listener.local_addr().expect("an address"));
        tokio::spawn(syncer(shared.clone()));
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (tx, rx) = watch::channel(0);
            let conn = Arc::new(Conn {
                written: AtomicU64::new(0),
                durable: tx,
            });
            lock(&shared.conns).push(conn.clone());
            tokio::spawn(connection(sock, conn, rx, shared.clone()));
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn connection(
    mut sock: tokio::net::TcpStream,
    conn: Arc<Conn>,
    mut durable: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    let _ = sock.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            n = sock.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                lock(&shared.file).write_all(&buf[..n]).expect("the floor's write");
                conn.written.fetch_add(n as u64, Ordering::Release);
                shared.dirty.notify_one();
            }
            ch = durable.changed() => {
                if ch.is_err() { return }
                let d = *durable.borrow_and_update();
                if sock.write_all(&d.to_le_bytes()).await.is_err() { return }
            }
        }
    }
}

async fn syncer(shared: Arc<Shared>) {
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(FSYNC_INTERVAL).await;
        loop {
            let conns: Vec<Arc<Conn>> = lock(&shared.conns).clone();
            let seen: Vec<u64> = conns.iter().map(|c| c.written.load(Ordering::Acquire)).collect();
            let file = lock(&shared.file).try_clone().expect("a file handle");
            tokio::task::spawn_blocking(move || file.sync_data().expect("the floor's fsync"))
                .await
                .expect("the fsync thread");
            for (c, s) in conns.iter().zip(&seen) {
                if *c.durable.borrow() != *s {
                    let _ = c.durable.send(*s);
                }
            }
            // Bytes that came during the fsync go into the next one at once.
            let more = conns
                .iter()
                .zip(&seen)
                .any(|(c, s)| c.written.load(Ordering::Acquire) > *s);
            if !more {
                break;
            }
        }
    }
}
