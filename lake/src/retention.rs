//! Retention: how long the lake keeps each table (`[sql.retention]` in the cloud, which
//! sends it to its gateways; `[retention]` on an agent). The cloud deletes whole expired
//! partitions; a gateway refuses rows that arrive already past it, before it acknowledges
//! them.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long each table is kept.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Every table's retention unless it has its own; none: kept forever.
    #[serde(with = "humantime_serde")]
    pub default: Option<Duration>,
    /// Per table; `"0s"` keeps that table forever.
    pub tables: BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// Expired files stay this long for queries already running; at least the SQL timeout
    /// (the config refuses less).
    #[serde(with = "humantime_serde")]
    pub grace: Option<Duration>,
}

impl RetentionConfig {
    /// `table`'s retention; none: kept forever.
    pub fn of(&self, table: &str) -> Option<Duration> {
        match self.tables.get(table) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(**d),
            None => self.default.filter(|d| !d.is_zero()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.of_any().is_none()
    }

    fn of_any(&self) -> Option<Duration> {
        self.default
            .filter(|d| !d.is_zero())
            .or_else(|| self.tables.values().map(|d| **d).find(|d| !d.is_zero()))
    }

    /// The oldest time `table` keeps at `now_us` (µs); none: kept forever.
    pub fn cutoff_us(&self, table: &str, now_us: i64) -> Option<i64> {
        let keep = self.of(table)?;
        Some(now_us.saturating_sub(keep.as_micros().min(i64::MAX as u128) as i64))
    }
}
