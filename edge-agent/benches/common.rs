//! Helpers the benchmark harnesses share (the edge's, the cloud's and the SQL one include
//! this file with `#[path]`): the test Python, process memory, and idle Thinger clients in
//! another process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use twinlake_sdk::frame::Message;
use twinlake_sdk::pson::Value;

/// The Python with the benchmark peers (`.venv`, made by `scripts/test`), or `TWINLAKE_PYTHON`.
pub fn python() -> PathBuf {
    std::env::var_os("TWINLAKE_PYTHON").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python")),
        PathBuf::from,
    )
}

/// This process's resident memory.
pub fn rss_bytes() -> u64 {
    rss_of(std::process::id())
}

/// Starts idle Thinger clients (edge-agent/benches/idle_clients.py), one per device of
/// `user` with `credential`, against `addr`: each logs in and answers the describe request
/// with an empty resource tree, as a device with nothing to offer does; they stay until
/// their stdin closes.
pub fn idle_clients(dir: &Path, addr: &str, user: &str, devices: &[String], credential: &str) -> Child {
    let frames: Vec<Vec<u8>> = devices
        .iter()
        .map(|d| Message::auth(user, d, credential).to_frame())
        .collect();
    let describe = Message::ok(1, Some(Value::Object(Vec::new()))).to_frame();
    spawn_idle(dir, addr, &frames, &[0x01, 0x02, 0x10, 0x01], Some(&describe))
}

/// Starts idle connections to `addr` in another process: each sends one of `frames` and
/// reads `answer`, then all stay open until the child's stdin closes. The child prints
/// `ready N` once all are in.
pub fn idle_connections(dir: &Path, addr: &str, frames: &[Vec<u8>], answer: &[u8]) -> Child {
    spawn_idle(dir, addr, frames, answer, None)
}

fn spawn_idle(dir: &Path, addr: &str, frames: &[Vec<u8>], answer: &[u8], describe: Option<&[u8]>) -> Child {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let auth_file = dir.join("connect.hex");
    let lines: Vec<String> = frames.iter().map(|f| hex(f)).collect();
    std::fs::write(&auth_file, lines.join("\n")).expect("the frames file");
    Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../edge-agent/benches/idle_clients.py"
        ))
        .arg(addr)
        .arg(&auth_file)
        .arg(hex(answer))
        .args(describe.map(hex))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python for the idle clients")
}

/// A process's resident memory.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
