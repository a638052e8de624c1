"""Settings from the environment: the defaults, the distributed profile's required variables, and the
Dagster resource that carries them."""
from __future__ import annotations

import pytest
from dagster import EnvVar

from imgpipe.backends import io_managers
from imgpipe.defs.resources import ImgpipeResource
from imgpipe.settings import SECRET_FIELDS, Settings, env_name
from imgpipe.status.duckdb_store import DuckDBStatusStore
from imgpipe.status.postgres_store import PostgresStatusStore
from imgpipe.storage.local import LocalStorage
from imgpipe.storage.s3 import S3Storage

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
    resource = ImgpipeResource.from_settings(settings)
    assert isinstance(resource.backends().store, DuckDBStatusStore)
    assert str(resource.backends().store.path) == "/srv/imgpipe/imgpipe.duckdb"
    assert isinstance(resource.backends().storage, LocalStorage)
    assert io_managers(settings) == {}  # Dagster's file system IO manager


def test_the_default_data_root_is_absolute_under_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    settings = Settings.from_env({})

    assert settings.home == str(tmp_path.resolve() / "data")
    assert ImgpipeResource.from_settings(settings).home == settings.home


def test_distributed_profile_swaps_every_backend():
    settings = Settings.from_env(DISTRIBUTED)
    resource = ImgpipeResource.from_settings(settings, secrets_from_env=False)

    assert isinstance(resource.backends().store, PostgresStatusStore)
    assert isinstance(resource.backends().storage, S3Storage)
    io_manager = io_managers(settings)["io_manager"]
    assert (io_manager.s3_bucket, io_manager.s3_prefix) == ("product-images", "imgpipe/dagster-io")


def test_every_field_is_an_imgpipe_variable_and_back():
    env = {env_name(name): str(value) for name, value in {
        "home": "/srv/x", "max_pixels": 12, "image_timeout": 2.5, "webhook_url": "https://h.example/x",
        "compress_workers": 3, "webhook_retry_delays": "1,2"}.items()}
    settings = Settings.from_env(env)

    assert (settings.max_pixels, settings.image_timeout, settings.compress_slots) == (12, 2.5, 3)
    assert settings.webhook_delays == (1.0, 2.0)
    assert Settings.from_env(settings.as_env()) == settings


def test_credentials_reach_the_resource_as_variable_references():
    settings = Settings.from_env({**DISTRIBUTED, "IMGPIPE_API_TOKEN": "t0ken"})
    resource = ImgpipeResource.from_settings(settings)

    for name in SECRET_FIELDS:
        assert getattr(resource, name) == EnvVar(env_name(name))
    assert resource.home == "/srv/imgpipe"  # everything else as its value, shown in the UI


def test_a_value_of_the_wrong_type_is_named_with_its_variable():
    with pytest.raises(ValueError, match="IMGPIPE_MAX_PIXELS='many': Input should be a valid integer"):
        Settings.from_env({"IMGPIPE_MAX_PIXELS": "many"})
    with pytest.raises(ValueError, match="IMGPIPE_WEBHOOK_RETRY_DELAYS='5,soon' is not a comma list of seconds"):
        Settings.from_env({"IMGPIPE_WEBHOOK_RETRY_DELAYS": "5,soon"})


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


def test_the_apis_slow_client_bounds_have_defaults_and_are_checked():
    settings = Settings.from_env({})
    assert (settings.api_header_timeout, settings.api_keepalive_timeout, settings.api_max_connections) == (10, 5, 1000)
    for name, value in (("IMGPIPE_API_HEADER_TIMEOUT", "0"), ("IMGPIPE_API_KEEPALIVE_TIMEOUT", "-1"),
                        ("IMGPIPE_API_MAX_CONNECTIONS", "0"), ("IMGPIPE_API_MAX_CONNECTIONS", "many")):
        with pytest.raises(ValueError, match=f"^{name}={value!r}: Input should be"):
            Settings.from_env({name: value})
