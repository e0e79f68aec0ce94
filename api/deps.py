"""Annotated dependencies: the session (commits in one place), the caller, the scopes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.settings import Settings
from metering.errors import Forbidden, Unauthorized
from metering.tenants import Principal, authenticate


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_session(request: Request) -> Iterator[Session]:
    """The request's unit of work: commit when the handler returns, roll back when it raises.

    Used with scope="function" so the commit happens before the response is sent: a client
    never sees 200 for a write that failed to commit.
    """
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def get_now() -> datetime:
    return datetime.now(UTC)


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
NowDep = Annotated[datetime, Depends(get_now)]


def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
    settings: Settings = request.app.state.settings
    # Its own short connection: authentication never holds the request's transaction open.
    with request.app.state.engine.connect() as connection:
        try:
            return authenticate(connection, key.strip(), secret=settings.secret_key.get_secret_value().encode())
        except Unauthorized as exc:
            exc.headers = {"WWW-Authenticate": "Bearer"}
            raise


def require(scope: str):  # type: ignore[no-untyped-def]
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return principal

    return check


IngestScope = Annotated[Principal, Depends(require("ingest"))]
ReadScope = Annotated[Principal, Depends(require("read"))]
AdminScope = Annotated[Principal, Depends(require("admin"))]
