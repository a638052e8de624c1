"""Dagster resources: thin configurable handles on the status store and the object storage.

Each concern has one interface and two implementations chosen by configuration (the embedded default and the
distributed profile), the way Dagster's hooli demo swaps a local file system for S3: ops and assets ask for
the base class, `resources_for` picks the implementation from the settings. The classes they open are plain
Python, used by the REST API and the CLI too.
"""
from __future__ import annotations

from dagster import ConfigurableResource

from imgpipe.settings import Settings
from imgpipe.status.store import DuckDBStatusStore, PostgresStatusStore, StatusStore
from imgpipe.storage import LocalStorage, S3Storage, Storage, split_s3_url


class StatusStoreResource(ConfigurableResource):
    """The status store of contract section 4."""

    def open(self) -> StatusStore:
        raise NotImplementedError


class DuckDBStatusStoreResource(StatusStoreResource):
    """The embedded default: one DuckDB file under IMGPIPE_HOME."""

    database_path: str

    def open(self) -> StatusStore:
        return DuckDBStatusStore(self.database_path)


class PostgresStatusStoreResource(StatusStoreResource):
    """The distributed profile: the same tables in PostgreSQL (IMGPIPE_DATABASE_URL)."""

    database_url: str

    def open(self) -> StatusStore:
        return PostgresStatusStore(self.database_url)


class StorageResource(ConfigurableResource):
    """Inputs, compressed images and output CSVs; their public URLs start with the public base URL."""

    public_base_url: str

    def open(self) -> Storage:
        raise NotImplementedError


class LocalStorageResource(StorageResource):
    """The embedded default: folders under IMGPIPE_HOME, served by the REST API."""

    home: str

    def open(self) -> Storage:
        return LocalStorage(self.home, self.public_base_url)


class S3StorageResource(StorageResource):
    """The distributed profile: an S3-compatible bucket (IMGPIPE_STORAGE_URL, the standard AWS_* variables)."""

    storage_url: str

    def open(self) -> Storage:
        return S3Storage(self.storage_url, self.public_base_url)


def resources_for(settings: Settings) -> dict:
    if not settings.distributed:
        return {
            "status_store": DuckDBStatusStoreResource(database_path=str(settings.db_path)),
            "storage": LocalStorageResource(home=str(settings.home), public_base_url=settings.public_base_url),
        }
    # Imported here: boto3 and the AWS integration add a second to every embedded process's start otherwise.
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    bucket, prefix = split_s3_url(settings.storage_url)
    return {
        "status_store": PostgresStatusStoreResource(database_url=settings.database_url),
        "storage": S3StorageResource(storage_url=settings.storage_url, public_base_url=settings.public_base_url),
        # Steps on other machines hand their outputs over through the bucket, not a local folder.
        "io_manager": S3PickleIOManager(s3_resource=S3Resource(), s3_bucket=bucket,
                                        s3_prefix=f"{prefix}/dagster-io".lstrip("/")),
    }
