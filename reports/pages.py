"""The dashboard's other pages: sign-in, loading, not found, too many requests, an invoice, a
customer's tasks."""

from __future__ import annotations

from collections.abc import Sequence

from reports.cells import minor_decimal
from reports.format import count, instant, money, month_long, quantity, task_cost, unit_price
from reports.html import badge, e, frame, num, part, table, topbar, url
from reports.repository import InvoiceRecord


def sign_in(*, csrf: str, version: str, error: str = "", next_url: str = "") -> str:
    problem = f'<p class="notice warn" role="alert">{e(error)}</p>' if error else ""
    body = f"""<section class="signin card">
<h1><span class="logo" aria-hidden="true"></span>taskmeter finance</h1>
<p class="muted">Sign in with an API key that has the <code>read</code> scope. The key is checked once and never
stored in your browser: the session lasts 8 hours.</p>
{problem}
<form method="post" action="{url("/sign-in")}">
<input type="hidden" name="csrf" value="{e(csrf)}">
<input type="hidden" name="next" value="{e(next_url)}">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" spellcheck="false" required placeholder="tm_…" autofocus>
<button type="submit" class="button primary">Sign in</button>
</form>
<p class="small muted">Create one with <code>taskmeter keys create --tenant NAME --scopes read</code>.</p>
</section>"""
    return frame("Sign in", body, version=version, page_class="signin-page")


def not_found(message: str, *, version: str, tenant: str = "", csrf: str = "") -> str:
    header = topbar(tenant, csrf) if tenant else ""
    body = f"""<section class="card empty"><h1>Not found</h1><p>{e(message)}</p>
<p><a class="button" href="{url("")}">Back to the dashboard</a></p></section>"""
    return frame("Not found", body, version=version, header=header)


def too_many_requests(seconds: int, *, version: str) -> str:
    body = f"""<section class="card empty"><h1>Too many requests</h1>
<p>This API key has made more requests than its rate limit allows. Try again in {count(seconds)} s.</p>
<p><a class="button" href="{url("")}">Back to the dashboard</a></p></section>"""
    return frame("Too many requests", body, version=version)


def loading(month: str, *, tenant: str, csrf: str, version: str, seconds: int = 3) -> str:
    body = f"""<section class="status"><h1>{e(month_long(month))}</h1>{badge("preparing", "draft")}</section>
<section class="card loading" aria-busy="true">
<div class="spinner" aria-hidden="true"></div>
<div><h2>Preparing the figures of {e(month_long(month))}…</h2>
<p class="muted">This month has a lot of usage: its invoices, comparison and costs are being computed once and kept,
so the next visits open at once. This page refreshes by itself.</p></div>
</section>
<div class="kpis skeleton" aria-hidden="true"><div class="kpi"></div><div class="kpi"></div><div class="kpi"></div><div class="kpi"></div></div>"""
    return frame(
        f"Preparing {month_long(month)}", body, version=version, header=topbar(tenant, csrf), refresh=seconds
    )


STRIPE_STATES = {
    "pending": ("being pushed to Stripe", "draft"),
    "retrying": ("Stripe was unavailable; retrying", "draft"),
    "synced": ("in Stripe", "ok"),
    "failed": ("Stripe refused it", "warn"),
}


def invoice(record: InvoiceRecord, *, tenant: str, csrf: str, version: str) -> str:
    cur = record.currency
    rows = [
        [_line_no(record, line.line_no), e(line.description) + (f' {badge("adjusts " + line.adjusts_period, "draft")}' if line.adjusts_period else ""),
         num(quantity(line.quantity), line.quantity), num(unit_price(line.unit_price, cur), line.unit_price),
         num(money(minor_decimal(line.amount_minor, cur), cur), f"{minor_decimal(line.amount_minor, cur):f}")]
        for line in record.lines
    ]  # fmt: skip
    title = record.number or f"Draft invoice · {record.customer} · {record.period}"
    state = badge("finalized", "ok") if record.status == "finalized" else badge(record.status, "draft")
    credited = ""
    if record.credited_minor:
        credited = f"<p>Credited: {e(money(minor_decimal(record.credited_minor, cur), cur))}</p>"
    stripe = ""
    if record.stripe_status in STRIPE_STATES:
        text, kind = STRIPE_STATES[record.stripe_status]
        stripe = f'<p class="stripe">Stripe: {badge(text, kind)}</p>'
        if record.stripe_status == "failed":
            stripe += (f'<p class="notice warn" data-stripe-error>{e(record.stripe_error or "no reason given")}. '
                       "Fix the cause, then run <code>taskmeter stripe sync --retry-failed</code>.</p>")  # fmt: skip
    back = url("", month=record.period, customer=record.customer)
    lines = table(
        [("Line", "num"), ("Description", ""), ("Quantity", "num"), ("Unit price", "num"), ("Amount", "num")],
        rows,
        css="lines",
    )
    body = f"""<section class="status"><h1>{e(title)}</h1>{state}<a class="back" href="{e(back)}">← {e(record.customer)}, {e(month_long(record.period))}</a></section>
<section class="card"><dl class="facts"><div><dt>Customer</dt><dd>{e(record.customer)}</dd></div><div><dt>Period</dt><dd>{e(record.period)}</dd></div>
<div><dt>Plan</dt><dd>{e(record.plan)}</dd></div><div><dt>Total</dt><dd class="big" data-total="{e(f"{minor_decimal(record.total_minor, cur):f}")}">{e(money(minor_decimal(record.total_minor, cur), cur))}</dd></div></dl>
{credited}{stripe}{lines}</section>"""
    return frame(title, body, version=version, header=topbar(tenant, csrf))


def _line_no(record: InvoiceRecord, line_no: int) -> tuple[str, str]:
    """A stored invoice's line number links to the tasks behind the line (`reports.evidence_pages`)."""
    if record.id is None:
        return num(str(line_no))
    link = url(f"/invoices/{record.id}/lines/{line_no}")
    return f'<a href="{e(link)}" data-line="{line_no}" title="the tasks behind this line">{line_no}</a>', "num"


TASKS_PER_PAGE = 100
TASK_HEADERS = [("Task", ""), ("Type", ""), ("Status", ""), ("Started (UTC)", ""), ("Ended (UTC)", ""), ("Events", "num"),
                ("Input tokens", "num"), ("Output tokens", "num"), ("Provider cost", "num"), ("Priced", "")]  # fmt: skip


def tasks(customer: str, month: str, rows: Sequence[dict[str, str]], *, page: int, more: bool, currency: str,
          tenant: str, csrf: str, version: str) -> str:  # fmt: skip
    body_rows = [
        [(f'<span title="{e(r["task"])}">{e(r["task"])}</span>', "task"), e(r["task_type"]) or '<span class="muted">—</span>',
         badge(r["status"], r["status"]), (_when(r["started_at"]), "time"), (_when(r["ended_at"]), "time"),
         num(count(int(r["usage_events"])), r["usage_events"]), num(count(int(r["input_tokens"])), r["input_tokens"]),
         num(count(int(r["output_tokens"])), r["output_tokens"]), num(task_cost(r["provider_cost"], currency), r["provider_cost"]),
         "yes" if r["priced"] == "true" else badge("unpriced", "warn")]
        for r in rows
    ]  # fmt: skip
    pager = []
    if page > 1:
        pager.append(f'<a href="{e(url(_tasks_path(customer), month=month, page=page - 1))}">← previous</a>')
    if more:
        pager.append(f'<a href="{e(url(_tasks_path(customer), month=month, page=page + 1))}">next →</a>')
    first = (page - 1) * TASKS_PER_PAGE + 1
    if page == 1 and not more:
        caption = f"{count(len(body_rows))} {'task' if len(body_rows) == 1 else 'tasks'}"
    else:
        caption = f"tasks {count(first)}–{count(first + len(body_rows) - 1)}" + (", more on the next page" if more else "")
    content = (table(TASK_HEADERS, body_rows, css="tasks", caption=caption) if body_rows
               else '<p class="muted">No task of this customer has an event in this month.</p>')  # fmt: skip
    back = url("", month=month, customer=customer)
    body = f"""<section class="status"><h1>Tasks · {e(customer)}</h1><span class="muted">{e(month_long(month))}</span>
<a class="back" href="{e(back)}">← {e(customer)}, {e(month_long(month))}</a></section>
<section class="card"><p class="muted small">Every task with an event in the month, with the month's share of its usage (as in the tasks CSV).
Times are UTC.</p>{content}<nav class="pager">{" ".join(pager)}</nav></section>"""
    return frame(f"Tasks of {customer}", body, version=version, header=topbar(tenant, csrf))


def _when(text: str) -> str:
    return e(instant(text)) if text else '<span class="muted">—</span>'


def _tasks_path(customer: str) -> str:
    return f"/customers/{part(customer)}/tasks"


def quarantine(rows: Sequence[dict[str, object]], total: int, *, tenant: str, csrf: str, version: str) -> str:
    """What the quarantine is, what to do about it, and the newest entries."""
    body_rows = [
        [num(str(r["id"])), e(str(r["event_id"])), e(str(r["time"] or r["time_us"])), e(str(r["customer"])),
         e(str(r["task"])), e(str(r["reason"]))]
        for r in rows
    ]  # fmt: skip
    listed = (table([("Entry", "num"), ("Event", ""), ("Time (UTC)", ""), ("Customer", ""), ("Task", ""), ("Reason", "")],
                    body_rows, css="quarantine", caption=f"the newest {len(rows)} of {total}")
              if body_rows else '<p class="ok-text">No event is in quarantine.</p>')  # fmt: skip
    body = f"""<section class="status"><h1>Quarantine</h1>{badge(f"{total} event(s)", "warn" if total else "ok")}
<a class="back" href="{url("")}">← Back to the dashboard</a></section>
<section class="card"><p>An event lands here when it was stored but billing cannot process it: a time outside what
every part of taskmeter can represent (1970-01-02 to 2262-01-01 UTC), or token counts that cannot be (cache tokens
above the input tokens, negative counts). Only events stored before taskmeter checked these at the door, or written
into the database by hand, can be. They are set aside so that the tenant's other events are rolled up, invoiced and
reported as usual; an event in quarantine is <strong>not billed</strong> and not lost.</p>
<p>An admin decides for each: ask the sender to send it again corrected (its id is free again) and drop this one with
<code>taskmeter quarantine drop ID</code>, or, when the cause is fixed on taskmeter's side, send it back through
validation with <code>taskmeter quarantine release ID</code> (it stays here if still invalid). The API has the same:
<code>GET /v1/quarantine</code>, <code>POST /v1/quarantine/ID/release</code>, <code>POST /v1/quarantine/ID/drop</code>.
Both are recorded in the audit log.</p>
{listed}</section>"""
    return frame("Quarantine", body, version=version, header=topbar(tenant, csrf))
