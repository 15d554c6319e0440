//! Retention where rows enter: a row whose hour partition is already past its table's
//! retention (the cloud would delete it at its next pass) is refused before it is
//! acknowledged and counted (`refused_rows_total{reason="expired"}`). The policy is the
//! cloud's `[sql.retention]`, sent with the gateway's rules over the link and saved for
//! starts without one; until it first arrives, the agent's own `[retention]`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tracing::warn;
use twinlake_lake::path::{HOUR_US, Hour};
pub use twinlake_lake::retention::RetentionConfig;

/// The retention rows are judged by.
#[derive(Debug, Default)]
pub struct Retention {
    current: RwLock<Arc<RetentionConfig>>,
    /// Whether any table has one: every row asks, without taking the lock.
    any: AtomicBool,
    /// Where the cloud's is saved.
    file: Option<PathBuf>,
}

impl Retention {
    /// The cloud's retention saved in `file` by the last link, else `local`.
    pub fn open(local: RetentionConfig, file: Option<PathBuf>) -> Self {
        let saved = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<RetentionConfig>(&b).ok());
        let me = Self {
            file,
            ..Self::default()
        };
        me.set(saved.unwrap_or(local));
        me
    }

    fn set(&self, cfg: RetentionConfig) {
        self.any.store(!cfg.is_empty(), Ordering::Relaxed);
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(cfg);
        }
    }

    /// The cloud's retention: used from now on and saved for the next start.
    pub fn replace(&self, cfg: RetentionConfig) {
        if self.current.read().is_ok_and(|c| **c == cfg) {
            return;
        }
        if let (Some(file), Ok(bytes)) = (self.file.clone(), serde_json::to_vec(&cfg)) {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::wal::write_file_atomic(&file, &bytes, 0o600) {
                    warn!(path = %file.display(), error = %e, "cannot save the cloud's retention");
                }
            });
        }
        self.set(cfg);
    }

    /// Whether a row of `table` at `time_us` is past retention now. Asked for every row: the
    /// clock is read only when some table has a retention.
    pub fn expired(&self, table: &str, time_us: i64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros().min(i64::MAX as u128) as i64);
        self.expired_at(table, time_us, now)
    }

    /// Whether a row of `table` at `time_us` is past retention at `now_us`: its whole hour
    /// partition is older than the table keeps (the cloud's rule for deleting one).
    pub fn expired_at(&self, table: &str, time_us: i64, now_us: i64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let Some(cutoff) = self.current.read().ok().and_then(|c| c.cutoff_us(table, now_us)) else {
            return false;
        };
        Hour::of(time_us).is_some_and(|h| h.start_us().saturating_add(HOUR_US) <= cutoff)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn rows_whose_hour_is_past_retention_are_expired() {
        let r = Retention::open(RetentionConfig::default(), None);
        let now = 100 * HOUR_US + 30 * 60_000_000;
        assert!(!r.expired_at("t", 0, now), "no retention: nothing expires");
        r.replace(RetentionConfig {
            tables: BTreeMap::from([
                ("t".to_owned(), Duration::from_secs(2 * 3600).into()),
                ("forever".to_owned(), Duration::ZERO.into()),
            ]),
            default: Some(Duration::from_secs(3600)),
            ..Default::default()
        });
        // Cutoff 98:30: hour 97 ended at 98:00 and is past; hour 98 ends at 99:00 and is not.
        assert!(r.expired_at("t", 97 * HOUR_US + 59 * 60_000_000, now));
        assert!(!r.expired_at("t", 98 * HOUR_US, now));
        assert!(!r.expired_at("forever", 0, now));
        assert!(r.expired_at("other", 98 * HOUR_US, now), "the default: cutoff 99:30");
        assert!(
            !r.expired_at("t", i64::MIN, now),
            "outside the lake's years: refused elsewhere"
        );
    }
}
