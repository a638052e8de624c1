"""Dagster resources: thin configurable handles on the status store and the file storage.

The classes they open are plain Python (usable by the REST API and the CLI too); which implementation runs is
a matter of configuration, so a deployment swaps the DuckDB file or the local folders without code changes.
"""
from __future__ import annotations

from dagster import ConfigurableResource

from imgpipe.settings import Settings
from imgpipe.status_store import DuckDBStatusStore
from imgpipe.storage import LocalStorage


class StatusStoreResource(ConfigurableResource):
    """The DuckDB status store (contract section 4)."""

    database_path: str

    def open(self) -> DuckDBStatusStore:
        return DuckDBStatusStore(self.database_path)


class LocalStorageResource(ConfigurableResource):
    """Inputs, images and output CSVs in folders under IMGPIPE_HOME, served at the public base URL."""

    home: str
    public_base_url: str

    def open(self) -> LocalStorage:
        return LocalStorage(self.home, self.public_base_url)


def resources_for(settings: Settings) -> dict:
    return {
        "status_store": StatusStoreResource(database_path=str(settings.db_path)),
        "storage": LocalStorageResource(home=str(settings.home), public_base_url=settings.public_base_url),
    }
