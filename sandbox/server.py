"""The WeCom sandbox over HTTP: the /cgi-bin/ and WeChat Pay APIs, the /sandbox/ control API, how to run it."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from siyu.sandbox import pay_api
from siyu.sandbox.control_api import control_routes
from siyu.sandbox.faults import FaultBook, FaultSpec, RateLimiter, api_name
from siyu.sandbox.platform import (
    DATA_FORMAT_ERROR,
    INVALID_PARAMETER,
    OUT_OF_LIMIT,
    SYSTEM_BUSY,
    WeComError,
)
from siyu.sandbox.seed import load_seed
from siyu.sandbox.state import SandboxState
from siyu.sandbox.store import SQLiteStateStore, StateStore
from siyu.sandbox.wecom_api import NO_TOKEN_APIS, WECOM_API, Handler, text_field

logger = logging.getLogger("siyu.sandbox")

Params = dict[str, Any]

# Never kept in the request log: they open the corp (token, secret), post as the robot (key)
# or are made with the merchant's key (a payout's signatures).
SECRET_PARAMS = {"access_token", "corpsecret", "key", *pay_api.SECRET_FIELDS}
DROP_SIGNAL = "siyu.sandbox.drop"
FAULT_ERRMSG = {SYSTEM_BUSY: "system busy", OUT_OF_LIMIT: "api freq out of limit"}
XML = "text/xml; charset=utf-8"


# ---- what the sandbox observed -------------------------------------------------------


class CallLog:
    """Every /cgi-bin/ call as the client saw it, for tests to assert on (never secrets)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.entries: deque[Params] = deque(maxlen=capacity)
        self.seq = 0
        self.calls: Counter[str] = Counter()
        self.errors: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.tag_changes = 0

    def record(
        self, api: str, errcode: int | str | None, params: Params, fault: str | None
    ) -> None:
        self.seq += 1
        self.entries.append(
            {
                "seq": self.seq,
                "api": api,
                "errcode": errcode,
                "fault": fault,
                "at": time.time(),
                "params": params,
            }
        )
        self.calls[api] += 1
        if errcode:
            self.errors[api][str(errcode)] += 1
        elif fault:
            self.errors[api][fault] += 1

    def since(self, api: str | None, seq: int) -> list[Params]:
        return [e for e in self.entries if e["seq"] > seq and (api is None or e["api"] == api)]

    def stats(self) -> Params:
        return {
            "calls": dict(self.calls),
            "errors": {api: dict(codes) for api, codes in self.errors.items()},
            "tag_changes": self.tag_changes,
        }


class Sandbox:
    """Everything one sandbox serves: the corp's state, armed faults, rate limits, call log."""

    def __init__(self, state_path: Path | None = None) -> None:
        store = SQLiteStateStore(Path(state_path)) if state_path else StateStore()
        self.state = SandboxState(store)
        self.faults = FaultBook()
        self._new_limiters()
        self.log = CallLog()

    def _new_limiters(self) -> None:
        config = self.state.config
        self.limiter = RateLimiter(config.rate_limits)
        # WeChat Pay limits payouts a minute on its own, apart from WeCom's per-API limits.
        self.pay_limiter = RateLimiter({"*": config.redpack_per_minute})

    def configure_limits(self) -> None:
        config = self.state.config
        self.limiter.configure(config.rate_limits)
        self.pay_limiter.configure({"*": config.redpack_per_minute})

    def reset(self) -> None:
        self.state.reset()
        self.faults.clear()
        self._new_limiters()
        self.log = CallLog()

    def close(self) -> None:
        self.state.close()

    def answer(self, api: str, handler: Handler, params: Params) -> Params:
        """Run one WeCom call against the state: the reply body, errcode 0 or the error."""
        with self.state.lock:
            try:
                if api not in NO_TOKEN_APIS:
                    self.state.tokens.check(text_field(params, "access_token"))
                reply = handler(self.state, params) or {}
            except WeComError as error:
                return {"errcode": error.errcode, "errmsg": error.errmsg}
            except (TypeError, ValueError, AttributeError):
                return {"errcode": INVALID_PARAMETER, "errmsg": "invalid parameter"}
        return {"errcode": 0, "errmsg": "ok", **reply}


FaultBody = Callable[[FaultSpec], tuple[Response, int | str | None]]


def _fault_response(
    request: Request, spec: FaultSpec, body: FaultBody
) -> tuple[Response, int | str | None, str]:
    """The failing reply a fault asks for: a dropped socket, an HTTP error or an error body."""
    if spec.drop_connection:
        request.scope[DROP_SIGNAL]["drop"] = True
        return Response(), None, "drop_connection"
    if spec.http_status:
        text = f"sandbox fault: HTTP {spec.http_status}"
        return PlainTextResponse(text, status_code=spec.http_status), None, "http_status"
    response, code = body(spec)
    return response, code, "errcode"


def _wecom_fault(spec: FaultSpec) -> tuple[Response, int | str | None]:
    code = spec.errcode or SYSTEM_BUSY
    body = {"errcode": code, "errmsg": FAULT_ERRMSG.get(code, f"sandbox fault {code}")}
    return JSONResponse(body), code


async def _serve_call(
    sandbox: Sandbox,
    request: Request,
    api: str,
    params: Params,
    run: Callable[[], tuple[Response, int | str | None]],
    fault_body: FaultBody,
) -> Response:
    """One call through the faults: delay, fail before or after the effect, or answer."""
    plan = sandbox.faults.plan(api, params)
    if plan.latency_ms:
        await asyncio.sleep(plan.latency_ms / 1000)
    if plan.outcome is not None and plan.fails_before_effect:
        response, code, fault = _fault_response(request, plan.outcome, fault_body)
        _finish(sandbox, request, api, code, params, fault)
        return response
    response, code = run()
    if plan.outcome is not None and plan.fails_after_effect:
        response, code, fault = _fault_response(request, plan.outcome, fault_body)
        _finish(sandbox, request, api, code, params, f"{fault} after effect")
        return response
    _finish(sandbox, request, api, code, params, None)
    return response


class ConnectionDropper:
    """Outermost ASGI layer: closes the socket without any response when a fault says so.

    uvicorn hands each request a `receive` bound to its request cycle, which holds the
    transport; closing it before a byte is written is what a client sees as a reset.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Params, receive: Callable[..., Any], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        signal = {"drop": False}
        scope[DROP_SIGNAL] = signal

        async def send_unless_dropped(message: Params) -> None:
            if not signal["drop"]:
                await send(message)
            elif message["type"] == "http.response.start":
                _close_connection(receive)

        await self.app(scope, receive, send_unless_dropped)


def _close_connection(receive: Callable[..., Any]) -> None:
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Not under uvicorn (an in-process test client): fail the call loudly instead.
        raise ConnectionAbortedError("sandbox fault: connection dropped")
    cycle.disconnected = True  # type: ignore[union-attr]
    transport.close()


# ---- the app ---------------------------------------------------------------------------


def create_app(state_path: Path | None = None) -> FastAPI:
    """The sandbox app; with `state_path` its corp survives restarts in that SQLite file."""
    sandbox = Sandbox(state_path)
    app = FastAPI(
        title="siyu WeCom sandbox", docs_url="/sandbox/docs", openapi_url="/sandbox/openapi.json"
    )
    app.state.sandbox = sandbox
    app.add_middleware(ConnectionDropper)
    app.include_router(control_routes(sandbox))

    @app.api_route("/cgi-bin/{path:path}", methods=["GET", "POST"])
    async def wecom(path: str, request: Request) -> Response:
        api = api_name(path)
        handler = WECOM_API.get(api)
        if handler is None:
            return JSONResponse(
                {"errcode": SYSTEM_BUSY, "errmsg": f"the sandbox does not serve {api}"},
                status_code=404,
            )
        params: Params = dict(request.query_params)
        raw = await request.body()
        body: Any = {}
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        if not isinstance(body, dict):
            reply: Params = {"errcode": DATA_FORMAT_ERROR, "errmsg": "data format error"}
            _finish(sandbox, request, api, reply["errcode"], params, None)
            return JSONResponse(reply)
        params.update(body)

        def run() -> tuple[Response, int | str | None]:
            if sandbox.limiter.admit(api):
                reply = sandbox.answer(api, handler, params)
            else:
                reply = {"errcode": OUT_OF_LIMIT, "errmsg": "api freq out of limit"}
            if api == "externalcontact/mark_tag" and reply["errcode"] == 0:
                sandbox.log.tag_changes += 1
            return JSONResponse(reply), reply["errcode"]

        return await _serve_call(sandbox, request, api, params, run, _wecom_fault)

    @app.post("/mmpaymkttransfers/{name}")
    async def wechat_pay(name: str, request: Request) -> Response:
        api = f"mmpaymkttransfers/{name}"
        if api not in pay_api.PAY_API:
            body = pay_api.to_xml({"return_code": "FAIL", "return_msg": f"no such API {name}"})
            return Response(body, status_code=404, media_type=XML)
        fields = pay_api.parse_xml(await request.body())
        if fields is None:
            _finish(sandbox, request, api, "XML_ERROR", {}, None)
            return Response(pay_api.to_xml(pay_api.bad_xml_reply()), media_type=XML)

        def run() -> tuple[Response, int | str | None]:
            if api == pay_api.SEND_REDPACK and not sandbox.pay_limiter.admit(api):
                reply = pay_api.fault_reply(fields, "FREQ_LIMIT")
            else:
                reply = pay_api.answer(sandbox.state, api, fields)
            code = reply["err_code"] if reply.get("result_code") == "FAIL" else 0
            return Response(pay_api.to_xml(reply), media_type=XML), code

        def faulted(spec: FaultSpec) -> tuple[Response, int | str | None]:
            reply = pay_api.fault_reply(fields, spec.err_code)
            return Response(pay_api.to_xml(reply), media_type=XML), reply["err_code"]

        return await _serve_call(sandbox, request, api, fields, run, faulted)

    return app


def _finish(
    sandbox: Sandbox,
    request: Request,
    api: str,
    errcode: int | str | None,
    params: Params,
    fault: str | None,
) -> None:
    logged = {k: v for k, v in params.items() if k not in SECRET_PARAMS}
    sandbox.log.record(api, errcode, logged, fault)
    # One line, no bodies and no query string: they carry mobiles, tokens and secrets.
    logger.debug("%s %s errcode=%s fault=%s", request.method, api, errcode, fault)


# ---- running it ------------------------------------------------------------------------


class SandboxServer:
    """The sandbox on a real socket in a background thread, for tests and embedded runs.

    >>> with SandboxServer() as wecom:
    ...     base = wecom.api_base  # http://127.0.0.1:<port>/cgi-bin/
    """

    def __init__(
        self, state_path: Path | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.state_path = state_path
        self.host = host
        self.port = port
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + "/cgi-bin/"

    @property
    def pay_base(self) -> str:
        """Where WeChat Pay's paths are served: `{pay_base}mmpaymkttransfers/...`."""
        return self.url + "/"

    @property
    def sandbox(self) -> Sandbox:
        assert self.app is not None, "the server is not running"
        return self.app.state.sandbox

    def __enter__(self) -> SandboxServer:
        self.app = create_app(self.state_path)
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when
        # the listener says TCP, and without it every keep-alive call waits ~40 ms (Nagle).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((self.host, self.port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="wecom-sandbox",
            daemon=True,
        )
        self._thread.start()
        self._wait_until_healthy()
        return self

    def _wait_until_healthy(self, timeout: float = 20.0) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the WeCom sandbox stopped while starting")
            healthy = self._server.started and requests.get(
                self.url + "/sandbox/health", timeout=5
            ).json().get("ok")
            if healthy:
                return
            time.sleep(0.01)
        raise RuntimeError(f"the WeCom sandbox did not start within {timeout:.0f} s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._socket is not None:
            self._socket.close()
        if self.app is not None:
            self.app.state.sandbox.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 8055,
    state_path: Path | None = None,
    seed: Path | None = None,
) -> None:
    """Run the sandbox until interrupted (`siyu sandbox`); a seed is upserted before serving."""
    app = create_app(state_path)
    sandbox: Sandbox = app.state.sandbox
    try:
        if seed is not None:
            counts = load_seed(sandbox.state, Path(seed))
            logger.info("WeCom sandbox seeded: %s", counts)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        sandbox.close()
