"""The agent's side of the packet process: no scapy, no raw socket, only JSON lines.

Two ways to reach the packet process (``[packets]`` in the agent's config):

    socket = "/run/vigil-packets/packets.sock"   # the vigil-packets unit (CAP_NET_RAW only)
    spawn = true                                  # start one per use (root, the lab, `trace`)

Anything that goes wrong raises :class:`agent.errors.PacketsUnavailable` with the reason, which
callers record as "not available": packet evidence is an extra, never a reason to fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError, PacketsUnavailable
from agent.net.rawprobe import protocol as proto
from agent.net.rawprobe.protocol import CaptureRequest, TraceRequest
from agent.net.rawprobe.records import Packet

DEFAULT_SOCKET = "/run/vigil-packets/packets.sock"
HELLO_TIMEOUT_S = 10.0  # the packet process imports scapy on first use
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class PacketSettings:
    socket: str | None = DEFAULT_SOCKET
    spawn: bool = False
    enabled: bool = True

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> PacketSettings:
        unknown = set(section) - {"socket", "spawn", "enabled"}
        if unknown:
            raise ConfigError(f"[packets]: unknown key(s) {', '.join(sorted(unknown))}")
        sock = section.get("socket", DEFAULT_SOCKET)
        spawn = section.get("spawn", False)
        enabled = section.get("enabled", True)
        if sock is not None and (not isinstance(sock, str) or not sock):
            raise ConfigError("[packets] socket must be a path")
        if not isinstance(spawn, bool) or not isinstance(enabled, bool):
            raise ConfigError("[packets] spawn and enabled must be true or false")
        return cls(socket=sock, spawn=spawn, enabled=enabled)


class _Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: Any,
                 proc: asyncio.subprocess.Process | None) -> None:
        self.reader = reader
        self.writer = writer
        self.proc = proc

    async def send(self, obj: Mapping[str, Any]) -> None:
        self.writer.write(json.dumps(obj).encode() + b"\n")
        await self.writer.drain()

    async def reply(self, timeout: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                line = await self.reader.readline()
        except TimeoutError:
            raise PacketsUnavailable("the packet process did not answer in time") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise PacketsUnavailable("the packet process sent an oversized reply") from None
        if not line:
            raise PacketsUnavailable("the packet process closed the connection")
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PacketsUnavailable("the packet process sent something that is not JSON") from None
        if not isinstance(data, dict):
            raise PacketsUnavailable("the packet process sent something that is not an object")
        if data.get("ok") is not True:
            raise PacketsUnavailable(str(data.get("error", "refused"))[:200])
        return data

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                async with asyncio.timeout(3):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()  # our own child, by its handle
                await self.proc.wait()


async def _open(settings: PacketSettings) -> _Channel:
    if not settings.enabled:
        raise PacketsUnavailable("packet evidence is disabled in the configuration")
    if settings.spawn:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.net.rawprobe.server",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, limit=proto.MAX_LINE,
            )
        except OSError as exc:
            raise PacketsUnavailable(f"cannot start the packet process: {exc}") from None
        assert proc.stdout is not None and proc.stdin is not None
        chan = _Channel(proc.stdout, proc.stdin, proc)
    else:
        if not settings.socket or not os.path.exists(settings.socket):
            raise PacketsUnavailable("no packet process (the vigil-packets service is not running)")
        try:
            reader, writer = await asyncio.open_unix_connection(settings.socket,
                                                                limit=proto.MAX_LINE)
        except OSError as exc:
            raise PacketsUnavailable(f"cannot reach the packet process: {exc}") from None
        chan = _Channel(reader, writer, None)
    try:
        await chan.send({"op": "hello"})
        await chan.reply(HELLO_TIMEOUT_S)
    except BaseException:
        await chan.close()
        raise
    return chan


class CaptureSession:
    def __init__(self, chan: _Channel, request: CaptureRequest) -> None:
        self._chan = chan
        self._request = request
        self.packets: tuple[Packet, ...] = ()
        self.dropped = 0

    async def stop(self, endpoints: Sequence[str]) -> tuple[Packet, ...]:
        """End the capture; the packets to or from ``endpoints`` ("ip:port")."""
        await self._chan.send({"op": "stop", "endpoints": list(endpoints)[: proto.MAX_ENDPOINTS]})
        data = await self._chan.reply(STOP_TIMEOUT_S + self._request.seconds)
        raw = data.get("packets")
        if not isinstance(raw, list):
            raise PacketsUnavailable("the packet process sent no packet list")
        try:
            self.packets = tuple(Packet.from_json(p) for p in raw)
        except ValueError as exc:
            raise PacketsUnavailable(f"the packet process sent a malformed packet: {exc}"
                                     ) from None
        dropped = data.get("dropped", 0)
        self.dropped = dropped if isinstance(dropped, int) else 0
        return self.packets


@contextlib.asynccontextmanager
async def capture(settings: PacketSettings, request: CaptureRequest
                  ) -> AsyncIterator[CaptureSession]:
    """Capture while the block runs; call ``stop(endpoints)`` inside it to get the packets."""
    chan = await _open(settings)
    try:
        await chan.send(request.to_json())
        await chan.reply(HELLO_TIMEOUT_S)
        yield CaptureSession(chan, request)
    finally:
        await chan.close()


async def check(settings: PacketSettings) -> None:
    """Raise PacketsUnavailable (with the reason) unless the packet process can capture."""
    chan = await _open(settings)
    await chan.close()


async def trace(settings: PacketSettings, request: TraceRequest) -> dict[str, Any]:
    chan = await _open(settings)
    try:
        await chan.send(request.to_json())
        return await chan.reply(request.budget_s + HELLO_TIMEOUT_S)
    finally:
        await chan.close()
