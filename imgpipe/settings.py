"""imgpipe's settings: every one is a field here and an `IMGPIPE_<FIELD>` environment variable.

This module is the one place the process environment is read (`load_settings()`); everything else receives a
`Settings`: the Dagster code location as the fields of its `imgpipe` resource, the REST API and the CLI's
commands as an argument. Pydantic checks the values, so a wrong one names its variable. The README's "Configuration" and
"Safety" tables list them all.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgpipe.images.renditions import RenditionSpecError, canonical, parse_formats, parse_widths

MIB = 1024 * 1024
ENV_PREFIX = "IMGPIPE_"
PROFILES = ("embedded", "distributed")
EXECUTORS = ("in_process", "multiprocess")
ISOLATIONS = ("process", "pool")
# Fields that hold credentials: the code location passes them to Dagster as environment variable references
# (EnvVar), so that the UI shows the variable's name, never its value.
SECRET_FIELDS = ("api_token", "webhook_secret", "database_url")


class Limits(BaseModel):
    """Every bound the pipeline enforces on hostile or oversized input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_download_bytes: int = Field(25 * MIB, ge=1, description="Bytes one image download may have.")
    max_pixels: int = Field(50_000_000, ge=1, description="Pixels an image may have, read from its header.")
    max_frames: int = Field(1000, ge=1, description="Frames an animation may have.")
    image_timeout: float = Field(60.0, gt=0, description="Seconds for one image, download and compression.")
    download_deadline: float = Field(30.0, gt=0, description="Seconds for one download, redirects included.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to an image or webhook server.")
    read_timeout: float = Field(15.0, gt=0, description="Seconds a server may stay silent.")
    max_redirects: int = Field(5, ge=0, description="Redirects one download may follow.")
    process_memory_mb: int = Field(2048, ge=1, description="MiB the process of one image may add.")
    max_csv_bytes: int = Field(10 * MIB, ge=1, description="Bytes an uploaded CSV may have.")
    max_rows: int = Field(10_000, ge=1, description="Data rows an uploaded CSV may have.")
    max_urls: int = Field(50_000, ge=1, description="Image URLs an uploaded CSV may have.")
    max_urls_per_row: int = Field(100, ge=1, description="Image URLs one row may have.")
    max_url_length: int = Field(2048, ge=1, description="Characters an image URL may have.")
    per_host_connections: int = Field(4, ge=1, description="Connections one step opens to one image host at once.")
    fetch_attempts: int = Field(3, ge=1, description="Attempts per image download (network errors, 408, 429, 5xx).")
    request_deadline: float = Field(
        3600.0, gt=0, description="Seconds a request's processing may take as a whole, from its run's start.")

    @property
    def process_memory_bytes(self) -> int:
        return self.process_memory_mb * MIB


class Settings(Limits):
    """Where imgpipe keeps its data, whom it may call, and how it runs."""

    # validate_default: the default too is made absolute (Dagster wants DAGSTER_HOME, derived from it, so).
    home: str = Field("./data", validate_default=True,
                      description="Data root: inbox/, uploads/, requests/, rejected/, public/, imgpipe.duckdb.")
    public_base_url: str = Field("http://127.0.0.1:8000", description="Base of every output URL.")
    allow_private_hosts: str = Field(
        "", description="Comma list of hosts, IPs or CIDRs (optionally :port) that may be fetched although private.")
    api_token: Optional[str] = Field(None, description="Bearer token the REST API wants, when set.")
    webhook_secret: Optional[str] = Field(
        None, description="Standard Webhooks secret (whsec_...); unset: generated once under the home.")
    webhook_url: Optional[str] = Field(None, description="Webhook for requests that name none.")
    webhook_retry_delays: str = Field(
        "5,20,300,1800,7200,18000,36000,36000",
        description="Seconds between webhook attempts; the first two within the first minute.")
    sensor_interval: int = Field(5, ge=1, description="Seconds between inbox checks.")
    compress_workers: Optional[int] = Field(
        None, ge=1, description="Images compressed at once per step; unset: CPU count.")
    download_threads: int = Field(8, ge=1, description="Downloads in flight per step.")
    executor: str = Field("in_process", description="Where steps run on one machine: in_process or multiprocess.")
    profile: str = Field("embedded", description="embedded (DuckDB, local folders) or distributed.")
    database_url: Optional[str] = Field(
        None, description="distributed: the PostgreSQL status store and Dagster instance.")
    broker_url: Optional[str] = Field(None, description="distributed: the Celery broker (redis:// or amqp://).")
    storage_url: Optional[str] = Field(None, description="distributed: s3://bucket/prefix for inputs, images and CSVs.")
    max_batches: int = Field(8, ge=1, description="distributed: compress_batch steps a request is spread over.")
    worker_lost_timeout: float = Field(60.0, ge=2, description="distributed: seconds until a silent worker is lost.")
    api_url: str = Field("http://127.0.0.1:8000", description="Where `imgpipe submit` finds the REST API.")
    reuse: str = Field("on", description="on: a URL seen before is fetched conditionally and unchanged images are "
                                         "not encoded again; off: every image is downloaded and encoded.")
    metrics_public: bool = Field(False, description="1: GET /metrics needs no token, even with IMGPIPE_API_TOKEN set.")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per log line.")
    isolation: str = Field("process", description="process: each image decoded and encoded in a fresh OS process; "
                                                  "pool: in long-lived workers, recycled every pool_recycle images.")
    pool_recycle: int = Field(200, ge=1, description="pool isolation: images a worker does before it is replaced.")
    max_runs: Optional[int] = Field(
        None, ge=1, description="Processing runs at once; unset: derived from the CPU count and the memory.")
    retention_days: Optional[int] = Field(
        None, ge=1, description="Requests older than this many days are purged daily; unset: kept forever.")
    api_header_timeout: float = Field(
        10.0, gt=0, description="REST API: seconds a connection has for a request's headers, from its opening (the "
                                "first request) or the request's first byte (a later one); then it is closed.")
    api_keepalive_timeout: float = Field(
        5.0, gt=0, description="REST API: seconds an idle connection is kept open after an answer.")
    api_max_connections: int = Field(
        1000, ge=1, description="REST API: connections open at once; past it the one waiting longest for a "
                                "request is closed.")
    renditions: str = Field("", description="Formats made beside each main output, for requests that name none: a "
                                            "comma list of webp and avif (empty: none).")
    widths: str = Field("", description="Widths in pixels each image is also made at (when narrower than it), for "
                                        "requests that name none: a comma list such as 480,960 (empty: none).")

    @field_validator("home", mode="before")
    @classmethod
    def _absolute_home(cls, home: str | Path) -> str:
        return str(Path(home).expanduser().resolve())

    @field_validator("public_base_url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("webhook_retry_delays")
    @classmethod
    def _delays_in_seconds(cls, delays: str) -> str:
        try:
            seconds = [float(part) for part in delays.split(",")]
        except ValueError:
            raise ValueError("is not a comma list of seconds") from None
        if not all(second > 0 for second in seconds):
            raise ValueError("has a delay that is not positive")
        return delays

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, executor: str) -> str:
        return _one_of(executor, EXECUTORS)

    @field_validator("isolation")
    @classmethod
    def _known_isolation(cls, isolation: str) -> str:
        return _one_of(isolation.lower(), ISOLATIONS)

    @field_validator("reuse")
    @classmethod
    def _on_or_off(cls, reuse: str) -> str:
        return _one_of(reuse.lower(), ("on", "off"))

    @field_validator("renditions")
    @classmethod
    def _rendition_formats(cls, formats: str) -> str:
        return _canonical(formats, parse_formats)

    @field_validator("widths")
    @classmethod
    def _rendition_widths(cls, widths: str) -> str:
        return _canonical(widths, parse_widths)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, profile: str) -> str:
        return _one_of(profile, PROFILES)

    @model_validator(mode="after")
    def _distributed_is_complete(self) -> "Settings":
        if self.profile != "distributed":
            return self
        missing = [env_name(name) for name in ("database_url", "broker_url", "storage_url", "webhook_secret")
                   if not getattr(self, name)]
        if missing:
            raise ValueError(f"{env_name('profile')}=distributed needs {', '.join(missing)}")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{env_name('database_url')}={self.database_url!r} is not a postgresql:// URL")
        if not self.storage_url.startswith("s3://"):
            raise ValueError(f"{env_name('storage_url')}={self.storage_url!r} is not an s3://bucket/prefix URL")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """The settings of the `IMGPIPE_*` variables in `env`; an empty variable means its default."""
        given = {name: env[env_name(name)].strip() for name in cls.model_fields
                 if env.get(env_name(name), "").strip()}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ValueError("; ".join(_explain(error) for error in exc.errors())) from None

    def as_env(self) -> dict[str, str]:
        """The `IMGPIPE_*` variables that give these settings to another process."""
        return {env_name(name): str(value) for name, value in self.model_dump().items() if value is not None}

    # ------------------------------------------------------------------ derived

    @property
    def reuse_enabled(self) -> bool:
        return self.reuse == "on"

    @property
    def retention_period(self) -> timedelta | None:
        return timedelta(days=self.retention_days) if self.retention_days else None

    @property
    def distributed(self) -> bool:
        return self.profile == "distributed"

    @property
    def compress_slots(self) -> int:
        return self.compress_workers or os.cpu_count() or 2

    @property
    def webhook_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.webhook_retry_delays.split(","))

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    # Folders of contract section 1; created on first use by `ensure_folders`.
    @property
    def inbox(self) -> Path:
        return self.home_dir / "inbox"

    @property
    def uploads_dir(self) -> Path:
        """Where the Launchpad's `submit_csv_job` may read CSVs from."""
        return self.home_dir / "uploads"

    @property
    def requests_dir(self) -> Path:
        return self.home_dir / "requests"

    @property
    def rejected_dir(self) -> Path:
        return self.home_dir / "rejected"

    @property
    def public_dir(self) -> Path:
        return self.home_dir / "public"

    @property
    def images_dir(self) -> Path:
        return self.public_dir / "images"

    @property
    def outputs_dir(self) -> Path:
        return self.public_dir / "outputs"

    @property
    def db_path(self) -> Path:
        return self.home_dir / "imgpipe.duckdb"

    def ensure_folders(self) -> None:
        for folder in (self.inbox, self.uploads_dir, self.requests_dir, self.rejected_dir, self.images_dir,
                       self.outputs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def status_url(self, request_id: str) -> str:
        return f"{self.public_base_url}/requests/{request_id}"

    def output_csv_url(self, request_id: str) -> str:
        return f"{self.status_url(request_id)}/output.csv"


def load_settings() -> Settings:
    """The settings of this process's environment."""
    return Settings.from_env(os.environ)


def dagster_home_dir(settings: Settings) -> Path:
    """DAGSTER_HOME, else `dagster_home/` under the data root (what `make run` uses)."""
    return Path(os.environ.get("DAGSTER_HOME") or settings.home_dir / "dagster_home")


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def process_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`, for a child process."""
    return {**os.environ, **overrides}


def _canonical(text: str, parse) -> str:
    """`canonical(text, parse)`, with its problem as a field's (pydantic names the variable and value before it)."""
    try:
        return canonical(text, parse)
    except RenditionSpecError as exc:
        raise ValueError(exc.problem) from None


def _one_of(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"is not one of {', '.join(choices)}")
    return value


def _explain(error: dict) -> str:
    """`IMGPIPE_X='value' is not ...` for our own checks, `IMGPIPE_X='value': Input should be ...` for
    pydantic's; a check of several fields says whom it concerns itself."""
    ours = error["msg"].startswith("Value error, ")
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    return f"{env_name(error['loc'][0])}={error['input']!r}{' ' if ours else ': '}{message}"
