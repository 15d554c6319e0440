//! The day tier (#17): a day's hour files merge into one day file that answers every query
//! exactly as they did (its exact narrower types cast back), late rows for the day are
//! merged in at the next pass, retention takes a day file only once its whole day is past,
//! and a file named as a day file without the day tier's mark is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use twinlake_query::catalog::LEVEL_DAY;
use twinlake_query::compact::CompactionConfig;
use twinlake_query::days::{compact_day, due};
use twinlake_query::retention::{self, RetentionConfig};

use crate::support::{Fixture, MIN, Row, T0};

const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Readings every 10 min for two days: `v` rounded to two decimals, `w` not rounded at
/// all, times a whole number of milliseconds after each tick.
fn readings(device: &'static str, seed: i64) -> Vec<Row> {
    (0..2 * 24 * 6)
        .map(|i| {
            let jitter_ms = (i * 37 + seed * 11) % 401;
            let v = ((20.0 + ((i + seed) % 50) as f64 * 0.37) * 100.0).round() / 100.0;
            let w = (i + seed) as f64 / 3.0;
            (T0 + i * 10 * MIN + jitter_ms * 1000, device, vec![("v", v), ("w", w)])
        })
        .collect()
}

/// `w` is summed rounded: a float sum's last bits depend on the order its partitions are
/// merged in, which varies run to run. The first query compares every `w` exactly.
const QUERIES: [&str; 4] = [
    "SELECT device, CAST(time AS VARCHAR) AS t, v, w FROM t ORDER BY device, time",
    "SELECT count(*) AS n, min(v) AS lo, max(v) AS hi, round(sum(w), 6) AS s FROM t \
     WHERE v > 21.3 AND time >= '2024-01-01T05:00:00Z' AND time < '2024-01-01T07:30:00.5Z'",
    "SELECT device, count(*) AS n FROM t WHERE v = 20.74 GROUP BY device ORDER BY device",
    "SELECT min(time) AS a, max(time) AS b FROM t WHERE device = 'd2' AND time < '2024-01-02T00:00:00Z'",
];

async fn answers(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUERIES {
        out.push(f.query(q).await);
    }
    out
}

fn config() -> CompactionConfig {
    CompactionConfig {
        day_after: Some(Duration::from_secs(24 * 3600)),
        grace: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_day_file_answers_as_its_hour_files_did_and_takes_late_rows() {
    let f = Fixture::empty();
    for (seal, (d, seed)) in [("d1", 0), ("d2", 7), ("d3", 13)].into_iter().enumerate() {
        f.commit("t", "gw", seal as u64 + 1, &readings(d, seed)).await;
    }
    let before = answers(&f).await;
    assert!(before[2].contains("| d1 "), "{}", before[2]);
    let hour_files = f.lake.files("t").len();
    assert_eq!(hour_files, 3 * 48);

    // Two days and a minute after the first began: only the first day is due.
    let cfg = config();
    let now = T0 + 2 * DAY + MIN;
    assert_eq!(due(&f.lake, &cfg, now), vec![("t".to_owned(), T0)]);
    let day = compact_day(&f.lake, "t", T0, &cfg).await.unwrap().unwrap();
    assert_eq!(day.level, LEVEL_DAY);
    assert!(day.path.starts_with("t/date=2024-01-01/hour=00/day-"), "{}", day.path);
    assert_eq!(day.rows, 3 * 24 * 6);
    assert_eq!(day.min_time_us, T0, "read from the footer in ms, catalogued in µs");
    assert!(day.max_time_us < T0 + DAY);
    assert_eq!(
        f.lake.files("t").len(),
        1 + 3 * 24,
        "one day file and the second day's hour files"
    );
    assert!(
        due(&f.lake, &cfg, now).is_empty(),
        "a day with only its day file is done"
    );
    assert_eq!(answers(&f).await, before, "the day file answers as its hour files did");

    // A late backlog for hour 05 of the merged day, then the next pass merges it in.
    let late: Vec<Row> = vec![(T0 + 5 * HOUR + 123_000, "d9", vec![("v", 99.5), ("w", 0.1)])];
    f.commit("t", "gw-late", 1, &late).await;
    assert_eq!(due(&f.lake, &cfg, now), vec![("t".to_owned(), T0)]);
    let day2 = compact_day(&f.lake, "t", T0, &cfg).await.unwrap().unwrap();
    assert_eq!(day2.rows, 3 * 24 * 6 + 1);
    assert!(
        f.query("SELECT count(*) AS n FROM t WHERE device = 'd9'")
            .await
            .contains("| 1 |")
    );
    assert_eq!(f.lake.files("t").iter().filter(|m| m.is_day()).count(), 1);

    // Retention of one day at two days and a minute: the day file's whole day is past, the
    // second day's first hour is not.
    let keep = RetentionConfig {
        tables: BTreeMap::from([("t".to_owned(), Duration::from_secs(24 * 3600).into())]),
        ..Default::default()
    };
    assert_eq!(
        retention::due(&f.lake, &keep, &[], now),
        vec![("t".to_owned(), T0, DAY)]
    );
    let gone = retention::pass(&f.lake, &keep, &[], Duration::from_millis(50), now);
    assert_eq!((gone.len(), gone[0].rows), (1, 3 * 24 * 6 + 1));
    let left = f.query("SELECT count(*) AS n, min(time) AS first FROM t").await;
    assert!(
        left.contains(&format!("| {} |", 3 * 24 * 6)) && left.contains("2024-01-02T00:"),
        "{left}"
    );
}

#[tokio::test]
async fn a_file_named_as_a_day_file_without_the_mark_is_refused() {
    let f = Fixture::empty();
    let paths = f.commit_raw("t", "gw", 1, &readings("d1", 0)[..3]).await;
    let lake = f.dir.path().join("lake");
    let fake = "t/date=2024-01-01/hour=00/day-1704067200000000.parquet";
    std::fs::rename(lake.join(&paths[0]), lake.join(fake)).unwrap();
    let err = f.lake.commit(fake, None).await.unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");
}

/// What the faulty store below refuses.
#[derive(Debug, Default)]
struct Faults {
    /// Writes of day files.
    puts: std::sync::atomic::AtomicBool,
    /// Reads of day files (so the catalog cannot describe one just written).
    reads: std::sync::atomic::AtomicBool,
    /// Every deletion.
    deletes: std::sync::atomic::AtomicBool,
}

/// The lake's store, failing day files' writes or reads on demand.
#[derive(Debug)]
struct FaultyStore {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    faults: std::sync::Arc<Faults>,
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    fn refuses(&self, flag: &std::sync::atomic::AtomicBool, p: &object_store::path::Path) -> object_store::Result<()> {
        if flag.load(std::sync::atomic::Ordering::SeqCst) && p.as_ref().contains("/day-") {
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: "injected fault".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.refuses(&self.faults.puts, location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.refuses(&self.faults.puts, location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.refuses(&self.faults.reads, location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &object_store::path::Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.refuses(&self.faults.reads, location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        use futures::StreamExt;
        if self.faults.deletes.load(std::sync::atomic::Ordering::SeqCst) {
            return locations
                .map(|_| {
                    Err(object_store::Error::Generic {
                        store: "FaultyStore",
                        source: "injected fault".into(),
                    })
                })
                .boxed();
        }
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Two days of readings from three devices, in hour files, on a store that fails on demand.
async fn faulty_fixture() -> (Fixture, std::sync::Arc<Faults>) {
    let faults = std::sync::Arc::new(Faults::default());
    let fx = faults.clone();
    let f = Fixture::with_store(move |inner| std::sync::Arc::new(FaultyStore { inner, faults: fx }));
    for (seal, (d, seed)) in [("d1", 0), ("d2", 7), ("d3", 13)].into_iter().enumerate() {
        f.commit("t", "gw", seal as u64 + 1, &readings(d, seed)).await;
    }
    (f, faults)
}

/// Every file the lake's directory holds, relative to it.
fn stored(f: &Fixture) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = f.dir.path().join("lake");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// Nothing accepted is lost when a day file cannot be written, or is written and cannot
/// be read back to be catalogued: the day's hour files stay catalogued and stored, the
/// answers do not change, the half-made day file does not stay behind, and the next pass,
/// the fault gone, merges the day.
#[tokio::test]
async fn a_day_file_that_fails_to_land_deletes_nothing() {
    let (f, faults) = faulty_fixture().await;
    let before = answers(&f).await;
    let files_before = stored(&f);
    assert_eq!(files_before.len(), 3 * 48);
    let cfg = config();
    let on = std::sync::atomic::Ordering::SeqCst;

    faults.puts.store(true, on);
    assert!(compact_day(&f.lake, "t", T0, &cfg).await.is_err(), "the write failed");
    faults.puts.store(false, on);
    faults.reads.store(true, on);
    assert!(
        compact_day(&f.lake, "t", T0, &cfg).await.is_err(),
        "the description failed"
    );
    faults.reads.store(false, on);

    // Past the grace period, when replaced files would have been deleted.
    tokio::time::sleep(cfg.grace * 4).await;
    assert_eq!(f.lake.files("t").len(), 3 * 48, "every hour file still catalogued");
    let left = stored(&f);
    assert!(
        left.iter().all(|p| !p.contains("/day-")),
        "a half-made day file stayed behind"
    );
    assert!(left == files_before, "every hour file is still stored");
    assert_eq!(answers(&f).await, before);
    assert_eq!(
        f.lake.catalog().pending_marks().unwrap(),
        Vec::<String>::new(),
        "no mark outlives its failed merge"
    );

    let day = compact_day(&f.lake, "t", T0, &cfg).await.unwrap().unwrap();
    assert_eq!(day.rows, 3 * 24 * 6);
    assert_eq!(answers(&f).await, before);
}

/// A cloud stopped between writing a day file and swapping it into the catalog (here: the
/// file cannot be read back, and the clean-up cannot delete it either) leaves a day file
/// whose rows are still in its hour files. The start's listing does not catalogue it beside
/// them (the rows would count twice); the start's sweep deletes it.
#[tokio::test]
async fn a_day_file_left_by_a_stop_before_its_swap_is_swept_not_catalogued() {
    let (f, faults) = faulty_fixture().await;
    let before = answers(&f).await;
    let files_before = stored(&f);
    let cfg = config();
    let on = std::sync::atomic::Ordering::SeqCst;
    faults.reads.store(true, on);
    faults.deletes.store(true, on);
    assert!(compact_day(&f.lake, "t", T0, &cfg).await.is_err());
    faults.reads.store(false, on);
    faults.deletes.store(false, on);
    assert_eq!(
        stored(&f).len(),
        files_before.len() + 1,
        "the orphaned day file is there"
    );

    assert_eq!(f.lake.catalog().pending_marks().unwrap().len(), 1, "its mark stays");
    assert_eq!(f.lake.rebuild().await.unwrap(), 0, "the listing left it alone");
    assert_eq!(f.lake.files("t").len(), 3 * 48);
    assert_eq!(answers(&f).await, before);
    assert_eq!(f.lake.sweep_replaced().await.unwrap(), 1);
    assert!(stored(&f) == files_before, "the sweep took the orphan and nothing else");
    assert!(
        f.lake.catalog().pending_marks().unwrap().is_empty(),
        "and then its mark"
    );

    let day = compact_day(&f.lake, "t", T0, &cfg).await.unwrap().unwrap();
    assert_eq!(answers(&f).await, before);
    assert_eq!(f.lake.rebuild().await.unwrap(), 0);
    // The swap took the mark away: a sweep (which may also take the replaced hour files
    // still in their grace) leaves the day file.
    f.lake.sweep_replaced().await.unwrap();
    assert!(
        stored(&f).contains(&day.path),
        "a swapped day file is not pending any more"
    );
    assert_eq!(answers(&f).await, before);
}
