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

# GWMP datagrams: the spec's PUSH_DATA (V2), PULL_DATA, TX_ACK, and PROTOCOL.TXT's FSK rxpk.
gwmp = here / "corpus" / "gwmp_parse"
gwmp.mkdir(parents=True, exist_ok=True)
eui = bytes.fromhex("aa555a0000000101")
for name, d in {
    "push_v2": bytes.fromhex("02123400") + eui + b'{"rxpk":[{"time":"2024-01-01T12:00:00.000000Z","tmst":3512348611,"chan":2,"rfch":0,"freq":868.5,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-57,"lsnr":9.5,"size":17,"data":"gNobASYAKgACOiNhMGKWFzk="}]}',
    "push_fsk": bytes.fromhex("02000100") + eui + b'{"rxpk":[{"tmst":3512348514,"chan":9,"rfch":1,"freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"size":16,"data":"VEVTVF9QQUNLRVRfMTIzNA=="}],"stat":{"time":"2014-01-12 08:59:28 GMT","rxnb":2}}',
    "pull": bytes.fromhex("02abcd02") + eui,
    "txack": bytes.fromhex("02567805") + eui + b'{"txpk_ack":{"error":"NONE"}}',
}.items():
    (gwmp / name).write_bytes(d)
