"""The FastAPI application: routers, error handlers, and the background work of `serve`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from api.errors import install_error_handlers
from api.routers import events, otlp, usage
from api.settings import Settings, get_settings
from metering.db import make_engine


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if app.state.owns_engine:
            engine.dispose()

    app = FastAPI(
        title="taskmeter",
        version="0.1.0",
        description="Outcome-based usage metering and billing for AI agents.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.owns_engine = False
    install_error_handlers(app)
    app.include_router(events.router)
    app.include_router(otlp.router)
    app.include_router(usage.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
