"""The dashboard's budgets page: each budget's usage against its limit this period (a bar), the
run-rate forecast, and the alerts with their webhook deliveries (failing ones stand out)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from reports.format import instant
from reports.html import badge, e, frame, num, table, topbar, url

BAR_WIDTH = 240


def _bar(used: Decimal, limit: Decimal, forecast: Decimal) -> str:
    """Used (and the forecast, lighter) as a share of the limit; past the limit the bar is full
    and red. SVG attributes only: the page's Content-Security-Policy allows no inline style."""
    share = min(used / limit, Decimal(1)) if limit else Decimal(1)
    ahead = min(forecast / limit, Decimal(1)) if limit else Decimal(1)
    kind = "loss" if used >= limit else "cost" if forecast >= limit else "gain"
    width, ahead_width = int(share * BAR_WIDTH), int(ahead * BAR_WIDTH)
    percent = f"{(used / limit * 100):.0f}%" if limit else "—"
    return (
        f'<svg class="chart budget-bar" width="{BAR_WIDTH}" height="14" role="img" aria-label="{e(percent)} of the limit">'
        f'<rect class="bar track" x="0" y="0" width="{BAR_WIDTH}" height="14" fill="#eef0f4"></rect>'
        f'<rect class="bar forecast" x="0" y="0" width="{ahead_width}" height="14" fill="#c7d2fe"></rect>'
        f'<rect class="bar {kind}" x="0" y="0" width="{width}" height="14"></rect></svg> {e(percent)}'
    )


def render(
    budgets: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    *,
    tenant: str,
    csrf: str,
    version: str,
) -> str:
    rows = []
    for b in budgets:
        used, limit, forecast = Decimal(b["used"]), Decimal(b["limit"]), Decimal(b["forecast_value"])
        scope = ", ".join(f"{k}={v}" for k, v in b["scope"].items()) or "whole tenant"
        state = (
            badge("exceeded", "warn")
            if b["exceeded"]
            else badge("forecast over", "draft")
            if forecast >= limit
            else badge("ok", "ok")
        )
        enforced = badge("enforced", "plan") if b["enforce"] else ""
        unpriced = (
            f" {badge(str(b['unpriced_events']) + ' unpriced', 'warn')}" if b["unpriced_events"] else ""
        )
        rows.append([
            e(b["id"]), e(scope), e(b["measure"]), e(b["period"]), num(e(b["used"]), b["used"]), num(e(b["limit"]), b["limit"]),
            (_bar(used, limit, forecast), "bar"), num(e(b["forecast_value"]), b["forecast_value"]), f"{state} {enforced}{unpriced}",
        ])  # fmt: skip
    listed = (
        table([("Budget", ""), ("Scope", ""), ("Measure", ""), ("Period", ""), ("Used", "num"), ("Limit", "num"),
               ("Used of limit", ""), ("Forecast", "num"), ("State", "")], rows, css="budgets")
        if rows else '<p class="muted">No budget yet: add a <code>budgets:</code> section to the tenant config.</p>'
    )  # fmt: skip
    failing = sum(1 for a in alerts for d in a["deliveries"] if d["status"] in ("failing", "failed"))
    alert_rows = []
    for a in alerts:
        deliveries = (
            " ".join(
                badge(
                    f"{d['status']} ({d['attempts']})",
                    {"delivered": "ok", "pending": "draft"}.get(d["status"], "warn"),
                )
                + (
                    f' <span class="small muted">{e(d["last_error"])}</span>'
                    if d["last_error"] and d["status"] != "delivered"
                    else ""
                )
                for d in a["deliveries"]
            )
            or '<span class="muted">no webhook</span>'
        )
        alert_rows.append([
            (e(instant(a["at"])), "time"), e(a["budget"]), e(a["type"].removeprefix("budget.")), num(e(a["threshold"])),
            num(e(a["used"])), num(e(a["limit"])), e(a["period_start"][:10]), deliveries,
        ])  # fmt: skip
    alerts_html = (
        table([("At (UTC)", ""), ("Budget", ""), ("Kind", ""), ("Threshold", "num"), ("Used", "num"), ("Limit", "num"),
               ("Period from", ""), ("Deliveries", "")], alert_rows, css="alerts", caption=f"the newest {len(alert_rows)}")
        if alert_rows else '<p class="muted">No alert has been raised.</p>'
    )  # fmt: skip
    warning = (f'<p class="notice warn" role="alert" data-failing-deliveries="{failing}">{failing} webhook '
               "delivery(ies) failing: they are retried with backoff until the receiver answers 2xx.</p>") if failing else ""  # fmt: skip
    body = f"""<section class="status"><h1>Budgets</h1><a class="back" href="{url("")}">← Back to the dashboard</a></section>
<section class="card"><p class="muted small">Usage this period, counted as events are stored. The forecast is the mean
daily spend of the period's days so far times the days in the period (lighter bar).</p>{listed}</section>
<section class="card"><h2>Alerts</h2>{warning}{alerts_html}</section>"""
    return frame("Budgets", body, version=version, header=topbar(tenant, csrf))
