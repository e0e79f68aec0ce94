"""Real HTTP servers for client tests: any ASGI app under uvicorn on a loopback port of our
choosing (so a client can be pointed at it before it is up), and a fault-injecting middleware."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:`port`, in a daemon thread of the test process."""

    def __init__(self, app: ASGIApp, port: int | None = None, lifespan: str = "on") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Fault:
    """One planned answer to `POST /v1/events`. With `after`, the request is served (and
    committed) first and its answer replaced: the client cannot know the events were stored."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after: bool = False


@dataclass
class Seen:
    at: float  # time.monotonic()
    status: int
    injected: bool


class FaultInjector:
    """ASGI middleware: answers the next `POST /v1/events` requests from `plan`, then lets them
    through; records every such request in `seen`."""

    def __init__(self, app: ASGIApp, path: str = "/v1/events") -> None:
        self.app = app
        self.path = path
        self.plan: list[Fault] = []
        self.seen: list[Seen] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        at = time.monotonic()
        fault = self.plan.pop(0) if self.plan else None
        if fault is None:

            async def watch(message: Message) -> None:
                if message["type"] == "http.response.start":  # noted before the client can see it
                    self.seen.append(Seen(at, message["status"], injected=False))
                await send(message)

            await self.app(scope, receive, watch)
            return
        if fault.after:

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        else:
            while (await receive()).get("more_body"):
                pass
        self.seen.append(Seen(at, fault.status, injected=True))
        body = orjson.dumps(fault.body if fault.body is not None else {"error": "injected", "message": "injected fault"})
        headers = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in fault.headers.items()
        ]
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
