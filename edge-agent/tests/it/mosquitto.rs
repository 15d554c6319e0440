//! A real Mosquitto (Debian's package, which scripts/test installs) on a free loopback port,
//! for as long as the value lives. Shared with the root crate's tests through `#[path]`.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port (0 without one).
    #[allow(dead_code)]
    pub tls_port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// PEM files for a TLS listener that also wants a client certificate signed by `ca`.
#[allow(dead_code)]
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    /// Starts `mosquitto -c` with anonymous access, no persistence, no limit on the messages
    /// queued for an absent persistent session, and `max_inflight` messages in flight per
    /// client (0 is no limit). Waits until the port takes connections.
    pub fn start(max_inflight: u32) -> Self {
        Self::launch(max_inflight, None)
    }

    /// As [`Mosquitto::start`], plus a TLS listener on `tls_port` that requires a client
    /// certificate.
    #[allow(dead_code)]
    pub fn start_tls(tls: TlsFiles<'_>) -> Self {
        Self::launch(0, Some(tls))
    }

    fn launch(max_inflight: u32, tls: Option<TlsFiles<'_>>) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n\
             max_inflight_messages {max_inflight}\nlog_dest stderr\n"
        );
        let tls_port = match tls {
            Some(t) => {
                let p = free_port();
                text.push_str(&format!(
                    "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ));
                p
            }
            None => 0,
        };
        std::fs::write(&conf, text).unwrap();
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
        for p in [port, tls_port].into_iter().filter(|p| *p != 0) {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "mosquitto did not listen on {p}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            port,
            tls_port,
            child,
            _dir: dir,
        }
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
