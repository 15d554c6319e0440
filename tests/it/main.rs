//! Tests of the `twinlake` binary itself.
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod adversarial;
mod coap_crash;
mod crash;
mod dashboards;
mod http_crash;
mod load;
#[path = "../../edge-agent/tests/it/mosquitto.rs"]
mod mosquitto;
mod mqtt_crash;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The tests that run the agent as a process take this, one at a time: the MQTT crash test
/// bounds its duplicates by the in-flight window, which holds only while the broker reads
/// PUBACKs promptly, and two cores shared with other agents, strace and a demo slowed it
/// past that once (557 stored twice against a bound of 400).
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static PROCESSES: Mutex<()> = Mutex::new(());
    PROCESSES.lock().unwrap_or_else(|p| p.into_inner())
}

/// `twinlake demo` for `seconds` with 2 devices, every port free, kept in `dir`.
pub fn demo(dir: &std::path::Path, seconds: u32) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinlake"));
    cmd.args(["demo", "--seconds", &seconds.to_string(), "--devices", "2", "--dir"])
        .arg(dir);
    for flag in [
        "--api",
        "--tcp",
        "--tls",
        "--cloud-devices",
        "--metrics",
        "--cloud-metrics",
        "--postgres",
        "--flight",
        "--mqtt",
        "--lorawan",
        "--device-http",
        "--coap",
    ] {
        cmd.args([flag, "127.0.0.1:0"]);
    }
    cmd
}

/// The README's main command, for a few seconds on free ports: the cloud starts, the edge
/// agent links to it, the fleet connects and streams into the twins, and a desired LED
/// state set from the platform reaches a device and comes back as reported.
#[test]
fn demo_runs_cloud_edge_and_fleet() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = demo(dir.path(), 7).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "cloud API          https://127.0.0.1:",
        "curl -s --cacert",
        "sensor-1       online",
        "sensor-2       online",
        "sensor-1       reported temp",
        "sensor-1       desired",
        "sensor-1       reported led     true",
        "Parquet lake",
        "psql \"host=127.0.0.1 port=",
        "Grafana            PostgreSQL data source",
        "stopped",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}\n{stderr}");
    }
    assert!(stderr.contains("cloud link up"), "the edge linked over wss:\n{stderr}");
    assert!(
        !stderr.contains("authentication failed"),
        "the fleet waited for its registry:\n{stderr}"
    );
    // On the way out the agent sealed what it had into the lake.
    assert!(stderr.contains("sealed"), "no seal in the logs:\n{stderr}");
    // Secrets are the owner's alone: TLS keys and the saved registry (credential hashes).
    let mut secrets = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "key") || p.ends_with("registry.json") {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
                secrets += 1;
            }
        }
    }
    assert!(
        secrets >= 2,
        "no key or registry file found under {}",
        dir.path().display()
    );
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args(["sim", "--connect", "nowhere"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--connect wants host:port"));
}
