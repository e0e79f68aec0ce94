"""`taskmeter budgets list|show` and `taskmeter webhooks add|list|remove`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from metering.core.secret_box import SecretBox, derived_key
from metering.core.tenants import Tenant
from metering.spend.budget_tables import webhooks
from tests.conftest import TEST_SECRET

Run = Callable[..., tuple[int, Any, str]]
CONFIG = """
budgets:
  - {id: acme, scope: {customer: acme}, measure: tokens, limit: 1000, period: week, alerts: [0.5]}
  - {id: bad, measure: provider_cost, limit: "1.0000000001", period: day}
"""


def test_config_budgets_list_show(run_cli: Run, tenant: Tenant, tmp_path: Path) -> None:
    config = tmp_path / "tenant.yaml"
    config.write_text(CONFIG)
    code, _, err = run_cli("config", "load", str(config), "--tenant", tenant.name)
    assert code == 1 and '"field": "budgets[1].limit"' in err
    config.write_text(CONFIG.replace('"1.0000000001"', '"1.00"'))
    assert run_cli("config", "load", str(config), "--tenant", tenant.name)[0] == 0
    code, listed, _ = run_cli("budgets", "list", "--tenant", tenant.name)
    assert code == 0 and [(b["id"], b["used"], b["limit"]) for b in listed["budgets"]] == [
        ("acme", "0", "1000"),
        ("bad", "0", "1"),
    ]
    code, shown, _ = run_cli("budgets", "show", "acme", "--tenant", tenant.name)
    assert code == 0 and shown["scope"] == {"customer": "acme"} and shown["alerts"] == []
    assert run_cli("budgets", "show", "nope", "--tenant", tenant.name)[0] == 1


def test_webhooks_add_prints_the_secret_once(run_cli: Run, tenant: Tenant, engine: Engine) -> None:
    code, added, _ = run_cli("webhooks", "add", "https://example.com/hook", "--tenant", tenant.name)
    assert code == 0 and added["secret"].startswith("whsec_")
    code, listed, _ = run_cli("webhooks", "list", "--tenant", tenant.name)
    assert (
        listed["webhooks"][0]["url"] == "https://example.com/hook" and "secret" not in listed["webhooks"][0]
    )
    with engine.connect() as connection:
        stored = connection.execute(select(webhooks.c.secret)).scalar()
    # kept to sign, sealed with the key derived from the server secret (no TASKMETER_ENCRYPTION_KEYS)
    assert stored != added["secret"] and SecretBox([derived_key(TEST_SECRET)]).open(stored) == added["secret"]
    assert run_cli("webhooks", "add", "ftp://x", "--tenant", tenant.name)[0] == 1
    assert run_cli("webhooks", "remove", str(added["id"]), "--tenant", tenant.name)[0] == 0
