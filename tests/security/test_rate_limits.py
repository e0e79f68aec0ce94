"""Per-key rate limits: a token bucket per API key (per process); past it, 429 with Retry-After."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from api.ratelimit import RateLimiter
from api.settings import Settings
from metering.core.errors import RateLimited
from metering.core.tenants import Tenant
from tests.conftest import LiveServer
from tests.security.conftest import CLOSED_MONTH, World, flat_routes, sign_in, throwaway_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestBucket:
    def test_a_burst_then_the_rate(self) -> None:
        clock = Clock()
        limiter = RateLimiter(60, burst=3, clock=clock)  # one a second, three at once
        assert [limiter.wait_seconds(1) for _ in range(3)] == [0, 0, 0]
        assert limiter.wait_seconds(1) == pytest.approx(1.0)
        clock.now += 0.5
        assert limiter.wait_seconds(1) == pytest.approx(0.5)
        clock.now += 0.5
        assert limiter.wait_seconds(1) == 0
        clock.now += 3600  # refills up to the burst, not past it
        assert [limiter.wait_seconds(1) for _ in range(4)][-1] > 0

    def test_each_key_has_its_own_bucket(self) -> None:
        limiter = RateLimiter(60, burst=1, clock=Clock())
        assert limiter.wait_seconds(1) == 0 and limiter.wait_seconds(1) > 0
        assert limiter.wait_seconds(2) == 0

    def test_the_default_burst_is_a_minutes_worth(self) -> None:
        limiter = RateLimiter(120, clock=Clock())
        assert sum(limiter.wait_seconds(1) == 0 for _ in range(200)) == 120

    def test_zero_turns_it_off(self) -> None:
        limiter = RateLimiter(0, clock=Clock())
        assert not limiter.enabled and all(limiter.wait_seconds(1) == 0 for _ in range(10_000))

    def test_the_error_says_when_to_retry(self) -> None:
        limiter = RateLimiter(6, burst=1, clock=Clock())  # one every 10 s
        limiter.check(1)
        with pytest.raises(RateLimited) as caught:
            limiter.check(1)
        assert caught.value.status_code == 429 and caught.value.headers == {"Retry-After": "10"}
        assert caught.value.detail == {"limit_per_minute": 6, "retry_after_seconds": 10}


class TestOverHttp:
    def test_past_the_limit_429_with_retry_after_for_that_key_only(
        self, server_for: Callable[[Settings], LiveServer], settings: Settings, tenant: Tenant, make_key: Callable[..., str]
    ) -> None:
        server = server_for(settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 3}))
        first, second = make_key(tenant), make_key(tenant)
        with server.client(first) as client:
            assert [client.get("/v1/plans").status_code for _ in range(3)] == [200, 200, 200]
            limited = client.get("/v1/plans")
            assert client.post("/v1/events", json=[]).status_code == 429  # every route, one bucket per key
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert limited.json()["error"] == "rate_limited" and limited.json()["detail"]["limit_per_minute"] == 60
        with server.client(second) as client:
            assert client.get("/v1/plans").status_code == 200

    def test_the_default_is_generous_and_zero_is_off(self, settings: Settings) -> None:
        assert Settings().rate_limit_per_minute >= 10_000
        assert not RateLimiter(settings.model_copy(update={"rate_limit_per_minute": 0}).rate_limit_per_minute).enabled


def test_every_authenticated_operation_declares_429() -> None:
    schema = throwaway_app().openapi()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "401" in operation["responses"]:
                assert "429" in operation["responses"], f"{method.upper()} {path}"


def test_the_rate_limit_applies_wherever_a_key_is_checked() -> None:
    """Every route that authenticates a key goes through `get_principal`, which applies the limit."""
    from api.deps import cached_principal, get_principal

    def uses(dependant: object) -> bool:
        # cached_principal: get_principal, or for a key seen in the last second the same limit check
        return any(d.call in (get_principal, cached_principal) or uses(d) for d in getattr(dependant, "dependencies", []))

    app = throwaway_app()
    for route in flat_routes(app):
        if route.path.startswith("/v1/") and route.path != "/v1/stripe/webhook":
            assert uses(route.dependant), route.path


class TestDashboard:
    """The dashboard's pages, CSV downloads and forms take tokens from the key's bucket, the one
    the API uses; past it, a 429 page with Retry-After."""

    @staticmethod
    def requests(world: World) -> list[tuple[str, str]]:
        """Every dashboard route of the route table (static files aside) as a request to make."""
        values = {"invoice_id": str(world.invoice_id), "customer": world.customer, "month": CLOSED_MONTH, "name": "customers",
                  "line_no": "1", "task": "t1"}
        found = []
        for route in flat_routes(throwaway_app()):
            if not route.path.startswith("/dashboard") or route.path.startswith("/dashboard/static/"):
                continue
            unknown = set(re.findall(r"{(\w+)}", route.path)) - set(values)
            assert not unknown, f"{route.path}: teach this test a value for {unknown}"
            path = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], route.path)
            found += [(method, f"{path}?month={CLOSED_MONTH}") for method in sorted(route.methods - {"HEAD"})]
        return found

    def test_pages_downloads_and_forms_share_the_api_bucket(
        self, server_for: Callable[[Settings], LiveServer], settings: Settings, alpha: World, make_key: Callable[..., str]
    ) -> None:
        server = server_for(settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 4}))
        with server.client() as browser, server.client(alpha.key) as api:
            token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/dashboard/sign-in").text).group(1)  # type: ignore[union-attr]
            assert sign_in(browser, alpha.key).status_code == 303  # 1 token: the key signs in
            assert browser.get(f"/dashboard/invoices/{alpha.invoice_id}").status_code == 200  # 2
            assert browser.get(f"/dashboard/reports/{CLOSED_MONTH}/customers.csv").status_code == 200  # 3
            assert api.get("/v1/plans").status_code == 200  # 4: the same bucket
            assert api.get("/v1/plans").status_code == 429
            answers = {}
            for method, path in self.requests(alpha):
                form = {"csrf": token, "key": alpha.key, "next": "/dashboard"} if method == "POST" else None
                answers[f"{method} {path}"] = browser.request(method, path, data=form)
        assert {"GET /dashboard", "GET /dashboard/sign-in", "POST /dashboard/sign-in", "POST /dashboard/sign-out",
                f"GET /dashboard/reports/{CLOSED_MONTH}/customers.csv"} <= {r.split("?")[0] for r in answers}  # fmt: skip
        for request, response in answers.items():
            assert response.status_code == 429, (request, response.status_code)
            assert 1 <= int(response.headers["retry-after"]) <= 60, request
            assert response.headers["content-type"].startswith("text/html"), request
            assert "Too many requests" in response.text and "Try again in" in response.text, request
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"], request
        with server.client() as other:  # another key of the same tenant has its own bucket
            assert sign_in(other, make_key(alpha.tenant)).status_code == 303
            assert other.get(f"/dashboard/invoices/{alpha.invoice_id}").status_code == 200

    def test_signed_out_requests_are_not_limited(
        self, server_for: Callable[[Settings], LiveServer], settings: Settings, alpha: World
    ) -> None:
        server = server_for(settings.model_copy(update={"rate_limit_per_minute": 1, "rate_limit_burst": 1}))
        with server.client() as browser:
            assert [browser.get("/dashboard/sign-in").status_code for _ in range(5)] == [200] * 5
            assert browser.get("/dashboard").status_code == 303  # to the sign-in page
            assert browser.get("/dashboard/static/dashboard.css").status_code == 200

