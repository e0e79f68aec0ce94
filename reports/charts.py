"""Charts of the dashboard, drawn on the server as inline SVG (no script, no network).

Pure functions from figures to markup. Colours and fonts come from the stylesheet through
classes (the page's Content-Security-Policy allows no inline styles); geometry is computed here
with floats, which only place pixels: every number written on a chart is formatted from exact
values by `reports.format`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from html import escape

from reports.format import compact_money, month_short


@dataclass(frozen=True)
class Bar:
    label: str
    value: Decimal
    text: str  # the value as shown
    href: str | None = None


STEPS = tuple(Decimal(m) for m in ("1", "2", "2.5", "5", "10"))


def _ticks(low: Decimal, high: Decimal, count: int = 4, *, whole: bool = False) -> list[Decimal]:
    """Round tick values covering [low, high] (low <= 0 <= high), exact, so that their labels are
    the figures' own; `whole`: counts, steps of 1 at least."""
    span = (high - low) or Decimal(1)
    raw = span / count
    magnitude = Decimal(1).scaleb(raw.adjusted())
    step = next(m * magnitude for m in STEPS if m * magnitude >= raw)
    if whole:
        step = max(Decimal(1), step.to_integral_value(rounding=ROUND_CEILING))
    value = (low / step).to_integral_value(rounding=ROUND_FLOOR) * step
    ticks = []
    while value <= high:
        ticks.append(value)
        value += step
    if ticks[-1] < high:
        ticks.append(value)
    return ticks


def _svg(width: int, height: int, label: str, body: str, css: str = "chart") -> str:
    return (f'<svg class="{css}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
            f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>{body}</svg>')  # fmt: skip


@dataclass(frozen=True)
class MonthPoint:
    period: str  # YYYY-MM
    state: str  # ready, pending, empty
    revenue: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    margin: Decimal = Decimal(0)
    revenue_text: str = ""
    cost_text: str = ""
    margin_text: str = ""


def months_chart(points: Sequence[MonthPoint], currency: str, *, selected: str) -> str:
    """Revenue and provider cost as paired bars, margin as a line, one group per month."""
    width, height, left, right, top, bottom = 760, 280, 64, 12, 16, 40
    ready = [p for p in points if p.state == "ready"]
    values = [v for p in ready for v in (p.revenue, p.cost, p.margin)] or [Decimal(0)]
    ticks = _ticks(min(Decimal(0), *values), max(Decimal(0), *values))
    low, high = float(ticks[0]), float(ticks[-1])
    plot_h, plot_w = height - top - bottom, width - left - right

    def y(value: float) -> float:
        return top + (high - value) / ((high - low) or 1) * plot_h

    parts = []
    for tick in ticks:
        parts.append(
            f'<line class="grid{" zero" if tick == 0 else ""}" x1="{left}" x2="{width - right}" y1="{y(float(tick)):.1f}" y2="{y(float(tick)):.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{left - 8}" y="{y(float(tick)) + 4:.1f}" text-anchor="end">{escape(compact_money(tick, currency))}</text>'
        )
    slot = plot_w / max(1, len(points))
    bar = min(22.0, slot * 0.32)
    line: list[tuple[float, float]] = []
    dots: list[str] = []
    for i, point in enumerate(points):
        cx = left + slot * (i + 0.5)
        label = month_short(point.period, first=i == 0)
        css = "axis selected" if point.period == selected else "axis"
        parts.append(
            f'<text class="{css}" x="{cx:.1f}" y="{height - bottom + 18}" text-anchor="middle">{escape(label)}</text>'
        )
        if point.period == selected:
            parts.insert(  # behind the grid and the bars
                0, f'<rect class="highlight" x="{cx - slot / 2 + 2:.1f}" y="{top}" width="{slot - 4:.1f}" height="{plot_h}"/>'
            )
        if point.state == "pending":
            parts.append(
                f'<text class="pending" x="{cx:.1f}" y="{y(0) - 8:.1f}" text-anchor="middle">…<title>{escape(point.period)}: being computed</title></text>'
            )
            continue
        if point.state != "ready":
            continue
        for offset, value, css_bar, text, what in (
            (-bar - 1, point.revenue, "bar revenue", point.revenue_text, "revenue"),
            (1, point.cost, "bar cost", point.cost_text, "provider cost"),
        ):
            top_y, base = sorted((y(float(value)), y(0)))
            parts.append(f'<rect class="{css_bar}" x="{cx + offset:.1f}" y="{top_y:.1f}" width="{bar:.1f}" height="{max(base - top_y, 0.5):.1f}">'
                         f'<title>{escape(point.period)} {what}: {escape(text)}</title></rect>')  # fmt: skip
        line.append((cx, y(float(point.margin))))
        dots.append(f'<circle class="dot {"loss" if point.margin < 0 else "gain"}" cx="{cx:.1f}" cy="{y(float(point.margin)):.1f}" r="3.5">'
                     f'<title>{escape(point.period)} margin: {escape(point.margin_text)}</title></circle>')  # fmt: skip
    if len(line) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{yy:.1f}" for i, (x, yy) in enumerate(line))
        parts.append(f'<path class="margin-line" d="{path}"/>')
    parts.extend(dots)  # the margin line and its dots above the bars
    return _svg(width, height, "Revenue, provider cost and margin by month", "".join(parts))


def bars_chart(bars: Sequence[Bar], *, label: str, css: str = "revenue") -> str:
    """Horizontal bars (negative values to the left of zero), one row per item."""
    row, width, label_w, text_w = 26, 440, 118, 84
    height = max(1, len(bars)) * row + 8
    values = [float(b.value) for b in bars] or [0.0]
    low, high = min(0.0, min(values)), max(0.0, max(values))
    span = (high - low) or 1.0
    plot = width - label_w - text_w
    zero = label_w + (0 - low) / span * plot
    parts = [f'<line class="grid zero" x1="{zero:.1f}" x2="{zero:.1f}" y1="2" y2="{height - 4}"/>']
    for i, item in enumerate(bars):
        yy = 4 + i * row
        x1 = label_w + (float(item.value) - low) / span * plot
        left_x, w = min(zero, x1), abs(x1 - zero)
        kind = css if item.value >= 0 else "loss"
        name = escape(item.label if len(item.label) <= 16 else item.label[:15] + "…")
        text = f'<text class="label" x="{label_w - 8}" y="{yy + 16}" text-anchor="end">{name}</text>'
        if item.href:
            text = f'<a href="{escape(item.href)}">{text}</a>'
        parts.append(text)
        parts.append(f'<rect class="bar {kind}" x="{left_x:.1f}" y="{yy + 3}" width="{max(w, 0.5):.1f}" height="{row - 8}">'
                     f'<title>{escape(item.label)}: {escape(item.text)}</title></rect>')  # fmt: skip
        parts.append(
            f'<text class="value" x="{width - 4}" y="{yy + 16}" text-anchor="end">{escape(item.text)}</text>'
        )
    return _svg(width, height, label, "".join(parts), "chart bars")


def histogram(buckets: Sequence[int], losing: Sequence[int], edges: Sequence[Decimal], prices: Sequence[Decimal],
              *, currency: str, label: str) -> str:  # fmt: skip
    """Tasks per provider-cost bucket (edges: increasing bucket bounds), the part costing more
    than its job price in the loss colour, and the job prices as vertical lines."""
    width, height, left, right, top, bottom = 420, 170, 36, 8, 14, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    slot = plot_w / len(buckets)
    most = max(max(buckets, default=0), 1)
    ticks = _ticks(Decimal(0), Decimal(most), 3, whole=True)
    top_tick = float(ticks[-1])
    parts = []
    for tick in ticks:
        yy = top + plot_h - float(tick) / top_tick * plot_h
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{left - 5}" y="{yy + 4:.1f}" text-anchor="end">{int(tick):,}</text>'
        )
    for i, (count, bad) in enumerate(zip(buckets, losing, strict=True)):
        x = left + i * slot + 1
        h_all, h_bad = count / top_tick * plot_h, bad / top_tick * plot_h
        base = top + plot_h
        bounds = _bucket_label(i, edges, currency)
        if count:
            parts.append(f'<rect class="bar cost" x="{x:.1f}" y="{base - h_all:.1f}" width="{slot - 2:.1f}" height="{h_all:.1f}">'
                         f'<title>{escape(bounds)}: {count:,} tasks</title></rect>')  # fmt: skip
        if bad:
            parts.append(f'<rect class="bar loss" x="{x:.1f}" y="{base - h_bad:.1f}" width="{slot - 2:.1f}" height="{h_bad:.1f}">'
                         f'<title>{escape(bounds)}: {bad:,} tasks cost more than their job price</title></rect>')  # fmt: skip
    for i, edge in enumerate(edges):
        if i % 2 == 0:
            x = left + (i + 1) * slot
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">{escape(compact_money(edge, currency))}</text>'
            )
    for price in prices:
        x = left + _position(price, edges) * slot
        parts.append(
            f'<line class="price" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{top + plot_h}"><title>job price {escape(compact_money(price, currency))}</title></line>'
        )
    parts.append(
        f'<text class="axis" x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">provider cost per task ({escape(currency)}, log scale)</text>'
    )
    return _svg(width, height, label, "".join(parts), "chart histogram")


def _bucket_label(i: int, edges: Sequence[Decimal], currency: str) -> str:
    if i == 0:
        return f"below {compact_money(edges[0], currency)}"
    if i == len(edges):
        return f"{compact_money(edges[-1], currency)} and more"
    return f"{compact_money(edges[i - 1], currency)} to {compact_money(edges[i], currency)}"


def _position(price: Decimal, edges: Sequence[Decimal]) -> float:
    """Where a price falls on the bucket axis (bucket i spans [i, i + 1]; log inside a bucket)."""
    if price <= 0:
        return 0.0
    if price < edges[0]:
        return max(0.0, 1 + math.log10(float(price / edges[0])))
    for i in range(1, len(edges)):
        if price < edges[i]:
            return i + math.log(float(price / edges[i - 1])) / math.log(float(edges[i] / edges[i - 1]))
    return float(len(edges)) + 0.5
