//! Attacks on the agent's durability, against the `twinlake` binary (#13, findings 6 and 7):
//! a name that could stop all sealing, and a shutdown while a seal keeps failing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::{Event, Thing};
use twinlake_sdk::pson::Value;

use crate::crash::{lake_counts, start, terminate, write_config, writer};
use crate::mosquitto::free_port;

/// The WAL segment the agent writes now.
fn current_segment(data: &Path) -> u64 {
    std::fs::read_dir(data.join("wal"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
        .max()
        .expect("a WAL segment")
}

/// Confirmed rows of `dev-0` for about `secs`.
fn write_for(port: u16, from: i64, secs: u64) -> (Vec<i64>, i64) {
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let stop = stop.clone();
        std::thread::spawn(move || writer(port, 0, from, stop))
    };
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap()
}

#[test]
fn sigterm_during_a_failing_seal_loses_no_acknowledged_row() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let data = dir.path().join("data");
    let child = start(&config);
    // The first seal will cover the segment written now; a file where its temporary
    // directory goes makes that seal fail, again and again.
    let blocked = data.join(format!("outbox/.tmp-{:020}", current_segment(&data)));
    std::fs::write(&blocked, "in the way").unwrap();
    // Rows before and after the failed seal, all confirmed.
    let (mut acked, next) = write_for(port, 0, 1);
    std::thread::sleep(Duration::from_millis(700));
    let (more, _) = write_for(port, next, 1);
    acked.extend(more);
    assert!(!acked.is_empty());
    // SIGTERM while the seal still fails: the agent may say so, but must delete nothing.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut child = child;
    let _ = child.wait();
    if std::env::var_os("TWINLAKE_DEBUG_TEST").is_some() {
        let listing = std::process::Command::new("find").arg(dir.path()).output().unwrap();
        eprintln!(
            "after the first run ({} confirmed):\n{}",
            acked.len(),
            String::from_utf8_lossy(&listing.stdout)
        );
    }
    std::fs::remove_file(&blocked).unwrap();
    // The next start seals and uploads everything.
    let child = start(&config);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(child);
    let seen = lake_counts(&dir.path().join("lake"), "readings");
    let listing = std::process::Command::new("find").arg(dir.path()).output().unwrap();
    for s in &acked {
        assert_eq!(
            seen.get(&("dev-0".to_owned(), *s)),
            Some(&1),
            "confirmed row {s}; {} in the lake; files:\n{}",
            seen.len(),
            String::from_utf8_lossy(&listing.stdout)
        );
    }
}

#[test]
fn a_name_that_cannot_be_a_table_is_refused_and_sealing_goes_on() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let child = start(&config);
    let mut cfg = ClientConfig::new("127.0.0.1", port, "u", "dev-1", "k");
    cfg.poll_interval = Duration::from_millis(2);
    let mut client = Client::new(cfg, Thing::default());
    client.wait_connected(Duration::from_secs(10)).unwrap();
    // 300 characters (the disk refuses such a file name), and names that used to share a
    // table once their characters were replaced.
    for bucket in ["b".repeat(300), "a.b".into(), "a/b".into()] {
        let id = client
            .thing()
            .write_bucket(&bucket, Value::object().with("seq", 1), true)
            .unwrap();
        let ev = client
            .wait_for(
                Duration::from_secs(5),
                |e| matches!(e, Event::Ack { request, .. } if *request == id),
            )
            .unwrap();
        assert!(
            matches!(ev, Event::Ack { ok: false, .. }),
            "{bucket:?} was accepted: {ev:?}"
        );
    }
    drop(client);
    // Sealing carries on for everyone else.
    let (acked, _) = write_for(port, 0, 1);
    std::thread::sleep(Duration::from_millis(1000));
    terminate(child);
    let seen = lake_counts(&dir.path().join("lake"), "readings");
    assert!(!acked.is_empty());
    for s in &acked {
        assert_eq!(seen.get(&("dev-0".to_owned(), *s)), Some(&1), "confirmed row {s}");
    }
    let tables: Vec<_> = std::fs::read_dir(dir.path().join("lake"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(tables, ["readings"]);
}

/// A SIGKILL cannot show a missing fsync, so this reads the agent's system calls (strace):
/// every outbox file is deleted only after its copy in a `file://` lake, and the lake
/// directory that holds it, were fsynced (#13, finding 10).
#[test]
fn a_local_lake_file_is_fsynced_before_its_outbox_copy_is_deleted() {
    let _one = crate::one_at_a_time();
    let strace = Path::new("/usr/bin/strace");
    assert!(
        strace.exists(),
        "strace is not installed: run scripts/test, which installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let child = start(&config);
    let trace = dir.path().join("trace");
    let mut tracer = std::process::Command::new(strace)
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,unlink,unlinkat", "-o"])
        .arg(&trace)
        .args(["-p", &child.id().to_string()])
        .spawn()
        .unwrap();
    // strace says nothing when it is attached; the first traced call shows it is.
    std::thread::sleep(Duration::from_millis(500));
    let (acked, _) = write_for(port, 0, 1);
    std::thread::sleep(Duration::from_millis(1500));
    terminate(child);
    let _ = tracer.wait();
    assert!(!acked.is_empty());
    let lake = dir.path().join("lake");
    let outbox = dir.path().join("data/outbox");
    let lines: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // A call another thread interrupts is split: `fsync(fd<path> <unfinished ...>`, then
    // `<... fsync resumed>) = 0`; the agent deletes only after the put (and so the fsync)
    // succeeded, so the call having been made before the delete is what counts.
    let synced = |path: &Path, before: usize| {
        let needle = format!("<{}>", path.display());
        lines.iter().take(before).any(|l| {
            (l.contains("fsync(") || l.contains("fdatasync("))
                && l.contains(&needle)
                && (l.ends_with("= 0") || l.contains("<unfinished"))
        })
    };
    let mut deleted = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("unlink") || !line.ends_with("= 0") {
            continue;
        }
        let Some(start) = line.find(&*outbox.to_string_lossy()) else {
            continue;
        };
        let path = line[start..].split('"').next().unwrap();
        if !path.ends_with(".parquet") {
            continue;
        }
        // outbox/<seq>/<object path> → lake/<object path>
        let rel = Path::new(path).strip_prefix(&outbox).unwrap();
        let rel: std::path::PathBuf = rel.components().skip(1).collect();
        let copy = lake.join(&rel);
        assert!(
            synced(&copy, i),
            "{} deleted before its lake copy was fsynced:\n{}",
            rel.display(),
            lines.get(..=i).unwrap_or_default().join("\n")
        );
        assert!(
            synced(copy.parent().unwrap(), i),
            "{} deleted before the lake directory was fsynced",
            rel.display()
        );
        deleted += 1;
    }
    assert!(
        deleted > 0,
        "no outbox file was deleted while traced:\n{}",
        lines.join("\n")
    );
}
