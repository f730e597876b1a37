"""Drives rota's MCU simulator with the PyPI `smpclient`, an independent MCUmgr client.

Usage: mcu_smpclient.py serial|udp ADDRESS IMAGE
  serial: ADDRESS is the pty path; udp: ADDRESS is host:port.
Runs echo, MCUmgr params, image state read, upload of IMAGE, test, reset and confirm,
and prints one JSON object with what it saw. Exits non-zero on any protocol failure.
"""

import asyncio
import functools
import hashlib
import json
import sys

from smpclient import SMPClient
from smpclient.generics import error, success
from smpclient.requests.image_management import ImageStatesRead, ImageStatesWrite
from smpclient.requests.os_management import EchoWrite, MCUMgrParametersRead, ResetWrite


def fail(msg):
    print(json.dumps({"error": msg}))
    sys.exit(1)


def transport_for(kind, address):
    if kind == "serial":
        from smpclient.transport.serial import SMPSerialTransport

        return SMPSerialTransport(), address
    from smpclient.transport.udp import SMPUDPTransport

    host, port = address.rsplit(":", 1)
    t = SMPUDPTransport(mtu=1024)
    # SMPClient.connect() passes no port; bind the simulator's.
    t.connect = functools.partial(t.connect, port=int(port))
    return t, host


async def states(client):
    r = await client.request(ImageStatesRead())
    if not success(r):
        fail(f"image state read failed: {r}")
    return [
        {
            "slot": s.slot,
            "version": s.version,
            "hash": (s.hash or b"").hex(),
            "active": bool(s.active),
            "confirmed": bool(s.confirmed),
            "pending": bool(s.pending),
        }
        for s in r.images
    ]


async def main(kind, address, image_path):
    image = open(image_path, "rb").read()
    transport, addr = transport_for(kind, address)
    out = {"kind": kind}
    async with SMPClient(transport, addr, timeout_s=5.0) as client:
        r = await client.request(EchoWrite(d="hello from smpclient"))
        if not success(r):
            fail(f"echo failed: {r}")
        out["echo"] = r.r

        r = await client.request(MCUMgrParametersRead())
        if not success(r):
            fail(f"params failed: {r}")
        out["buf_size"] = r.buf_size

        out["before"] = await states(client)

        offsets = []
        async for off in client.upload(image):
            offsets.append(off)
        out["upload_offsets"] = len(offsets)
        out["upload_last_offset"] = offsets[-1]

        after = await states(client)
        out["after_upload"] = after
        new = [s for s in after if s["slot"] == 1]
        if not new:
            fail("no image in slot 1 after upload")
        new_hash = bytes.fromhex(new[0]["hash"])

        r = await client.request(ImageStatesWrite(hash=new_hash, confirm=False))
        if not success(r):
            fail(f"test write failed: {r}")
        out["pending_after_test"] = any(s.pending for s in r.images if s.slot == 1)

        r = await client.request(ResetWrite())
        if not success(r):
            fail(f"reset failed: {r}")

    # Reconnect once the device is back, read state, confirm.
    for _ in range(50):
        await asyncio.sleep(0.1)
        transport, addr = transport_for(kind, address)
        try:
            async with SMPClient(transport, addr, timeout_s=0.5) as client:
                r = await client.request(EchoWrite(d="back?"))
                if not success(r):
                    continue
                out["after_reset"] = await states(client)
                r = await client.request(ImageStatesWrite(confirm=True))
                if not success(r):
                    fail(f"confirm failed: {r}")
                out["after_confirm"] = await states(client)
                # An error answer must parse as an SMP error too.
                r = await client.request(ImageStatesWrite(hash=b"\x00" * 32, confirm=False))
                out["bad_hash_is_error"] = bool(error(r))
                break
        except Exception as e:  # noqa: BLE001 - device still rebooting
            out["retry"] = repr(e)
            continue
    out["image_sha256"] = hashlib.sha256(image).hexdigest()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
