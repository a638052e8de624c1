"""Settings from the environment: the defaults, and the distributed profile's required variables."""
from __future__ import annotations

import pytest

from imgpipe.defs.resources import (
    DuckDBStatusStoreResource,
    LocalStorageResource,
    PostgresStatusStoreResource,
    S3StorageResource,
    resources_for,
)
from imgpipe.settings import Settings

DISTRIBUTED = {
    "IMGPIPE_HOME": "/srv/imgpipe",
    "IMGPIPE_PROFILE": "distributed",
    "IMGPIPE_DATABASE_URL": "postgresql://postgres@db.internal:5432/imgpipe",
    "IMGPIPE_BROKER_URL": "redis://broker.internal:6379/0",
    "IMGPIPE_STORAGE_URL": "s3://product-images/imgpipe",
    "IMGPIPE_WEBHOOK_SECRET": "whsec_c2VjcmV0",
}


def test_embedded_is_the_default_and_needs_no_service():
    settings = Settings.from_env({"IMGPIPE_HOME": "/srv/imgpipe"})

    assert (settings.profile, settings.distributed, settings.executor) == ("embedded", False, "in_process")
    resources = resources_for(settings)
    assert isinstance(resources["status_store"], DuckDBStatusStoreResource)
    assert resources["status_store"].database_path == "/srv/imgpipe/imgpipe.duckdb"
    assert isinstance(resources["storage"], LocalStorageResource)
    assert "io_manager" not in resources  # Dagster's file system IO manager


def test_distributed_profile_swaps_every_resource():
    resources = resources_for(Settings.from_env(DISTRIBUTED))

    assert isinstance(resources["status_store"], PostgresStatusStoreResource)
    assert isinstance(resources["storage"], S3StorageResource)
    io_manager = resources["io_manager"]
    assert (io_manager.s3_bucket, io_manager.s3_prefix) == ("product-images", "imgpipe/dagster-io")


@pytest.mark.parametrize("missing", ["IMGPIPE_DATABASE_URL", "IMGPIPE_BROKER_URL", "IMGPIPE_STORAGE_URL",
                                     "IMGPIPE_WEBHOOK_SECRET"])
def test_distributed_profile_names_each_missing_variable(missing):
    env = {k: v for k, v in DISTRIBUTED.items() if k != missing}

    with pytest.raises(ValueError, match=f"IMGPIPE_PROFILE=distributed needs {missing}$"):
        Settings.from_env(env)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("IMGPIPE_DATABASE_URL", "mysql://db/imgpipe", "is not a postgresql:// URL"),
    ("IMGPIPE_STORAGE_URL", "/mnt/images", "is not an s3://bucket/prefix URL"),
    ("IMGPIPE_PROFILE", "cluster", "is not one of embedded, distributed"),
])
def test_a_malformed_value_is_named_with_its_variable(name, value, message):
    with pytest.raises(ValueError, match=f"{name}={value!r} {message}"):
        Settings.from_env({**DISTRIBUTED, name: value})
