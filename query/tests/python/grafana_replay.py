"""Grafana's PostgreSQL data source, replayed without Grafana (../shared/specs/sql-clients.md §3).

Grafana's backend (pgx) sends every query over the simple protocol as text; this script does
the same through libpq's PQexec (psycopg's low-level `pgconn.exec_`), against Twinlake and
against a real PostgreSQL 15 loaded with the same rows, and checks:

* Grafana's own rules on each result (a `time` column for time series, type OIDs it maps,
  PG-layout timestamptz text that pgx parses, long format sorted by time);
* that Twinlake answers like PostgreSQL: same column names, same OID classes, same rows
  (numbers within 1e-9, times as instants).

Usage: grafana_replay.py OURS_CONNINFO PG_CONNINFO [OURS_TLS_CONNINFO]
"""

import datetime as dt
import re
import sys
import time

import psycopg
from psycopg import pq

# The standard fixture's `climate` table (query/tests/slt/README.md), as PostgreSQL rows.
ROWS = [
    ("2024-01-01 00:00:00+00", "d1", "gw-a", 20.0, 40.0),
    ("2024-01-01 00:01:00+00", "d1", "gw-a", 21.0, 41.0),
    ("2024-01-01 00:03:00+00", "d1", "gw-a", 23.0, 45.0),
    ("2024-01-01 00:00:00+00", "d2", "gw-a", 30.0, 50.0),
    ("2024-01-01 00:02:00+00", "d2", "gw-a", 32.0, 52.0),
    ("2024-01-01 00:00:00+00", "d3", "gw-b", 10.0, 60.0),
    ("2024-01-01 00:04:00+00", "d3", "gw-b", 14.0, 64.0),
]

FROM, TO = "'2024-01-01T00:00:00Z'", "'2024-01-01T06:00:00Z'"

# Grafana's macro expansions (pkg/tsdb/grafana-postgresql-datasource/macros.go).
def time_filter(c):
    return f"{c} BETWEEN {FROM} AND {TO}"

def time_group_alias(c, secs):
    return f'floor(extract(epoch from {c})/{secs})*{secs} AS "time"'

# The search-path subquery both builder queries embed, verbatim.
SEARCH_PATH = """              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
"""

TABLE_LIST = f"""SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
{SEARCH_PATH}              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema',
                                 'pg_catalog',
                                 '_timescaledb_cache',
                                 '_timescaledb_catalog',
                                 '_timescaledb_internal',
                                 '_timescaledb_config',
                                 'timescaledb_information',
                                 'timescaledb_experimental')
        ORDER BY CASE WHEN
              quote_ident(table_schema) IN (
{SEARCH_PATH}              ) THEN 0 ELSE 1 END, 1"""

COLUMN_LIST = f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.climate'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.climate'))[1]
              AND quote_ident(table_name) = (parse_ident('public.climate'))[2]
            ELSE quote_ident(table_name) = 'public.climate'
              AND
              quote_ident(table_schema) IN (
{SEARCH_PATH}              )
          END"""

# (name, sql, kind, compare): kind says which Grafana rules apply; compare says how far the
# two servers must agree: "rows" (everything), "shape" (names and OID classes), "status".
CASES = [
    ("Save & test ping (pgx Ping)", "-- ping", "empty", "status"),
    ("lib/pq ping", ";", "empty", "status"),
    ("version probe", "SELECT current_setting('server_version_num')::int/100 as version", "table", "shape"),
    ("TimescaleDB probe", "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'", "table", "rows"),
    ("builder: table list", TABLE_LIST, "table", "tables"),
    ("builder: column list", COLUMN_LIST, "table", "columns"),
    (
        "ts: $__timeGroupAlias + $__timeFilter",
        f"SELECT {time_group_alias('time', 60)}, avg(temp) AS temp FROM climate WHERE {time_filter('time')} GROUP BY 1 ORDER BY 1",
        "ts",
        "rows",
    ),
    (
        "ts: $__time raw rows",
        f'SELECT time AS "time", device, temp FROM climate WHERE {time_filter("time")} ORDER BY 1, 2',
        "ts",
        "rows",
    ),
    (
        "ts: long format (metric column)",
        f"SELECT {time_group_alias('time', 120)}, device AS metric, max(hum) AS hum FROM climate WHERE {time_filter('time')} GROUP BY 1, 2 ORDER BY 1, 2",
        "ts_long",
        "rows",
    ),
    (
        "ts: $__timeEpoch",
        f'SELECT extract(epoch from time) as "time", temp FROM climate WHERE device = \'d1\' AND {time_filter("time")} ORDER BY 1',
        "ts",
        "rows",
    ),
    (
        "ts: $__timeFrom/$__timeTo in a table query",
        f"SELECT device, count(*) AS n, min(temp) AS lo FROM climate WHERE time >= {FROM} AND time < {TO} GROUP BY device ORDER BY device",
        "table",
        "rows",
    ),
    (
        "multi-statement (SET; SELECT)",
        f"SET TIME ZONE 'UTC'; SELECT time AS \"time\", temp FROM climate WHERE device = 'd2' AND {time_filter('time')} ORDER BY 1",
        "ts",
        "rows",
    ),
]

NEGATIVE = (
    "UNSORTED long format (negative test)",
    f"SELECT {time_group_alias('time', 60)}, device AS metric, avg(temp) AS temp FROM climate WHERE {time_filter('time')} GROUP BY 1, 2 ORDER BY 2, 1",
    "ts_long",
)

OID_CLASS = {
    16: "bool",
    20: "int", 21: "int", 23: "int",
    700: "float", 701: "float", 1700: "float",
    1114: "time", 1184: "time", 1082: "time",
    25: "text", 1043: "text", 19: "text", 1042: "text", 18: "text", 705: "text",
}
# pgx's timestamptz text layout: space separator, numeric offset.
PGX_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})?([+-]\d\d(:\d\d(:\d\d)?)?|Z)?$")


def run(conn, sql):
    res = conn.pgconn.exec_(sql.encode())
    status = pq.ExecStatus(res.status).name
    if status in ("FATAL_ERROR", "BAD_RESPONSE"):
        return status, [], [], (res.error_message or b"").decode(errors="replace")
    cols = [(res.fname(i).decode(), res.ftype(i)) for i in range(res.nfields)]
    rows = []
    for r in range(res.ntuples):
        row = []
        for c in range(res.nfields):
            v = res.get_value(r, c)
            row.append(None if v is None else v.decode())
        rows.append(row)
    return status, cols, rows, ""


def parse_time(s):
    s = s.replace("Z", "+00")
    if re.search(r"[+-]\d\d$", s):
        s += ":00"
    return dt.datetime.fromisoformat(s)


def grafana_rules(kind, cols, rows):
    """What Grafana's backend would reject (pgx/sql_engine.go)."""
    problems = []
    if kind == "empty":
        return problems
    for name, oid in cols:
        if oid not in OID_CLASS:
            problems.append(f"column {name}: OID {oid} is not one Grafana maps")
    idx = {n: i for i, (n, _) in enumerate(cols)}
    for i, (name, oid) in enumerate(cols):
        for row in rows:
            v = row[i]
            if v is None:
                continue
            cls = OID_CLASS.get(oid)
            if cls == "time" and oid in (1114, 1184) and not PGX_TIME.match(v):
                problems.append(f"{name}: {v!r} is not in pgx's timestamp layout")
                break
            if cls in ("int", "float"):
                try:
                    float(v)
                except ValueError:
                    problems.append(f"{name}: {v!r} does not parse as a number")
                    break
    if kind in ("ts", "ts_long"):
        if "time" not in idx:
            problems.append("time column is missing")
            return problems
    if kind == "ts_long":
        t = idx["time"]
        oid = cols[t][1]
        keys = [float(r[t]) if OID_CLASS.get(oid) != "time" else parse_time(r[t]).timestamp() for r in rows]
        if keys != sorted(keys):
            problems.append("long format but not sorted by time (Grafana: ErrorSeriesUnsorted)")
    return problems


def norm(oid, v):
    if v is None:
        return None
    cls = OID_CLASS.get(oid)
    if cls in ("int", "float"):
        return round(float(v), 9)
    if cls == "time":
        return parse_time(v).timestamp()
    if cls == "bool":
        return v in ("t", "true")
    return v


def compare(compare_how, ours, pg):
    (s1, c1, r1, e1), (s2, c2, r2, e2) = ours, pg
    if s1 != s2:
        return [f"status {s1} ({e1.strip()}) vs PostgreSQL {s2} ({e2.strip()})"]
    if compare_how == "status":
        return []
    if compare_how == "tables":
        # PostgreSQL lists public tables unqualified; the names must resolve to the same set.
        names = lambda rows: {r[0].removeprefix("public.") for r in rows}
        missing = names(r2) - names(r1)
        return [f"tables PostgreSQL lists that we do not: {sorted(missing)}"] if missing else []
    if compare_how == "columns":
        ours_cols = {r[0]: r[1] for r in r1}
        want = {r[0]: r[1] for r in r2}
        diff = [f"{k}: {ours_cols.get(k)!r} vs {v!r}" for k, v in want.items() if ours_cols.get(k) != v]
        return [f"column types differ: {diff}"] if diff else []
    problems = []
    if [n for n, _ in c1] != [n for n, _ in c2]:
        problems.append(f"columns {[n for n, _ in c1]} vs {[n for n, _ in c2]}")
    k1 = [OID_CLASS.get(o, o) for _, o in c1]
    k2 = [OID_CLASS.get(o, o) for _, o in c2]
    if k1 != k2:
        problems.append(f"OID classes {k1} vs {k2}")
    if compare_how == "rows" and not problems:
        n1 = [[norm(o, v) for (_, o), v in zip(c1, r)] for r in r1]
        n2 = [[norm(o, v) for (_, o), v in zip(c2, r)] for r in r2]
        if n1 != n2:
            problems.append(f"rows differ:\n  ours {r1}\n  pg   {r2}")
    return problems


def load_pg(conn):
    conn.execute("DROP TABLE IF EXISTS climate")
    conn.execute(
        "CREATE TABLE climate (time timestamptz NOT NULL, device text NOT NULL, gateway text NOT NULL, temp double precision, hum double precision)"
    )
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO climate VALUES (%s, %s, %s, %s, %s)", ROWS)
    # The columns Grafana's builder expects, in our table's order.


def main():
    ours_info, pg_info = sys.argv[1], sys.argv[2]
    tls_info = sys.argv[3] if len(sys.argv) > 3 else None
    failures = 0
    total = 0
    pg = psycopg.connect(pg_info, autocommit=True)
    load_pg(pg)
    ours = psycopg.connect(ours_info, autocommit=True)
    for name, sql, kind, how in CASES:
        a, b = run(ours, sql), run(pg, sql)
        problems = grafana_rules(kind, a[1], a[2]) if a[0] != "FATAL_ERROR" else [a[3].strip()]
        problems += compare(how, a, b)
        detail = f"rows={len(a[2])} cols={a[1]}" if a[1] else a[0]
        total += 1
        print(("OK  " if not problems else "FAIL") + f" {name}: {detail}")
        for p in problems:
            print(f"       {p}")
        failures += bool(problems)
    # The checker must catch what Grafana rejects.
    name, sql, kind = NEGATIVE
    for label, conn in (("ours", ours), ("PostgreSQL", pg)):
        res = run(conn, sql)
        flagged = grafana_rules(kind, res[1], res[2])
        ok = any("not sorted" in p for p in flagged)
        total += 1
        print(("OK  " if ok else "FAIL") + f" {name} on {label}: flagged={flagged}")
        failures += not ok
    # pgxpool pings a connection idle for more than a second before reusing it.
    time.sleep(1.2)
    st = run(ours, "-- ping")[0]
    total += 1
    print(("OK  " if st == "EMPTY_QUERY" else "FAIL") + f" ping after 1.2 s idle: {st}")
    failures += st != "EMPTY_QUERY"
    if tls_info:
        with psycopg.connect(tls_info, autocommit=True) as c:
            ssl = c.pgconn.ssl_in_use
            st, cols, rows, err = run(c, "SELECT 1 AS one")
            ok = ssl and st == "TUPLES_OK" and rows == [["1"]]
            total += 1
            print(("OK  " if ok else "FAIL") + f" sslmode=require: ssl={ssl} {st} {rows} {err}")
            failures += not ok
    print(f"grafana replay: {total - failures} ok, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
