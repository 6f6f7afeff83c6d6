"""Many running servers without many processes, for the culler benchmark.

``SimulatedSpawner`` "starts" a server by pointing the hub (and so the proxy route) at one
shared process, ``python -m tests.bench.simulated PORT DELAY TOKEN``, which answers every
server's ``api/kqi/activity`` route (a recent browser access, one idle kernel: a server to
keep) after DELAY seconds, the time a real server's route takes, measured in the same run.
The hub, the proxy and their 1,000 routes are real; only the JupyterLab processes are not.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone

from jupyterhub.spawner import Spawner
from traitlets import Unicode


class SimulatedSpawner(Spawner):
    """A server that is the shared simulated process (no process of its own)."""

    sim_url = Unicode("", help="Where the shared simulated server listens.").tag(config=True)

    async def start(self) -> str:
        self._running = True
        return self.sim_url

    async def poll(self) -> int | None:
        return None if getattr(self, "_running", False) else 0

    async def stop(self, now: bool = False) -> None:
        self._running = False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


async def serve(port: int, delay: float, token: str) -> None:
    started = _now()
    counts = {"activity": 0, "other": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: the proxy reuses its connections
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                fields = (line.partition(":") for line in lines[1:])
                headers = {k.lower(): v.strip() for k, _, v in fields}
                if int(headers.get("content-length") or 0):
                    await reader.readexactly(int(headers["content-length"]))
                if path.endswith("/api/kqi/activity"):
                    counts["activity"] += 1
                    if headers.get("authorization") != f"token {token}":
                        status, body = "403 Forbidden", b'{"message": "bad token"}'
                    else:
                        await asyncio.sleep(delay)
                        now = _now()
                        kernel = {"id": "k1", "execution_state": "idle", "last_activity": now}
                        doc = {
                            "started": started,
                            "last_browser_access": now,
                            "kernels": [kernel],
                            "watched_processes": [],
                        }
                        status, body = "200 OK", json.dumps(doc).encode()
                else:  # the hub's "is it up" check and anything else
                    counts["other"] += 1
                    status, body = "200 OK", b"{}"
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if close:  # said so in the answer: the proxy must not reuse this connection
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"simulated servers on {port}, delay {delay * 1000:.1f} ms", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))
