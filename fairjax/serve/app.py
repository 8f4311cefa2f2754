"""The FastAPI app: the page (`GET /`), its static files, and the JSON API.

`POST /api/score {"text"}`, `POST /api/rewrite {"text"}`, `POST /api/parse` (multipart "file":
.txt/.jsonl/.csv -> its postings, so the page can score a file row by row with a progress bar),
`GET /api/info`, `GET /healthz`. Every error is JSON `{"error": "..."}` with a 4xx/5xx status.
Bodies over `max_body` bytes get 413 before they are read into memory.
"""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Optional

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fairjax.serve.service import (
    MAX_BODY_BYTES,
    InputError,
    QueueFull,
    RewriteQueue,
    Services,
    parse_json_body,
    parse_upload,
)

HERE = Path(__file__).resolve().parent
# Only same-origin resources: no CDN, font or script from the network, and no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'")
RETRY_AFTER_S = 2


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _TooLarge(Exception):
    pass


SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer")]


class Guard:
    """ASGI middleware: the security headers on every response, and a request body over `limit`
    bytes answered 413 (by Content-Length at once, otherwise as soon as the streamed body passes
    the limit), before the app buffers it. Pure ASGI (no BaseHTTPMiddleware, which would wrap the
    limit's exception in a task group)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, f"request body over {self.limit} bytes")
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if self.limit and seen > self.limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                msg = {**msg, "headers": list(msg.get("headers") or []) + SECURITY_HEADERS}
            await send(msg)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if self.limit and length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, tracking_send)
        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await too_big(scope, receive, tracking_send)


def create_app(services: Services, *, queue_size: int = 32, batch_size: int = 8,
               rewrite_timeout_s: float = 300.0, max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The app over already-built `services` (scorers + rewriter, loaded once by the caller)."""
    rq = RewriteQueue(services.rewriter.rewrite, maxsize=queue_size, batch_size=batch_size)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        rq.close()

    app = FastAPI(title="fairjax", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.services, app.state.rewrite_queue = services, rq
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    page = env.get_template("index.html")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def json_text(request: Request) -> str:
        return parse_json_body(await request.body())

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        info = services.info()
        return HTMLResponse(page.render(info=info, max_body=max_body))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "rewriter": services.rewriter.name,
                "pool_size": len(services.pool), "rewrite_queue": rq.pending(),
                "rewrite_queue_max": rq.maxsize}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return services.info()

    @app.post("/api/score")
    async def score(request: Request):
        text = await json_text(request)
        return await run_in_threadpool(services.score, text)

    @app.post("/api/rewrite")
    async def rewrite(request: Request):
        text = await json_text(request)
        try:
            fut = rq.submit(text)
        except QueueFull as e:
            return _error(503, f"{e}; retry in {RETRY_AFTER_S} s",
                          {"Retry-After": str(RETRY_AFTER_S)})
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(fut), rewrite_timeout_s)
        except asyncio.TimeoutError:
            return _error(504, f"the rewrite took longer than {rewrite_timeout_s:g} s")
        return await run_in_threadpool(services.rewrite_result, text, out)

    @app.post("/api/parse")
    async def parse(request: Request):
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise InputError("upload a file as multipart/form-data field 'file'", 415)
        form = await request.form()
        up = form.get("file")
        if up is None or isinstance(up, str):
            raise InputError("missing file field 'file'", 422)
        data = await up.read()
        postings = parse_upload(up.filename or "", data)
        return {"name": up.filename, "n": len(postings), "postings": postings}

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    app.add_middleware(Guard, limit=max_body)  # outermost: before anything reads the body
    return app
