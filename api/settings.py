"""All configuration, from `TASKMETER_*` environment variables, with embedded defaults."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.core.secret_box import SecretBox, derived_key, parse_keys
from metering.events.schemas import DEFAULT_EARLIEST_EVENT_TIME, TimeWindow
from metering.rollup.executors import local_workers

DEV_SECRET = "dev-insecure-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKMETER_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    database_url: str = "sqlite:///./taskmeter.db"
    # Keys are stored as HMAC-SHA256(secret_key, key): rotating this secret invalidates every key.
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    # Webhook signing secrets are stored encrypted (metering.core.secret_box): comma-separated Fernet
    # keys, newest first (the first encrypts, all decrypt). Unset: a key derived from secret_key.
    encryption_keys: SecretStr | None = None

    max_batch_events: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024  # every request body, every route (413 past it)
    # The time window of events (metering.events.schemas.TimeWindow): none before the earliest time (RFC
    # 3339, no earlier than 1970-01-02T00:00:00Z), none more than future_tolerance_days ahead.
    earliest_event_time: AwareDatetime = DEFAULT_EARLIEST_EVENT_TIME
    future_tolerance_days: int = 7

    # Per API key and per process (an in-memory token bucket, api.ratelimit): requests per minute,
    # and how many a key may send at once (default: a minute's worth). 0 turns the limit off.
    rate_limit_per_minute: int = 30_000
    rate_limit_burst: int | None = None

    # How long a dashboard page waits for its month's figures before it shows a loading page
    # that reloads itself (a large open month takes a while the first time).
    dashboard_wait_seconds: float = 0.8

    # Background work started by `serve`.
    scheduler_enabled: bool = True
    rollup_interval_seconds: float = 1.0
    close_grace_seconds: int = 3600
    reports_dir: Path = Path("./reports-out")
    close_check_seconds: float = 60.0  # how often the close and reports jobs look for due months
    stripe_sync_interval_seconds: float = 60.0
    webhook_interval_seconds: float = 0.2  # how often the outbox of budget-alert webhooks is polled
    # Budget counters (metering.spend.deferred; docs/OPERATIONS.md): `inline` counts each batch in the
    # transaction that stores it; `deferred` stores events only, and a follower in each server
    # process counts them every spend_follow_interval_seconds (authorize and alerts lag by that).
    spend_counting: Literal["inline", "deferred"] = "inline"
    spend_follow_interval_seconds: float = Field(default=0.25, gt=0)
    scheduler_misfire_grace_seconds: int = 300  # a run later than this is skipped (the next one comes)
    job_lease_seconds: float = 900.0  # SQLite job guards: how long a crashed worker blocks the others

    # Ingestion through a NATS JetStream log (metering.events.ingest_log; docs/INGEST_LOG.md): set to
    # nats://host:4222 and `POST /v1/events` answers 202 once the log holds the batch; `taskmeter
    # loader` processes write it into the database. Unset: events go straight to the database.
    ingest_log: str | None = None
    ingest_log_stream: str = "TASKMETER_EVENTS"
    ingest_log_subject: str = "taskmeter.events"  # messages go to <subject>.<tenant id>.<event digest>
    ingest_log_duplicate_window_seconds: float = 300.0  # a retry within it is absorbed by the log
    ingest_log_publish_timeout_seconds: float = 10.0  # the whole batch's acknowledgements, else 503
    ingest_log_max_deliver: int = 10  # deliveries of one message before the loader quarantines it
    ingest_log_ack_wait_seconds: float = 30.0  # a killed loader's messages go to another after this
    # While the database is away, a key seen working within this many seconds still authenticates
    # ingestion (its last known scopes): the log takes events through a database outage.
    ingest_log_auth_grace_seconds: float = 900.0
    # Where partition work runs (metering.rollup.executors): a Dask distributed scheduler
    # (`tcp://host:8786`), or `local` / `local:N` for N worker processes of a Dask cluster on this
    # machine started for the run (default one per core); unset, in process.
    dask_scheduler: str | None = None

    # genai-prices: the bundled snapshot only, unless this is turned on.
    prices_auto_update: bool = False

    # OpenTelemetry: which span or resource attributes name the customer, task, type and outcome.
    otlp_customer_attribute: str = "taskmeter.customer"
    otlp_task_attribute: str = "taskmeter.task"
    otlp_task_type_attribute: str = "taskmeter.task_type"
    otlp_outcome_attribute: str = "taskmeter.outcome"
    otlp_exclusive_input_providers: list[str] = []
    otlp_exclusive_output_providers: list[str] = []

    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    # How Stripe collects a pushed invoice; with send_invoice it is due after stripe_days_until_due.
    stripe_collection_method: Literal["charge_automatically", "send_invoice"] = "charge_automatically"
    stripe_days_until_due: int = 30
    stripe_max_retries: int = 3  # retries of a transient Stripe error within one sync run

    @property
    def event_window(self) -> TimeWindow:
        return TimeWindow(self.earliest_event_time, timedelta(days=self.future_tolerance_days))

    @model_validator(mode="after")
    def _event_window_representable(self) -> Settings:
        self.event_window  # noqa: B018 - raises ValueError, naming the bound, when out of range
        return self

    @model_validator(mode="after")
    def _ingest_log_is_nats(self) -> Settings:
        self.ingest_log = self.ingest_log or None  # set but empty: unset
        if self.ingest_log is not None and not self.ingest_log.startswith(("nats://", "tls://")):
            raise ValueError(f"TASKMETER_INGEST_LOG must be a nats:// or tls:// URL, not {self.ingest_log!r}")
        return self

    @model_validator(mode="after")
    def _encryption_keys_are_fernet_keys(self) -> Settings:
        if self.encryption_keys is not None and not self.encryption_keys.get_secret_value().strip():
            self.encryption_keys = None  # set but empty: unset
        if self.encryption_keys is not None:
            try:
                parse_keys(self.encryption_keys.get_secret_value())
            except ValueError as error:
                raise ValueError(f"TASKMETER_ENCRYPTION_KEYS {error}") from None
        return self

    def secret_box(self) -> SecretBox:
        """What seals and opens webhook secrets: TASKMETER_ENCRYPTION_KEYS, else a key derived
        from TASKMETER_SECRET_KEY."""
        if self.encryption_keys is not None:
            return SecretBox(parse_keys(self.encryption_keys.get_secret_value()))
        return SecretBox([derived_key(self.secret_key.get_secret_value())])

    @model_validator(mode="after")
    def _dask_scheduler_is_an_address(self) -> Settings:
        self.dask_scheduler = self.dask_scheduler or None  # set but empty: unset
        if self.dask_scheduler is not None and local_workers(self.dask_scheduler) is None and "://" not in self.dask_scheduler:
            raise ValueError(f"TASKMETER_DASK_SCHEDULER must be local, local:N or a scheduler's address (tcp://host:8786), not {self.dask_scheduler!r}")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        if self.env == "production" and self.secret_key.get_secret_value() in ("", DEV_SECRET):
            raise ValueError("TASKMETER_SECRET_KEY must be set to a real secret when TASKMETER_ENV=production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
