//! Downsampling (`[[sql.rollups]]`): a rollup is its own lake table (`temp_1h`) of one
//! row per (owner, device, interval) of a source table, with per field the aggregates asked
//! for (`min`, `max`, `avg` as `_sum` and `_count`, `last`, `count`), the interval's end
//! (`end`) and how many source rows it covers (`rows`).
//!
//! It is maintained from committed files, span by span: an hour of the source (a day for
//! intervals over an hour, and for a day the day tier has merged). A span is rolled once it
//! has ended, and again whenever its committed rows change (late rows; compaction keeps the
//! count). Each rollup file records what it covers in its footer (`twinlake.rollup`:
//! source, interval, span, source rows), so the catalog, and a catalog rebuilt from a
//! listing, knows what is rolled. Fresh rows not yet in a file are not rolled. Retention
//! of a source partition waits until every rollup of its table covers it ([`held`]).
//! Rollups have their own retention, under their own name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::QueryError;
use crate::catalog::{Covers, FileMeta};
use crate::compact::{merge, replace, stamp};
use crate::lake::Lake;
use twinlake_lake::model::is_table_name;
use twinlake_lake::path::{DAY_US, HOUR_US, day_start};

mod compute;

/// An aggregate a rollup keeps of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Min,
    Max,
    /// As `<field>_sum` and `<field>_count`, which combine across intervals.
    Avg,
    Last,
    Count,
}

/// All of them, the default.
pub const ALL: [Aggregate; 5] = [
    Aggregate::Min,
    Aggregate::Max,
    Aggregate::Avg,
    Aggregate::Last,
    Aggregate::Count,
];

/// One rollup definition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RollupDef {
    /// The source table.
    pub table: String,
    /// The interval: whole seconds dividing an hour, or whole hours dividing a day.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The rollup table's name; default `<table>_<every>` (`temp_1h`).
    #[serde(default)]
    pub name: Option<String>,
    /// Field → aggregates; empty: every numeric field with every aggregate.
    #[serde(default)]
    pub fields: BTreeMap<String, Vec<Aggregate>>,
}

impl RollupDef {
    /// The rollup table's name.
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let s = self.every.as_secs();
        let every = match s {
            s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
            s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        };
        format!("{}_{every}", self.table)
    }

    pub fn every_us(&self) -> i64 {
        self.every.as_micros().min(i64::MAX as u128) as i64
    }

    /// The span it is rolled in: an hour for intervals up to an hour, else a day.
    pub fn span_us(&self) -> i64 {
        if self.every_us() <= HOUR_US { HOUR_US } else { DAY_US }
    }

    /// Whether the definition can be kept.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name();
        let s = self.every.as_secs();
        if !is_table_name(&self.table) || !is_table_name(&name) {
            return Err(format!("rollup {name:?} of {:?}: not table names", self.table));
        }
        if name == self.table {
            return Err(format!("rollup {name:?}: its name is its source's"));
        }
        let whole = self.every.subsec_nanos() == 0 && s > 0;
        if !whole || !(3600 % s == 0 || (s.is_multiple_of(3600) && 86_400 % s == 0)) {
            return Err(format!(
                "rollup {name:?}: every must be whole seconds dividing an hour, or whole hours dividing a day"
            ));
        }
        if self.fields.values().any(Vec::is_empty) {
            return Err(format!("rollup {name:?}: a field with no aggregates"));
        }
        Ok(())
    }

    fn is_mine(&self, f: &FileMeta) -> bool {
        f.covers
            .as_ref()
            .is_some_and(|c| c.source == self.table && c.every_us == self.every_us())
    }
}

/// Checks every definition and that they stand together: names unique, and no rollup of a
/// rollup (its spans would never settle).
pub fn check_all(defs: &[RollupDef]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for d in defs {
        d.check()?;
        if !names.insert(d.name()) {
            return Err(format!("two rollups are called {:?}", d.name()));
        }
    }
    if let Some(d) = defs.iter().find(|d| names.contains(&d.table)) {
        return Err(format!("rollup {:?}: its source {:?} is a rollup", d.name(), d.table));
    }
    Ok(())
}

/// One span of a source table: its committed rows and files.
#[derive(Debug, Default)]
struct Span {
    span_us: i64,
    rows: u64,
    files: Vec<Arc<FileMeta>>,
}

/// The source's spans for `def`: start → span. A day the day tier merged is one span.
fn spans(lake: &Lake, def: &RollupDef) -> BTreeMap<i64, Span> {
    let files = lake.files(&def.table);
    let merged: BTreeSet<i64> = files.iter().filter(|f| f.is_day()).map(|f| f.hour_us).collect();
    let mut out: BTreeMap<i64, Span> = BTreeMap::new();
    for f in files {
        let day = day_start(f.hour_us);
        let (start, span_us) = if def.span_us() == DAY_US || merged.contains(&day) {
            (day, DAY_US)
        } else {
            (f.hour_us, HOUR_US)
        };
        let s = out.entry(start).or_default();
        s.span_us = span_us;
        s.rows += f.rows;
        s.files.push(f);
    }
    out
}

/// The rollup's own files, by the start of the span each covers.
fn rolled(lake: &Lake, def: &RollupDef) -> BTreeMap<i64, Vec<Arc<FileMeta>>> {
    let mut out: BTreeMap<i64, Vec<Arc<FileMeta>>> = BTreeMap::new();
    for f in lake.files(&def.name()).into_iter().filter(|f| def.is_mine(f)) {
        if let Some(start) = f.covers.as_ref().map(|c| c.start_us) {
            out.entry(start).or_default().push(f);
        }
    }
    out
}

/// Those of `rolled` within `[start, start + span_us)`.
fn within(rolled: &BTreeMap<i64, Vec<Arc<FileMeta>>>, start: i64, span_us: i64) -> Vec<Arc<FileMeta>> {
    rolled
        .range(start..start.saturating_add(span_us))
        .flat_map(|(_, files)| files.iter().cloned())
        .collect()
}

/// Whether a span needs rolling: it holds rows its rollup does not cover (late rows), or
/// it is a day whose rollup is still in hour files (the day tier merged it). A span with
/// fewer rows than its rollup covers lost some to retention: its rollup stays as it is.
fn needs_rolling(mine: &[Arc<FileMeta>], span: &Span) -> bool {
    let covered: u64 = mine.iter().filter_map(|f| f.covers.as_ref()).map(|c| c.rows).sum();
    let one_day_file = matches!(mine, [one] if one.covers.as_ref().is_some_and(|c| c.span_us == DAY_US));
    span.rows > covered || (span.rows == covered && span.span_us == DAY_US && !one_day_file)
}

/// The spans of `def` that need rolling, ended or not.
fn unrolled(lake: &Lake, def: &RollupDef) -> Vec<(i64, Span)> {
    let rolled = rolled(lake, def);
    spans(lake, def)
        .into_iter()
        .filter(|(start, s)| needs_rolling(&within(&rolled, *start, s.span_us), s))
        .collect()
}

/// The spans of `def` due at `now_us`: ended and not current.
pub fn due(lake: &Lake, def: &RollupDef, now_us: i64) -> Vec<i64> {
    unrolled(lake, def)
        .into_iter()
        .filter(|(start, s)| start.saturating_add(s.span_us) <= now_us)
        .map(|(start, _)| start)
        .collect()
}

/// Rolls one span of `def` (recomputing it whole) and swaps the result for the rollup's
/// earlier files of that span. Returns the new file.
pub async fn roll(
    lake: &Arc<Lake>,
    def: &RollupDef,
    start: i64,
    grace: Duration,
) -> Result<Option<FileMeta>, QueryError> {
    let Some(span) = spans(lake, def).remove(&start) else {
        return Ok(None);
    };
    let sorted = merge(lake, &span.files).await?;
    let rows = compute::aggregate(def, &sorted).await?;
    let covers = Covers {
        source: def.table.clone(),
        every_us: def.every_us(),
        start_us: start,
        span_us: span.span_us,
        rows: span.rows,
    };
    let (rel, bytes) = compute::encode(&def.name(), &rows, &covers, stamp())?;
    let old = within(&rolled(lake, def), start, span.span_us);
    Ok(Some(replace(lake, &rel, bytes, &old, grace).await?))
}

/// One pass over every definition: each due span rolled. Returns how many were.
pub async fn pass(lake: &Arc<Lake>, defs: &[RollupDef], grace: Duration, now_us: i64) -> usize {
    let mut n = 0;
    for def in defs {
        for start in due(lake, def, now_us) {
            match roll(lake, def, start, grace).await {
                Ok(Some(_)) => n += 1,
                Ok(None) => {}
                Err(e) => warn!(rollup = def.name(), start, error = %e, "a rollup failed; will retry"),
            }
        }
    }
    n
}

/// The spans of `table` some rollup does not cover yet: `(start, span)`. Retention leaves a
/// source partition that overlaps one.
pub fn held(lake: &Lake, defs: &[RollupDef], table: &str) -> Vec<(i64, i64)> {
    defs.iter()
        .filter(|d| d.table == table)
        .flat_map(|def| unrolled(lake, def))
        .map(|(start, span)| (start, span.span_us))
        .collect()
}
