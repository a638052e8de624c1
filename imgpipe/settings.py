"""Configuration read from the environment (contract section 1), with the documented defaults.

Every limit has an `IMGPIPE_*` variable so that an operator can tune it without touching code; the README's
"Configuration" and "Safety" tables list them all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


def _choice(env: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class Limits:
    """Every bound the pipeline enforces on hostile or oversized input."""

    max_download_bytes: int = 25 * MIB
    max_pixels: int = 50_000_000
    max_frames: int = 1000
    image_timeout: float = 60.0
    download_deadline: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_redirects: int = 5
    process_memory_bytes: int = 2048 * MIB
    max_csv_bytes: int = 10 * MIB
    max_rows: int = 10_000
    max_urls: int = 50_000
    max_urls_per_row: int = 100
    max_url_length: int = 2048

    @classmethod
    def from_env(cls, env: dict) -> "Limits":
        d = cls()
        return cls(
            max_download_bytes=_int(env, "IMGPIPE_MAX_DOWNLOAD_BYTES", d.max_download_bytes),
            max_pixels=_int(env, "IMGPIPE_MAX_PIXELS", d.max_pixels),
            max_frames=_int(env, "IMGPIPE_MAX_FRAMES", d.max_frames),
            image_timeout=_float(env, "IMGPIPE_IMAGE_TIMEOUT", d.image_timeout),
            download_deadline=_float(env, "IMGPIPE_DOWNLOAD_DEADLINE", d.download_deadline),
            connect_timeout=_float(env, "IMGPIPE_CONNECT_TIMEOUT", d.connect_timeout),
            read_timeout=_float(env, "IMGPIPE_READ_TIMEOUT", d.read_timeout),
            max_redirects=_int(env, "IMGPIPE_MAX_REDIRECTS", d.max_redirects),
            process_memory_bytes=_int(env, "IMGPIPE_PROCESS_MEMORY_MB", d.process_memory_bytes // MIB) * MIB,
            max_csv_bytes=_int(env, "IMGPIPE_MAX_CSV_BYTES", d.max_csv_bytes),
            max_rows=_int(env, "IMGPIPE_MAX_ROWS", d.max_rows),
            max_urls=_int(env, "IMGPIPE_MAX_URLS", d.max_urls),
            max_urls_per_row=_int(env, "IMGPIPE_MAX_URLS_PER_ROW", d.max_urls_per_row),
            max_url_length=_int(env, "IMGPIPE_MAX_URL_LENGTH", d.max_url_length),
        )


@dataclass(frozen=True)
class Settings:
    home: Path
    public_base_url: str = "http://127.0.0.1:8000"
    allow_private_hosts: str = ""
    api_token: str | None = None
    webhook_secret: str | None = None
    webhook_url: str | None = None
    sensor_interval: int = 5
    compress_workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    download_threads: int = 8
    executor: str = "in_process"
    limits: Limits = field(default_factory=Limits)
    # The distributed profile (contract section 11); all three URLs are required there and unused otherwise.
    profile: str = "embedded"
    database_url: str | None = None
    broker_url: str | None = None
    storage_url: str | None = None
    max_batches: int = 8

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = Path(env.get("IMGPIPE_HOME") or "./data").expanduser().resolve()
        return cls(
            home=home,
            public_base_url=(env.get("IMGPIPE_PUBLIC_BASE_URL") or "http://127.0.0.1:8000").rstrip("/"),
            allow_private_hosts=env.get("IMGPIPE_ALLOW_PRIVATE_HOSTS", ""),
            api_token=env.get("IMGPIPE_API_TOKEN") or None,
            webhook_secret=env.get("IMGPIPE_WEBHOOK_SECRET") or None,
            webhook_url=env.get("IMGPIPE_WEBHOOK_URL") or None,
            sensor_interval=max(1, _int(env, "IMGPIPE_SENSOR_INTERVAL", 5)),
            compress_workers=max(1, _int(env, "IMGPIPE_COMPRESS_WORKERS", os.cpu_count() or 2)),
            download_threads=max(1, _int(env, "IMGPIPE_DOWNLOAD_THREADS", 8)),
            executor=_choice(env, "IMGPIPE_EXECUTOR", ("in_process", "multiprocess"), "in_process"),
            limits=Limits.from_env(env),
            profile=_choice(env, "IMGPIPE_PROFILE", ("embedded", "distributed"), "embedded"),
            database_url=env.get("IMGPIPE_DATABASE_URL") or None,
            broker_url=env.get("IMGPIPE_BROKER_URL") or None,
            storage_url=env.get("IMGPIPE_STORAGE_URL") or None,
            max_batches=max(1, _int(env, "IMGPIPE_MAX_BATCHES", 8)),
        )._checked()

    def _checked(self) -> "Settings":
        if self.profile == "distributed":
            missing = [name for name, value in (("IMGPIPE_DATABASE_URL", self.database_url),
                                                ("IMGPIPE_BROKER_URL", self.broker_url),
                                                ("IMGPIPE_STORAGE_URL", self.storage_url),
                                                ("IMGPIPE_WEBHOOK_SECRET", self.webhook_secret)) if not value]
            if missing:
                raise ValueError(f"IMGPIPE_PROFILE=distributed needs {', '.join(missing)}")
            if not self.database_url.startswith(("postgresql://", "postgres://")):
                raise ValueError(f"IMGPIPE_DATABASE_URL={self.database_url!r} is not a postgresql:// URL")
            if not self.storage_url.startswith("s3://"):
                raise ValueError(f"IMGPIPE_STORAGE_URL={self.storage_url!r} is not an s3://bucket/prefix URL")
        return self

    @property
    def distributed(self) -> bool:
        return self.profile == "distributed"

    # Folders of contract section 1; created on first use by `ensure_folders`.
    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def requests_dir(self) -> Path:
        return self.home / "requests"

    @property
    def rejected_dir(self) -> Path:
        return self.home / "rejected"

    @property
    def public_dir(self) -> Path:
        return self.home / "public"

    @property
    def images_dir(self) -> Path:
        return self.public_dir / "images"

    @property
    def outputs_dir(self) -> Path:
        return self.public_dir / "outputs"

    @property
    def db_path(self) -> Path:
        return self.home / "imgpipe.duckdb"

    def ensure_folders(self) -> None:
        for folder in (self.inbox, self.requests_dir, self.rejected_dir, self.images_dir, self.outputs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def output_csv_url(self, request_id: str) -> str:
        return f"{self.public_base_url}/requests/{request_id}/output.csv"

    def image_url(self, relative_key: str) -> str:
        return f"{self.public_base_url}/images/{relative_key}"
