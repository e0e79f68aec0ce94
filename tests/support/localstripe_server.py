"""Run localstripe (a fake, stateful Stripe API server) as a subprocess for tests.

Usage from a test module (no conftest needed)::

    from tests.support.localstripe_server import start_localstripe

    @pytest.fixture(scope="module")
    def localstripe_server():
        with start_localstripe() as server:
            yield server

    @pytest.fixture
    def stripe_client(localstripe_server):
        localstripe_server.reset()          # fresh, empty fake account per test
        return localstripe_server.client()  # stripe.StripeClient aimed at it

``start_localstripe()`` binds a free port on 127.0.0.1 *in this process*, hands the
listening socket to the child (``pass_fds``), so there is no pick-a-port-then-bind race,
waits until the server answers, and terminates it on exit.  The object it yields has
``.url`` (``http://127.0.0.1:PORT``), ``.api_key`` (``sk_test_...``), ``.reset()``,
``.client()``, ``.register_webhook()`` and ``.log_text()``.

The child is this very file run as a script (``python localstripe_server.py --fd N``),
not ``python -m localstripe``, because stock ``localstripe`` 1.15.10:

* binds ``[::]`` (every interface, IPv4 and IPv6) with no host option;
* pickles its whole store to the fixed path ``/tmp/localstripe.pickle`` on every write
  and reloads it at start unless ``--from-scratch`` (parallel servers clobber it).

The launcher serves the same ``localstripe.server.app`` on the given loopback socket with
disk persistence disabled.  With ``shims=True`` (the default) it also patches gaps that
make stock localstripe unusable for our invoice-item based billing flow; each shim mimics
what real Stripe does (API 2022-08-01 and later), see ``_install_shims``:

* ``Idempotency-Key`` is honoured: same key + same request -> the stored response is
  replayed (``Idempotent-Replayed: true``); same key + different parameters -> 400
  ``idempotency_error`` (``stripe.IdempotencyError``).  Stock localstripe ignores the
  header and creates a duplicate.
* ``POST /v1/invoices`` for a customer without a subscription (stock: 404 "No upcoming
  invoices for customer"); ``pending_invoice_items_behavior`` honoured, default
  ``exclude`` as in current Stripe; ``metadata``, ``currency``, ``auto_advance``,
  ``collection_method``, ``days_until_due`` accepted; ``number`` is null until finalized.
* ``POST /v1/invoiceitems`` with ``invoice=in_...`` adds the line to that draft invoice
  (stock: the item points at the invoice but the invoice never shows it).
* ``POST /v1/invoices/{id}/finalize`` (stock: 404, no such route).
* ``POST /v1/invoices/{id}/void`` on an invoice without a PaymentIntent (stock: 400).
* ``GET /v1/invoiceitems`` accepts ``invoice=`` and ``pending=`` (stock: only
  ``customer=``, an ``invoice=`` filter is a 500, and invoiced items are never listed).

Not shimmed (tests must not rely on them): ``GET /v1/customers/search`` (404; list and
filter on metadata instead), list filters other than ``customer``/``email``, updates or
deletes of invoice items already on an invoice, taxes beyond ``tax_rates``, and the
response shapes of API versions after 2017-2020 (e.g. invoice lines carry a top-level
``invoice_item`` instead of ``parent.invoice_item_details``).

For manual poking: ``.venv/bin/python tests/support/localstripe_server.py --port 8420``
(``--no-shims`` for stock behaviour), then e.g. ``curl -u sk_test_x: 127.0.0.1:8420/v1/customers``.

The server side needs only ``localstripe`` (which brings ``aiohttp``); set
``TASKMETER_LOCALSTRIPE_PYTHON=/path/to/venv/bin/python`` to run it from another venv.
Keep this module's top-level imports to the standard library: it is also the launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import stripe

DEFAULT_API_KEY = "sk_test_taskmeter_localstripe"
SERVER_PYTHON_ENV = "TASKMETER_LOCALSTRIPE_PYTHON"
INSTALL_HINT = "pip install 'localstripe==1.15.10'"

# urllib without proxy discovery: the fake lives on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LocalStripeError(RuntimeError):
    """The localstripe subprocess could not be started or controlled."""


@dataclass
class LocalStripe:
    url: str
    api_key: str
    port: int
    shims: bool
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    # -- control endpoints (localstripe's /_config/*, no auth needed) -------------------

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> int:
        body = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.api_key}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=10) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise LocalStripeError(f"{method} {path} -> {exc.code}: {detail}") from None

    def reset(self) -> None:
        """Forget every object; with this launcher also webhooks and idempotency keys."""
        self._call("DELETE", "/_config/data")

    def register_webhook(
        self, webhook_id: str, url: str, secret: str, events: list[str] | None = None
    ) -> None:
        """Have localstripe POST signed events to ``url`` (about 1 s after each event)."""
        payload: dict[str, Any] = {"url": url, "secret": secret}
        if events is not None:
            payload["events"] = list(events)
        self._call("POST", f"/_config/webhooks/{webhook_id}", payload)

    def client(self, **options: Any) -> stripe.StripeClient:
        """A ``stripe.StripeClient`` aimed at this server (network retries off by default).

        Use the ``client.v1.*`` services: the un-namespaced ones (``client.customers``)
        raise a DeprecationWarning in stripe 16.
        """
        import stripe

        options.setdefault("max_network_retries", 0)
        return stripe.StripeClient(self.api_key, base_addresses={"api": self.url}, **options)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalStripeError(
                    f"localstripe exited with code {self.process.returncode} during startup "
                    f"(install it with: {INSTALL_HINT}):\n{self.log_text()}"
                )
            req = urllib.request.Request(self.url + "/v1/balance")
            req.add_header("Authorization", f"Bearer {self.api_key}")
            try:
                attempt_timeout = max(0.1, min(2.0, deadline - time.monotonic()))
                with _OPENER.open(req, timeout=attempt_timeout) as resp:
                    resp.read()
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError) as exc:  # not accepting yet / reset
                last_error = exc
            time.sleep(0.05)
        raise LocalStripeError(
            f"localstripe did not answer on {self.url} within {timeout:.0f}s "
            f"(last error: {last_error!r}):\n{self.log_text()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def start_localstripe(
    *,
    shims: bool = True,
    api_key: str = DEFAULT_API_KEY,
    python: str | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[LocalStripe]:
    """Start localstripe on a free 127.0.0.1 port; yield a :class:`LocalStripe`; stop it.

    ``python`` (or env ``TASKMETER_LOCALSTRIPE_PYTHON``) selects the interpreter that runs
    the server; it needs ``localstripe`` importable, nothing else from this project.
    ``shims=False`` serves stock localstripe behaviour (only isolation patches applied).
    """
    if not api_key.startswith("sk_") or len(api_key) <= 5:
        raise ValueError("localstripe only accepts secret keys like 'sk_test_...'")
    interpreter = python or os.environ.get(SERVER_PYTHON_ENV) or sys.executable
    workdir = Path(tempfile.mkdtemp(prefix="taskmeter-localstripe-"))
    log_path = workdir / "server.log"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        cmd = [interpreter, str(Path(__file__).resolve()), "--fd", str(listener.fileno())]
        if not shims:
            cmd.append("--no-shims")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
                cwd=workdir,
            )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        listener.close()  # the child holds its own copy of the listening socket

    server = LocalStripe(
        url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        port=port,
        shims=shims,
        log_path=log_path,
        process=process,
    )
    try:
        server._wait_ready(startup_timeout)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ==========================================================================================
# Server side: everything below runs in the child process (stdlib + localstripe + aiohttp).
# ==========================================================================================


def _serve(sock: socket.socket, shims: bool, parent_pid: int | None) -> None:
    import asyncio
    import logging
    import threading

    from aiohttp import web
    from localstripe import resources, server, webhooks

    # Isolation: never share /tmp/localstripe.pickle with other servers (nor pay for a
    # full pickle dump on every write).
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = lambda self: None  # type: ignore[method-assign]

    # Isolation: track webhook deliveries (each sleeps ~1 s first) so that a reset can
    # cancel them; otherwise events of one test reach the webhook of the next one.
    pending_deliveries: set[asyncio.Future[None]] = set()

    def schedule_webhook(event: Any) -> None:
        task = asyncio.ensure_future(webhooks._send_webhook(event))
        pending_deliveries.add(task)
        task.add_done_callback(pending_deliveries.discard)

    resources.schedule_webhook = schedule_webhook
    webhooks.schedule_webhook = schedule_webhook

    app = server.app
    idempotency_cache: dict[tuple[str, str], dict[str, Any]] = {}

    @web.middleware
    async def full_reset(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "DELETE" and request.path == "/_config/data":
            for task in list(pending_deliveries):
                task.cancel()
            webhooks._webhooks.clear()
            idempotency_cache.clear()
        return await handler(request)

    app.middlewares.insert(0, full_reset)
    if shims:
        _install_shims(app, idempotency_cache)

    if parent_pid is not None:
        # Die with the test process even if it is SIGKILLed before it can stop us.
        def watch_parent() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(0)

        threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()

    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.INFO)
    access_log.addHandler(logging.StreamHandler(sys.stderr))
    web.run_app(app, sock=sock, print=None, access_log=access_log, shutdown_timeout=1.0)


def _install_shims(app: Any, idempotency_cache: dict[tuple[str, str], dict[str, Any]]) -> None:
    from aiohttp import web
    from localstripe import resources, server
    from localstripe.errors import UserError
    from localstripe.resources import (
        Customer,
        Event,
        Invoice,
        InvoiceItem,
        InvoiceLineItem,
        List,
        store,
        try_convert_to_bool,
        try_convert_to_int,
    )

    def schedule_webhook(event: Any) -> None:
        resources.schedule_webhook(event)  # the tracked version installed by _serve

    # -- Idempotency-Key --------------------------------------------------------------
    # Real Stripe: a key is scoped to the API key; a replay returns the first response
    # verbatim with ``Idempotent-Replayed: true``; reuse with other parameters is a 400
    # idempotency_error; a concurrent request with the same key is a 409.  Responses are
    # stored once the endpoint ran (here: 2xx and 402); validation errors are not.
    # The stripe SDK sends a random key on every POST unless you pass one.
    in_flight: set[tuple[str, str]] = set()

    def idempotency_error(status: int, message: str) -> web.Response:
        body = {"error": {"type": "idempotency_error", "message": message}}
        return server.json_response(body, status=status)

    @web.middleware
    async def idempotency(request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or request.path.startswith("/_config/"):
            return await handler(request)
        body = await request.read()  # aiohttp caches it; handlers can read it again
        cache_key = (request.headers.get("Authorization", ""), key)
        fingerprint = [request.path, request.query_string, body.hex()]
        hit = idempotency_cache.get(cache_key)
        if hit is not None:
            if hit["fingerprint"] != fingerprint:
                return idempotency_error(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                )
            return web.Response(
                status=hit["status"],
                body=hit["body"],
                content_type="application/json",
                headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"},
            )
        if cache_key in in_flight:
            return idempotency_error(
                409,
                "There is currently another in-progress request using this "
                "Stripe-Idempotency-Key. Please try again later.",
            )
        in_flight.add(cache_key)
        try:
            response = await handler(request)
        finally:
            in_flight.discard(cache_key)
        if isinstance(response, web.Response) and (200 <= response.status < 300 or response.status == 402):
            idempotency_cache[cache_key] = {
                "fingerprint": fingerprint,
                "status": response.status,
                "body": response.body,
            }
        response.headers["Idempotency-Key"] = key
        return response

    # after full_reset (index 0), before localstripe's error/auth/store middlewares
    app.middlewares.insert(1, idempotency)

    # -- invoice items ----------------------------------------------------------------
    # Set while an Invoice is built with pending_invoice_items_behavior=exclude:
    # Invoice.__init__ always pulls the customer's pending items through this listing.
    exclude_pending = [False]

    def invoiceitem_list(
        cls: Any,
        url: str | None,
        customer: str | None = None,
        invoice: str | None = None,
        pending: Any = None,
        limit: Any = None,
        starting_after: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(sorted(kwargs)))
        pending = try_convert_to_bool(pending)
        if customer is not None and not (isinstance(customer, str) and customer.startswith("cus_")):
            raise UserError(400, "Bad request")
        if invoice is not None and not (isinstance(invoice, str) and invoice.startswith("in_")):
            raise UserError(400, "Bad request")
        if pending is not None and not isinstance(pending, bool):
            raise UserError(400, "Bad request")
        items = [v for k, v in store.items() if k.startswith(InvoiceItem.object + ":")]
        if url is None:
            # internal call from Invoice creation: the customer's pending items
            items = [] if exclude_pending[0] else [ii for ii in items if ii.invoice is None]
        if pending is not None:
            items = [ii for ii in items if (ii.invoice is None) is pending]
        if invoice is not None:
            Invoice._api_retrieve(invoice)  # 404 if unknown
            items = [ii for ii in items if ii.invoice == invoice]
        if customer is not None:
            Customer._api_retrieve(customer)  # 404 if unknown
            items = [ii for ii in items if ii.customer == customer]
        items.sort(key=lambda ii: ii.date, reverse=True)
        li = List(url, limit=limit, starting_after=starting_after)
        li._list = items
        return li

    def invoiceitem_create(cls: Any, **data: Any) -> Any:
        invoice_id = data.get("invoice")
        inv = None
        if invoice_id is not None:
            if not (isinstance(invoice_id, str) and invoice_id.startswith("in_")):
                raise UserError(400, "Bad request")
            inv = Invoice._api_retrieve(invoice_id)
            if inv.status != "draft":
                raise UserError(
                    400, f"Invoice {invoice_id} is not a draft; items can only be added to drafts."
                )
            currency = data.get("currency")
            if inv.lines._list and isinstance(currency, str) and currency.lower() != inv.currency:
                raise UserError(400, f"Currency {currency} does not match invoice currency {inv.currency}.")
        item = cls(**data)
        if inv is not None:
            if not inv.lines._list:
                inv.currency = item.currency
            inv.lines._list.append(InvoiceLineItem(item))
        return item

    InvoiceItem._api_list_all = classmethod(invoiceitem_list)
    InvoiceItem._api_create = classmethod(invoiceitem_create)

    # -- invoices -----------------------------------------------------------------------
    stock_invoice_create = Invoice._api_create.__func__
    stock_invoice_void = Invoice._api_void_invoice.__func__

    def invoice_create(
        cls: Any,
        customer: str | None = None,
        subscription: str | None = None,
        pending_invoice_items_behavior: str | None = None,
        metadata: dict[str, str] | None = None,
        description: str | None = None,
        currency: str | None = None,
        auto_advance: Any = None,
        collection_method: str | None = None,
        days_until_due: Any = None,
        default_tax_rates: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(sorted(kwargs)))
        if pending_invoice_items_behavior not in (None, "include", "exclude"):
            raise UserError(400, "Invalid pending_invoice_items_behavior")
        if metadata is not None and not isinstance(metadata, dict):
            raise UserError(400, "Bad request")
        if currency is not None and not (isinstance(currency, str) and len(currency) == 3):
            raise UserError(400, "Bad request")
        auto_advance = try_convert_to_bool(auto_advance)
        if auto_advance is not None and not isinstance(auto_advance, bool):
            raise UserError(400, "Bad request")
        if collection_method not in (None, "charge_automatically", "send_invoice"):
            raise UserError(400, "Bad request")
        days_until_due = try_convert_to_int(days_until_due)
        if days_until_due is not None and not isinstance(days_until_due, int):
            raise UserError(400, "Bad request")
        if collection_method == "send_invoice" and days_until_due is None:
            raise UserError(400, "days_until_due is required when collection_method is send_invoice")

        if subscription is not None:
            inv = stock_invoice_create(
                cls,
                customer=customer,
                subscription=subscription,
                default_tax_rates=default_tax_rates,
                description=description,
                metadata=metadata,
                pending_invoice_items_behavior=pending_invoice_items_behavior,
            )
        else:
            if not (isinstance(customer, str) and customer.startswith("cus_")):
                raise UserError(400, "Missing required param: customer.")
            Customer._api_retrieve(customer)  # 404 if unknown
            exclude_pending[0] = pending_invoice_items_behavior != "include"
            try:
                inv = cls(
                    customer=customer,
                    description=description,
                    metadata=metadata,
                    default_tax_rates=default_tax_rates,
                )
            finally:
                exclude_pending[0] = False
        if metadata:
            inv.metadata = dict(metadata)
        if currency is not None and not inv.lines._list:
            inv.currency = currency.lower()
        inv.number = None
        inv.auto_advance = bool(auto_advance)
        if collection_method is not None:
            inv.collection_method = collection_method
        inv.days_until_due = days_until_due
        return inv

    numbers = [0]

    def invoice_finalize(id: str | None = None, auto_advance: Any = None, **kwargs: Any) -> Any:
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(sorted(kwargs)))
        inv = Invoice._api_retrieve(id)
        if inv.status != "draft":
            raise UserError(400, f"Invoice {id} is already finalized (status {inv.status}).")
        inv._finalize()
        numbers[0] += 1
        inv.number = f"LOCAL-{numbers[0]:06d}"
        auto_advance = try_convert_to_bool(auto_advance)
        if isinstance(auto_advance, bool):
            inv.auto_advance = auto_advance
        schedule_webhook(Event("invoice.finalized", inv))
        return inv

    def invoice_void(cls: Any, id: str) -> Any:
        inv = cls._api_retrieve(id)
        if inv.payment_intent is not None or inv.subscription is not None:
            return stock_invoice_void(cls, id)
        if inv.status != "open":
            raise UserError(400, f"Only open invoices can be voided; {id} is {inv.status}.")
        inv._voided = True
        inv.status_transitions["voided_at"] = int(time.time())
        schedule_webhook(Event("invoice.voided", inv))
        return inv

    Invoice._api_create = classmethod(invoice_create)
    Invoice._api_void_invoice = classmethod(invoice_void)

    url = "/v1/invoices/{id}/finalize"
    app.router.add_route("POST", url, server.api_extra(invoice_finalize, url))

    # Routes registered by localstripe captured the stock functions at import time, so
    # replacing a class attribute is not enough for them: re-dispatch those routes from
    # an innermost middleware (after localstripe's error and auth middlewares).
    overrides = {
        ("POST", "/v1/invoices/{id}/void"): server.api_extra(
            Invoice._api_void_invoice, "/v1/invoices/{id}/void"
        ),
    }

    @web.middleware
    async def override_routes(request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None:
            override = overrides.get((request.method, resource.canonical))
            if override is not None:
                return await override(request)
        return await handler(request)

    app.middlewares.append(override_routes)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve localstripe on a loopback socket.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="inherited, already listening socket")
    where.add_argument("--port", type=int, help="bind 127.0.0.1:PORT (manual use)")
    parser.add_argument("--no-shims", action="store_true", help="stock localstripe behaviour")
    args = parser.parse_args(argv)
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        parent_pid: int | None = os.getppid()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(128)
        parent_pid = None
        print(f"localstripe on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    _serve(sock, shims=not args.no_shims, parent_pid=parent_pid)


if __name__ == "__main__":
    _main()
