"""The control helper web application (aiohttp): what a site looks like from outside.

Routes::

    POST /api/v1/control   one control measurement (docs/control-protocol.md)
    GET  /api/v1/whoami    the caller's own address and network, to the caller only
    POST /api/v1/resolver  which resolver egress asked the DNS "whoami" zone for a nonce
    GET  /healthz          liveness, no authentication

Every route except the public ones goes through the same gate, in this order: request size cap,
authentication (``signed`` mode: probe signature, see ``collector.helper.auth``; ``open`` mode:
none), per-client rate limit, then (for controls) the concurrency gate and an overall deadline.
Refusals are JSON ``{"error": reason, "detail": text}`` (``collector.helper.errors``).

Privacy: the caller's address is used for three things only, all in memory: the ``client``
network lookup, the whoami answer, and (open mode) a keyed hash as rate-limit key.  Resolver
addresses seen by the DNS "whoami" zone (``collector.helper.dns_whoami``) are kept in memory
for two minutes, keyed by the probe's random nonce, and never logged.  It is never
logged: the access logger here prints no remote address (aiohttp's default does), and a log
filter redacts any address that some library would put in a log line.

Extension point: ``create_app(..., extensions=[install])`` calls each ``install(app)`` after the
core routes exist.  An extension adds routes with ``add_route`` (protected by default: auth and
rate limits apply) and reads shared state through ``app[HELPER_STATE]``; the handler can ask
``request[CLIENT]`` who is calling.  The bulk-transfer endpoint for throttling tests plugs in
this way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from typing import Any, Literal

import dns.asyncresolver
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

from agent.errors import ConfigError
from collector.helper import ipdb as ipdb_mod
from collector.helper.auth import (
    DEFAULT_REPLAY_CAPACITY,
    FileProbeKeys,
    ProbeKeys,
    ProbesFileError,
    ReplayCache,
    RequestVerifier,
)
from collector.helper.control import ControlLimits, ControlRunner, parse_control_request
from collector.helper.dns_whoami import NONCE_RE, SightingLog, WhoamiServer, WhoamiZone
from collector.helper.errors import (
    BAD_REQUEST,
    CONTROL_TIMEOUT,
    INTERNAL_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    REQUEST_TOO_LARGE,
    Refusal,
)
from collector.helper.fetch import local_addresses, make_resolver
from collector.helper.geodb import GeoDB, client_info
from collector.helper.geodb import load as load_geo_files
from collector.helper.ipdb import IPDB
from collector.helper.limits import ClientHasher, ConcurrencyGate, RateLimiter, client_label
from collector.helper.policy import PolicyError, TargetPolicy
from collector.helper.proxy import (
    Network,
    forwarded_client,
    normalize_prefix,
    parse_trusted_proxies,
)

log = logging.getLogger("vigil.helper")

Mode = Literal["signed", "open"]
DEFAULT_PER_MINUTE = {"signed": 3000, "open": 120}
UNAUTH_PER_MINUTE = 120  # failed authentications per address and minute (signed mode)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one request, one client and everybody may make the helper do."""

    max_concurrent: int = 128  # controls running at once, all clients together
    per_client_concurrent: int = 64  # above any agent's --concurrency default
    queue_timeout: float = 10.0  # wait for a free slot before answering helper_busy
    per_client_per_minute: int | None = None  # None: 3000 signed (a probe's full list), 120 open
    max_request_bytes: int = 16_384
    max_clock_skew: float = 300.0
    replay_capacity: int = DEFAULT_REPLAY_CAPACITY  # signatures remembered (evicted by age)
    total_timeout: float = 30.0  # one control, end to end
    control: ControlLimits = field(default_factory=ControlLimits)


@dataclass(frozen=True, slots=True)
class HelperConfig:
    mode: Mode = "signed"
    allow_ranges: tuple[str, ...] = ()
    deny_ranges: tuple[str, ...] = ()
    ca_file: Path | None = None
    resolver: tuple[str, int] | None = None  # None: the system resolver
    ipdb_files: tuple[Path, ...] = ()
    geo_files: tuple[Path, ...] = ()  # IP location (country where used) beside the ipdb
    probes_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    whoami_zone: str | None = None  # a DNS zone delegated to this helper (resolver whoami)
    whoami_listen: tuple[tuple[str, int], ...] = ()  # where its DNS server listens
    trusted_proxies: tuple[str, ...] = ()  # reverse proxies whose X-Forwarded-For counts
    path_prefix: str = ""  # every route under this prefix (behind a proxy), e.g. /vigil-helper

    @property
    def per_client_per_minute(self) -> int:
        configured = self.limits.per_client_per_minute
        return DEFAULT_PER_MINUTE[self.mode] if configured is None else configured


@dataclass(frozen=True, slots=True)
class ClientContext:
    """Who is calling, as far as the helper keeps it: a hashed key, and the probe id if signed."""

    key: bytes
    probe_id: str | None


@dataclass(slots=True)
class HelperState:
    config: HelperConfig
    policy: TargetPolicy
    ipdb: IPDB
    geo: GeoDB
    whoami: WhoamiZone | None
    probe_keys: ProbeKeys | None
    verifier: RequestVerifier | None
    limiter: RateLimiter
    gate: ConcurrencyGate
    unauthenticated: RateLimiter  # per address, before a signature is checked (signed mode)
    hasher: ClientHasher
    runner: ControlRunner
    public_paths: set[str]
    refusals: Counter[str] = field(default_factory=Counter)
    controls: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)


HELPER_STATE = web.AppKey("vigil_helper_state", HelperState)
PATH_PREFIX = web.AppKey("vigil_helper_path_prefix", str)
CLIENT = web.RequestKey("vigil_helper_client", ClientContext)

HelperExtension = Callable[[web.Application], None]


# ---- construction -------------------------------------------------------------------------------
def outbound_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """System trust store plus the operator's extra anchors (private deployments, the lab)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --ca-file {ca_file}: {exc}") from None
    return context


def load_ipdb(paths: Sequence[Path]) -> IPDB:
    if not paths:
        return IPDB.empty()
    try:
        db, report = ipdb_mod.load(paths)
    except ipdb_mod.IPDBError as exc:
        raise ConfigError(str(exc)) from None
    for err in report.errors:
        log.warning("IP database: %s", err)
    log.info(
        "IP database: %d IPv4 and %d IPv6 ranges (%d bad lines skipped)",
        report.ranges_v4, report.ranges_v6, report.bad_lines,
    )
    return db


def load_geo(paths: Sequence[Path]) -> GeoDB:
    if not paths:
        return GeoDB.empty()
    try:
        db, report = load_geo_files(paths)
    except ipdb_mod.IPDBError as exc:
        raise ConfigError(str(exc)) from None
    for err in report.errors:
        log.warning("location database: %s", err)
    log.info(
        "location database: %d IPv4 and %d IPv6 ranges (%d bad lines skipped)",
        report.ranges_v4, report.ranges_v6, report.bad_lines,
    )
    return db


def whoami_zone(config: HelperConfig) -> WhoamiZone | None:
    if config.whoami_zone is None:
        if config.whoami_listen:
            raise ConfigError("a DNS listen address needs the whoami zone it serves")
        return None
    try:
        return WhoamiZone.create(config.whoami_zone, SightingLog())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def create_app(
    config: HelperConfig,
    *,
    probe_keys: ProbeKeys | None = None,
    ipdb: IPDB | None = None,
    own_addresses: Iterable[str] | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
    extensions: Sequence[HelperExtension] = (),
) -> web.Application:
    """Build the helper app.  Raises ConfigError for an unusable configuration.

    ``own_addresses`` defaults to this host's interface addresses; ``probe_keys`` to the
    configured probes file (signed mode refuses to start without a key source: it would refuse
    every request).
    """
    install_log_redaction()
    limits = config.limits
    try:
        policy = TargetPolicy(
            allow=config.allow_ranges,
            deny=config.deny_ranges,
            own=local_addresses() if own_addresses is None else own_addresses,
        )
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    if config.mode not in DEFAULT_PER_MINUTE:
        raise ConfigError(f"mode must be signed or open, not {config.mode!r}")
    verifier = None
    if config.mode == "signed":
        if probe_keys is None:
            if config.probes_file is None:
                raise ConfigError(
                    "signed mode needs enrolled probe keys (--probes-file); "
                    "use --mode open only for a public research helper"
                )
            try:
                probe_keys = FileProbeKeys(config.probes_file)
            except ProbesFileError as exc:
                raise ConfigError(str(exc)) from None
        verifier = RequestVerifier(
            probe_keys, max_skew=limits.max_clock_skew,
            replay=ReplayCache(ttl=2 * limits.max_clock_skew + 1, capacity=limits.replay_capacity),
        )
    runner = ControlRunner(
        policy,
        resolver if resolver is not None else make_resolver(config.resolver),
        outbound_ssl_context(config.ca_file),
        limits.control,
    )
    state = HelperState(
        config=config,
        policy=policy,
        ipdb=ipdb if ipdb is not None else load_ipdb(config.ipdb_files),
        geo=load_geo(config.geo_files),
        whoami=whoami_zone(config),
        probe_keys=probe_keys,
        verifier=verifier,
        limiter=RateLimiter(config.per_client_per_minute),
        unauthenticated=RateLimiter(UNAUTH_PER_MINUTE),
        gate=ConcurrencyGate(
            limits.max_concurrent, limits.per_client_concurrent, limits.queue_timeout
        ),
        hasher=ClientHasher(),
        runner=runner,
        public_paths=set(),
    )
    proxies = parse_trusted_proxies(config.trusted_proxies)
    prefix = normalize_prefix(config.path_prefix)
    middlewares: list[Middleware] = [refusal_middleware, client_middleware]
    if proxies:
        middlewares.insert(0, forwarded_middleware(proxies))
    app = web.Application(middlewares=middlewares, client_max_size=limits.max_request_bytes)
    app[HELPER_STATE] = state
    app[PATH_PREFIX] = prefix
    add_route(app, "POST", "/api/v1/control", handle_control)
    add_route(app, "GET", "/api/v1/whoami", handle_whoami)
    add_route(app, "POST", "/api/v1/resolver", handle_resolver)
    add_route(app, "POST", "/api/v1/networks", handle_networks)
    if state.whoami is not None and config.whoami_listen:
        app.cleanup_ctx.append(_whoami_dns(state.whoami, config.whoami_listen))
    add_route(app, "GET", "/healthz", handle_healthz, public=True)
    for install in extensions:
        install(app)
    return app


def _whoami_dns(
    zone: WhoamiZone, listen: Sequence[tuple[str, int]]
) -> Callable[[web.Application], Any]:
    """The whoami zone's DNS server lives as long as the app (cleanup_ctx)."""

    async def serve(app: web.Application) -> Any:
        server = WhoamiServer(zone, listen)
        try:
            await server.start()
        except OSError as exc:
            where = ", ".join(f"{h}:{p}" for h, p in listen)
            raise ConfigError(f"cannot listen for DNS on {where}: {exc.strerror or exc}") from None
        log.info("DNS whoami zone %s on %s", zone.zone_text,
                 ", ".join(f"{h}:{p}" for h, p in server.bound), extra=OPERATOR_CONFIG)
        try:
            yield
        finally:
            await server.close()

    return serve


def add_route(
    app: web.Application,
    method: str,
    path: str,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    public: bool = False,
) -> None:
    """Register a route (under ``[helper] path_prefix``).  Protected unless ``public``:
    authentication and rate limits apply."""
    path = app[PATH_PREFIX] + path
    app.router.add_route(method, path, handler)
    if public:
        app[HELPER_STATE].public_paths.add(path)


def forwarded_middleware(proxies: tuple[Network, ...]) -> Middleware:
    """``request.remote`` becomes the caller behind the trusted proxies (collector.helper.proxy);
    everything after (rate limits, the caller's reported address) sees that."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = forwarded_client(request.remote or "",
                                  request.headers.getall("X-Forwarded-For", []), proxies)
        if client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return middleware


async def reload_data(app: web.Application) -> None:
    """Re-read the IP database and the probes file (SIGHUP); keep the old data on failure."""
    state = app[HELPER_STATE]
    config = state.config
    if config.ipdb_files:
        try:
            db, report = await asyncio.to_thread(ipdb_mod.load, config.ipdb_files)
        except ipdb_mod.IPDBError as exc:
            log.error("IP database reload failed, keeping the loaded one: %s", exc)
        else:
            state.ipdb = db
            log.info("IP database reloaded: %d ranges (%d bad lines)", len(db), report.bad_lines)
    if config.geo_files:
        try:
            geo, geo_report = await asyncio.to_thread(load_geo_files, config.geo_files)
        except ipdb_mod.IPDBError as exc:
            log.error("location database reload failed, keeping the loaded one: %s", exc)
        else:
            state.geo = geo
            log.info("location database reloaded: %d ranges (%d bad lines)", len(geo),
                     geo_report.bad_lines)
    if isinstance(state.probe_keys, FileProbeKeys):
        try:
            count = await asyncio.to_thread(state.probe_keys.reload)
        except ProbesFileError as exc:
            log.error("%s; keeping the previous keys", exc)
        else:
            log.info("probes file reloaded: %d probes", count)


# ---- middlewares --------------------------------------------------------------------------------
def _refusal_response(refusal: Refusal) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(refusal.retry_after + 0.5)))
    return web.json_response(refusal.to_json(), status=refusal.status, headers=headers)


@web.middleware
async def refusal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a JSON refusal, and nothing reaches aiohttp's own error logging
    (which would print the caller's address)."""
    state = request.app[HELPER_STATE]
    try:
        return await handler(request)
    except Refusal as refusal:
        state.refusals[refusal.reason] += 1
        return _refusal_response(refusal)
    except web.HTTPException as exc:
        reason = {
            404: NOT_FOUND,
            405: METHOD_NOT_ALLOWED,
            413: REQUEST_TOO_LARGE,
        }.get(exc.status, BAD_REQUEST)
        state.refusals[reason] += 1
        response = _refusal_response(Refusal(reason, exc.reason))
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        state.refusals[INTERNAL_ERROR] += 1
        log.exception("internal error in %s %s", request.method, request.path)
        return _refusal_response(Refusal(INTERNAL_ERROR, "the helper failed; see its log"))


@web.middleware
async def client_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate (signed mode) and rate-limit every protected route."""
    state = request.app[HELPER_STATE]
    resource = request.match_info.route.resource
    if resource is None or resource.canonical in state.public_paths:
        return await handler(request)
    body = await request.read()  # bounded by client_max_size
    if state.verifier is not None:
        # Limited before verifying: each address may fail authentication UNAUTH_PER_MINUTE
        # times a minute; a request that verifies gets its token back, so probes sharing an
        # address (CGNAT) are limited only by their own per-probe budget below.
        net_key = state.hasher(f"net:{client_label(request.remote or '')}")
        state.unauthenticated.take(net_key)
        probe_id = await state.verifier.verify(
            request.method, request.raw_path, request.headers, body
        )
        state.unauthenticated.refund(net_key)
        key = state.hasher(f"probe:{probe_id}")
    else:
        probe_id = None
        key = state.hasher(f"net:{client_label(request.remote or '')}")
    state.limiter.take(key)
    request[CLIENT] = ClientContext(key, probe_id)
    return await handler(request)


# ---- handlers -----------------------------------------------------------------------------------
def caller_address(request: web.Request) -> str:
    """The caller's address in canonical form (IPv4-mapped IPv6 unwrapped).  In memory only."""
    remote = request.remote or ""
    try:
        addr = ip_address(remote.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def read_json_object(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a ``bad_request`` refusal (never an exception:
    nesting too deep for the parser is a bad request like any other malformed body)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refusal(BAD_REQUEST, "body is not JSON") from None
    except RecursionError:
        raise Refusal(BAD_REQUEST, "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise Refusal(BAD_REQUEST, "body is not a JSON object")
    return body


async def handle_control(request: web.Request) -> web.Response:
    state = request.app[HELPER_STATE]
    body = read_json_object(await request.read())
    control = parse_control_request(body, max_addresses=state.config.limits.control.max_addresses)
    async with state.gate.slot(request[CLIENT].key):
        try:
            async with asyncio.timeout(state.config.limits.total_timeout):
                answer = await state.runner.run(control)
        except TimeoutError:
            raise Refusal(
                CONTROL_TIMEOUT, "the control did not finish within the helper's deadline"
            ) from None
    state.controls += 1
    answer["client"] = client_info(state.ipdb, state.geo, caller_address(request))
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


async def handle_whoami(request: web.Request) -> web.Response:
    """The caller's own public address, for the probe to scrub from its records; no-store."""
    state = request.app[HELPER_STATE]
    address = caller_address(request)
    answer: dict[str, Any] = {"ip": address, **client_info(state.ipdb, state.geo, address)}
    if state.whoami is not None:
        answer["dns_whoami"] = state.whoami.zone_text
    return web.json_response(answer, headers={"Cache-Control": "no-store, private"})


async def handle_resolver(request: web.Request) -> web.Response:
    """What the DNS whoami zone saw for the caller's nonce: the resolver's egress address and
    its network.  ``seen: false`` when no query with that nonce reached this helper."""
    state = request.app[HELPER_STATE]
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refusal(BAD_REQUEST, "body is not JSON") from None
    nonce = body.get("nonce") if isinstance(body, dict) else None
    if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
        raise Refusal(BAD_REQUEST, "nonce must be 16-48 lower-case letters and digits")
    if state.whoami is None:
        raise Refusal(NOT_FOUND, "this helper serves no DNS whoami zone")
    address = state.whoami.sightings.lookup(nonce)
    answer: dict[str, Any] = {"seen": address is not None}
    if address is not None:
        answer.update({"ip": address, **client_info(state.ipdb, state.geo, address)})
    return web.json_response(answer, headers={"Cache-Control": "no-store, private"})


MAX_NETWORK_LOOKUPS = 64


async def handle_networks(request: web.Request) -> web.Response:
    """The network (AS number, name, country) of a few addresses: the hops of a probe's trace.

    Only the helper's own IP database is read: nothing is sent anywhere.  The caller's own
    network comes back as ``client``, so the probe can say whether a hop is inside it."""
    state = request.app[HELPER_STATE]
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refusal(BAD_REQUEST, "body is not JSON") from None
    addresses = body.get("addresses") if isinstance(body, dict) else None
    if (not isinstance(addresses, list) or len(addresses) > MAX_NETWORK_LOOKUPS
            or not all(isinstance(a, str) for a in addresses)):
        raise Refusal(BAD_REQUEST, f"addresses must be a list of at most {MAX_NETWORK_LOOKUPS} "
                                   "IP addresses")
    networks: dict[str, Any] = {}
    for text in addresses:
        try:
            addr = str(ip_address(text))
        except ValueError:
            raise Refusal(BAD_REQUEST, f"not an IP address: {text[:64]!r}") from None
        networks[addr] = client_info(state.ipdb, state.geo, addr)
    answer = {"networks": networks,
              "client": client_info(state.ipdb, state.geo, caller_address(request))}
    return web.json_response(answer, headers={"Cache-Control": "no-store, private"})


async def handle_healthz(request: web.Request) -> web.Response:
    state = request.app[HELPER_STATE]
    return web.json_response(
        {
            "status": "ok",
            "mode": state.config.mode,
            "ipdb_ranges": len(state.ipdb),
            "geo_ranges": len(state.geo),
            "controls": state.controls,
            "in_flight": state.gate.in_flight,
            "refusals": dict(state.refusals),
        },
        headers={"Cache-Control": "no-store"},
    )


# ---- logging without addresses ------------------------------------------------------------------
class PrivacyAccessLogger(AbstractAccessLogger):
    """Access log of method, path, status, size and duration; never the remote address,
    forwarded-for headers or the user agent."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %dB %.1fms",
            request.method,
            request.path[:200],
            response.status,
            response.body_length,
            time * 1000,
        )


_V4_RE = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.])")
_V6_RE = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")


def redact_addresses(text: str) -> str:
    """Replace every IPv4/IPv6 address in ``text`` by ``<addr>`` (other text is untouched)."""

    def sub(match: re.Match[str]) -> str:
        candidate = match.group(0)
        try:
            ip_address(candidate.split("%", 1)[0])
        except ValueError:
            return candidate
        return "<addr>"

    return _V6_RE.sub(sub, _V4_RE.sub(sub, text))


OPERATOR_CONFIG = {"vigil_operator_config": True}


class RedactAddresses(logging.Filter):
    """Rewrites log records so no IP address survives, whatever library emitted them.

    The one exception is a record logged with ``extra=OPERATOR_CONFIG``: the helper's own
    settings (bind address, allowed ranges) at startup, which are the operator's, not a caller's.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "vigil_operator_config", False) and record.exc_info is None:
            return True
        message = record.getMessage()
        redacted = redact_addresses(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_addresses(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_addresses(record.exc_text)
        return True


# The loggers that see the callers of a server.  The command also filters its root handler,
# which covers every other library (asyncio's SSL errors, ...); an app factory should not
# change process-wide logging beyond these.
_REDACTED_LOGGERS = (
    "aiohttp.access",
    "aiohttp.server",
    "aiohttp.web",
    "vigil.helper",
    "vigil.helper.auth",
)


def install_log_redaction(handlers: Iterable[logging.Handler] = ()) -> None:
    """Attach the redacting filter to the loggers that can see a caller (idempotent), and to
    the given handlers (which then cover records propagated from any logger).

    Logger filters apply only to records logged on that very logger, so each helper logger is
    named explicitly; handler filters catch the rest."""
    targets: list[logging.Filterer] = [logging.getLogger(n) for n in _REDACTED_LOGGERS]
    targets.extend(handlers)
    for target in targets:
        if not any(isinstance(f, RedactAddresses) for f in target.filters):
            target.addFilter(RedactAddresses())


def make_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An AppRunner with the privacy-preserving access logger (use this, not a bare runner)."""
    return web.AppRunner(app, access_log_class=PrivacyAccessLogger, **kwargs)
