//! The processes of a run: `twinlake cloud`, `twinlake edge` linked to it over wss://, and
//! the floor peer, each started from its own configuration, with its CPU time read back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "bench";
const GATEWAY: &str = "gw-bench";
const TOKEN: &str = "bench-admin-token";
const GATEWAY_TOKEN: &str = "bench-gateway-token";

/// A started process: its pid, the rest of its stdout, and its CPU time once it ends.
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    out: BufReader<ChildStdout>,
}

/// Starts `twinlake <args>` under bash, which reports the child's CPU time (`times`) when
/// it ends; waits for a line starting with `ready` and returns it.
fn start(args: &[&str], ready: &str) -> (Proc, String) {
    start_script(env!("CARGO_BIN_EXE_twinlake"), args, None, ready)
}

/// The wrapper every process of a run starts under: the open-file limit raised, the child's
/// pid printed, and its CPU time (`times`) once it ends.
const WRAPPER: &str = r#"ulimit -n "$(ulimit -Hn)"; "$0" "$@" & p=$!; echo "pid $p"; wait $p; s=$?; times; exit $s"#;

// The child is waited for by `Proc` (stop or drop); a start that fails panics the run.
#[allow(clippy::zombie_processes)]
fn start_script(program: &str, args: &[&str], env: Option<(&str, &str)>, ready: &str) -> (Proc, String) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(WRAPPER)
        .arg(program)
        .args(args)
        .envs(env)
        // Per-connection info lines would flood the report; warnings and errors still show.
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut pid = 0;
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("a line") > 0,
            "{program} {args:?} ended before {ready:?}"
        );
        if let Some(p) = line.trim().strip_prefix("pid ") {
            pid = p.parse().expect("a pid");
        } else if line.starts_with(ready) {
            return (Proc { child, pid, out }, line.trim().to_owned());
        }
    }
}

impl Proc {
    /// This process's CPU seconds so far (user + system), from /proc.
    pub fn cpu_now(&self) -> f64 {
        proc_cpu(self.pid)
    }

    /// Sends SIGTERM and waits: the CPU seconds the process used in all (bash's `times`).
    pub fn stop(mut self) -> f64 {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let _ = self.child.wait();
        // `times`: the shell's own line, then its children's: "0m1.230s 0m0.450s".
        let children = rest
            .lines()
            .rfind(|l| l.contains('m') && l.ends_with('s'))
            .unwrap_or_default();
        children.split_whitespace().map(minutes_seconds).sum()
    }
}

impl Drop for Proc {
    /// A run that failed half-way leaves no process behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
            let _ = self.child.wait();
        }
    }
}

fn minutes_seconds(s: &str) -> f64 {
    let (m, sec) = s.trim_end_matches('s').split_once('m').unwrap_or(("0", "0"));
    m.parse::<f64>().unwrap_or(0.0) * 60.0 + sec.parse::<f64>().unwrap_or(0.0)
}

/// user + system CPU seconds of `pid` (0 for "self"), from /proc/<pid>/stat.
pub fn proc_cpu(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
    })
}

/// The value of `key=` in a ready line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// The cloud of a run and how to reach it.
pub struct Cloud {
    pub proc: Proc,
    pub api: String,
    pub metrics: String,
    pub cert: PathBuf,
}

/// Starts `twinlake cloud`: HTTPS API and gateway link on loopback, the lake in `dir/lake`,
/// production defaults otherwise (no device listener of its own).
pub fn cloud(dir: &Path) -> Cloud {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("a certificate");
    let (cert, key) = (dir.join("cloud.pem"), dir.join("cloud.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    let sha = twinlake_cloud::auth::sha256_hex;
    let text = format!(
        r#"data_dir = "{data}"
[http]
addr = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
[metrics]
addr = "127.0.0.1:0"
[lake]
url = "file://{lake}"
[sql]
postgres_addr = "off"
flight_addr = "off"
[edge]
gateway = "cloud"
data_dir = "{data}/edge"
[edge.listener]
tcp = "off"
[[tokens]]
name = "bench"
sha256 = "{token}"
scopes = ["admin"]
[[gateways]]
id = "{GATEWAY}"
token_sha256 = "{gw}"
users = ["{USER}"]
[link]
binary_batches = {binary}
"#,
        binary = std::env::var("BENCH_LINK_FORMAT").map_or(true, |f| f != "text"),
        data = dir.join("cloud").display(),
        cert = cert.display(),
        key = key.display(),
        lake = dir.join("lake").display(),
        token = sha(TOKEN),
        gw = sha(GATEWAY_TOKEN),
    );
    let path = dir.join("cloud.toml");
    std::fs::write(&path, text).expect("cloud.toml");
    let (proc, line) = start(
        &["cloud", "--config", path.to_str().expect("a path")],
        "twinlake cloud ready",
    );
    let api = field(&line, "api=").to_owned();
    let metrics = format!("http://{}/metrics", field(&line, "metrics="));
    Cloud {
        proc,
        api,
        metrics,
        cert,
    }
}

/// An HTTPS client that trusts the run's cloud.
pub fn client(cloud: &Cloud) -> reqwest::Client {
    let pem = std::fs::read(&cloud.cert).expect("cert");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client")
}

/// Registers `n` devices behind the bench's gateway: their names and generated credentials.
pub async fn register(cloud: &Cloud, http: &reqwest::Client, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in chunk {
            let (http, url) = (http.clone(), format!("{}/v1/users/{USER}/devices", cloud.api));
            let device = format!("truck-{i}");
            tasks.spawn(async move {
                let body = serde_json::json!({"device": device, "gateway": GATEWAY}).to_string();
                let r = http
                    .post(url)
                    .bearer_auth(TOKEN)
                    .body(body)
                    .send()
                    .await
                    .expect("register");
                assert!(r.status().is_success(), "register {device}: {}", r.status());
                let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("a body")).expect("json");
                (device, v["credential"].as_str().expect("a credential").to_owned())
            });
        }
        while let Some(r) = tasks.join_next().await {
            out.push(r.expect("a registration"));
        }
    }
    out
}

/// A counter's value from a Prometheus text page (0 when absent).
pub async fn counter(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(r) = http.get(url).send().await else { return 0.0 };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The edge agent of a run.
pub struct Edge {
    pub proc: Proc,
    pub tcp: String,
    /// Its `/metrics` URL.
    pub metrics: String,
}

/// Starts `twinlake edge` linked to `cloud`, uploading to the cloud's lake, with production
/// defaults otherwise; returns once the cloud's registry has reached it.
pub fn edge(dir: &Path, cloud: &Cloud) -> Edge {
    let data = dir.join("edge");
    let text = format!(
        r#"gateway = "{GATEWAY}"
data_dir = "{data}"
[listener]
tcp = "127.0.0.1:0"
[metrics]
addr = "127.0.0.1:0"
[upload]
url = "file://{lake}"
[link]
url = "{link}/v1/gateway/link"
token = "{GATEWAY_TOKEN}"
ca_file = "{cert}"
{waiting}"#,
        waiting = std::env::var("BENCH_LINK_ROWS")
            .map(|n| format!("max_waiting_rows = {}\n", n.parse::<usize>().expect("BENCH_LINK_ROWS")))
            .unwrap_or_default(),
        data = data.display(),
        lake = dir.join("lake").display(),
        link = cloud.api.replacen("https://", "wss://", 1),
        cert = cloud.cert.display(),
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).expect("edge.toml");
    let (proc, line) = start(
        &["edge", "--config", path.to_str().expect("a path")],
        "twinlake edge ready",
    );
    let tcp = field(&line, "tcp=").to_owned();
    let metrics = format!("http://{}/metrics", field(&line, "metrics="));
    // The registry the cloud sends is saved once applied.
    let until = Instant::now() + Duration::from_secs(60);
    while !data.join("registry.json").exists() {
        assert!(Instant::now() < until, "the edge never got its registry");
        std::thread::sleep(Duration::from_millis(20));
    }
    Edge { proc, tcp, metrics }
}

/// Starts the floor peer (this binary again) writing into `dir`: its process and address.
pub fn floor(dir: &Path) -> (Proc, String) {
    let exe = std::env::current_exe().expect("this bench");
    let (proc, line) = start_script(
        exe.to_str().expect("a path"),
        &[],
        Some((crate::floor::ENV, dir.to_str().expect("a path"))),
        "floor ready",
    );
    let addr = line.trim_start_matches("floor ready: ").to_owned();
    (proc, addr)
}

/// Rows in the Parquet files under `lake` (their footers).
pub fn lake_rows(lake: &Path) -> i64 {
    let mut rows = 0;
    let mut dirs = vec![lake.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).expect("a lake file");
                let meta = twinlake_edge::parquet::file::metadata::ParquetMetaDataReader::new()
                    .parse_and_finish(&f)
                    .expect("a footer");
                rows += meta.file_metadata().num_rows();
            }
        }
    }
    rows
}
