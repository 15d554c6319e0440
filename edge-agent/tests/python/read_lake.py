"""Reads the agent's lake directory with DuckDB and polars, hive partitions included.

Usage: read_lake.py LAKE_DIR. Prints one JSON object: per engine, the row count of the
`readings` table, distinct (device, seq) pairs, devices, and distinct dates seen through
the hive partition columns.
"""
import json
import sys

import duckdb
import polars as pl

lake = sys.argv[1]
glob = f"{lake}/readings/**/*.parquet"
out = {}

con = duckdb.connect()
rows, distinct, devices, dates, hours = con.execute(
    f"""
    SELECT count(*), count(DISTINCT (device, seq)), count(DISTINCT device),
           count(DISTINCT date), count(DISTINCT hour)
    FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)
    """
).fetchone()
# The partition columns come from the paths; the data columns from the files.
cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()]
assert cols[:3] == ["time", "device", "gateway"], cols
assert "date" in cols and "hour" in cols, cols
out["duckdb"] = {"rows": rows, "distinct": distinct, "devices": devices, "dates": dates, "hours": hours}

df = pl.scan_parquet(glob, hive_partitioning=True).collect()
assert "date" in df.columns and "hour" in df.columns, df.columns
out["polars"] = {
    "rows": df.height,
    "distinct": df.select(["device", "seq"]).unique().height,
    "devices": df["device"].n_unique(),
    "dates": df["date"].n_unique(),
    "hours": df["hour"].n_unique(),
}
print(json.dumps(out))
