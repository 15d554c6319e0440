"""Checks the Grafana dashboards the way Grafana would run them, without Grafana.

For every panel and template variable on the Twinlake (PostgreSQL) data source: expand
Grafana's macros and variables (../shared/specs/sql-clients.md §1.4), send the query over the
simple protocol as Grafana's pgx does (psycopg's `pgconn.exec_`), and check the result has
the shape its panel needs: a `time` column first, sorted, with numeric values for time series;
rows for stats and tables. For every panel on the Prometheus data source: every `twinlake_*`
metric its PromQL names must be in a live scrape of the agent or the cloud, and with
`--prometheus`, a real Prometheus that scrapes them must evaluate the query.

Usage: check.py --pg CONNINFO [--metrics URL]... [--prometheus URL] DASHBOARD.json...
Prints one line per check and "N passed, M failed"; exits 1 on a failure.
"""

import argparse
import datetime as dt
import json
import re
import sys
import urllib.parse
import urllib.request

import psycopg
from psycopg import pq

# Panels whose query may rightly return no rows in a healthy fleet.
MAY_BE_EMPTY = {"Twins out of sync (desired ≠ reported)"}
# Variables that may rightly have no values: a device without rows in the time range has
# no tables (the demo's direct-device waits for a client of yours).
MAY_BE_EMPTY_VARS = {"table"}
# Type OIDs Grafana's pgx maps to numbers, and to time.
NUMERIC = {20, 21, 23, 700, 701, 1700}
TIME = {1082, 1114, 1184}
INTERVAL = "5s"
# The most values of a dashboard's first variable checked.
MAX_FIRST = 12

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
FROM = (NOW - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
TO = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds(spec):
    spec = spec.strip().strip("'")
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", spec)
    if not m:
        raise ValueError(f"interval {spec!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": 60 * n, "h": 3600 * n, "d": 86400 * n}[unit]


def expand(sql, variables):
    """Grafana's variable interpolation, then its PostgreSQL macros."""
    sql = sql.replace("$__interval_ms", str(int(seconds(INTERVAL) * 1000)))
    sql = sql.replace("$__interval", INTERVAL)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        sql = sql.replace("${" + name + "}", value).replace("$" + name, value)

    def group(m):
        col, interval = [a.strip() for a in m.group(2).split(",")[:2]]
        secs = seconds(interval)
        secs = int(secs) if secs == int(secs) else secs
        out = f"floor(extract(epoch from {col})/{secs})*{secs}"
        return out + (' AS "time"' if m.group(1) == "Alias" else "")

    sql = re.sub(r"\$__timeGroup(Alias)?\(([^)]*)\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m.group(1).strip()} BETWEEN '{FROM}' AND '{TO}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    sql = re.sub(r"\$__time\(([^)]*)\)", lambda m: f'{m.group(1).strip()} AS "time"', sql)
    if "$" in re.sub(r"'[^']*'", "", sql):
        raise ValueError(f"unexpanded: {sql}")
    return sql


def run(conn, sql):
    """Simple protocol, text results: (column names, type OIDs, rows as text)."""
    res = conn.pgconn.exec_(sql.encode())
    if res.status != pq.ExecStatus.TUPLES_OK:
        raise RuntimeError((res.error_message or b"").decode(errors="replace").strip() or str(res.status))
    names = [res.fname(i).decode() for i in range(res.nfields)]
    oids = [res.ftype(i) for i in range(res.nfields)]
    rows = [[None if res.get_value(r, c) is None else res.get_value(r, c).decode() for c in range(res.nfields)]
            for r in range(res.ntuples)]
    return names, oids, rows


def check_shape(kind, fmt, names, oids, rows, title):
    if not rows and title not in MAY_BE_EMPTY:
        return "no rows"
    if kind == "timeseries" and fmt == "time_series":
        if not names or names[0] != "time":
            return f"the first column is {names[:1]}, not time"
        if oids[0] not in NUMERIC | TIME:
            return f"the time column has type OID {oids[0]}"
        times = [float(r[0]) if oids[0] in NUMERIC else r[0] for r in rows]
        if times != sorted(times):
            return "rows are not sorted by time"
        for n, o in zip(names[1:], oids[1:]):
            if o not in NUMERIC and n != "metric":
                return f"column {n} (OID {o}) is not numeric"
    if kind == "stat":
        if not any(o in NUMERIC for o in oids):
            return "a stat needs a numeric column"
    return None


def metric_names(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            # A labelled family is declared before any series of it exists.
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
            names |= {name + s for s in suffixes}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def promql(base, expr):
    """Evaluates `expr` in a real Prometheus; its error, or None."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        return e.read().decode(errors="replace")
    return None if body.get("status") == "success" else str(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", required=True)
    ap.add_argument("--metrics", action="append", default=[])
    ap.add_argument("--prometheus")
    ap.add_argument("dashboards", nargs="+")
    args = ap.parse_args()
    conn = psycopg.connect(args.pg, autocommit=True)
    scraped = set()
    for url in args.metrics:
        scraped |= metric_names(url)
    passed = failed = 0

    def report(ok, what, why=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"OK   {what}")
        else:
            failed += 1
            print(f"FAIL {what}: {why}")

    for path in args.dashboards:
        with open(path) as f:
            dash = json.load(f)
        queries = [v for v in dash.get("templating", {}).get("list", [])
                   if v.get("type") == "query" and v.get("datasource", {}).get("uid") == "twinlake"]
        # Every value of the first variable (up to MAX_FIRST: the demo's sensors, trucks and
        # LoRaWAN devices each have other tables), the later ones re-evaluated under it.
        firsts = [None]
        if queries:
            try:
                _, _, rows = run(conn, expand(queries[0]["query"], {}))
                firsts = [r[0] for r in rows][:MAX_FIRST] or [None]
            except Exception:  # noqa: BLE001 - reported below
                pass
        for first in firsts:
            check_under(conn, dash, queries, first, scraped, args.prometheus, report)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def check_under(conn, dash, queries, first, scraped, prometheus, report):
    """The variables and panels of `dash` with its first variable set to `first`."""
    name = dash["title"] + (f" [{queries[0]['name']}={first}]" if first is not None else "")
    variables, multi = {}, {}
    for i, v in enumerate(queries):
        try:
            if i == 0 and first is not None:
                values = [first]
            else:
                _, _, rows = run(conn, expand(v["query"], variables))
                values = [r[0] for r in rows]
            if not values and v["name"] not in MAY_BE_EMPTY_VARS:
                raise RuntimeError("no values")
            variables[v["name"]] = values[0] if values else ""
            multi[v["name"]] = values
            report(True, f"{name}: variable ${v['name']} ({len(values)} values)")
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
            report(False, f"{name}: variable ${v['name']}", e)
    for p in dash.get("panels", []):
        repeat = p.get("repeat")
        for value in multi.get(repeat, [None]) if repeat else [None]:
            vars_here = dict(variables)
            if repeat:
                vars_here[repeat] = value
            title = p["title"].replace(f"${repeat}", value) if repeat else p["title"]
            for t in p.get("targets", []):
                what = f"{name}: {title} [{t.get('refId')}]"
                uid = t.get("datasource", p.get("datasource", {})).get("uid")
                if uid == "prometheus":
                    used = set(re.findall(r"twinlake_[a-z0-9_]+", t.get("expr", "")))
                    base = {re.sub(r"_(bucket|sum|count)$", "", u) for u in used}
                    missing = sorted(u for u in used if u not in scraped and not any(
                        s.startswith(b) for b in base for s in scraped if u.startswith(b)))
                    report(bool(scraped) and not missing, what, f"not in the scrape: {missing}")
                    if prometheus:
                        err = promql(prometheus, t.get("expr", ""))
                        report(err is None, f"{what} evaluated by Prometheus", err)
                    continue
                try:
                    sql = expand(t["rawSql"], vars_here)
                    names, oids, rows = run(conn, sql)
                    why = check_shape(p["type"], t.get("format", "time_series"), names, oids, rows, p["title"])
                    report(why is None, f"{what} ({len(rows)} rows)", f"{why}\n     {sql}")
                except Exception as e:  # noqa: BLE001
                    report(False, what, e)


if __name__ == "__main__":
    main()
