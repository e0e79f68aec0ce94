"""HTML building blocks of the dashboard: escaping, the page frame, URLs, tables.

Pages are strings built by small functions; every value that comes from data goes through `e`
(attribute-safe escaping). No inline script or style: the frame links one stylesheet and one
script, served by the dashboard router, so the Content-Security-Policy can forbid inline code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from importlib.resources import files
from urllib.parse import quote, urlencode

STATIC = files("reports") / "static"
BASE = "/dashboard"


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def url(path: str, **query: object) -> str:
    """A dashboard URL with its query (None and "" left out), path parts already quoted."""
    params = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{BASE}{path}" + (f"?{urlencode(params)}" if params else "")


def part(text: str) -> str:
    """A URL path segment (customer names may hold anything)."""
    return quote(text, safe="")


def asset(name: str, version: str) -> str:
    return f"{BASE}/static/{name}?v={version}"


def frame(
    title: str, body: str, *, version: str, header: str = "", refresh: int | None = None, page_class: str = ""
) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
{meta}<title>{e(title)} · taskmeter finance</title>
<link rel="icon" href="{asset("favicon.svg", version)}" type="image/svg+xml">
<link rel="stylesheet" href="{asset("dashboard.css", version)}">
<script src="{asset("dashboard.js", version)}" defer></script>
</head>
<body class="{e(page_class)}">
<div class="progress" aria-hidden="true"></div>
{header}
<main id="main">
{body}
</main>
<footer class="footer">taskmeter · outcome-based usage metering and billing for AI agents</footer>
</body>
</html>
"""


def topbar(tenant: str, csrf: str) -> str:
    return f"""<header class="topbar">
<a class="brand" href="{BASE}"><span class="logo" aria-hidden="true"></span>taskmeter <span class="muted">finance</span></a>
<span class="tenant" title="tenant">{e(tenant)}</span>
<form class="signout" method="post" action="{BASE}/sign-out"><input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit" class="link">Sign out</button></form>
</header>"""


Cell = tuple[str, str] | str  # (html, class) or html


def table(headers: Iterable[tuple[str, str]], rows: Iterable[Iterable[Cell]], *, css: str = "", caption: str = "",
          attrs: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """A table; headers are (text, class) with class `num` for right-aligned numbers."""
    extra = "".join(f' {k}="{e(v)}"' for k, v in (attrs or {}).items())
    head = "".join(f'<th scope="col" class="{c}">{e(t)}</th>' for t, c in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{c[1]}">{c[0]}</td>' if isinstance(c, tuple) else f"<td>{c}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return (f'<div class="table-wrap"><table class="{css}"{extra}>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')  # fmt: skip


def num(text: str, value: str | None = None, css: str = "num") -> tuple[str, str]:
    """A numeric cell; `value` (the CSV's text) goes in data-value for tests and copy-paste."""
    data = f' data-value="{e(value)}"' if value is not None else ""
    return f"<span{data}>{e(text)}</span>", css


def badge(text: str, kind: str = "") -> str:
    return f'<span class="badge {e(kind)}">{e(text)}</span>'


def static_version() -> str:
    """A short digest of the static files, for cache-busting URLs."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(p.name for p in STATIC.iterdir() if p.is_file()):
        digest.update((STATIC / name).read_bytes())
    return digest.hexdigest()[:10]
