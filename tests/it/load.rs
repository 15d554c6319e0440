//! Load on loopback against the `twinlake edge` process (#13, "Load tests"), with the
//! clients in a helper process (`load_clients.py`, standard library only): 10,000 idle
//! sockets, sockets past the caps, pre-auth KEEP_ALIVE floods and HTTP slowloris all end
//! within the configured caps and deadlines; a device that stops reading does not hold the
//! shutdown past its write timeout; and the agent's memory stays under a stated bound all
//! the while. Nothing here asserts a duration: the helper waits up to deadlines derived from
//! the configured timeouts, and the assertions are on counts.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use twinlake_edge::registry::CredentialHash;

use crate::crash::{crash_config, start_ready};
use crate::mosquitto::free_port;

const IDLE: u64 = 10_000;
const PER_IP: u64 = 100;
const FLOODS: u64 = 200;
const SLOW: u64 = 100;
const LOGIN_TIMEOUT_S: u64 = 20;
const WRITE_TIMEOUT_S: u64 = 3;
const HEADER_TIMEOUT_S: u64 = 2;
/// Slack on every deadline, for a loaded two-core machine.
const MARGIN_S: u64 = 15;
/// The agent's resident memory must stay under this, with 10,200 connections open.
const RSS_BOUND_MIB: u64 = 256;

fn config(dir: &Path, port: u16, http: u16) -> PathBuf {
    let hash = CredentialHash::new("s3cr3t!", 1000);
    let mut text = crash_config(dir, "gw-load");
    text += &format!(
        r#"[listener]
tcp = "127.0.0.1:{port}"
login_timeout = "{LOGIN_TIMEOUT_S}s"
write_timeout = "{WRITE_TIMEOUT_S}s"
max_connections = {max}
max_connections_per_ip = {PER_IP}
[metrics]
addr = "127.0.0.1:{http}"
header_timeout = "{HEADER_TIMEOUT_S}s"
max_connections = {SLOW}
max_connections_per_ip = {SLOW}
[streams]
default_interval = "1h"
inputs = false
[[devices]]
user = "alice"
device = "sensor1"
credential_hash = "{hash}"
"#,
        max = IDLE + FLOODS,
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The agent, with the open-file limit raised to the hard limit (20,000 here).
fn start_agent(config: &Path) -> Child {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "ulimit -n \"$(ulimit -Hn)\" && exec \"$0\" edge --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_twinlake"))
        .arg(config);
    start_ready(cmd)
}

/// Samples a process's resident memory every 50 ms; the peak in KiB.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return;
            };
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            p.fetch_max(kib, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (t, peak)
}

fn helper(args: &[String]) -> (Child, BufReader<ChildStdout>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/load_clients.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs the load clients");
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn json_line(out: &mut BufReader<ChildStdout>) -> Json {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn idle_sockets_floods_slowloris_and_a_stalled_device_stay_within_the_caps() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (free_port(), free_port());
    let mut agent = start_agent(&config(dir.path(), port, http));
    let stop = Arc::new(AtomicBool::new(false));
    let (sampler, peak) = watch_rss(agent.id(), stop.clone());

    let settings = serde_json::json!({
        "idle": IDLE, "per_ip": PER_IP, "extra": 100, "flood": FLOODS, "slow": SLOW,
        "slow_extra": 20, "login_timeout_s": LOGIN_TIMEOUT_S,
        "header_timeout_s": HEADER_TIMEOUT_S, "margin_s": MARGIN_S,
    });
    let (mut clients, mut out) = helper(&["caps".into(), port.to_string(), http.to_string(), settings.to_string()]);
    let got = json_line(&mut out);
    assert!(clients.wait().unwrap().success());
    let rss_caps = peak.load(Ordering::SeqCst);
    eprintln!("caps: {got} (agent peak RSS {} MiB)", rss_caps / 1024);
    assert_eq!(got["idle_open"], IDLE, "{got}");
    assert_eq!(
        got["idle_closed"], IDLE,
        "idle sockets close at the login deadline: {got}"
    );
    assert_eq!(got["refused_per_ip"], 1, "past the per-address cap: {got}");
    assert_eq!(got["refused_total"], 100, "past the total cap: {got}");
    assert_eq!(
        got["floods_closed"], FLOODS,
        "KEEP_ALIVE before a login does not hold a socket: {got}"
    );
    assert_eq!(got["slow_closed"], SLOW, "slowloris ends at the header deadline: {got}");
    assert_eq!(got["slow_extra_closed"], 20, "past the HTTP cap: {got}");

    // A device that stops reading while the agent writes to it; then SIGTERM.
    let (mut staller, mut out) = helper(&["stall".into(), port.to_string()]);
    assert_eq!(json_line(&mut out)["stalled"], true);
    let asked = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The deadline: the write timeout, the default upload deadline (10 s) and the margin.
    let deadline = Duration::from_secs(WRITE_TIMEOUT_S + 10 + MARGIN_S);
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < deadline,
            "the agent still runs {deadline:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("stopped {:?} after SIGTERM with a stalled device", asked.elapsed());
    assert!(status.success(), "{status:?}");
    drop(staller.stdin.take());
    let _ = staller.wait();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);

    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak_mib = peak.load(Ordering::SeqCst) / 1024;
    eprintln!("agent peak RSS {peak_mib} MiB (bound {RSS_BOUND_MIB} MiB)");
    assert!(peak_mib < RSS_BOUND_MIB, "peak RSS {peak_mib} MiB");
}
