"""The API reference at /docs (Swagger UI) and /redoc (ReDoc) needs nothing but this server: the
pages name only same-origin files, those files are served with their types, the policy allows
this origin only and no inline script; `/` leads to the dashboard."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer

TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def policy_of(response: httpx.Response) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))


@pytest.fixture
def anonymous(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as client:
        yield client


class TestDocsPages:
    @pytest.mark.parametrize(("path", "marker", "files"), [
        ("/docs", 'id="swagger-ui"', {"swagger-ui-bundle.js", "swagger-init.js", "swagger-ui.css", "favicon.svg"}),
        ("/redoc", 'id="redoc"', {"redoc.standalone.js", "redoc-init.js", "favicon.svg"}),
    ])  # fmt: skip
    def test_the_page_names_only_files_of_this_server_and_they_are_served(
        self, anonymous: httpx.Client, path: str, marker: str, files: set[str]
    ) -> None:
        page = anonymous.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert marker in page.text and 'data-openapi-url="/openapi.json"' in page.text
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
        assert "//" not in page.text.replace("<!doctype html>", "")  # no scheme-relative or absolute URL
        assert {u.split("/")[-1].split("?")[0] for u in urls} == files
        for url in urls:
            asset = anonymous.get(url)
            suffix = url.split("?")[0][url.split("?")[0].rfind(".") :]
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(TYPES[suffix]), url
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert len(asset.content) > 100, url
        assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None, "inline script"
        assert " style=" not in page.text and "<style" not in page.text

    def test_swagger_ui_and_redoc_are_the_packaged_dist_files(self, anonymous: httpx.Client) -> None:
        bundle = anonymous.get("/docs/assets/swagger-ui-bundle.js").text
        assert "SwaggerUIBundle" in bundle and 'PACKAGE_VERSION:"5.' in bundle
        assert "ReDoc Version" in anonymous.get("/docs/assets/redoc.standalone.js").text
        assert ".swagger-ui" in anonymous.get("/docs/assets/swagger-ui.css").text

    def test_the_policy_allows_this_origin_only_and_no_inline_script(self, anonymous: httpx.Client) -> None:
        for path in ("/docs", "/redoc"):
            policy = policy_of(anonymous.get(path))
            assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", path
            assert policy["connect-src"] == "'self'" and policy["img-src"] == "'self' data:", path
            assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'", path
            assert not re.search(r"https?:|\*", "; ".join(policy.values())), path
        assert policy_of(anonymous.get("/docs"))["style-src"] == "'self'"
        # ReDoc's styled-components insert <style> elements; its search runs in a blob: worker.
        assert policy_of(anonymous.get("/redoc"))["style-src"] == "'self' 'unsafe-inline'"
        assert policy_of(anonymous.get("/redoc"))["worker-src"] == "blob:"

    def test_unknown_assets_are_not_found(self, anonymous: httpx.Client) -> None:
        for name in ("core.py", "..%2Fcore.py", "consts.py", "favicon.png", "docs.py"):
            assert anonymous.get(f"/docs/assets/{name}").status_code == 404, name

    def test_the_schema_the_pages_load_is_served(self, anonymous: httpx.Client) -> None:
        schema = anonymous.get("/openapi.json").json()
        assert "/v1/events" in schema["paths"]
        assert not any(p.startswith(("/docs", "/redoc", "/dashboard")) or p == "/" for p in schema["paths"])


def test_the_root_leads_to_the_dashboard(anonymous: httpx.Client) -> None:
    response = anonymous.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/dashboard"
    followed = anonymous.get("/", follow_redirects=True)
    assert followed.status_code == 200 and str(followed.url).endswith("/dashboard/sign-in?next=%2Fdashboard")
