"""The WeCom sandbox over HTTP: the /cgi-bin/ API, the /sandbox/ control API, and how to run it."""

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
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from siyu.sandbox.faults import FaultBook, FaultSpec, RateLimiter, api_name
from siyu.sandbox.seed import load_seed
from siyu.sandbox.state import (
    DATA_FORMAT_ERROR,
    INVALID_PARAMETER,
    OUT_OF_LIMIT,
    SYSTEM_BUSY,
    ConfigUpdate,
    SandboxState,
    SQLiteStateStore,
    StateStore,
    WeComError,
)

logger = logging.getLogger("siyu.sandbox")

Params = dict[str, Any]
Handler = Callable[[SandboxState, Params], Params | None]

# Calls that carry no access token: the token call itself and the group robot (its key).
NO_TOKEN_APIS = {"gettoken", "webhook/send"}
# Never kept in the request log: they open the corp (token, secret) or post as the robot (key).
SECRET_PARAMS = {"access_token", "corpsecret", "key"}
DROP_SIGNAL = "siyu.sandbox.drop"
FAULT_ERRMSG = {SYSTEM_BUSY: "system busy", OUT_OF_LIMIT: "api freq out of limit"}


# ---- parsing request fields ------------------------------------------------------------


def _text(p: Params, name: str) -> str:
    value = p.get(name)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a string")
    return str(value)


def _ids(p: Params, name: str) -> list[str]:
    value = p.get(name)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a list")
    return [str(v) for v in value]


def _number(p: Params, name: str, default: int | None) -> int | None:
    value = p.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WeComError(INVALID_PARAMETER, f"{name} must be a number") from None


def _object(p: Params, name: str) -> Params:
    value = p.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WeComError(INVALID_PARAMETER, f"{name} must be an object")
    return value


# ---- the WeCom API: each handler parses its fields and replies ----------------------


def gettoken(state: SandboxState, p: Params) -> Params:
    return state.issue_token(_text(p, "corpid"), _text(p, "corpsecret"))


def get_corp_tag_list(state: SandboxState, p: Params) -> Params:
    return {"tag_group": state.corp_tag_list(_ids(p, "tag_id"), _ids(p, "group_id"))}


def add_corp_tag(state: SandboxState, p: Params) -> Params:
    tags = p.get("tag")
    if not isinstance(tags, list):
        raise WeComError(INVALID_PARAMETER, "tag must be a list")
    group_name = _text(p, "group_name") if "group_name" in p else None
    group = state.add_corp_tag(_text(p, "group_id"), group_name, _number(p, "order", 0), tags)
    return {"tag_group": group}


def edit_corp_tag(state: SandboxState, p: Params) -> None:
    name = _text(p, "name") if "name" in p else None
    state.edit_corp_tag(_text(p, "id"), name, _number(p, "order", None))


def del_corp_tag(state: SandboxState, p: Params) -> None:
    state.del_corp_tag(_ids(p, "tag_id"), _ids(p, "group_id"))


def mark_tag(state: SandboxState, p: Params) -> None:
    state.mark_tag(
        _text(p, "userid"),
        _text(p, "external_userid"),
        _ids(p, "add_tag"),
        _ids(p, "remove_tag"),
    )


def get_follow_user_list(state: SandboxState, p: Params) -> Params:
    return {"follow_user": state.follow_user_list()}


def contact_list(state: SandboxState, p: Params) -> Params:
    return {"external_userid": state.contact_list(_text(p, "userid"))}


def contact_get(state: SandboxState, p: Params) -> Params:
    return state.get_contact(_text(p, "external_userid"), _text(p, "cursor"))


def batch_get_by_user(state: SandboxState, p: Params) -> Params:
    return state.batch_get_by_user(
        _ids(p, "userid_list"), _text(p, "cursor"), _number(p, "limit", 50)
    )


def groupchat_list(state: SandboxState, p: Params) -> Params:
    owners = _ids(_object(p, "owner_filter"), "userid_list")
    return state.groupchat_list(
        _number(p, "status_filter", 0), owners, _text(p, "cursor"), _number(p, "limit", 0)
    )


def groupchat_get(state: SandboxState, p: Params) -> Params:
    return {
        "group_chat": state.groupchat_get(_text(p, "chat_id"), bool(_number(p, "need_name", 0)))
    }


def add_join_way(state: SandboxState, p: Params) -> Params:
    return {"config_id": state.add_join_way(p)}


def get_join_way(state: SandboxState, p: Params) -> Params:
    return {"join_way": state.get_join_way(_text(p, "config_id"))}


def add_msg_template(state: SandboxState, p: Params) -> Params:
    return state.add_msg_template(p)


def get_groupmsg_list_v2(state: SandboxState, p: Params) -> Params:
    return state.groupmsg_list(p)


def get_groupmsg_task(state: SandboxState, p: Params) -> Params:
    return state.groupmsg_task(_text(p, "msgid"), p.get("limit"), _text(p, "cursor"))


def get_groupmsg_send_result(state: SandboxState, p: Params) -> Params:
    return state.groupmsg_send_result(
        _text(p, "msgid"), _text(p, "userid"), p.get("limit"), _text(p, "cursor")
    )


def remind_groupmsg_send(state: SandboxState, p: Params) -> None:
    state.remind_groupmsg(_text(p, "msgid"))


def cancel_groupmsg_send(state: SandboxState, p: Params) -> None:
    state.cancel_groupmsg(_text(p, "msgid"))


def message_send(state: SandboxState, p: Params) -> Params:
    return state.send_app_message(p)


def webhook_send(state: SandboxState, p: Params) -> None:
    state.post_webhook(_text(p, "key"), {k: v for k, v in p.items() if k != "key"})


def send_welcome_msg(state: SandboxState, p: Params) -> None:
    state.send_welcome_msg(p)


def add_contact_way(state: SandboxState, p: Params) -> Params:
    return state.add_contact_way(p)


def add_moment_task(state: SandboxState, p: Params) -> Params:
    return {"jobid": state.add_moment_task(p)}


def get_moment_task_result(state: SandboxState, p: Params) -> Params:
    return state.moment_task_result(_text(p, "jobid"))


WECOM_API: dict[str, Handler] = {
    "gettoken": gettoken,
    "externalcontact/get_corp_tag_list": get_corp_tag_list,
    "externalcontact/add_corp_tag": add_corp_tag,
    "externalcontact/edit_corp_tag": edit_corp_tag,
    "externalcontact/del_corp_tag": del_corp_tag,
    "externalcontact/mark_tag": mark_tag,
    "externalcontact/get_follow_user_list": get_follow_user_list,
    "externalcontact/list": contact_list,
    "externalcontact/get": contact_get,
    "externalcontact/batch/get_by_user": batch_get_by_user,
    "externalcontact/groupchat/list": groupchat_list,
    "externalcontact/groupchat/get": groupchat_get,
    "externalcontact/groupchat/add_join_way": add_join_way,
    "externalcontact/groupchat/get_join_way": get_join_way,
    "externalcontact/add_msg_template": add_msg_template,
    "externalcontact/get_groupmsg_list_v2": get_groupmsg_list_v2,
    "externalcontact/get_groupmsg_task": get_groupmsg_task,
    "externalcontact/get_groupmsg_send_result": get_groupmsg_send_result,
    "externalcontact/remind_groupmsg_send": remind_groupmsg_send,
    "externalcontact/cancel_groupmsg_send": cancel_groupmsg_send,
    "message/send": message_send,
    "webhook/send": webhook_send,
    "externalcontact/send_welcome_msg": send_welcome_msg,
    "externalcontact/add_contact_way": add_contact_way,
    "externalcontact/add_moment_task": add_moment_task,
    "externalcontact/get_moment_task_result": get_moment_task_result,
}


# ---- what the sandbox observed -------------------------------------------------------


class CallLog:
    """Every /cgi-bin/ call as the client saw it, for tests to assert on (never secrets)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.entries: deque[Params] = deque(maxlen=capacity)
        self.seq = 0
        self.calls: Counter[str] = Counter()
        self.errors: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.tag_changes = 0

    def record(self, api: str, errcode: int | None, params: Params, fault: str | None) -> None:
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
        self.limiter = RateLimiter(self.state.config.rate_limits)
        self.log = CallLog()

    def reset(self) -> None:
        self.state.reset()
        self.faults.clear()
        self.limiter = RateLimiter(self.state.config.rate_limits)
        self.log = CallLog()

    def close(self) -> None:
        self.state.close()

    def answer(self, api: str, handler: Handler, params: Params) -> Params:
        """Run one WeCom call against the state: the reply body, errcode 0 or the error."""
        with self.state.lock:
            try:
                if api not in NO_TOKEN_APIS:
                    self.state.check_token(_text(params, "access_token"))
                reply = handler(self.state, params) or {}
            except WeComError as error:
                return {"errcode": error.errcode, "errmsg": error.errmsg}
            except (TypeError, ValueError, AttributeError):
                return {"errcode": INVALID_PARAMETER, "errmsg": "invalid parameter"}
        return {"errcode": 0, "errmsg": "ok", **reply}


def _fault_response(request: Request, spec: FaultSpec) -> tuple[Response, int | None, str]:
    """The failing reply a fault asks for: a dropped socket, an HTTP error or an errcode."""
    if spec.drop_connection:
        request.scope[DROP_SIGNAL]["drop"] = True
        return Response(), None, "drop_connection"
    if spec.http_status:
        body = f"sandbox fault: HTTP {spec.http_status}"
        return PlainTextResponse(body, status_code=spec.http_status), None, "http_status"
    code = spec.errcode or SYSTEM_BUSY
    body = {"errcode": code, "errmsg": FAULT_ERRMSG.get(code, f"sandbox fault {code}")}
    return JSONResponse(body), code, "errcode"


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


# ---- the control API -------------------------------------------------------------------


class SeedRequest(BaseModel):
    path: str


class FollowRef(BaseModel):
    userid: str
    external_userid: str


def _control_routes(sandbox: Sandbox) -> APIRouter:
    router = APIRouter(prefix="/sandbox")

    @router.get("/health")
    async def health() -> Params:
        return {"ok": True}

    @router.post("/reset")
    async def reset() -> Params:
        sandbox.reset()
        return {"ok": True}

    @router.post("/seed")
    async def seed(body: SeedRequest) -> Params:
        try:
            return load_seed(sandbox.state, Path(body.path))
        except FileNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None

    @router.post("/config")
    async def config(body: ConfigUpdate) -> Params:
        updated = sandbox.state.update_config(body)
        sandbox.limiter.configure(updated.rate_limits)
        return updated.model_dump()

    @router.get("/config")
    async def read_config() -> Params:
        return sandbox.state.config.model_dump()

    @router.post("/faults")
    async def add_fault(body: FaultSpec) -> Params:
        return {"fault_id": sandbox.faults.add(body).fault_id}

    @router.get("/faults")
    async def list_faults() -> list[Params]:
        return sandbox.faults.describe()

    @router.delete("/faults")
    async def clear_faults() -> Params:
        sandbox.faults.clear()
        return {"ok": True}

    @router.post("/tokens/expire")
    async def expire_tokens() -> Params:
        with sandbox.state.lock:
            return {"expired": sandbox.state.expire_tokens()}

    @router.post("/contacts/delete_follow")
    async def delete_follow(body: FollowRef) -> Params:
        if not sandbox.state.delete_follow(body.userid, body.external_userid):
            raise HTTPException(status_code=404, detail="no such follow relation")
        return {"ok": True}

    @router.get("/requests")
    async def requests_log(api: str | None = None, since: int = 0) -> list[Params]:
        return sandbox.log.since(api_name(api) if api else None, since)

    @router.get("/stats")
    async def stats() -> Params:
        with sandbox.state.lock:
            return {**sandbox.log.stats(), "corp": sandbox.state.corp_counts()}

    @router.get("/contact_tags")
    async def contact_tags(userid: str | None = None, external_userid: str | None = None) -> Params:
        with sandbox.state.lock:
            if userid is None and external_userid is None:
                return {"pairs": sandbox.state.all_contact_tags()}
            tag_ids = sandbox.state.contact_tags(userid or "", external_userid or "")
        if tag_ids is None:
            raise HTTPException(status_code=404, detail="no such follow relation")
        return {"tag_ids": tag_ids}

    @router.get("/webhook_posts")
    async def webhook_posts() -> list[Params]:
        return list(sandbox.state.webhook_posts)

    @router.get("/app_messages")
    async def app_messages() -> list[Params]:
        return list(sandbox.state.app_messages)

    @router.get("/welcome_messages")
    async def welcome_messages() -> list[Params]:
        return list(sandbox.state.welcome_messages)

    return router


# ---- the app ---------------------------------------------------------------------------


def create_app(state_path: Path | None = None) -> FastAPI:
    """The sandbox app; with `state_path` its corp survives restarts in that SQLite file."""
    sandbox = Sandbox(state_path)
    app = FastAPI(
        title="siyu WeCom sandbox", docs_url="/sandbox/docs", openapi_url="/sandbox/openapi.json"
    )
    app.state.sandbox = sandbox
    app.add_middleware(ConnectionDropper)
    app.include_router(_control_routes(sandbox))

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
        plan = sandbox.faults.plan(api, params)
        if plan.latency_ms:
            await asyncio.sleep(plan.latency_ms / 1000)
        if plan.outcome is not None and plan.fails_before_effect:
            response, code, fault = _fault_response(request, plan.outcome)
            _finish(sandbox, request, api, code, params, fault)
            return response
        if sandbox.limiter.admit(api):
            reply = sandbox.answer(api, handler, params)
        else:
            reply = {"errcode": OUT_OF_LIMIT, "errmsg": "api freq out of limit"}
        if api == "externalcontact/mark_tag" and reply["errcode"] == 0:
            sandbox.log.tag_changes += 1
        if plan.outcome is not None and plan.fails_after_effect:
            response, code, fault = _fault_response(request, plan.outcome)
            _finish(sandbox, request, api, code, params, f"{fault} after effect")
            return response
        _finish(sandbox, request, api, reply["errcode"], params, None)
        return JSONResponse(reply)

    return app


def _finish(
    sandbox: Sandbox,
    request: Request,
    api: str,
    errcode: int | None,
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
