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

# MQTT payloads: a format byte, then messages `[topic len][topic][payload len LE16][payload]`.
def msgs(fmt: int, *pairs) -> bytes:
    out = bytes([fmt])
    for topic, payload in pairs:
        out += bytes([len(topic)]) + topic.encode() + len(payload).to_bytes(2, "little") + payload
    return out


def pb_varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def pb(field: int, wire: int, body) -> bytes:
    key = pb_varint(field << 3 | wire)
    return key + (pb_varint(body) if wire == 0 else pb_varint(len(body)) + body if wire == 2 else body)


import struct
metric = pb(1, 2, b"temp") + pb(2, 0, 1) + pb(4, 0, 10) + pb(13, 1, struct.pack("<d", 21.5))
by_alias = pb(2, 0, 1) + pb(4, 0, 10) + pb(13, 1, struct.pack("<d", 22.0))
mqtt = here / "corpus" / "mqtt_payload"
mqtt.mkdir(parents=True, exist_ok=True)
chirp = b'{"deviceInfo":{"devEui":"0004a30b001c0530","deviceName":"s"},"time":"2024-01-01T12:00:00Z","fCnt":7,"fPort":1,"data":"AWcBEA==","object":{"t":27.2},"rxInfo":[{"rssi":-57,"snr":9.5}]}'
for name, d in {
    "json": msgs(0, ("t/dev-1", b'{"temp":21.5,"on":true,"pos":{"lat":1.5,"lon":2}}'), ("t/dev-1", b"[1,2.5,\"x\"]")),
    "pson": msgs(1, ("t", hexs('6A 0E | 04 74 65 6D 70 | 1D 00 00 AC 41 | 02 6F 6E | 28'))),
    "plain": msgs(2, ("t", b"21.5"), ("t", b"true"), ("t", b"hello")),
    "sparkplug": msgs(3, ("spBv1.0/g/NBIRTH/n", pb(1, 0, 1700000000000) + pb(2, 2, metric) + pb(3, 0, 0)),
                      ("spBv1.0/g/NDATA/n", pb(1, 0, 1700000001000) + pb(2, 2, by_alias) + pb(3, 0, 1))),
    "thingsboard": msgs(4, ("v1/devices/me/telemetry", b'{"ts":1700000000000,"values":{"t":1}}'), ("v1/devices/me/telemetry", b'[{"a":1},{"b":"x"}]')),
    "tb_gateway": msgs(5, ("v1/gateway/telemetry", b'{"Device A":[{"ts":1700000000000,"values":{"t":1.5}}],"B":[{"ts":1,"values":{}}]}')),
    "chirpstack": msgs(6, ("application/1/device/0004a30b001c0530/event/up", chirp)),
}.items():
    (mqtt / name).write_bytes(d)

# LoRaWAN frames: `[op][…]` records, see fuzz_targets/lorawan_uplink.rs.
lora = here / "corpus" / "lorawan_uplink"
lora.mkdir(parents=True, exist_ok=True)
v2 = bytes.fromhex("80da1b0126002a00023a23613062961739")
for name, d in {
    "raw": bytes([0, len(v2)]) + v2,
    "data": bytes([1, 0, 3, 5, 0, 1, 4]) + bytes.fromhex("03670110") + bytes([1, 1, 2, 5, 0, 1, 0]),
    "replay": bytes([1, 0, 2, 9, 0, 1, 0, 3, 20, 1, 0, 2, 9, 0, 1, 0]),
    "join": bytes([2, 0x34, 0x12, 3, 20, 2, 0x34, 0x12, 2, 0x35, 0x12]),
}.items():
    (lora / name).write_bytes(d)

# Device sessions: op 0 then a frame's bytes, 1 accepts, 3 starts a stream, 6 acks.
session = here / "corpus" / "device_session"
session.mkdir(parents=True, exist_ok=True)
lines = {l.split()[1]: hexs(l.split(":", 1)[1]) for l in (here.parent / "sdk-firmware/tests/data/exchange-2.6.txt").read_text().splitlines()
         if l.startswith("D>S")}
auth, keep = lines["auth"], lines["keep_alive"]
replies = [v for k, v in lines.items() if k not in ("auth", "keep_alive")]
(session / "exchange").write_bytes(b"\x00" + auth + b"\x01\x00" + keep + b"\x03\x01" + b"".join(b"\x00" + r for r in replies))
(session / "refused").write_bytes(b"\x00" + auth + b"\x02\x00" + keep + b"\x00" + auth)

# Stream WebSocket commands and /v1/sql bodies.
cmds = here / "corpus" / "stream_command"
cmds.mkdir(parents=True, exist_ok=True)
for i, c in enumerate([b'{"resource":"temp","interval":1,"enabled":true}', b'{"resource":"temp","enabled":false}',
                       b'{"resource":"x","interval":0.05}', b'{"interval":1e300}', b"5", b"500ms", b"1h 30m"]):
    (cmds / f"c{i}").write_bytes(c)
sql = here / "corpus" / "sql_body"
sql.mkdir(parents=True, exist_ok=True)
for i, s in enumerate([
    b"\x00SELECT device, avg(temp) FROM telemetry WHERE time > now() - interval '1 hour' GROUP BY device",
    b'\x01{"sql":"SELECT date_bin_gapfill(interval \'1 minute\', time) AS t, locf(avg(temp)) FROM telemetry GROUP BY 1","format":"csv"}',
    b"\x02", b'\x01{"format":"arrow"}', b"\x00WITH a AS (SELECT 1) SELECT * FROM a JOIN a b ON true ORDER BY 1 LIMIT 5",
]):
    (sql / f"s{i}").write_bytes(s)

# Binary link batches (edge-agent/src/link/wire.rs): magic, JSON header, blocks.
batch = here / "corpus" / "link_batch"
batch.mkdir(parents=True, exist_ok=True)
def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")
def row(t: int, device: bytes, payload: bytes) -> bytes:
    return t.to_bytes(8, "little", signed=True) + len(device).to_bytes(2, "little") + device + u32(len(payload)) + payload
for i, blocks in enumerate([[row(1, b"d", b"\x12")], [row(1, b"d1", b"\x12") + row(2, b"d2", b"xyz"), b""], []]):
    items = ",".join('{"kind":"pson_rows","table":"t","segment":4,"stream":false,"owner":"u","rows":""}' for _ in blocks)
    header = ('{"type":"batch","seq":%d,"items":[%s]}' % (i + 1, items)).encode()
    body = b"".join(u32(len(b)) + b for b in blocks)
    (batch / f"b{i}").write_bytes(b"TLB\x01" + u32(len(header)) + header + u32(len(blocks)) + body)

# Buffer rows: `[len][flags][PSON]` payloads, each shape more than once so templates are
# built and matched (flags: 1 a stream's payload, 2 the second device).
rows = here / "corpus" / "buffer_rows"
rows.mkdir(parents=True, exist_ok=True)
shapes = [
    "6A 0E | 04 74 65 6D 70 | 1D 00 00 AC 41 | 02 6F 6E | 28",
    "6A 0E | 04 74 65 6D 70 | 1D 00 00 B0 41 | 02 6F 6E | 30",
    "6A 07 01 61 6A 03 01 62 40",
    "6A 07 01 61 6A 03 01 62 38",
    "6A 0D | 03 6F 75 74 | 21 00 00 04 20 5F A0 02 42",
    "6A 0A | 01 6E | 08 AC 02 | 01 73 | 4A 01 | 68",
]
for i in range(len(shapes)):
    payloads = [hexs(shapes[i]), hexs(shapes[i ^ 1]), hexs(shapes[i])]
    (rows / f"r{i}").write_bytes(b"".join(bytes([len(p), i & 3]) + p for p in payloads))
