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

/// A loopback port free at the moment (shared with the root crate's crash tests).
pub fn free_port() -> u16 {
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
        Self::launch(max_inflight, None, false)
    }

    /// As [`Mosquitto::start`], plus a TLS listener on `tls_port` that requires a client
    /// certificate.
    #[allow(dead_code)]
    pub fn start_tls(tls: TlsFiles<'_>) -> Self {
        Self::launch(0, Some(tls), false)
    }

    /// As [`Mosquitto::start`], with persistence: sessions and their queued messages survive
    /// [`Mosquitto::restart`].
    #[allow(dead_code)]
    pub fn start_persistent(max_inflight: u32) -> Self {
        Self::launch(max_inflight, None, true)
    }

    fn launch(max_inflight: u32, tls: Option<TlsFiles<'_>>, persistent: bool) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        let persistence = if persistent {
            // Started as root, mosquitto runs as its own user, which must write the file.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            format!("persistence true\npersistence_location {}/\n", dir.path().display())
        } else {
            "persistence false\n".to_owned()
        };
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}max_queued_messages 0\n\
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
        let child = spawn(dir.path());
        let m = Self {
            port,
            tls_port,
            child,
            _dir: dir,
        };
        m.wait_listening();
        m
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in [self.port, self.tls_port].into_iter().filter(|p| *p != 0) {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "mosquitto did not listen on {p}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The broker's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the broker (SIGTERM: a persistent one saves its sessions) and starts it again
    /// on the same ports.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.terminate();
        self.child = spawn(self._dir.path());
        self.wait_listening();
    }

    fn terminate(&mut self) {
        // SIGTERM, so the log is flushed (and sessions saved); then make sure.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        self.terminate();
        if std::env::var_os("KEEP_MOSQUITTO_LOG").is_some() {
            let _ = std::fs::copy(self._dir.path().join("log"), "/tmp/mosquitto.log");
        }
    }
}

/// Runs `mosquitto -c dir/mosquitto.conf`, its log appended to `dir/log`.
fn spawn(dir: &Path) -> Child {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is installed (scripts/test installs it from Debian)");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto starts")
}
