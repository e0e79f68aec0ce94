"""The dashboard's budgets page: bars of used vs limit, the forecast, alerts and failing deliveries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from api.settings import Settings
from api.webhooks import deliver_due
from metering.core.db import unit_of_work
from metering.core.tenants import Tenant
from metering.spend.alerts import add_webhook
from tests.conftest import LiveServer
from tests.dashboard.conftest import sign_in
from tests.factories import make_event


def test_budgets_page_shows_usage_alerts_and_failing_deliveries(
    live_server: LiveServer, engine: Engine, tenant: Tenant, make_key: Callable[..., str], now: datetime,
    settings: Settings,
) -> None:
    with unit_of_work(engine) as session:
        add_webhook(session, tenant.id, "http://127.0.0.1:9/unreachable", box=settings.secret_box(), now=now)
    with live_server.client(make_key(tenant)) as api:
        api.put("/v1/budgets/acme-tokens", json={"measure": "tokens", "limit": "2000", "period": "month", "alerts": ["0.5"],
                                                  "scope": {"customer": "acme"}, "enforce": True})  # fmt: skip
        api.post(
            "/v1/events",
            json=[make_event(id="u1", time=now.isoformat(), input_tokens=1000, output_tokens=500)],
        )
    deliver_due(engine, now=now.replace(minute=59), box=settings.secret_box())
    with sign_in(live_server, make_key(tenant, "read")) as client:
        page = client.get("/dashboard/budgets")
    assert page.status_code == 200
    html = page.text
    assert "acme-tokens" in html and "customer=acme" in html and "75%" in html and "enforced" in html
    assert 'data-failing-deliveries="1"' in html and "failing (1)" in html
    with live_server.client() as anonymous:
        assert anonymous.get("/dashboard/budgets").status_code in (302, 303)
