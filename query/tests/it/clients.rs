//! Real clients against the standard fixture: Grafana's wire behaviour replayed against us
//! and a real PostgreSQL 15 (compared), psql `\dt`/`\d`, PgJDBC, and ADBC Flight SQL with
//! polars. scripts/test installs what they need (PostgreSQL 15, the PgJDBC jar, a venv).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::support::{Fixture, standard};

const TOKEN: &str = "test-sql-token";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TWINLAKE_PYTHON") {
        return p.into();
    }
    let venv = root().join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the test clients: run scripts/test (it makes .venv) or set TWINLAKE_PYTHON"
    );
    venv
}

struct Servers {
    fixture: Fixture,
    pg: SocketAddr,
    pg_tls: SocketAddr,
    flight: SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn servers() -> Servers {
    let fixture = standard().await;
    let (stop, stop_rx) = watch::channel(false);
    let check: twinlake_query::pg::TokenCheck =
        Arc::new(|t: &str| (t == TOKEN).then_some(twinlake_query::pg::Access { user: None }));
    let pg = twinlake_query::pg::serve(
        fixture.engine.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        check.clone(),
        stop_rx.clone(),
    )
    .unwrap()
    .addr;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let tls =
        twinlake_edge::listener::tls_acceptor(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes())
            .unwrap()
            .0;
    let pg_tls = twinlake_query::pg::serve(
        fixture.engine.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(tls),
        check.clone(),
        stop_rx.clone(),
    )
    .unwrap()
    .addr;
    let flight = twinlake_query::flight::serve(
        fixture.engine.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        check,
        stop_rx,
    )
    .unwrap()
    .addr;
    Servers {
        fixture,
        pg,
        pg_tls,
        flight,
        _stop: stop,
    }
}

fn conninfo(addr: SocketAddr, sslmode: &str) -> String {
    format!(
        "host={} port={} user=grafana password={TOKEN} dbname=twinlake sslmode={sslmode}",
        addr.ip(),
        addr.port()
    )
}

/// Runs a command off the async runtime; its output, or a panic with it.
async fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown} failed:\n{stdout}\n{stderr}");
    stdout
}

/// A real PostgreSQL 15 in a temp dir, on a free port, stopped on drop.
struct Postgres {
    child: Child,
    port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn bin() -> PathBuf {
        let dir = std::env::var_os("TWINLAKE_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        assert!(
            dir.join("postgres").exists(),
            "PostgreSQL 15 is not installed ({}): run scripts/test, which installs postgresql-15",
            dir.display()
        );
        dir
    }

    /// As root, the server runs as the `postgres` user (initdb refuses root).
    fn command(bin: &Path, prog: &str) -> Command {
        let is_root = unsafe_free_is_root();
        if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
            c
        } else {
            Command::new(bin.join(prog))
        }
    }

    async fn start() -> Self {
        let bin = Self::bin();
        let dir = tempfile::Builder::new()
            .prefix("twinlake-pg")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        if unsafe_free_is_root() {
            run({
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(dir.path());
                c
            })
            .await;
        }
        let mut init = Self::command(&bin, "initdb");
        init.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
            "-D",
        ])
        .arg(&data);
        run(init).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self::command(&bin, "postgres");
        server
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = server.spawn().unwrap();
        let pg = Self {
            child,
            port,
            data,
            _dir: dir,
        };
        for _ in 0..200 {
            if tokio_postgres::connect(&pg.conninfo(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return pg;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("PostgreSQL 15 did not start");
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The child may be runuser, which passes no signal on: signal the postmaster itself
        // (SIGQUIT: immediate shutdown).
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
        }
        let _ = self.child.wait();
    }
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_replay_matches_postgresql_15() {
    let s = servers().await;
    let pg = Postgres::start().await;
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/grafana_replay.py"))
        .arg(conninfo(s.pg, "disable"))
        .arg(pg.conninfo())
        .arg(conninfo(s.pg_tls, "require"));
    let out = run(cmd).await;
    println!("{out}");
    assert!(out.contains("0 failed"), "{out}");
    drop(s.fixture);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_lists_and_describes_tables() {
    let s = servers().await;
    let psql = |args: &[&str]| {
        let mut c = Command::new("psql");
        c.arg(conninfo(s.pg, "disable"))
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(args);
        c
    };
    let dt = run(psql(&["-c", "\\dt"])).await;
    for t in ["climate", "room", "twins", "devices"] {
        assert!(dt.contains(t), "\\dt lacks {t}:\n{dt}");
    }
    let d = run(psql(&["-c", "\\d climate"])).await;
    for c in ["time", "device", "gateway", "temp", "hum"] {
        assert!(d.contains(c), "\\d climate lacks {c}:\n{d}");
    }
    assert!(d.contains("timestamp with time zone"), "{d}");
    let q = run(psql(&[
        "-A",
        "-t",
        "-c",
        "SELECT device, count(*) FROM climate GROUP BY 1 ORDER BY 1",
    ]))
    .await;
    assert_eq!(q.trim(), "d1|3\nd2|2\nd3|2");
    // Timestamps print in PostgreSQL's layout (pgwire always writes six fractional digits,
    // where PostgreSQL trims zeros: same instant, same parsers).
    let t = run(psql(&["-A", "-t", "-c", "SELECT min(time) FROM climate"])).await;
    assert_eq!(t.trim(), "2024-01-01 00:00:00.000000+00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_connects_and_queries() {
    let s = servers().await;
    let jar = std::env::var("TWINLAKE_PGJDBC").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    assert!(
        Path::new(&jar).exists(),
        "PgJDBC is not installed ({jar}): run scripts/test, which installs libpostgresql-jdbc-java"
    );
    let mut cmd = Command::new("java");
    cmd.arg("-cp")
        .arg(&jar)
        .arg(root().join("tests/java/Probe.java"))
        .arg(format!(
            "jdbc:postgresql://{}:{}/twinlake?sslmode=disable",
            s.pg.ip(),
            s.pg.port()
        ))
        .arg("dbeaver")
        .arg(TOKEN);
    let out = run(cmd).await;
    assert!(out.contains("row d1 3") && out.contains("row d3 2"), "{out}");
    assert!(out.contains("prepared 5 23.0"), "{out}");
    assert!(out.contains("time 2024-01-01T00:00:00Z"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_and_polars_read_over_flight_sql() {
    let s = servers().await;
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/flight_adbc.py"))
        .arg(format!("grpc://{}", s.flight))
        .arg(TOKEN);
    let out = run(cmd).await;
    assert!(out.contains("adbc flight sql: ok"), "{out}");
}

/// InfluxDB 3's Python client, unchanged, reads over our Flight endpoint (JSON tickets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb3_python_reads_over_flight() {
    let s = servers().await;
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/influxdb3_client.py"))
        .arg(s.flight.to_string())
        .arg(TOKEN);
    let out = run(cmd).await;
    assert!(out.contains("influxdb3-python: ok"), "{out}");
}
