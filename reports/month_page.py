"""The dashboard's month page: a tenant's month, all customers or one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from pricing.outcome_counts import TaskTypeOutcomes
from reports.cells import cost_decimal, minor_decimal
from reports.charts import Bar, MonthPoint, bars_chart, histogram, months_chart
from reports.columns import REPORTS
from reports.dashboard import COST_EDGES_MICROS, MonthView, SeriesPoint, TaskTypeCosts
from reports.evidence_pages import outcomes_panel
from reports.format import clock, count, money, money_text, month_long, percent, task_cost, unit_price
from reports.html import Cell, badge, e, frame, num, part, table, topbar, url

PAGE_SIZE = 50
TOP = 10
COMPARED = 25


@dataclass(frozen=True)
class MonthPage:
    tenant: str
    view: MonthView
    series: list[SeriesPoint]
    months: list[str]  # newest first
    customers: list[str]
    csrf: str
    version: str
    as_of: datetime | None = None
    freshness: str = "fresh"  # fresh, aging, stale (being recomputed), live (computed for this page)
    page: int = 1
    stripe_failures: tuple[dict[str, Any], ...] = ()  # the tenant's invoices Stripe refused, any month
    quarantined: int = 0  # the tenant's events set aside by the rollup (metering.rollup.quarantine)
    # Per task type (pricing.outcome_counts), or what the panel says instead; None: no panel.
    outcomes: tuple[TaskTypeOutcomes, ...] | str | None = None


def render(p: MonthPage) -> str:
    v = p.view
    parts = [_filters(p), _status(p)]
    if v.empty:
        parts.append(_empty(p))
    else:
        parts += [_kpis(v), _months(p)]
        if v.customer is None:
            parts.append(_top_customers(v))
        parts += [_comparison(v), _task_types(v)]
        if p.outcomes is not None:
            parts.append(outcomes_panel(p.outcomes, v.currency, v.period))
        parts += [_notes(v), _spend_by_person(v), _customers(p)]
    parts.append(_downloads(v))
    title = month_long(v.period) + (f" · {v.customer}" if v.customer else "")
    return frame(
        title, "\n".join(parts), version=p.version, header=topbar(p.tenant, p.csrf), page_class="month"
    )


def _filters(p: MonthPage) -> str:
    months = "".join(
        f'<option value="{e(m)}"{" selected" if m == p.view.period else ""}>{e(month_long(m))}</option>'
        for m in p.months
    )
    names = [c for c in p.customers]
    customers = '<option value="">All customers</option>' + "".join(
        f'<option value="{e(c)}"{" selected" if c == p.view.customer else ""}>{e(c)}</option>' for c in names
    )
    return f"""<form class="filters" method="get" action="{url("")}" data-auto-submit>
<label>Month <select name="month" id="month">{months}</select></label>
<label>Customer <select name="customer" id="customer">{customers}</select></label>
<button type="submit" class="button">Show</button>
</form>"""


def _status(p: MonthPage) -> str:
    v = p.view
    state = badge("closed · invoices final", "ok") if v.closed else badge("open · draft invoices", "draft")
    back = f' <a class="back" href="{url("", month=v.period)}">← all customers</a>' if v.customer else ""
    when = ""
    if p.as_of is not None:
        when = f'<span class="muted">figures as of {e(clock(p.as_of))} UTC</span>'
    notes = []
    if p.freshness in ("aging", "stale"):
        notes.append(f'<p class="notice">Newer usage has arrived; updated figures are being computed. '
                     f'<a href="{url("", month=v.period, customer=v.customer)}">Reload</a> in a few seconds.</p>')  # fmt: skip
    if v.unrated:
        listed = ", ".join(v.unrated[:5]) + (" …" if len(v.unrated) > 5 else "")
        notes.append(f'<p class="notice warn">{len(v.unrated)} customer(s) have usage but no plan, so nothing is billed for them: '
                     f'{e(listed)}. Assign plans with <code>taskmeter config load</code>.</p>')  # fmt: skip
    if p.stripe_failures:
        links = ", ".join(
            f'<a href="{url("/invoices/" + str(f["id"]))}">{e(f["number"])}</a>' for f in p.stripe_failures[:5]
        ) + (" …" if len(p.stripe_failures) > 5 else "")
        notes.append(f'<p class="notice warn" data-stripe-failures>{len(p.stripe_failures)} invoice(s) could not be '
                     f"pushed to Stripe: {links}. Each page says why; after fixing the cause run "
                     "<code>taskmeter stripe sync --retry-failed</code>.</p>")  # fmt: skip
    if p.quarantined:
        notes.append(f'<p class="notice warn" data-quarantine>{p.quarantined} event(s) could not be processed and are '
                     f'in quarantine: they are not billed. <a href="{url("/quarantine")}">What this means</a></p>')  # fmt: skip
    if v.other_currencies:
        notes.append(
            f'<p class="notice">Invoices in {e(", ".join(v.other_currencies))} are listed in the table but not in the totals '
            f"(provider costs are in {e(v.currency)}).</p>"
        )
    heading = e(month_long(v.period)) + (
        f' <span class="muted">·</span> {e(v.customer)}' if v.customer else ""
    )
    return f'<section class="status"><h1>{heading}</h1>{state}{when}{back}</section>' + "".join(notes)


def _empty(p: MonthPage) -> str:
    who = f"{p.view.customer} has" if p.view.customer else "There is"
    return f"""<section class="card empty">
<h2>No usage in {e(month_long(p.view.period))} yet</h2>
<p>{e(who)} no usage, tasks or invoices in this month. Figures appear here once your agents report usage:</p>
<ol>
<li>send task events with <code>POST /v1/events</code>, the Python client or OpenTelemetry;</li>
<li>load prices, plans and customers with <code>taskmeter config load FILE.yaml --tenant {e(p.tenant)}</code>;</li>
<li>the server rolls usage up every second; months are invoiced when they close.</li>
</ol>
<p class="muted">Pick another month above to see earlier figures.</p>
</section>"""


def _kpis(v: MonthView) -> str:
    revenue, cost = minor_decimal(v.revenue_minor, v.currency), cost_decimal(v.cost_micros)
    margin = minor_decimal(v.margin_minor, v.currency)
    share = f"{percent(margin / revenue)} of revenue" if revenue else "no revenue this month"
    invoices = sum(1 for c in v.customers if c["invoice_status"])
    c = v.counts
    failed_cost = cost_decimal(v.failed_cost_micros)
    # A total that leaves unpriced usage out says so where it is shown (details: Unpriced models).
    unpriced = sum(int(m["events"]) for m in v.unpriced)
    cost_note = f"leaves out {count(unpriced)} unpriced usage event{'s' if unpriced != 1 else ''}" if unpriced else ""
    cards = [
        (
            "Revenue",
            money(revenue, v.currency),
            f"{count(invoices)} {'invoice' if invoices == 1 else 'invoices'}",
            "revenue",
        ),
        ("Provider cost", money(cost, v.currency), cost_note or _plural(len(v.customers), "customer"), "loss" if unpriced else "cost"),
        ("Margin", money(margin, v.currency), f"{share}; {cost_note}" if unpriced else share, "loss" if margin < 0 else "gain"),
        (
            "Tasks completed",
            count(c["completed"]),
            f"{count(c['failed'])} failed · {count(c['cancelled'])} cancelled · {count(c['open'])} open",
            "",
        ),
        (
            "Cost of failed tasks",
            money(failed_cost, v.currency),
            _share(failed_cost, cost),
            "loss" if failed_cost else "",
        ),
    ]
    html = "".join(
        f'<div class="kpi {kind}" data-kpi="{e(label.lower().replace(" ", "-"))}"><div class="kpi-label">{e(label)}</div>'
        f'<div class="kpi-value">{e(value)}</div><div class="kpi-sub">{e(sub)}</div></div>'
        for label, value, sub, kind in cards
    )
    return f'<section class="kpis">{html}</section>'


def _plural(n: int, noun: str) -> str:
    return f"{count(n)} {noun}{'' if n == 1 else 's'}"


def _share(part_: Decimal, whole: Decimal) -> str:
    return f"{percent(part_ / whole)} of provider cost" if whole else "no provider cost"


def _months(p: MonthPage) -> str:
    currency = p.view.currency
    points = []
    for s in p.series:
        revenue, cost = minor_decimal(s.revenue_minor, currency), cost_decimal(s.cost_micros)
        margin = minor_decimal(s.margin_minor(currency), currency) if s.state == "ready" else Decimal(0)
        points.append(MonthPoint(s.period, s.state, revenue, cost, margin, money(revenue, currency),
                                 money(cost, currency), money(margin, currency)))  # fmt: skip
    title = f"Revenue, provider cost and margin · the {len(points)} months to {month_long(p.view.period)}"
    if not any(point.state == "ready" and (point.revenue or point.cost) for point in points):
        pending = any(s.state == "pending" for s in p.series)
        why = ("These months' figures are being computed; they appear when you reload the page." if pending
               else "No revenue and no provider cost in these months: figures appear once agents report usage.")  # fmt: skip
        mark = " data-pending" if pending else ""
        return f'<section class="card"><h2>{e(title)}</h2><p class="muted empty-chart" data-empty-chart{mark}>{e(why)}</p></section>'
    chart = months_chart(points, currency, selected=p.view.period)
    legend = ('<div class="legend"><span class="key revenue"></span>Revenue (amount due)<span class="key cost"></span>'
              'Provider cost<span class="key margin"></span>Margin</div>')  # fmt: skip
    pending = any(s.state == "pending" for s in p.series)
    note = (
        '<p class="muted small">… months still being computed appear on the next load.</p>' if pending else ""
    )
    before = next((i for i, s in enumerate(p.series) if s.state != "empty"), 0)
    if before:
        note += f'<p class="muted small" data-first-usage>No usage before {e(month_long(p.series[before].period))}.</p>'
    return f'<section class="card"><h2>{e(title)}</h2>{legend}{chart}{note}</section>'


def _top_customers(v: MonthView) -> str:
    def bars(key: str, css: str) -> list[Bar]:
        rows = [r for r in v.customers if r[f"{key}_minor"] is not None and r["currency"] == v.currency]
        rows.sort(key=lambda r: (-r[f"{key}_minor"], r["customer"]))
        return [
            Bar(r["customer"], minor_decimal(r[f"{key}_minor"], v.currency), money_text(r[_column(key)], v.currency),
                url("", month=v.period, customer=r["customer"]))
            for r in rows[:TOP]
        ]  # fmt: skip

    def chart(found: list[Bar], label: str, css: str) -> str:
        if found:
            return bars_chart(found, label=label, css=css)
        if all(r["unrated"] for r in v.customers):
            why = "No customer has a plan yet, so nothing is billed: assign plans with <code>taskmeter config load</code>."
        else:
            why = f"No customer has an amount due in {e(v.currency)} this month."
        return f'<p class="muted" data-empty-chart>{why}</p>'

    revenue = chart(bars("amount", "revenue"), "Top customers by revenue", "revenue")
    margin = chart(bars("margin", "gain"), "Top customers by margin", "gain")
    return (f'<div class="grid two"><section class="card"><h2>Top customers by revenue</h2>{revenue}</section>'
            f'<section class="card"><h2>Top customers by margin</h2>{margin}</section></div>')  # fmt: skip


def _column(key: str) -> str:
    return "amount_due" if key == "amount" else key


def _comparison(v: MonthView) -> str:
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for row in v.comparison:
        by_customer.setdefault(row["customer"], []).append(row)
    entries = []
    for name, rows in by_customer.items():
        token = _pick(rows, "per_token")
        job = _pick(rows, "per_job")
        billed = next((r for r in rows if r["billed"] == "true"), rows[0])
        gap = (token["revenue_minor"] - job["revenue_minor"]) if token and job else 0
        entries.append((name, billed, token, job, gap))
    entries.sort(key=lambda x: (-abs(x[4]), x[0]))
    shown = entries if v.customer else entries[:COMPARED]
    body = []
    for name, billed, token, job, gap in shown:
        cur = billed["currency"]
        better: Cell
        if token and job:
            winner = "per-token" if gap > 0 else "per-job" if gap < 0 else "same"
            diff = money(abs(minor_decimal(gap, cur)), cur)
            better = (badge(f"{winner} +{diff}" if gap else "the same", "gain" if gap else ""), "")
        else:
            better = ('<span class="muted">compare with both kinds of plan to see</span>', "")
        body.append([
            f'<a href="{e(url("", month=v.period, customer=name))}">{e(name)}</a>',
            f'{e(billed["plan"])} {badge(billed["plan_type"].replace("_", "-"), "plan")}',
            _revenue_cell(token, cur), _revenue_cell(job, cur),
            num(money_text(billed["provider_cost"], cur), billed["provider_cost"]),
            num(money_text((token or job or billed)["break_even_job_price"], cur), (token or job or billed)["break_even_job_price"]),
            better,
        ])  # fmt: skip
    note = (
        ""
        if v.customer or len(entries) <= COMPARED
        else (
            f'<p class="muted small">The {COMPARED} customers of {count(len(entries))} with the largest difference; '
            f"the comparison CSV lists all.</p>"
        )
    )
    headers = [("Customer", ""), ("Billed plan", ""), ("Per-token revenue", "num"), ("Per-job revenue", "num"),
               ("Provider cost", "num"), ("Break-even job price", "num"), ("Earns more", "")]  # fmt: skip
    explain = ('<p class="muted small">Each customer\'s month rated under its own plan and the plans it is compared with. '
               "The break-even job price is the price per completed task that would earn what per-token billing earns.</p>")  # fmt: skip
    content = (
        table(headers, body, css="compare")
        if body
        else '<p class="muted">No customer with a plan has usage this month.</p>'
    )
    return f'<section class="card"><h2>Per-token vs per-job</h2>{explain}{content}{note}</section>'


def _pick(rows: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    kinds = [r for r in rows if r["plan_type"] == kind]
    return next((r for r in kinds if r["billed"] == "true"), kinds[0] if kinds else None)


def _revenue_cell(row: dict[str, Any] | None, currency: str) -> Cell:
    if row is None:
        return ("—", "num muted")
    label = f'<span class="small muted">{e(row["plan"])}</span> '
    return (label + num(money_text(row["revenue"], currency), row["revenue"])[0], "num")


def _task_types(v: MonthView) -> str:
    edges = [Decimal(m).scaleb(-6) for m in COST_EDGES_MICROS]
    cards = []
    for t in v.task_types:
        if not t.completed:
            continue
        cards.append(_task_type_card(t, edges, v.currency))
    if not cards:
        return '<section class="card"><h2>Provider cost per task vs job price</h2><p class="muted">No task completed this month.</p></section>'
    intro = ('<p class="muted small">Completed tasks by their provider cost (all of each task\'s usage). '
             '<span class="key loss"></span> costs more than the job price of its customer\'s per-job plan: '
             "outcome pricing loses money there. Dashed lines: job prices.</p>")  # fmt: skip
    return f'<section class="card"><h2>Provider cost per task vs job price, by task type</h2>{intro}<div class="grid cells">{"".join(cards)}</div></section>'


def _task_type_card(t: TaskTypeCosts, edges: list[Decimal], currency: str) -> str:
    name = t.task_type or "(no task type)"
    prices = [Decimal(m).scaleb(-6) for m in t.job_prices_micros]
    chart = histogram(
        t.buckets, t.losing_buckets, edges, prices, currency=currency, label=f"Provider cost per {name} task"
    )
    average = task_cost(cost_decimal(t.cost_micros) / t.completed, currency)
    if t.priced:
        share = percent(Decimal(t.losing) / Decimal(t.priced))
        verdict = f'<span class="{"loss-text" if t.losing else "gain-text"}">{count(t.losing)} of {count(t.priced)} ({share}) cost more than their job price</span>'
        price_text = ", ".join(unit_price(p, currency) for p in prices)
        verdict += f' <span class="muted">· job price {e(price_text)}</span>'
    else:
        verdict = '<span class="muted">no per-job plan prices these tasks</span>'
    return (f'<div class="subcard"><h3>{e(name)}</h3><p class="small">{count(t.completed)} completed · average cost per task {e(average)} · {verdict}</p>'
            f"{chart}</div>")  # fmt: skip


def _notes(v: MonthView) -> str:
    failed_total = cost_decimal(v.failed_cost_micros)
    failed_rows = [[e(t.task_type or "(no task type)"), num(count(t.failed)), num(money(cost_decimal(t.failed_cost_micros), v.currency))]
                   for t in v.task_types if t.failed]  # fmt: skip
    failed = (table([("Task type", ""), ("Tasks", "num"), ("Cost", "num")], failed_rows, caption="failed or cancelled, by task type")
              if failed_rows else '<p class="muted">No task failed or was cancelled this month.</p>')  # fmt: skip
    if v.failed_by_customer and v.customer is None:
        worst = ", ".join(
            f"{e(r['customer'])} ({e(money(cost_decimal(r['cost_micros']), v.currency))})"
            for r in v.failed_by_customer[:3]
        )
        failed += f'<p class="small muted">Most spent on failures: {worst}</p>'
    unpriced = (table([("Model", ""), ("Events", "num"), ("Customers", "num")],
                      [[f'{e(m["provider"])}/{e(m["model"])}', num(count(m["events"])), num(count(m["customers"]))] for m in v.unpriced])
                + '<p class="small muted">Their usage counts as zero provider cost until a price is added '
                  "(<code>prices:</code> in the tenant config).</p>"
                if v.unpriced else '<p class="ok-text">Every model used this month has a price.</p>')  # fmt: skip
    adjustments = (table([("Customer", ""), ("Adjusts", ""), ("Amount", "num")],
                         [[e(a["customer"]), e(a["adjusts"]), num(money_text(a["amount"], a["currency"]), a["amount"])] for a in v.adjustments])
                   if v.adjustments else '<p class="muted">No usage of closed months arrived late.</p>')  # fmt: skip
    return (
        '<div class="grid three">'
        f'<section class="card"><h2>Failed tasks</h2><p class="big loss-text">{e(money(failed_total, v.currency))}</p>{failed}</section>'
        f'<section class="card"><h2>Unpriced models</h2>{unpriced}</section>'
        f'<section class="card"><h2>Late-usage adjustments</h2>{adjustments}</section>'
        "</div>"
    )


def _customers(p: MonthPage) -> str:
    v = p.view
    rows = sorted(v.customers, key=lambda r: (-(r["amount_minor"] or 0), r["customer"]))
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(1, p.page), pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    body = []
    for r in shown:
        name, cur = r["customer"], r["currency"]
        if r["invoice_id"] is not None:
            invoice_url = url(f"/invoices/{r['invoice_id']}")
            invoice = f'<a href="{e(invoice_url)}">{e(r["invoice_number"])}</a>'
        elif r["invoice_status"] == "draft":
            invoice = f'<a href="{e(url(f"/customers/{part(name)}/invoice", month=v.period))}">draft</a>'
        else:
            invoice = '<span class="muted">none</span>'
        tasks = (
            int(r["tasks_completed"])
            + int(r["tasks_failed"])
            + int(r["tasks_cancelled"])
            + int(r["tasks_open"])
        )
        body.append([
            f'<a href="{e(url("", month=v.period, customer=name))}" data-customer="{e(name)}">{e(name)}</a>',
            e(r["plan"]) or '<span class="muted">no plan</span>',
            num(count(int(r["tasks_completed"])), r["tasks_completed"]),
            num(count(int(r["tasks_failed"]) + int(r["tasks_cancelled"]))),
            num(money_text(r["provider_cost"], cur), r["provider_cost"], "num cost"),
            num(money_text(r["amount_due"], cur), r["amount_due"], "num amount"),
            num(money_text(r["margin"], cur), r["margin"], "num margin" + (" loss-text" if r["margin"].startswith("-") else "")),
            invoice,
            f'<a href="{e(url(f"/customers/{part(name)}/tasks", month=v.period))}">{count(tasks)} tasks</a>',
        ])  # fmt: skip
    headers = [("Customer", ""), ("Plan", ""), ("Completed", "num"), ("Failed", "num"), ("Provider cost", "num"),
               ("Amount due", "num"), ("Margin", "num"), ("Invoice", ""), ("Tasks", "")]  # fmt: skip
    pager = ""
    if pages > 1:
        links = "".join(
            f'<a class="{"current" if n == page else ""}" href="{e(url("", month=v.period, customer=v.customer, page=n))}#customers">{n}</a>'
            for n in range(1, pages + 1)
        )
        pager = f'<nav class="pager" aria-label="pages">{links}</nav>'
    caption = f"{count(len(rows))} customers, by amount due" if len(rows) > 1 else ""
    return (f'<section class="card" id="customers"><h2>Customers</h2>'
            f'{table(headers, body, css="customers", caption=caption, attrs={"data-month": v.period})}{pager}</section>')  # fmt: skip


PEOPLE = 25


def _spend_by_person(v: MonthView) -> str:
    """Each person's spend (their own and their agents'), then each agent indented beneath."""
    if not any(p["actor"] or p["agents"] for p in v.spend):
        why = "No usage this month named a person (actor) or an agent: send actor and agent on events."
        return f'<section class="card" id="spend-by-person"><h2>Spend by person</h2><p class="muted">{e(why)}</p></section>'
    body: list[list[Cell]] = []

    def row(label: str, css: str, part: dict[str, Any], attrs: str) -> None:
        cost = f"{part['cost_micros'] // 10**6}.{part['cost_micros'] % 10**6:06d}"
        body.append([
            (f"<span{attrs}>{label}</span>", css),
            num(count(part["usage_events"])), num(count(part["tokens"])),
            num(task_cost(cost, v.currency), cost, "num cost"),
        ])  # fmt: skip

    for person in v.spend[:PEOPLE]:
        name = person["actor"]
        label = e(name) if name else '<span class="muted">no person given</span>'
        row(f"<strong>{label}</strong>", "person", person, f' data-actor="{e(name)}"')
        if person["own"] is not None and person["agents"]:
            row('<span class="muted">directly, no agent</span>', "agent indent", person["own"], f' data-actor="{e(name)}" data-agent=""')
        for agent in person["agents"]:
            row(f"↳ {e(agent['agent'])}", "agent indent", agent, f' data-actor="{e(name)}" data-agent="{e(agent["agent"])}"')
    headers = [("Person / agent", ""), ("Usage events", "num"), ("Tokens", "num"), ("Provider cost", "num")]
    more = len(v.spend) - PEOPLE
    note = f'<p class="muted small">{count(more)} more people in the spend CSV.</p>' if more > 0 else ""
    caption = "A person's total includes their agents'; each agent is listed beneath its person."
    return (f'<section class="card" id="spend-by-person"><h2>Spend by person</h2>'
            f'{table(headers, body, css="spend", caption=caption)}{note}</section>')  # fmt: skip


def _downloads(v: MonthView) -> str:
    links = "".join(
        f'<a class="button download" href="{e(url(f"/reports/{v.period}/{r.name}.csv"))}" download="{e(r.filename(v.period))}" '
        f'data-report="{e(r.name)}">{e(r.filename(v.period))}</a>'
        for r in REPORTS.values()
    )
    return (f'<section class="card downloads"><h2>Download the month\'s CSV files</h2>'
            f'<p class="muted small">All customers of {e(month_long(v.period))}, as finance and spreadsheets read them.</p>'
            f'<div class="buttons">{links}</div></section>')  # fmt: skip
