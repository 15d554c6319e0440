"""The SQL benchmark's peers: DuckDB over the same Parquet files (and the same tags).

Reads a spec {lake, tags, runs, queries: [{name, sql}]} and prints
{"duckdb": {name: {"ms": median, "rows": n}}} (one warm-up run first, as for Twinlake).
"""

import json
import statistics
import sys
import time

import duckdb

spec = json.load(open(sys.argv[1]))
lake, runs = spec["lake"], spec["runs"]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
for table in ("readings", "diagnostics"):
    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{lake}/{table}/**/*.parquet')")
con.execute(f"CREATE TABLE tags AS SELECT * FROM read_csv('{spec['tags']}', header = true)")
out = {"duckdb": {}}
for q in spec["queries"]:
    rows = con.execute(q["sql"]).arrow().num_rows
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        con.execute(q["sql"]).arrow()
        times.append((time.perf_counter() - t) * 1000)
    out["duckdb"][q["name"]] = {"ms": statistics.median(times), "rows": rows}
print(json.dumps(out))
