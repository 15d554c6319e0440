//! The TSBS-iot queries in three dialects: DataFusion (Twinlake), DuckDB and ClickHouse
//! (chdb). One text per query, with the few spellings that differ taken from [`Dialect`],
//! so every engine answers the same question. Window starts are fixed (seeded, as TSBS picks
//! them).

use super::T0_US;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    DataFusion,
    DuckDb,
    ClickHouse,
}

impl Dialect {
    /// A timestamp literal, `us` µs after the epoch (whole seconds).
    fn ts(self, us: i64) -> String {
        let secs = us / 1_000_000;
        match self {
            Dialect::DataFusion | Dialect::DuckDb => format!("to_timestamp({secs})"),
            Dialect::ClickHouse => format!("toDateTime64({secs}, 6, 'UTC')"),
        }
    }

    /// `col` down to its 10-minute (`minutes = 10`) or day (`minutes = 1440`) bucket.
    fn bin(self, minutes: u32, col: &str) -> String {
        let (df, ch) = match minutes {
            1440 => ("interval '1 day'", "INTERVAL 1 DAY"),
            _ => ("interval '10 minutes'", "INTERVAL 10 MINUTE"),
        };
        match self {
            Dialect::DataFusion => format!("date_bin({df}, {col})"),
            Dialect::DuckDb => format!("time_bucket({df}, {col})"),
            Dialect::ClickHouse => format!("toStartOfInterval({col}, {ch})"),
        }
    }

    fn count_if(self, cond: &str) -> String {
        match self {
            Dialect::ClickHouse => format!("countIf({cond})"),
            _ => format!("count(*) FILTER (WHERE {cond})"),
        }
    }

    /// The next row's `col` within `device`, by `order`.
    fn lead(self, col: &str, order: &str) -> String {
        match self {
            Dialect::ClickHouse => format!(
                "leadInFrame({col}) OVER (PARTITION BY device ORDER BY {order} ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)"
            ),
            _ => format!("lead({col}) OVER (PARTITION BY device ORDER BY {order})"),
        }
    }

    fn arg_max(self) -> &'static str {
        match self {
            Dialect::ClickHouse => "argMax",
            _ => "arg_max",
        }
    }

    fn any(self) -> &'static str {
        match self {
            Dialect::ClickHouse => "any",
            _ => "any_value",
        }
    }
}

/// One query as one engine runs it.
pub struct Query {
    pub name: &'static str,
    /// Answered from the twins by Twinlake; the peers scan for the last row.
    pub last_point: bool,
    pub sql: String,
}

/// The last-point queries: from the twins for Twinlake, `arg_max` scans for the peers.
fn last_point(d: Dialect) -> Vec<Query> {
    let names = "'truck_1', 'truck_3', 'truck_5', 'truck_7'";
    let am = d.arg_max();
    let any = d.any();
    let q = |name, twins: String, scan: String| Query {
        name,
        last_point: true,
        sql: if d == Dialect::DataFusion { twins } else { scan },
    };
    vec![
        q(
            "single-last-loc",
            format!("SELECT device AS name, json_get_float(reported, 'readings', 'latitude') AS latitude, json_get_float(reported, 'readings', 'longitude') AS longitude FROM twins WHERE device IN ({names}) ORDER BY 1"),
            format!("SELECT device AS name, {am}(latitude, time) AS latitude, {am}(longitude, time) AS longitude FROM readings WHERE device IN ({names}) GROUP BY 1 ORDER BY 1"),
        ),
        q(
            "last-loc",
            "SELECT device AS name, json_get_float(reported, 'readings', 'latitude') AS latitude, json_get_float(reported, 'readings', 'longitude') AS longitude FROM twins WHERE json_get_str(tags, 'fleet') = 'South' ORDER BY 1".into(),
            format!("SELECT r.device AS name, {am}(r.latitude, r.time) AS latitude, {am}(r.longitude, r.time) AS longitude FROM readings r JOIN tags t ON t.device = r.device WHERE t.fleet = 'South' GROUP BY 1 ORDER BY 1"),
        ),
        q(
            "low-fuel",
            "SELECT device AS name, json_get_float(reported, 'diagnostics', 'fuel_state') AS fuel_state FROM twins WHERE json_get_str(tags, 'fleet') = 'South' AND json_get_float(reported, 'diagnostics', 'fuel_state') < 0.1 ORDER BY 1".into(),
            format!("SELECT * FROM (SELECT d.device AS name, {am}(d.fuel_state, d.time) AS fuel_state FROM diagnostics d JOIN tags t ON t.device = d.device WHERE t.fleet = 'South' GROUP BY 1) WHERE fuel_state < 0.1 ORDER BY 1"),
        ),
        q(
            "high-load",
            "SELECT device AS name, json_get_float(reported, 'diagnostics', 'current_load') AS current_load FROM twins WHERE json_get_str(tags, 'fleet') = 'South' AND json_get_float(reported, 'diagnostics', 'current_load') / json_get_float(tags, 'load_capacity') > 0.9 ORDER BY 1".into(),
            format!("SELECT * FROM (SELECT d.device AS name, {am}(d.current_load, d.time) AS current_load, {any}(t.load_capacity) AS cap FROM diagnostics d JOIN tags t ON t.device = d.device WHERE t.fleet = 'South' GROUP BY 1) WHERE current_load / cap > 0.9 ORDER BY 1"),
        ),
    ]
}

/// The scanning queries, each joining the `tags` table; then the last-point ones.
pub fn queries(hours: i64, d: Dialect) -> Vec<Query> {
    let h = |k: i64| T0_US + k * 3_600_000_000;
    let mid = h(hours / 2);
    let w10 = (d.ts(mid), d.ts(mid + 600_000_000));
    let start4 = h((hours - 4).max(0));
    let w4h = (d.ts(start4), d.ts(start4 + 4 * 3_600_000_000));
    let day = (d.ts(h(0)), d.ts(h(hours.min(24))));
    let ten = |col: &str| d.bin(10, col);
    let daily = |col: &str| d.bin(1440, col);
    let sessions = |w: &(String, String), min: i64| {
        format!(
            "SELECT t.device AS name, t.driver FROM tags t JOIN (SELECT device, count(*) AS ten_min FROM (SELECT device, {} AS ten_minutes, avg(velocity) AS v FROM readings WHERE time >= {} AND time < {} GROUP BY 1, 2) x WHERE v > 1 GROUP BY device) s ON s.device = t.device WHERE t.fleet = 'West' AND s.ten_min > {min} ORDER BY 1",
            ten("time"),
            w.0,
            w.1
        )
    };
    let scan = |name, sql: String| Query {
        name,
        last_point: false,
        sql,
    };
    let mut q = vec![
        scan(
            "stationary-trucks",
            format!(
                "SELECT t.device AS name, t.driver, avg(r.velocity) AS mean_velocity FROM readings r JOIN tags t ON t.device = r.device WHERE t.fleet = 'West' AND r.time >= {} AND r.time < {} GROUP BY 1, 2 HAVING avg(r.velocity) < 1 ORDER BY 1",
                w10.0, w10.1
            ),
        ),
        scan("long-driving-sessions", sessions(&w4h, 22)),
        scan("long-daily-sessions", sessions(&day, 60)),
        scan(
            "avg-vs-projected-fuel-consumption",
            "SELECT t.fleet, avg(r.fuel_consumption) AS avg_fuel_consumption, avg(t.nominal_fuel_consumption) AS projected_fuel_consumption FROM readings r JOIN tags t ON t.device = r.device WHERE r.velocity > 1 GROUP BY 1 ORDER BY 1".into(),
        ),
        scan(
            "avg-daily-driving-duration",
            format!(
                "SELECT t.fleet, t.device AS name, t.driver, avg(d.hours_driven) AS avg_daily_hours FROM (SELECT device, {} AS day, count(*) / 6.0 AS hours_driven FROM (SELECT device, {} AS ten_minutes, avg(velocity) AS v FROM readings GROUP BY 1, 2) x WHERE v > 1 GROUP BY 1, 2) d JOIN tags t ON t.device = d.device GROUP BY 1, 2, 3 ORDER BY 1, 2",
                daily("ten_minutes"),
                ten("time")
            ),
        ),
        scan(
            "avg-load",
            "SELECT t.fleet, t.model, t.load_capacity, avg(d.current_load / t.load_capacity) AS avg_load_percentage FROM diagnostics d JOIN tags t ON t.device = d.device GROUP BY 1, 2, 3 ORDER BY 1, 2".into(),
        ),
        scan(
            "daily-activity",
            format!(
                "SELECT t.fleet, t.model, y.day, sum(y.active) / 144.0 AS daily_activity FROM (SELECT device, {} AS day, count(*) AS active FROM (SELECT device, {} AS ten_minutes, avg(status) AS s FROM diagnostics GROUP BY 1, 2) x WHERE s < 1 GROUP BY 1, 2) y JOIN tags t ON t.device = y.device GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                daily("ten_minutes"),
                ten("time")
            ),
        ),
        scan(
            "breakdown-frequency",
            format!(
                "SELECT t.model, count(*) AS breakdowns FROM (SELECT device, broken, {} AS next FROM (SELECT device, {} AS ten_minutes, {} < 0.5 * count(*) AS broken FROM diagnostics GROUP BY 1, 2) x) z JOIN tags t ON t.device = z.device WHERE NOT z.broken AND z.next GROUP BY 1 ORDER BY 1",
                d.lead("broken", "ten_minutes"),
                ten("time"),
                d.count_if("status = 0")
            ),
        ),
    ];
    q.extend(last_point(d));
    q
}
