"""Idle devices for the memory benchmark, in their own process.

Usage: idle_clients.py [tls://]HOST:PORT FRAMES_HEX_FILE [ANSWER_HEX [REPLY_HEX]]. Opens one
connection per line of the file, sends that frame (a Thinger AUTH, or an MQTT CONNECT), reads
the answer (by default Thinger's AUTH OK). With REPLY_HEX (a Thinger REQUEST_OK frame for
stream 1), it then reads the agent's describe request and answers it with that frame for the
request's stream id, as a device does. Then it holds every connection open (answering
nothing more) until stdin closes.
"""
import asyncio
import resource
import sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

# tls://HOST:PORT: TLS without checking the certificate (the bench's is self-signed).
target = sys.argv[1]
ssl_ctx = None
if target.startswith("tls://"):
    import ssl

    target = target[len("tls://"):]
    ssl_ctx = ssl.create_default_context()
    ssl_ctx.check_hostname = False
    ssl_ctx.verify_mode = ssl.CERT_NONE
host, port = target.rsplit(":", 1)
frames = [bytes.fromhex(l.strip()) for l in open(sys.argv[2]) if l.strip()]
answer = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else b"\x01\x02\x10\x01"
reply = bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else None


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def take_varint(next_byte):
    """Decodes a varint from successive bytes of `next_byte()`."""
    n, shift = 0, 0
    while True:
        b = next_byte()
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n


async def read_varint(r):
    head = bytearray()
    while not head or head[-1] & 0x80:
        head += await r.readexactly(1)
    return take_varint(iter(head).__next__)


async def answer_describe(r, w):
    """Reads the describe request (a MESSAGE whose body starts with field 1, the stream id)
    and sends `reply` with that stream id."""
    kind = await read_varint(r)
    body = await r.readexactly(await read_varint(r))
    assert kind == 1 and body[0] == 0x08, (kind, body)
    sid = take_varint(iter(body[1:]).__next__)
    # The template is for stream 1: type, length, 0x08 0x01, the rest of the body.
    assert reply[0] == 1 and reply[1] < 0x80 and reply[2:4] == b"\x08\x01", reply
    rest = reply[4:]
    new_body = b"\x08" + varint(sid) + rest
    w.write(b"\x01" + varint(len(new_body)) + new_body)
    await w.drain()


async def one(frame, conns):
    r, w = await asyncio.open_connection(host, int(port), ssl=ssl_ctx)
    w.write(frame)
    await w.drain()
    got = await r.readexactly(len(answer))
    assert got == answer, (got, answer)
    if reply is not None:
        await answer_describe(r, w)
    conns.append((r, w))


async def main():
    conns = []
    for i in range(0, len(frames), 200):
        await asyncio.gather(*(one(f, conns) for f in frames[i : i + 200]))
    print("ready", len(conns), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
