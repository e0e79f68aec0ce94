"""Security headers on every response, and the dashboard's cookies, CSRF protection and
Content-Security-Policy (no inline script or style)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from http.cookies import SimpleCookie

import httpx
import pytest

from api.dashboard_http import safe_next
from tests.conftest import LiveServer
from tests.security.conftest import CLOSED_MONTH, World, sign_in

# `next` values that leave the dashboard, however written: each must fall back to /dashboard.
LEAVING = (
    "https://evil.example/", "//evil.example/dashboard", "///evil.example/dashboard", "http:/dashboard",
    "javascript:alert(1)", "dashboard", " //evil.example", "/dashboard/../../v1/usage", "/dashboard/..",
    "/dashboard/%2e%2e/%2E%2e/v1/usage", "/dashboard/.%2e/v1/usage", "/dashboard/%252e%252e/v1/usage",
    "/dashboard/..%2f..%2fv1/usage", "/dashboard%2f..%2fv1", "/%2fevil.example/dashboard", "/dashboard\\..\\v1",
    "/dashboard/%5c../v1", "\\\\evil.example\\dashboard", "/dashboard\r\nLocation: //evil.example",
    "/dashboard/%0d%0aSet-Cookie:x=1", "/dashboardevil", "/v1/events", "/", "",
)  # fmt: skip
# `next` values under the dashboard, and where sign-in sends the browser.
STAYING = (
    ("/dashboard", "/dashboard"),
    ("/dashboard/invoices/7?month=2026-10&customer=a%20b", "/dashboard/invoices/7?month=2026-10&customer=a%20b"),
    ("/dashboard/./customers/../invoices/7", "/dashboard/invoices/7"),
    ("/dashboard//invoices/7/#top", "/dashboard/invoices/7"),
    ("/dashboard/customers/%2e%2e/reports/2026-10/customers.csv", "/dashboard/reports/2026-10/customers.csv"),
)


@pytest.fixture
def browser(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as client:
        yield client


def https(live_server: LiveServer) -> httpx.Client:
    """As if through a TLS-terminating proxy on this host (uvicorn trusts its X-Forwarded-Proto)."""
    return httpx.Client(base_url=live_server.url, headers={"X-Forwarded-Proto": "https"}, timeout=30)


def set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        found.update({name: cookie for name in cookie})
    return found


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


class TestEveryResponse:
    def test_security_headers_on_api_errors_files_and_docs(self, alpha: World, live_server: LiveServer) -> None:
        with live_server.client(alpha.key) as client, live_server.client() as anonymous:
            answers = {
                "json": client.get("/v1/plans"),
                "404": client.get(f"/v1/invoices/{alpha.invoice_id + 1000}"),
                "no route": client.get("/nowhere"),
                "401": anonymous.get("/v1/plans"),
                "413": anonymous.post("/v1/events", content=b"x" * (11 * 1024 * 1024)),
                "csv": client.get(f"/v1/reports/{CLOSED_MONTH}/customers.csv"),
                "schema": anonymous.get("/openapi.json"),
                "docs": anonymous.get("/docs"),
                "health": anonymous.get("/healthz"),
                "dashboard": anonymous.get("/dashboard/sign-in"),
            }
        for name, response in answers.items():
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff", name
            assert headers["x-frame-options"] == "DENY", name
            assert headers["referrer-policy"] in ("no-referrer", "same-origin"), name
            assert "frame-ancestors 'none'" in headers["content-security-policy"], name
            assert "strict-transport-security" not in headers, name  # plain http
        for name in ("json", "404", "401", "413", "csv", "schema", "health"):
            assert answers[name].headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'", name
        assert answers["json"].headers["cache-control"] == "no-store"  # answers to a key are not cached
        assert answers["csv"].headers["cache-control"] == "no-store"

    def test_strict_transport_security_over_https(self, live_server: LiveServer) -> None:
        with https(live_server) as client:
            assert client.get("/healthz").headers["strict-transport-security"] == "max-age=31536000"


class TestDashboardCookies:
    def test_csrf_and_session_cookies_are_httponly_samesite_and_not_secure_over_http(self, alpha: World, browser: httpx.Client) -> None:
        page = browser.get("/dashboard/sign-in")
        csrf = set_cookies(page)["tm_csrf"]["tm_csrf"]
        signed = browser.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": csrf_of(page)})
        session = set_cookies(signed)["tm_dashboard"]["tm_dashboard"]
        for cookie in (csrf, session):
            assert cookie["httponly"] is True and cookie["samesite"].lower() == "lax" and cookie["path"] == "/dashboard"
            assert not cookie["secure"]
        assert alpha.key not in session.value and alpha.key.split("_", 2)[2] not in session.value  # not the key itself

    def test_cookies_are_secure_over_https(self, alpha: World, live_server: LiveServer) -> None:
        with https(live_server) as client:
            page = client.get("/dashboard/sign-in")
            seed = set_cookies(page)["tm_csrf"]["tm_csrf"].value
            # httpx keeps a Secure cookie from an http:// URL, as a browser would: hand it over.
            signed = client.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": csrf_of(page)},
                                 headers={"Origin": live_server.url.replace("http://", "https://"), "Cookie": f"tm_csrf={seed}"})  # fmt: skip
        assert signed.status_code == 303, signed.text
        assert set_cookies(page)["tm_csrf"]["tm_csrf"]["secure"] is True
        assert set_cookies(signed)["tm_dashboard"]["tm_dashboard"]["secure"] is True


class TestCsrf:
    def test_sign_in_without_the_forms_token_is_refused(self, alpha: World, browser: httpx.Client) -> None:
        browser.get("/dashboard/sign-in")
        for token in ("", "forged-token"):
            response = browser.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": token})
            assert response.status_code == 400 and "tm_dashboard" not in set_cookies(response)

    def test_a_token_without_its_cookie_is_refused(self, alpha: World, live_server: LiveServer) -> None:
        with live_server.client() as first, live_server.client() as attacker:
            token = csrf_of(first.get("/dashboard/sign-in"))
            assert attacker.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": token}).status_code == 400

    def test_a_post_from_another_origin_is_refused(self, alpha: World, browser: httpx.Client) -> None:
        token = csrf_of(browser.get("/dashboard/sign-in"))
        response = browser.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": token},
                                headers={"Origin": "https://evil.example"})  # fmt: skip
        assert response.status_code == 400 and "tm_dashboard" not in set_cookies(response)

    def test_sign_out_needs_the_token(self, alpha: World, browser: httpx.Client) -> None:
        assert sign_in(browser, alpha.key).status_code == 303
        assert browser.post("/dashboard/sign-out", data={"csrf": "forged"}).status_code == 400
        assert browser.get("/dashboard/sign-in").status_code == 303  # still signed in
        page = browser.get(f"/dashboard/invoices/{alpha.invoice_id}")
        assert browser.post("/dashboard/sign-out", data={"csrf": csrf_of(page)}).status_code == 303
        assert browser.get("/dashboard/sign-in").status_code == 200  # signed out

    def test_next_never_leaves_the_dashboard(self, alpha: World, browser: httpx.Client) -> None:
        token = csrf_of(browser.get("/dashboard/sign-in"))
        for target in (*LEAVING, "/dashboard\\@evil.example"):
            response = browser.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": token, "next": target})
            assert response.status_code == 303 and response.headers["location"] == "/dashboard", target
        for target, normalized in STAYING:
            response = browser.post("/dashboard/sign-in", data={"key": alpha.key, "csrf": token, "next": target})
            assert response.headers["location"] == normalized, target
        signed_in = browser.get("/dashboard/sign-in", params={"next": "/dashboard/../../v1/usage"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"

    @pytest.mark.parametrize("target", LEAVING)
    def test_next_is_normalized_before_it_is_confined(self, target: str) -> None:
        assert safe_next(target) == "/dashboard"

    @pytest.mark.parametrize(("target", "normalized"), STAYING)
    def test_dashboard_paths_are_kept_normalized(self, target: str, normalized: str) -> None:
        assert safe_next(target) == normalized


class InlineCode(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts, event handler
    attributes, javascript: URLs, inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"{tag} {name}=")
            if name == "style":
                self.found.append(f"{tag} style=")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"{tag} {name}=javascript:")


class TestContentSecurityPolicy:
    def test_pages_have_a_strict_policy_and_no_inline_code(self, alpha: World, browser: httpx.Client) -> None:
        pages = {"sign-in": browser.get("/dashboard/sign-in")}
        assert sign_in(browser, alpha.key).status_code == 303
        pages |= {
            "month": browser.get("/dashboard", params={"month": CLOSED_MONTH}),
            "customer": browser.get("/dashboard", params={"month": CLOSED_MONTH, "customer": alpha.customer}),
            "invoice": browser.get(f"/dashboard/invoices/{alpha.invoice_id}"),
            "draft": browser.get(f"/dashboard/customers/{alpha.customer}/invoice", params={"month": "2026-11"}),
            "tasks": browser.get(f"/dashboard/customers/{alpha.customer}/tasks", params={"month": CLOSED_MONTH}),
            "not found": browser.get("/dashboard/invoices/999999"),
        }
        for name, page in pages.items():
            assert page.headers["content-type"].startswith("text/html"), name
            policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
            assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", name
            assert policy["style-src"] == "'self'" and policy["frame-ancestors"] == "'none'", name
            assert policy["form-action"] == "'self'" and policy["base-uri"] == "'none'", name
            assert "unsafe" not in page.headers["content-security-policy"], name
            parser = InlineCode()
            parser.feed(page.text)
            assert parser.found == [], (name, parser.found)
            assert page.headers["cache-control"] == "no-store", name

    def test_the_script_and_stylesheet_are_served_as_themselves(self, browser: httpx.Client) -> None:
        page = browser.get("/dashboard/sign-in").text
        for asset, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            path = re.search(rf'"(/dashboard/static/{re.escape(asset)}[^"]*)"', page)
            assert path, asset
            response = browser.get(path.group(1))
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
            assert response.headers["x-content-type-options"] == "nosniff"
        assert browser.get("/dashboard/static/..%2Fhtml.py").status_code == 404
