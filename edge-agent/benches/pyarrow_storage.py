"""The storage peer: pyarrow writes the same TSBS rows the agent wrote.

Usage: pyarrow_storage.py DIR (the agent's hourly files). Prints tab-separated lines
"writer, layout, bytes" for: one file sorted by series then time (the reference setup of
tsbs-iot.md), and the agent's own hourly layout, both zstd-3 as pyarrow defaults it.
"""
import glob
import io
import sys

import pyarrow as pa
import pyarrow.parquet as pq

files = sorted(glob.glob(f"{sys.argv[1]}/**/*.parquet", recursive=True))


def plain(t):
    # pyarrow cannot sort by a dictionary column; it dictionary-encodes strings on write anyway.
    for name in ("device", "gateway"):
        t = t.set_column(t.schema.get_field_index(name), name, t[name].cast(pa.string()))
    return t


tables = [plain(pq.read_table(f)) for f in files]


def size(table):
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3)
    return buf.tell()


whole = pa.concat_tables(tables).sort_by([("device", "ascending"), ("time", "ascending")])
print(f"pyarrow {pa.__version__} zstd-3 (reference setup)\tone file, series-sorted\t{size(whole)}")
hourly = sum(size(t) for t in tables)
print(f"pyarrow {pa.__version__} zstd-3\t{len(tables)} hourly files\t{hourly}")
