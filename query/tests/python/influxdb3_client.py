"""InfluxDB 3's own Python client (influxdb3-python from PyPI, `influxdb_client_3`), unchanged,
against Twinlake's Flight endpoint: it sends a JSON ticket with a Bearer token. Reads the
standard fixture's `climate` table into polars and pyarrow; a wrong token and an InfluxQL
query must fail with the server's reason. Prints "influxdb3-python: ok".

Usage: influxdb3_client.py HOST:PORT TOKEN
"""

import sys

from influxdb_client_3 import InfluxDBClient3

addr, token = sys.argv[1], sys.argv[2]
client = InfluxDBClient3(host=f"http://{addr}", token=token, database="twinlake")

df = client.query(
    "SELECT device, count(*) AS n, max(temp) AS hottest FROM climate GROUP BY device ORDER BY device",
    language="sql",
    mode="polars",
)
assert df.columns == ["device", "n", "hottest"], df.columns
assert df["device"].to_list() == ["d1", "d2", "d3"], df
assert df["n"].to_list() == [3, 2, 2], df
assert df["hottest"].to_list() == [23.0, 32.0, 14.0], df

table = client.query("SELECT time, temp FROM climate WHERE device = 'd2' ORDER BY time")
assert table.num_rows == 2 and str(table.schema.field("time").type).startswith("timestamp"), table.schema

for bad, why in [
    (InfluxDBClient3(host=f"http://{addr}", token="wrong", database="twinlake"), "not valid"),
    (client, "InfluxQL"),
]:
    try:
        bad.query("SELECT * FROM climate", language="influxql" if why == "InfluxQL" else "sql")
    except Exception as e:  # the client raises pyarrow's Flight errors
        assert why in str(e), e
    else:
        raise AssertionError(f"expected a refusal ({why})")

print("influxdb3-python: ok")
