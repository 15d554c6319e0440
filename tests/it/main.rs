//! Tests of the `twinlake` binary itself.
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod crash;

use std::process::Command;

/// The README's main command, for a few seconds on free ports: devices connect, are
/// described, stream, and take a write from the platform.
#[test]
fn demo_runs_the_fleet() {
    let out = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args([
            "demo",
            "--seconds",
            "4",
            "--tcp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--devices",
            "2",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "sensor-1     connected",
        "sensor-2     connected",
        r#"resources {"temp":{"al":0,"fn":3},"hum":{"al":0,"fn":3},"led":{"al":0,"fn":2},"in_out":{"al":0,"fn":4}}"#,
        "temp     {\"out\":",
        "led      ← true (written from the platform)",
        "led      {\"in\":true}",
        "Parquet lake",
        "stopped",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // On the way out the agent sealed what it had into the lake.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sealed"), "no seal in the logs:\n{stderr}");
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
