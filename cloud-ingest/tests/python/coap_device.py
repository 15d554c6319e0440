"""A CoAP device written with aiocoap (PyPI), as firmware would behave: it reports a reading,
observes its command resource, and answers the command it is notified of with the value it
now has. Prints "observing" once the observation is in place and "replied <method> <value>"
at the end.

Usage: coap_device.py coap://host:port/api/v1/<user:device:credential>
"""

import asyncio
import json
import sys

import aiocoap
from aiocoap import Code, Context, Message

JSON = 50


async def main(base: str) -> None:
    ctx = await Context.create_client_context()
    r = await ctx.request(
        Message(code=Code.POST, uri=f"{base}/telemetry", payload=b'{"temp":20.5}', content_format=JSON)
    ).response
    assert r.code == aiocoap.CHANGED, r.code

    observed = ctx.request(Message(code=Code.GET, uri=f"{base}/rpc", observe=0))
    first = await observed.response
    assert first.code == aiocoap.CONTENT, first.code
    print("observing", flush=True)
    cmd = json.loads(first.payload) if first.payload else None
    if cmd is None:
        async for note in observed.observation:
            if note.payload:
                cmd = json.loads(note.payload)
                break
    # The device applies the command and reports the value it now has.
    reply = await ctx.request(
        Message(
            code=Code.POST,
            uri=f"{base}/rpc/{cmd['id']}",
            payload=json.dumps(cmd["params"]).encode(),
            content_format=JSON,
        )
    ).response
    assert reply.code == aiocoap.CHANGED, reply.code
    print("replied", cmd["method"], json.dumps(cmd["params"]), flush=True)
    observed.observation.cancel()
    await ctx.shutdown()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
