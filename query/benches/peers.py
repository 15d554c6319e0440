"""The SQL benchmark's peers: DuckDB and chdb (ClickHouse) over the same Parquet files.

Started once with the lake's directory; then reads one JSON request per line on stdin,
{"engine": "duckdb" | "chdb", "sql": ...}, runs it and answers one JSON line
{"ms": elapsed, "rows": n} (or {"error": ...}). The benchmark drives the runs, so the
engines' runs interleave with Twinlake's. The first line out says which engines are here.
Both read the tables through views over a glob, so a compacted lake is read as it is then.
"""

import json
import sys
import time

lake = sys.argv[1]
TABLES = ("readings", "diagnostics", "tags")
engines = {}

try:
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{lake}/{t}/**/*.parquet')")

    def run_duckdb(sql):
        return con.execute(sql).arrow().num_rows

    engines["duckdb"] = run_duckdb
except ImportError:
    pass

try:
    from chdb import session

    sess = session.Session()
    sess.query("CREATE DATABASE IF NOT EXISTS bench ENGINE = Atomic")
    for t in TABLES:
        sess.query(f"CREATE VIEW bench.{t} AS SELECT * FROM file('{lake}/{t}/**/*.parquet', Parquet)")
    sess.query("USE bench")

    def run_chdb(sql):
        return sess.query(sql + " SETTINGS session_timezone = 'UTC'", "ArrowTable").num_rows

    engines["chdb"] = run_chdb
except ImportError:
    pass

print(json.dumps({"engines": sorted(engines)}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        t = time.perf_counter()
        rows = engines[req["engine"]](req["sql"])
        out = {"ms": (time.perf_counter() - t) * 1000, "rows": rows}
    except Exception as e:  # the benchmark reports it and goes on
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
