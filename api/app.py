"""The FastAPI application: routers, error handlers, and the background work of `serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from sqlalchemy import Engine

from api.errors import install_error_handlers
from api.ingest_log import KnownKeys, LogLink
from api.limits import RequestLimitsMiddleware
from api.ratelimit import RateLimiter
from api.routers import audit as audit_routes
from api.routers import budgets, disputes, events, evidence, invoices, otlp, pricing, quarantine, usage
from api.routers import dashboard as dashboard_routes
from api.routers import docs as docs_routes
from api.routers import reports as report_routes
from api.routers import stripe as stripe_routes
from api.scheduler import start_scheduler
from api.security_headers import SecurityHeadersMiddleware
from api.settings import Settings, get_settings
from metering.core.db import make_engine


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # On the server's event loop, where the requests run: the log's connection is bound to it.
        app.state.ingest_log = await LogLink.open(settings) if settings.ingest_log else None
        app.state.scheduler = start_scheduler(settings, engine) if settings.scheduler_enabled else None
        try:
            yield
        finally:
            if app.state.scheduler is not None:
                app.state.scheduler.shutdown()
            if app.state.ingest_log is not None:
                await app.state.ingest_log.close()
        if app.state.owns_engine:
            engine.dispose()

    app = FastAPI(
        title="taskmeter",
        version="0.1.0",
        description="Outcome-based usage metering and billing for AI agents.",
        lifespan=lifespan,
        docs_url=None,  # served by api.routers.docs from packaged files, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.owns_engine = False
    app.state.ingest_log = None
    app.state.known_keys = KnownKeys(settings.ingest_log_auth_grace_seconds) if settings.ingest_log else None
    app.state.principals = {}  # api.deps.cached_principal
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    install_error_handlers(app)
    # The last added runs first: security headers go on every answer, 413s included.
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    # Through the ingest log (TASKMETER_INGEST_LOG), or straight to the database.
    app.include_router(events.log_router if settings.ingest_log else events.router)
    app.include_router(otlp.router)
    # A task id may hold '/' (`{task:path}`): /v1/tasks/{task}/events and /disputes are matched
    # before /v1/tasks/{task}, which would otherwise take "x/events" for a task's id.
    app.include_router(disputes.router)
    app.include_router(evidence.router)
    app.include_router(usage.router)
    app.include_router(budgets.router)
    app.include_router(pricing.router)
    app.include_router(invoices.router)
    app.include_router(stripe_routes.router)
    app.include_router(report_routes.router)
    app.include_router(dashboard_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(docs_routes.router)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=307)
    app.include_router(quarantine.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
