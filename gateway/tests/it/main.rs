//! The gateway binary, `twinlake-edge`, as an operator runs it.
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_twinlake-edge");

/// It hashes a credential the registry can check, starts on a config, says it is ready,
/// and stops cleanly on SIGTERM; without a config it says what is missing.
#[test]
fn the_gateway_binary_runs_the_agent() {
    let out = Command::new(BIN)
        .args(["hash-credential", "s3cr3t!", "--iterations", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let parsed = twinlake_edge::registry::CredentialHash::parse(hash.trim()).unwrap();
    assert!(parsed.verify("s3cr3t!"));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "gateway = \"gw-bin\"\ndata_dir = \"{data}\"\n[listener]\ntcp = \"127.0.0.1:0\"\n\
             [metrics]\naddr = \"127.0.0.1:0\"\n[upload]\nurl = \"file://{lake}\"\n\
             [[devices]]\nuser = \"u\"\ndevice = \"d\"\ncredential_hash = \"{h}\"\n",
            data = dir.path().join("data").display(),
            lake = dir.path().join("lake").display(),
            h = hash.trim(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("twinlake edge ready: tcp=127.0.0.1:"), "{line:?}");
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(child.wait().unwrap().success());

    let out = Command::new(BIN).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
