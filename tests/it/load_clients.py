#!/usr/bin/env python3
"""Hostile clients for tests/it/load.rs, in a process of their own (standard library only).

    load_clients.py caps  DEVICE_PORT HTTP_PORT SETTINGS_JSON
    load_clients.py stall DEVICE_PORT

`caps` opens, at once: idle sockets that never log in, from many loopback addresses; more
sockets than the listener's caps allow (in all, and from one address); pre-auth connections
that send KEEP_ALIVE frames without end; slowloris clients that send HTTP headers a byte at a
time, and more of them than the HTTP server's caps. It prints one JSON line of counts.

`stall` logs a device in with a small receive buffer, then sends KEEP_ALIVE frames (each
answered) and reads nothing, until its writes block: the agent is then stuck writing to it.
It prints {"stalled": true} and holds the socket until stdin closes.

Every wait is bounded by deadlines derived from the timeouts in SETTINGS_JSON.
"""
import asyncio
import json
import resource
import socket
import sys
import time

KEEP_ALIVE = b"\x02\x00"
# device-protocol.md §2.6: AUTH alice/sensor1/s3cr3t! and the server's OK.
AUTH = (bytes.fromhex("011e1005267219") + b"\x4a\x05alice" + b"\x4a\x07sensor1" + b"\x4a\x07s3cr3t!")
AUTH_OK = bytes.fromhex("01021001")


def addr(i: int) -> str:
    """The i-th loopback source address: 127.1.x.y."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def connect(src: str, port: int, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((src, 0))
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def closed_within(s: socket.socket, secs: float) -> bool:
    """Whether the server closes `s` (EOF or reset) within `secs`, whatever it sends first."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + secs
    try:
        while (left := end - time.monotonic()) > 0:
            if not await asyncio.wait_for(loop.sock_recv(s, 4096), left):
                return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        pass
    return False


async def open_many(srcs, port: int) -> list:
    """Connects from each address in `srcs`, 500 at a time; failed connects are left out."""
    out = []
    srcs = list(srcs)
    for i in range(0, len(srcs), 500):
        got = await asyncio.gather(*(connect(a, port) for a in srcs[i:i + 500]), return_exceptions=True)
        out += [s for s in got if isinstance(s, socket.socket)]
    return out


async def flood(s: socket.socket, until: float) -> None:
    """KEEP_ALIVE frames every 50 ms, before any login, until the server closes `s`."""
    loop = asyncio.get_running_loop()
    try:
        while time.monotonic() < until:
            await loop.sock_sendall(s, KEEP_ALIVE)
            await asyncio.sleep(0.05)
    except (ConnectionError, OSError):
        pass


async def slowloris(s: socket.socket, until: float) -> None:
    """An HTTP request whose headers come a byte every 200 ms, without end."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(s, b"GET /metrics HTTP/1.1\r\nHost: agent\r\n")
        while time.monotonic() < until:
            await loop.sock_sendall(s, b"X")
            await asyncio.sleep(0.2)
    except (ConnectionError, OSError):
        pass


async def count_closed(socks, secs: float) -> int:
    return sum(await asyncio.gather(*(closed_within(s, secs) for s in socks)))


async def caps(port: int, http_port: int, cfg: dict) -> dict:
    idle_n, per_ip = cfg["idle"], cfg["per_ip"]
    login, header = cfg["login_timeout_s"], cfg["header_timeout_s"]
    margin = cfg["margin_s"]
    t0 = time.monotonic()
    until = t0 + login + 2 * margin
    idle = await open_many((addr(i // per_ip) for i in range(idle_n)), port)
    opened_in = time.monotonic() - t0
    ips = idle_n // per_ip
    # Pre-auth floods: these fill the listener to its cap with the idle ones.
    floods = await open_many((addr(ips + 100 + i // per_ip) for i in range(cfg["flood"])), port)
    tasks = [asyncio.create_task(flood(s, until)) for s in floods]
    # Over the caps: one more from an address that has its share, then more past the total.
    one_more = await open_many([addr(0)], port)
    past_total = await open_many((addr(ips + 400 + i) for i in range(cfg["extra"])), port)
    refused_per_ip = await count_closed(one_more, margin)
    refused_total = await count_closed(past_total, margin)
    for s in one_more + past_total:
        s.close()
    # Slowloris on the HTTP server, up to its cap and past it.
    slow = await open_many((addr(ips + 200) for _ in range(cfg["slow"])), http_port)
    slow_extra = await open_many((addr(ips + 201) for _ in range(cfg["slow_extra"])), http_port)
    tasks += [asyncio.create_task(slowloris(s, until)) for s in slow + slow_extra]
    slow_closed, slow_extra_closed, floods_closed, idle_closed = await asyncio.gather(
        count_closed(slow, header + margin),
        count_closed(slow_extra, margin),
        count_closed(floods, login + margin),
        count_closed(idle, login + margin),
    )
    for t in tasks:
        t.cancel()
    for s in idle + floods + slow + slow_extra:
        s.close()
    return {
        "idle_open": len(idle), "opened_in_s": round(opened_in, 2), "idle_closed": idle_closed,
        "refused_per_ip": refused_per_ip, "refused_total": refused_total,
        "floods": len(floods), "floods_closed": floods_closed,
        "slow": len(slow), "slow_closed": slow_closed,
        "slow_extra": len(slow_extra), "slow_extra_closed": slow_extra_closed,
    }


async def stall(port: int) -> None:
    loop = asyncio.get_running_loop()
    s = await connect("127.0.0.1", port, rcvbuf=4096)
    await loop.sock_sendall(s, AUTH)
    got = b""
    while len(got) < len(AUTH_OK):
        chunk = await asyncio.wait_for(loop.sock_recv(s, len(AUTH_OK) - len(got)), 10)
        if not chunk:
            raise SystemExit("closed before the login was answered")
        got += chunk
    assert got == AUTH_OK, got.hex()
    # Each KEEP_ALIVE is answered; read none of the answers.
    chunk = KEEP_ALIVE * 32768
    while True:
        try:
            await asyncio.wait_for(loop.sock_sendall(s, chunk), 2)
        except asyncio.TimeoutError:
            break
    print(json.dumps({"stalled": True}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    s.close()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "caps":
        print(json.dumps(asyncio.run(caps(port, int(sys.argv[3]), json.loads(sys.argv[4])))), flush=True)
    else:
        asyncio.run(stall(port))


if __name__ == "__main__":
    main()
