"""A notebook's path to Twinlake: ADBC Flight SQL, its DB-API and polars.

Usage: flight_adbc.py grpc://HOST:PORT TOKEN
"""

import sys

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pyarrow as pa

uri, token = sys.argv[1], sys.argv[2]
kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"}

with flight_sql.connect(uri, db_kwargs=kwargs, autocommit=True) as conn:
    with conn.cursor() as cur:
        # DB-API: ADBC prepares every statement first.
        cur.execute("SELECT device, count(*) AS n, avg(temp) AS temp FROM climate GROUP BY device ORDER BY device")
        table = cur.fetch_arrow_table()
        assert table.column("device").to_pylist() == ["d1", "d2", "d3"], table
        assert table.column("n").to_pylist() == [3, 2, 2], table
        # Times keep their zone end to end.
        cur.execute("SELECT time, temp FROM climate WHERE device = 'd3' ORDER BY time")
        t = cur.fetch_arrow_table()
        assert t.schema.field("time").type == pa.timestamp("us", tz="UTC"), t.schema
        assert t.column("temp").to_pylist() == [10.0, 14.0]
        # Errors are errors, not empty results.
        try:
            cur.execute("SELECT * FROM nowhere")
            raise AssertionError("a missing table did not fail")
        except flight_sql.Error as e:
            assert "nowhere" in str(e), e
    # polars reads through the same connection.
    df = pl.read_database("SELECT device, max(hum) AS hum FROM climate GROUP BY device ORDER BY device", conn)
    assert df.shape == (3, 2), df
    assert df["hum"].to_list() == [45.0, 52.0, 64.0], df
    twins = pl.read_database("SELECT device, in_sync FROM twins ORDER BY device", conn)
    assert twins["in_sync"].to_list() == [False, True, False], twins

# A wrong token is refused.
try:
    with flight_sql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer nope"}, autocommit=True) as c:
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    raise AssertionError("a wrong token was accepted")
except flight_sql.Error as e:
    assert "token" in str(e).lower() or "unauthenticated" in str(e).lower(), e

print("adbc flight sql: ok")
