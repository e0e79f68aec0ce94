"""All configuration, from `TASKMETER_*` environment variables, with embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-insecure-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKMETER_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    database_url: str = "sqlite:///./taskmeter.db"
    # Keys are stored as HMAC-SHA256(secret_key, key): rotating this secret invalidates every key.
    secret_key: SecretStr = SecretStr(DEV_SECRET)

    max_batch_events: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    future_tolerance_days: int = 7

    # Background work started by `serve`.
    scheduler_enabled: bool = True
    rollup_interval_seconds: float = 1.0
    close_grace_seconds: int = 3600
    reports_dir: Path = Path("./reports-out")

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

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        if self.env == "production" and self.secret_key.get_secret_value() in ("", DEV_SECRET):
            raise ValueError("TASKMETER_SECRET_KEY must be set to a real secret when TASKMETER_ENV=production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
