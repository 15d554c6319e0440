//! The web console, the Grafana dashboards and the notebooks against the running demo.
//!
//! * cloud-ingest/tests/python/console_demo.py walks the console in Chromium: the fleet
//!   online, sensor-2's LED switched with the reported value following, a live chart, and a
//!   read token offered no controls and refused a forced write.
//! * dashboards/check.py runs them as Grafana would: it expands every SQL panel's and
//!   variable's macros, runs them over the Postgres wire with the simple protocol and checks
//!   each result's shape; every PromQL panel is evaluated by a real Prometheus scraping the
//!   demo's agent and cloud.
//! * notebooks/run.py executes every notebook top to bottom with nbclient; their cells
//!   assert on what they show.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::one_at_a_time;

fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TWINLAKE_PYTHON") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

/// The text after `key` up to the next whitespace or quote, in `line`.
fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split(|c: char| c.is_whitespace() || c == '"').next().unwrap_or(""))
}

/// A real Prometheus (Debian's) scraping the demo's agent and cloud every second, with the
/// project's alert rules loaded.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &std::path::Path, metrics: &[String]) -> Self {
        let targets: Vec<String> = metrics
            .iter()
            .map(|m| format!("\"{}\"", m.trim_start_matches("http://").trim_end_matches("/metrics")))
            .collect();
        let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [\"{rules}\"]\nscrape_configs:\n  - job_name: twinlake\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prometheus").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/test installs Debian's prometheus)");
        let url = format!("http://127.0.0.1:{port}");
        // Ready, and a scrape of both targets in.
        let deadline = Instant::now() + Duration::from_secs(30);
        let query = format!("{url}/api/v1/query?query=count(up%3D%3D1)");
        loop {
            let out = Command::new("curl").args(["-sf", &query]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!("\"{}\"]", metrics.len())) {
                break;
            }
            assert!(Instant::now() < deadline, "Prometheus never scraped both targets");
            std::thread::sleep(Duration::from_millis(300));
        }
        Self { child, url }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const S3_KEY: &str = "twinlake";
const S3_SECRET: &str = "twinlake-secret";

/// A real S3 endpoint (s3s-fs) over `root`: bucket `lake` is the demo's lake directory.
struct S3 {
    addr: std::net::SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl S3 {
    fn serve(root: &std::path::Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY, S3_SECRET));
        let service = b.build();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            _runtime: runtime,
        }
    }
}

#[test]
fn dashboards_and_notebooks_run_against_the_demo() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut demo = crate::demo(dir.path(), 240)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut pg, mut metrics, mut seen) = (None, Vec::new(), Vec::new());
    let (mut api, mut flight) = (None, None);
    let mut device_commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The addresses, then desired LED round trips so every table has rows.
    let mut led_reports = 0;
    while led_reports < 2 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the demo printed no addresses or LED reports: {seen:#?}"));
        if let (Some(host), Some(port)) = (after(&line, "psql \"host="), after(&line, " port=")) {
            pg = Some(format!(
                "host={host} port={port} dbname=twinlake user=demo password=twinlake-demo-token sslmode=require"
            ));
        }
        if line.trim_start().starts_with("metrics") {
            metrics = line
                .split_whitespace()
                .filter(|w| w.starts_with("http://"))
                .map(str::to_owned)
                .collect();
        }
        if let Some(a) = after(&line, "cloud API          ") {
            api = Some(a.to_owned());
        }
        if let Some(f) = after(&line, "Flight SQL ") {
            flight = Some(f.to_owned());
        }
        if let Some(i) = line.find("curl -d ").or_else(|| line.find("coap-client-notls -m post")) {
            device_commands.push(line[i..].to_owned());
        }
        if line.contains("reported led") {
            led_reports += 1;
        }
        seen.push(line);
    }
    let pg = pg.expect("the psql line");
    // The HTTP and CoAP lines the demo prints work as printed.
    assert_eq!(device_commands.len(), 2, "{seen:#?}");
    for cmd in &device_commands {
        let full = if cmd.starts_with("curl") {
            format!("{cmd} -s -o /dev/null -w '%{{http_code}}'")
        } else {
            cmd.clone()
        };
        let out = Command::new("sh").args(["-c", &full]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        if cmd.starts_with("curl") {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{cmd}");
        }
    }
    // The web console in Chromium, against the demo itself.
    let console = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cloud-ingest/tests/python/console_demo.py"
        ))
        .args([api.as_deref().expect("the API line"), "twinlake-demo-token"])
        .output()
        .expect("python runs");
    let console_out = String::from_utf8_lossy(&console.stdout);
    assert!(
        console.status.success() && console_out.contains("console-demo: ok"),
        "{console_out}\n{}",
        String::from_utf8_lossy(&console.stderr)
    );
    let prometheus = Prometheus::start(dir.path(), &metrics);
    let dashboards = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(dashboards)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // Until every table has rows in SQL (the fleet streams every second), at most a minute.
    let check = || {
        let mut cmd = Command::new(python());
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/check.py"))
            .args(["--pg", &pg]);
        for m in &metrics {
            cmd.args(["--metrics", m]);
        }
        cmd.args(["--prometheus", &prometheus.url]);
        cmd.args(&files).output().expect("python runs")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = check();
    while !out.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(3));
        out = check();
    }
    drop(prometheus);
    // The notebooks, until the lake has sealed files and sensor-2 has spiked (a minute).
    let notebooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks");
    let mut books: Vec<_> = std::fs::read_dir(&notebooks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    books.sort();
    let executed = dir.path().join("notebooks-out");
    let s3 = S3::serve(dir.path());
    let run = || {
        Command::new(python())
            .arg(notebooks.join("run.py"))
            .arg("--out")
            .arg(&executed)
            .args(&books)
            .env("TWINLAKE_DIR", dir.path())
            .env("TWINLAKE_API", api.as_deref().expect("the API line"))
            .env("TWINLAKE_FLIGHT", flight.as_deref().expect("the Flight SQL line"))
            .env("TWINLAKE_S3_ENDPOINT", format!("http://{}", s3.addr))
            .env("TWINLAKE_S3_KEY", S3_KEY)
            .env("TWINLAKE_S3_SECRET", S3_SECRET)
            .output()
            .expect("python runs")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ran = run();
    while !ran.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(5));
        ran = run();
    }
    let _ = Command::new("kill").args(["-TERM", &demo.id().to_string()]).status();
    let _ = demo.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{stdout}\n{stderr}"
    );
    let nb_out = String::from_utf8_lossy(&ran.stdout);
    println!("{nb_out}");
    assert!(
        ran.status.success() && nb_out.contains(" 0 failed"),
        "{nb_out}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    for png in ["01-quickstart.png", "04-anomalies.png", "05-lorawan-radio.png"] {
        assert!(executed.join(png).exists(), "{png} was not saved");
    }
    assert_eq!(metrics.len(), 2, "{seen:#?}");
}
