//! A real Mosquitto (Debian's package, which scripts/test installs) on a free loopback port,
//! for as long as the value lives. Shared with the root crate's tests through `#[path]`.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto -c` with anonymous access, no persistence, no limit on the messages
    /// queued for an absent persistent session, and `max_inflight` messages in flight per
    /// client (0 is no limit). Waits until the port takes connections.
    pub fn start(max_inflight: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n\
                 max_inflight_messages {max_inflight}\nlog_dest stderr\n"
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is installed (scripts/test installs it from Debian)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("mosquitto starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child, _dir: dir }
    }

    /// `mosquitto_pub` publishing each of `lines` as a message at `qos` to `topic`.
    pub fn publish_lines(&self, topic: &str, qos: u8, lines: &[String]) {
        publish_lines(self.port, topic, qos, lines);
    }
}

/// `mosquitto_pub` publishing each of `lines` as a message at `qos` to `topic` on the
/// broker at `port`.
pub fn publish_lines(port: u16, topic: &str, qos: u8, lines: &[String]) {
    use std::io::Write as _;
    let (port, qos) = (port.to_string(), qos.to_string());
    let mut p = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-q", &qos, "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    {
        let mut stdin = p.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(p.wait().unwrap().success(), "mosquitto_pub failed");
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // SIGTERM, so the log is flushed; then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("KEEP_MOSQUITTO_LOG").is_some() {
            let _ = std::fs::copy(self._dir.path().join("log"), "/tmp/mosquitto.log");
        }
    }
}
