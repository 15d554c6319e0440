//! Where a file lives in the lake: `<table>/date=YYYY-MM-DD/hour=HH/<file>.parquet`, relative
//! to the lake's root, built and parsed only here.
//!
//! `<file>` is `<gateway>-<seal>` (the seal number in 20 digits) for a file a gateway wrote,
//! `compacted-<stamp>` for one the cloud's compaction wrote, and `day-<stamp>` for a day
//! file of the cloud's day tier, which holds the whole UTC day and sits in the day's
//! `hour=00` directory (so hive-partitioned readers see one depth; filter such files on
//! `time`, not on `hour`). `compacted` and `day` are therefore no gateway's name
//! ([`is_gateway_name`]), so a gateway's store credentials, scoped to its own file names
//! (SECURITY.md), cannot write a file that passes as the cloud's.

use std::fmt;

use crate::model::is_table_name;

/// One hour in µs.
pub const HOUR_US: i64 = 3_600_000_000;
/// The file-name stem of compacted files.
const COMPACTED: &str = "compacted";
/// The file-name stem of day files.
const DAY: &str = "day";
/// One day in µs.
pub const DAY_US: i64 = 24 * HOUR_US;

/// The first µs of the UTC day holding `us`.
pub fn day_start(us: i64) -> i64 {
    us - us.rem_euclid(DAY_US)
}
/// The longest gateway id.
pub const MAX_GATEWAY_NAME: usize = 64;

/// The start of an hour partition, µs since the epoch, in years 0000 to 9999 (what a
/// `date=YYYY-MM-DD` directory can name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(i64);

/// The earliest time a lake file can hold (0000-01-01T00:00Z), µs since the epoch.
pub const FIRST_US: i64 = -62_167_219_200_000_000;
/// The end of the times a lake file can hold (10000-01-01T00:00Z, not included).
pub const END_US: i64 = 253_402_300_800_000_000;

impl Hour {
    /// The hour holding `time_us`; `None` outside years 0000 to 9999.
    pub fn of(time_us: i64) -> Option<Self> {
        (FIRST_US..END_US)
            .contains(&time_us)
            .then(|| Self(time_us - time_us.rem_euclid(HOUR_US)))
    }

    /// Its start, µs since the epoch.
    pub fn start_us(self) -> i64 {
        self.0
    }

    /// The first hour of its UTC day.
    pub fn day(self) -> Self {
        Self(day_start(self.0))
    }

    /// `(year, month, day, hour)`.
    fn civil(self) -> (i64, u32, u32, i64) {
        let secs = self.0.div_euclid(1_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        (y, m, d, secs.rem_euclid(86_400) / 3600)
    }
}

/// Who wrote a file, as its name says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A gateway's seal.
    Seal { gateway: String, seal: u64 },
    /// The cloud's compaction, at a stamp (µs since the epoch when it ran).
    Compacted { stamp: u64 },
    /// The cloud's day tier, at a stamp; the file holds its whole day.
    Day { stamp: u64 },
}

/// A lake file's path, relative to the lake's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LakePath {
    table: String,
    hour: Hour,
    origin: Origin,
}

/// Why a path or a part of it is not the lake's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(String);

impl LakePath {
    /// The path of a gateway's seal file for one table and hour.
    pub fn seal(table: &str, hour: Hour, gateway: &str, seal: u64) -> Result<Self, PathError> {
        if !is_gateway_name(gateway) {
            return Err(PathError(format!("gateway {gateway:?} cannot name a lake file")));
        }
        Self::new(
            table,
            hour,
            Origin::Seal {
                gateway: gateway.to_owned(),
                seal,
            },
        )
    }

    /// The path of a compacted file for one table and hour.
    pub fn compacted(table: &str, hour: Hour, stamp: u64) -> Result<Self, PathError> {
        Self::new(table, hour, Origin::Compacted { stamp })
    }

    /// The path of a day file for one table and the day of `hour`.
    pub fn day(table: &str, hour: Hour, stamp: u64) -> Result<Self, PathError> {
        Self::new(table, hour.day(), Origin::Day { stamp })
    }

    fn new(table: &str, hour: Hour, origin: Origin) -> Result<Self, PathError> {
        if !is_table_name(table) {
            return Err(PathError(format!("{table:?} is not a table name")));
        }
        Ok(Self {
            table: table.to_owned(),
            hour,
            origin,
        })
    }

    /// Parses a path relative to the lake's root; `None` for anything else, including
    /// `_quarantine/…` and names that no writer makes.
    pub fn parse(path: &str) -> Option<Self> {
        let mut parts = path.splitn(4, '/');
        let (table, date, hour, file) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let days = days_from_date(date.strip_prefix("date=")?)?;
        let hour = hour.strip_prefix("hour=").filter(|h| h.len() == 2)?;
        let hour: i64 = hour.parse().ok().filter(|h| (0..24).contains(h))?;
        let hour = Hour::of((days * 24 + hour) * HOUR_US)?;
        let (name, number) = file.strip_suffix(".parquet")?.rsplit_once('-')?;
        let number: u64 = number
            .parse()
            .ok()
            .filter(|_| number.bytes().all(|b| b.is_ascii_digit()))?;
        let stamped = number.to_string().len() == file.len() - name.len() - 9;
        let origin = if name == COMPACTED && stamped {
            Origin::Compacted { stamp: number }
        } else if name == DAY && stamped && hour.day() == hour {
            Origin::Day { stamp: number }
        } else if is_gateway_name(name) && file.len() == name.len() + 29 {
            Origin::Seal {
                gateway: name.to_owned(),
                seal: number,
            }
        } else {
            return None;
        };
        Self::new(table, hour, origin).ok()
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn hour(&self) -> Hour {
        self.hour
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The gateway and seal of a gateway's file.
    pub fn gateway_seal(&self) -> Option<(&str, u64)> {
        match &self.origin {
            Origin::Seal { gateway, seal } => Some((gateway, *seal)),
            Origin::Compacted { .. } | Origin::Day { .. } => None,
        }
    }

    /// Whether it is a day file.
    pub fn is_day(&self) -> bool {
        matches!(self.origin, Origin::Day { .. })
    }

    /// The directory of its table and hour: `<table>/date=…/hour=…`.
    pub fn dir(&self) -> String {
        let (y, m, d, h) = self.hour.civil();
        format!("{}/date={y:04}-{m:02}-{d:02}/hour={h:02}", self.table)
    }
}

impl fmt::Display for LakePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Seal { gateway, seal } => write!(f, "{}/{gateway}-{seal:020}.parquet", self.dir()),
            Origin::Compacted { stamp } => write!(f, "{}/{COMPACTED}-{stamp}.parquet", self.dir()),
            Origin::Day { stamp } => write!(f, "{}/{DAY}-{stamp}.parquet", self.dir()),
        }
    }
}

/// Whether `name` may be a gateway's id: 1 to 64 letters, digits, `-`, `_` or `.`, not
/// starting with `_` or `.` (the lake's own directories) and not `compacted` or `day`.
pub fn is_gateway_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GATEWAY_NAME
        && name != COMPACTED
        && name != DAY
        && !name.starts_with(['_', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian, a real date).
fn days_from_date(s: &str) -> Option<i64> {
    let (y, rest) = s.split_once('-')?;
    let (m, d) = rest.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || d.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    // Day 31 of a 30-day month would land in the next one: a real date round-trips.
    (civil_from_days(days) == (y, m as u32, d as u32)).then_some(days)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian (H. Hinnant's
/// algorithm); the inverse of [`civil_from_days`]. Month and day are not range-checked.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn todays_paths_parse() {
        let p = LakePath::parse("temp/date=2024-02-29/hour=13/gw-1-00000000000000000042.parquet").unwrap();
        assert_eq!((p.table(), p.gateway_seal()), ("temp", Some(("gw-1", 42))));
        assert_eq!(p.hour().start_us(), (days_from_civil(2024, 2, 29) * 24 + 13) * HOUR_US);
        let c = LakePath::parse("t/date=1969-12-31/hour=23/compacted-1712345678901234.parquet").unwrap();
        assert_eq!(
            c.origin(),
            &Origin::Compacted {
                stamp: 1_712_345_678_901_234
            }
        );
        assert_eq!(c.hour().start_us(), -HOUR_US);
        let d = LakePath::parse("t/date=2024-02-29/hour=00/day-1712345678901234.parquet").unwrap();
        assert!(d.is_day() && d.gateway_seal().is_none());
        assert_eq!(d.hour().start_us(), days_from_civil(2024, 2, 29) * 24 * HOUR_US);
    }

    #[test]
    fn other_paths_do_not() {
        for p in [
            "t/date=2024-13-01/hour=00/g-00000000000000000001.parquet",
            "t/date=2023-02-29/hour=00/g-00000000000000000001.parquet",
            "t/date=2024-01-01/hour=24/g-00000000000000000001.parquet",
            "a/b/date=2024-01-01/hour=00/g-00000000000000000001.parquet",
            "date=2024-01-01/hour=00/g-00000000000000000001.parquet",
            "_quarantine/t/date=2024-01-01/hour=00/g-00000000000000000001.parquet",
            "t/date=2024-01-01/hour=00/g-1.parquet",
            "t/date=2024-01-01/hour=00/g-+0000000000000000001.parquet",
            "t/date=2024-01-01/hour=00/-00000000000000000001.parquet",
            "t/date=2024-01-01/hour=00/g-00000000000000000001.csv",
            "t/date=2024-01-01/hour=00/compacted.parquet",
            "t/date=2024-01-01/hour=01/day-1712345678901234.parquet",
            "t/date=2024-01-01/hour=00/day-01712345678901234.parquet",
            "t/date=+024-01-01/hour=00/g-00000000000000000001.parquet",
        ] {
            assert_eq!(LakePath::parse(p), None, "{p}");
        }
    }

    #[test]
    fn compacted_is_no_gateway() {
        assert!(!is_gateway_name("compacted") && !is_gateway_name("day"));
        assert!(LakePath::seal("t", Hour::of(0).unwrap(), "compacted", 1).is_err());
        assert!(is_gateway_name("edge-01.site_a"));
        assert!(!is_gateway_name("_quarantine") && !is_gateway_name("a/b") && !is_gateway_name(""));
    }

    #[test]
    fn hours_cover_four_digit_years() {
        assert_eq!(Hour::of(FIRST_US - 1), None);
        assert_eq!(Hour::of(END_US), None);
        assert_eq!(Hour::of(-1).map(Hour::start_us), Some(-HOUR_US));
        let last = LakePath::seal("t", Hour::of(END_US - 1).unwrap(), "g", u64::MAX).unwrap();
        assert_eq!(
            last.to_string(),
            "t/date=9999-12-31/hour=23/g-18446744073709551615.parquet"
        );
        assert_eq!(LakePath::parse(&last.to_string()), Some(last));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9_.-]{0,20}"
    }

    proptest! {
        #[test]
        fn paths_round_trip(
            table in "[a-z][a-z0-9_]{0,30}",
            time in FIRST_US..END_US,
            gateway in name(),
            number: u64,
            kind in 0u8..3,
        ) {
            let hour = Hour::of(time).unwrap();
            let path = match kind {
                0 => LakePath::compacted(&table, hour, number),
                1 => LakePath::day(&table, hour, number),
                _ => LakePath::seal(&table, hour, &gateway, number),
            };
            prop_assume!(path.is_ok());
            let path = path.unwrap();
            prop_assert_eq!(LakePath::parse(&path.to_string()), Some(path.clone()));
            let span = if path.is_day() { DAY_US } else { HOUR_US };
            prop_assert!(path.hour().start_us() <= time && time < path.hour().start_us() + span);
        }

        #[test]
        fn any_text_parses_or_not_without_panic(s in "\\PC{0,80}") {
            if let Some(p) = LakePath::parse(&s) {
                prop_assert_eq!(p.to_string(), s);
            }
        }
    }
}
