"""The Dagster resource `imgpipe`: every setting as a field, and the backends they choose (`backends`).

Ops, assets and sensors receive their settings here, never from the environment, so a run launched with
other resource config (another home, other limits) uses it: the fields are those of `Settings`, one per
`IMGPIPE_*` variable, shown and editable in the Launchpad. The status store and the storage are chosen by
`imgpipe.backends` from the profile, the way Dagster's hooli demo swaps a local file system for S3 behind one
interface; the REST API and the CLI choose through the same functions.
"""
from __future__ import annotations

from dagster import ConfigurableResource, EnvVar
from pydantic import PrivateAttr, model_validator

from imgpipe.backends import Backends, open_backends
from imgpipe.settings import SECRET_FIELDS, Settings, env_name


class ImgpipeResource(ConfigurableResource, Settings):
    """imgpipe's settings (IMGPIPE_*), and the status store and storage of their profile."""

    # Not config: a private attribute, which Dagster leaves out of the resource's schema and of its copies.
    _backends: Backends | None = PrivateAttr(default=None)

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
        the check runs on the resolved values, in `backends()`."""
        return self

    def backends(self) -> Backends:
        """The settings (checked here, on the resolved values) and their backends, opened on the first call and
        kept: Dagster initializes a fresh copy of the resource, with the run's config, in each process that
        executes steps, so the settings are built and the backends opened once there, however often asked."""
        if self._backends is None:
            self._backends = open_backends(Settings(**{name: getattr(self, name) for name in Settings.model_fields}))
        return self._backends
