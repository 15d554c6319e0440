#!/usr/bin/env python3
"""Writes the fuzz seed corpora from the spec's golden bytes (device-protocol.md §1.3, §2.6)."""
import pathlib

here = pathlib.Path(__file__).parent


def hexs(s: str) -> bytes:
    out = b""
    for i, part in enumerate(s.split('"')):
        out += part.encode() if i % 2 else bytes(int(t, 16) for t in part.split() if t != "|")
    return out


frames = here / "corpus" / "frame_decode"
frames.mkdir(parents=True, exist_ok=True)
for line in (here.parent / "sdk-firmware/tests/data/exchange-2.6.txt").read_text().splitlines():
    if line.startswith("#") or not line.strip():
        continue
    head, data = line.split(":", 1)
    (frames / head.split()[1]).write_bytes(hexs(data))

values = here / "corpus" / "pson_decode"
values.mkdir(parents=True, exist_ok=True)
for i, v in enumerate([
    "6A 0E | 04 74 65 6D 70 | 1D 00 00 AC 41 | 02 6F 6E | 28",
    "72 16 | 38 | 40 | 08 AC 02 | 10 AC 02 | 4A 02 68 69 | 21 C9 76 BE 9F 0C 24 FE 40 | 30",
    "10 FF FF FF FF 07", "4A 05 68 65 6C 6C 6F", "5A 03 01 02 03", "1D 00 00 00 3F",
    "21 00 00 04 20 5F A0 02 42", "6A 07 01 61 6A 03 01 62 40", "00", "78", "50", "60",
]):
    (values / f"spec{i}").write_bytes(hexs(v))
