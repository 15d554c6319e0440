"""Idle devices for the memory benchmark, in their own process.

Usage: idle_clients.py [tls://]HOST:PORT FRAMES_HEX_FILE [ANSWER_HEX]. Opens one connection per line
of the file, sends that frame (a Thinger AUTH, or an MQTT CONNECT), reads the answer (by
default Thinger's AUTH OK), then holds every connection open (answering nothing) until stdin
closes.
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


async def one(frame, conns):
    r, w = await asyncio.open_connection(host, int(port), ssl=ssl_ctx)
    w.write(frame)
    await w.drain()
    got = await r.readexactly(len(answer))
    assert got == answer, (got, answer)
    conns.append((r, w))


async def main():
    conns = []
    for i in range(0, len(frames), 200):
        await asyncio.gather(*(one(f, conns) for f in frames[i : i + 200]))
    print("ready", len(conns), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
