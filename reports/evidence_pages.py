"""The dashboard's drill-down (DESIGN.md "Outcome truth", evidence): from an invoice line to the
tasks behind it (paged, with the CSV of all of them), and from a task to its timeline: its events
in order with who sent each, how it settled under which outcome-rule version, the price version
and invoice that billed it, its disputes and credit notes. Times are UTC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pricing.outcome_counts import COUNTS, TaskTypeOutcomes
from pricing.outcomes import format_duration as duration_text
from pricing.timeline import Timeline
from reports.cells import minor_decimal
from reports.format import count, money, task_cost
from reports.html import badge, e, frame, num, part, table, topbar, url

LINE_TASKS_PER_PAGE = 100
STATE_KINDS = {"settled": "ok", "pending": "draft", "awaiting acceptance": "draft", "reopened": "warn",
               "rejected": "warn", "failed": "warn", "cancelled": "warn"}  # fmt: skip


def task_path(task: str) -> str:
    return f"/tasks/{part(task)}"


def line_path(invoice_id: int, line_no: int) -> str:
    return f"/invoices/{invoice_id}/lines/{line_no}"


def _when(moment: datetime | None) -> str:
    return e(f"{moment:%Y-%m-%d %H:%M:%S}") if moment is not None else '<span class="muted">—</span>'


def line_tasks(invoice: Any, line: Any, rows: Sequence[dict[str, Any]], *, total: int, page: int, currency: str,
               tenant: str, csrf: str, version: str) -> str:  # fmt: skip
    """One page of the tasks behind an invoice line (`reports.evidence.page` rows)."""
    body_rows = [
        [f'<a href="{e(url(task_path(r["task"])))}" data-task="{e(r["task"])}">{e(r["task"])}</a>',
         e(r["task_type"]) or '<span class="muted">—</span>', badge(r["status"], r["status"]),
         (e((r["billed_at"] or "")[:19].replace("T", " ")) or '<span class="muted">—</span>', "time"),
         num(task_cost(r["provider_cost"], currency), r["provider_cost"]),
         num(str(r["outcome_rule_version"]) if r["outcome_rule_version"] is not None else "—")]
        for r in rows
    ]  # fmt: skip
    base = line_path(invoice.id, line.line_no)
    pager = []
    if page > 1:
        pager.append(f'<a href="{e(url(base, page=page - 1))}">← previous</a>')
    if page * LINE_TASKS_PER_PAGE < total:
        pager.append(f'<a href="{e(url(base, page=page + 1))}" data-next>next →</a>')
    first = (page - 1) * LINE_TASKS_PER_PAGE + 1
    caption = (f"tasks {count(first)}–{count(first + len(body_rows) - 1)} of {count(total)}" if body_rows
               else f"{count(total)} tasks")  # fmt: skip
    headers = [("Task", ""), ("Type", ""), ("Status", ""), ("Billed at (UTC)", ""), ("Provider cost", "num"),
               ("Outcome rules", "num")]  # fmt: skip
    content = (table(headers, body_rows, css="tasks line-tasks", caption=caption) if body_rows
               else '<p class="muted">No task is behind this line: it is a monthly term (a platform fee, a minimum), '
                    "or no task is on this page.</p>")  # fmt: skip
    csv_name = f"invoice-{invoice.id}-line-{line.line_no}-tasks.csv"
    download = (f'<a class="button download" href="{e(url(base + "/tasks.csv"))}" download="{e(csv_name)}" '
                f'data-evidence-csv>{e(csv_name)}</a>')  # fmt: skip
    amount = money(minor_decimal(line.amount_minor, currency), currency)
    title = f"Line {line.line_no} · {invoice.number or invoice.id}"
    body = f"""<section class="status"><h1>{e(title)}</h1><span class="muted">{e(line.description)} · {e(amount)}</span>
<a class="back" href="{e(url(f"/invoices/{invoice.id}"))}">← {e(invoice.number or invoice.id)}</a></section>
<section class="card"><p class="muted small">The tasks this line bills, by task id, read again as billing read them.
Open a task for its events and how it settled. The CSV holds every task of the line.</p>
<div class="buttons">{download}</div>{content}<nav class="pager">{" ".join(pager)}</nav></section>"""
    return frame(title, body, version=version, header=topbar(tenant, csrf))


def task_timeline(t: Timeline, *, tenant: str, csrf: str, version: str) -> str:
    s = t.settlement
    state = badge(s.state, STATE_KINDS.get(s.state, ""))
    facts = [("Customer", e(t.customer)), ("Task type", e(t.task_type) or '<span class="muted">none</span>'),
             ("Status", e(s.status)), ("Settlement", _settlement_text(t)),
             ("Outcome rules", f"version {s.rule_version}" if s.rule_version is not None else "none (billable once completed)"),
             ("Price version", f"<code>{e(t.price_version)}</code>" if t.price_version else '<span class="muted">—</span>')]  # fmt: skip
    if t.invoice is not None:
        link = url(f"/invoices/{t.invoice['id']}")
        facts.append(("Invoice", f'<a href="{e(link)}">{e(t.invoice["number"] or t.invoice["id"])}</a> ({e(t.invoice["period"])})'))
    dl = "".join(f'<div><dt>{e(k)}</dt><dd data-fact="{e(k.lower().replace(" ", "-"))}">{v}</dd></div>' for k, v in facts)
    events = [
        [(_when(ev["time"]), "time"), badge(ev["type"], "plan"),
         e(f'{ev["provider"]}/{ev["model"]}') if ev["model"] else '<span class="muted">—</span>',
         num(count(ev["input_tokens"])), num(count(ev["output_tokens"])),
         _key(ev["key"]), e(ev.get("actor")) or '<span class="muted">—</span>', e(ev.get("agent")) or '<span class="muted">—</span>']
        for ev in t.events
    ]  # fmt: skip
    headers = [("Time (UTC)", ""), ("Type", ""), ("Model", ""), ("Input tokens", "num"), ("Output tokens", "num"),
               ("Sent with key", ""), ("Actor", ""), ("Agent", "")]  # fmt: skip
    more = '<p class="muted small">Only the first events are shown; <code>GET /v1/tasks/{task}/events</code> pages through all.</p>' if t.more_events else ""
    listed = table(headers, events, css="timeline", caption=f"{count(len(t.events))} events, in time order") if events else '<p class="muted">No event.</p>'
    body = f"""<section class="status"><h1>Task {e(t.task)}</h1>{state}
<a class="back" href="{e(url("", customer=t.customer))}">← {e(t.customer)}</a></section>
<section class="card"><dl class="facts evidence">{dl}</dl></section>
<section class="card"><h2>Timeline</h2>{listed}{more}</section>
{_disputes(t)}"""
    return frame(f"Task {t.task}", body, version=version, header=topbar(tenant, csrf))


def _settlement_text(t: Timeline) -> str:
    s = t.settlement
    if s.state == "settled":
        text = f"settled at {_when(s.settled_at)}"
    elif s.state == "pending":
        text = f"pending until {_when(s.settled_at)}"
    elif s.state == "awaiting acceptance":
        text = "pending: awaiting acceptance (task.accepted)"
    else:
        text = e(s.state)
    rule = []
    if s.settle_after is not None and not s.require_acceptance:
        rule.append(f"settles {duration_text(s.settle_after)} after completion")
    if s.require_acceptance:
        rule.append("requires acceptance")
    if s.rule_version is not None:
        rule.append(f"disputes within {duration_text(s.dispute_window)}")
    if s.reopened:
        text += f"; reopened {count(s.reopened)}× (last {_when(s.reopened_at)})"
    if s.rejected:
        text += f"; rejected {count(s.rejected)}×"
    return text + (f' <span class="muted small">({e("; ".join(rule))})</span>' if rule else "")


def _invoice_link(invoice_id: int, number: str | None) -> str:
    return f'<a href="{e(url(f"/invoices/{invoice_id}"))}">{e(number or invoice_id)}</a>'


def _key(key: dict[str, Any] | None) -> str:
    if key is None:
        return '<span class="muted">none (command line or bulk load)</span>'
    return f'<span data-key-id="{e(key["id"])}">{e(key["name"]) or "unnamed"} <code>{e(key["prefix"])}</code></span>'


def _disputes(t: Timeline) -> str:
    if not t.disputes and not t.credit_notes:
        return ""
    rows = [
        [num(str(d["id"])), badge(d["status"], {"accepted": "ok", "rejected": "warn"}.get(d["status"], "draft")), e(d["reason"]),
         _when(d["opened_at"]), e(d["opened_by"]), _when(d["resolved_at"]), e(d["note"] or "")]
        for d in t.disputes
    ]  # fmt: skip
    disputes = table([("Dispute", "num"), ("Status", ""), ("Reason", ""), ("Opened (UTC)", ""), ("By", ""),
                      ("Resolved (UTC)", ""), ("Note", "")], rows, css="disputes") if rows else ""  # fmt: skip
    notes = [
        [num(str(n["id"])), _invoice_link(n["invoice_id"], n["number"]),
         num(money(minor_decimal(n["amount_minor"], n["currency"]), n["currency"])), e(n["reason"]),
         num(str(n["dispute_id"]) if n["dispute_id"] is not None else "—")]
        for n in t.credit_notes
    ]  # fmt: skip
    credit = table([("Credit note", "num"), ("Invoice", ""), ("Amount", "num"), ("Reason", ""), ("Dispute", "num")],
                   notes, css="credit-notes") if notes else ""  # fmt: skip
    return f'<section class="card" id="disputes"><h2>Disputes and credit notes</h2>{disputes}{credit}</section>'


def outcomes_panel(rows: Sequence[TaskTypeOutcomes] | str, currency: str, month: str) -> str:
    """The month page's panel: per task type, the jobs by outcome and the effective price per
    settled job (exact, rounded once here by `money`); or a note saying why there are none."""
    if isinstance(rows, str):
        return f'<section class="card" id="outcomes"><h2>Outcomes by task type</h2><p class="muted" data-outcomes-note>{e(rows)}</p></section>'
    body = [
        [e(r.task_type) if r.task_type else '<span class="muted">(no task type)</span>',
         *(num(count(getattr(r, name)), str(getattr(r, name))) for name in COUNTS),
         num(money(r.billed, currency), f"{r.billed:f}"),
         num(money(r.price_per_settled_job, currency), f"{r.price_per_settled_job:f}") if r.price_per_settled_job is not None
         else ("—", "num muted")]
        for r in rows
    ]  # fmt: skip
    headers = [("Task type", ""), ("Completed", "num"), ("Settled", "num"), ("Pending", "num"), ("Reopened", "num"),
               ("Rejected", "num"), ("Disputed", "num"), ("Billed per job", "num"), ("Price per settled job", "num")]  # fmt: skip
    explain = ("Jobs of the month by outcome. Settled jobs are the ones billed this month; pending ones await their "
               "settlement window or acceptance and bill in the month they settle. The price per settled job is what "
               "per-job plans billed for settled jobs divided by those jobs (customers billed per token are left out).")  # fmt: skip
    content = (table(headers, body, css="outcomes", attrs={"data-month": month}) if body
               else '<p class="muted">No job completed, settled or was disputed this month.</p>')  # fmt: skip
    return f'<section class="card" id="outcomes"><h2>Outcomes by task type</h2><p class="muted small">{e(explain)}</p>{content}</section>'
