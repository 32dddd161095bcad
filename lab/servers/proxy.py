"""An ISP's transparent proxy: whatever name it is handed, it relays to that site's origin.

A censor that injects DNS answers pointing at such a proxy may still deliver the genuine
content (interference without denial).  Port 80: the request's ``Host`` picks the origin and
the bytes are relayed both ways.  Port 443: the ClientHello's SNI picks the origin and the TLS
session passes through untouched (the origin's certificate reaches the client).  Unknown
names are closed.  Bounded: a header read limit, an idle timeout, a connection cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from lab.packets import http_host, tls_sni
from lab.servers.common import Lifetime, load_config, mark_ready

MAX_HEAD_BYTES = 16384
IDLE_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 256


class Proxy:
    def __init__(self, origins: dict[str, str]) -> None:
        self.origins = {h.lower(): a for h, a in origins.items()}
        self.active = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     port: int) -> None:
        if self.active >= MAX_CONNECTIONS:
            writer.close()
            return
        self.active += 1
        try:
            head = await self._first_bytes(reader, port)
            name = None if head is None else (tls_sni(head) if port == 443 else http_host(head))
            origin = None if name is None else self.origins.get(name.lower())
            if head is None or origin is None:
                return
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(origin, port), IDLE_TIMEOUT_S)
            try:
                up_writer.write(head)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, TimeoutError, ConnectionError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def _first_bytes(self, reader: asyncio.StreamReader, port: int) -> bytes | None:
        """Enough of the stream to read the name: the ClientHello or the request head."""
        data = b""
        while len(data) < MAX_HEAD_BYTES:
            chunk = await asyncio.wait_for(reader.read(4096), IDLE_TIMEOUT_S)
            if not chunk:
                return None
            data += chunk
            if port == 443 and tls_sni(data) is not None:
                return data
            if port != 443 and b"\r\n\r\n" in data:
                return data
        return None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await asyncio.wait_for(src.read(65536), IDLE_TIMEOUT_S)
            if not chunk:
                break
            dst.write(chunk)
            await dst.drain()
    except (OSError, TimeoutError, ConnectionError):
        pass
    finally:
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()


async def main(cfg: dict[str, Any]) -> None:
    life = Lifetime(cfg)
    proxy = Proxy(dict(cfg.get("origins", {})))
    servers = []
    for port in (80, 443):
        def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, p: int = port) -> Any:
            return proxy.handle(r, w, p)

        servers.append(await asyncio.start_server(handler, cfg["listen"], port, backlog=256))
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        for s in servers:
            s.close()


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
