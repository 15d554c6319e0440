"""Connection boilerplate for the notebooks: where Twinlake is, the token, TLS.

Settings come from the environment, defaulting to `cargo run --release -- demo`:

    TWINLAKE_DIR     the demo's directory (its CA `cloud.pem`, its lake)   /tmp/twinlake-demo
    TWINLAKE_API     the REST API                                         https://127.0.0.1:8443
    TWINLAKE_FLIGHT  Flight SQL                                           grpc+tls://127.0.0.1:50051
    TWINLAKE_TOKEN   an API token                                         twinlake-demo-token
    TWINLAKE_USER    the token's user                                     demo
    TWINLAKE_CA      the server's CA certificate (PEM)                    $TWINLAKE_DIR/cloud.pem
    TWINLAKE_LAKE    the Parquet lake, a directory                        $TWINLAKE_DIR/lake
"""

import json
import os
import ssl
import urllib.request
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl

DIR = Path(os.environ.get("TWINLAKE_DIR", "/tmp/twinlake-demo"))
API = os.environ.get("TWINLAKE_API", "https://127.0.0.1:8443")
FLIGHT = os.environ.get("TWINLAKE_FLIGHT", "grpc+tls://127.0.0.1:50051")
TOKEN = os.environ.get("TWINLAKE_TOKEN", "twinlake-demo-token")
USER = os.environ.get("TWINLAKE_USER", "demo")
CA = Path(os.environ.get("TWINLAKE_CA", DIR / "cloud.pem"))
LAKE = Path(os.environ.get("TWINLAKE_LAKE", DIR / "lake"))


def connect():
    """An ADBC Flight SQL connection (DB-API), verifying the server against `CA`."""
    kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {TOKEN}"}
    if FLIGHT.startswith("grpc+tls") and CA.exists():
        kwargs["adbc.flight.sql.client_option.tls_root_certs"] = CA.read_text()
    return flight_sql.connect(FLIGHT, db_kwargs=kwargs, autocommit=True)


_conn = None


def sql(query: str) -> pl.DataFrame:
    """Runs `query` over Flight SQL; a polars DataFrame."""
    global _conn
    if _conn is None:
        _conn = connect()
    return pl.read_database(query, _conn)


def api(method: str, path: str, body=None):
    """Calls the REST API with the token; the JSON answer (None for an empty one)."""
    ctx = ssl.create_default_context(cafile=str(CA)) if CA.exists() else ssl.create_default_context()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None
