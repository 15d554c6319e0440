"""Runs notebooks top to bottom with nbclient (as CI does), each in a fresh kernel, with
`notebooks/` on the path for `twinlake_client`. Executed copies and their plots go to --out.
Prints one line per notebook and "N passed, M failed"; exits 1 on a failure.

Usage: run.py --out DIR NOTEBOOK.ipynb...
"""

import argparse
import os
import re
import sys
import traceback
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("notebooks", nargs="+")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("MPLBACKEND", "Agg")
    passed = failed = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(out)}})
        try:
            client.execute()
            passed += 1
            print(f"OK   {Path(path).name}")
        except Exception as e:  # noqa: BLE001 - reported, the others still run
            failed += 1
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip() or traceback.format_exc()
            last = text.splitlines()[-3:]
            print(f"FAIL {Path(path).name}: " + " | ".join(last))
        nbformat.write(nb, out / Path(path).name)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
