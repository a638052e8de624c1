"""The Dagster resource `imgpipe`: every setting as a field, and the backends they choose.

Ops, assets and sensors receive their settings here, never from the environment, so a run launched with
other resource config (another home, other limits) uses it: the fields are those of `Settings`, one per
`IMGPIPE_*` variable, shown and editable in the Launchpad. The status store and the storage are chosen by
`imgpipe.backends` from the profile, the way Dagster's hooli demo swaps a local file system for S3 behind one
interface; the REST API and the CLI choose through the same functions.
"""
from __future__ import annotations

from dagster import ConfigurableResource, EnvVar
from pydantic import model_validator

from imgpipe.backends import open_status_store, open_storage
from imgpipe.settings import SECRET_FIELDS, Settings, env_name
from imgpipe.status.store import StatusStore
from imgpipe.storage.interface import Storage


class ImgpipeResource(ConfigurableResource, Settings):
    """imgpipe's settings (IMGPIPE_*), and the status store and storage of their profile."""

    @classmethod
    def from_settings(cls, settings: Settings, secrets_from_env: bool = True) -> "ImgpipeResource":
        """The resource of `settings`; with `secrets_from_env`, each credential that is set is passed as a
        reference to its IMGPIPE_* variable (resolved where the step runs, never shown in the UI)."""
        fields = settings.model_dump()
        if secrets_from_env:
            fields.update({name: EnvVar(env_name(name)) for name in SECRET_FIELDS if fields[name] is not None})
        return cls(**fields)

    @model_validator(mode="after")
    def _distributed_is_complete(self) -> "ImgpipeResource":
        """Replaces the check of `Settings`: here a credential may still be a reference to its variable, so
        the check runs on the resolved values, in `settings()`."""
        return self

    def settings(self) -> Settings:
        return Settings(**{name: getattr(self, name) for name in Settings.model_fields})

    def store(self) -> StatusStore:
        return open_status_store(self.settings())

    def storage(self) -> Storage:
        return open_storage(self.settings())
