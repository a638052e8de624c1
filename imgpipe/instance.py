"""The distributed profile's Dagster instance (`package_data/distributed/dagster.yaml` names both classes here).

`DistributedInstance` refuses to load in a process whose environment lacks what the profile needs: the
IMGPIPE_* settings of the distributed profile (the code location this process runs, or launches runs of, reads
them) and every variable the instance's own configuration reads (`env:` in dagster.yaml). Every process that
loads the instance checks, at its start: the daemon and the UI (`dagster-daemon run`, `dagster-webserver`,
`dagster dev`), each run worker, each step on a Celery worker, `imgpipe purge`. Without it, a process missing a
variable started anyway, and Dagster read the variable only where it was first used: a run failed on it, the
failed-run sensor too, and a request accepted by the API stayed queued for good. `imgpipe worker` checks the
same before it takes any step (`environment_problems`).

`BucketStepLogs`: `S3ComputeLogManager` staging step logs in this process's temporary folder, `$TMPDIR` or else
the system's, with no variable needed: `local_dir: {env: TMPDIR}` failed wherever TMPDIR is unset, as it is
under systemd and in Kubernetes pods.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

from imgpipe.settings import Settings, env_name

# The instance configuration `imgpipe worker` checks when it has no DAGSTER_HOME of its own: the one the
# package ships, which the daemon's steps bring with them.
SHIPPED_CONFIG = resources.files("imgpipe") / "package_data" / "distributed" / "dagster.yaml"


def instance_at(home: Path) -> DagsterInstance:
    """The Dagster instance configured in `home`/dagster.yaml, for a process that found `home` without DAGSTER_HOME
    (the CLI and the API derive it from IMGPIPE_HOME). The embedded configuration names its event log's folder
    `{env: DAGSTER_HOME}`, as Dagster's own processes have it set: this process gets it too, and so do the warm
    run server and run workers it starts. A process already set to another home keeps it; the instance made here
    read its folders while the variable named `home`."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        return DagsterInstance.from_config(str(home))
    finally:
        if previous is not None:
            os.environ["DAGSTER_HOME"] = previous


def configured_instance(home: Path) -> DagsterInstance | None:
    """The Dagster instance configured in `home`/dagster.yaml (`instance_at`); None when there is no such file."""
    return instance_at(home) if (home / "dagster.yaml").is_file() else None


class IncompleteEnvironment(RuntimeError):
    """This process lacks variables the distributed profile needs; the message names each."""


def config_variables(config: Any) -> Iterator[str]:
    """The names of the environment variables a Dagster configuration reads (`{env: NAME}` anywhere in it)."""
    if isinstance(config, Mapping):
        if set(config) == {"env"} and isinstance(config["env"], str):
            yield config["env"]
            return
        for value in config.values():
            yield from config_variables(value)
    elif isinstance(config, list):
        for value in config:
            yield from config_variables(value)


def ref_variables(ref: InstanceRef) -> list[str]:
    """The environment variables an instance's configuration reads, from each of its parts."""
    names: dict[str, None] = {}
    for part in ref:
        if isinstance(part, ConfigurableClassData):
            names.update(dict.fromkeys(config_variables(yaml.safe_load(part.config_yaml) or {})))
        elif isinstance(part, Mapping):
            names.update(dict.fromkeys(config_variables(part)))
    return list(names)


def file_variables(path: Traversable) -> list[str]:
    """The environment variables a dagster.yaml reads; none when there is no such file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(dict.fromkeys(config_variables(yaml.safe_load(text) or {})))


def environment_problems(environ: Mapping[str, str], instance_variables: list[str], source: str) -> list[str]:
    """What this process's environment lacks for the distributed profile: its settings, and the variables
    `instance_variables` that the instance's configuration (`source`, for the message) reads."""
    problems = []
    try:
        settings = Settings.from_env(environ)
    except ValueError as exc:
        problems.append(str(exc))
    else:
        if not settings.distributed:
            problems.append(f"{env_name('profile')} is {settings.profile!r}, but {source} is the distributed "
                            f"profile's: set {env_name('profile')}=distributed")
    missing = [name for name in instance_variables if not environ.get(name, "").strip()]
    if missing:
        problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set ({source} reads "
                        f"{'it' if len(missing) == 1 else 'them'})")
    return problems


def worker_problems(environ: Mapping[str, str]) -> list[str]:
    """What `imgpipe worker` lacks, before it takes a step: a step loads the daemon's instance in the worker's
    environment, so the variables are those of $DAGSTER_HOME/dagster.yaml when the worker has one, else of the
    dagster.yaml the package ships."""
    home = environ.get("DAGSTER_HOME", "").strip()
    config = Path(home) / "dagster.yaml" if home and (Path(home) / "dagster.yaml").is_file() else SHIPPED_CONFIG
    return environment_problems(environ, file_variables(config), str(config))


def refuse(problems: list[str]) -> IncompleteEnvironment:
    return IncompleteEnvironment("imgpipe's distributed profile cannot run in this process: " + "; ".join(problems)
                                 + " (see README, Scaling out)")


class DistributedInstance(DagsterInstance):
    """A Dagster instance that checks, as it loads, that this process has every variable the distributed profile
    needs, and refuses to load naming each one missing."""

    def __init__(self, *args, **kwargs):
        ref = kwargs.get("ref")
        variables = ref_variables(ref) if ref is not None else []
        problems = environment_problems(os.environ, variables, "the Dagster instance's dagster.yaml")
        if problems:
            raise refuse(problems)
        super().__init__(*args, **kwargs)

    # What Dagster asks of a custom instance class (`instance_class:` in dagster.yaml): no settings of its own.
    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        return InstanceRef.config_defaults(base_dir)


def temporary_folder() -> str:
    """This process's temporary folder: $TMPDIR as the environment has it now (tempfile.gettempdir() keeps what it
    found the first time it was asked), else the system's."""
    return os.environ.get("TMPDIR", "").strip() or tempfile.gettempdir()


class BucketStepLogs(S3ComputeLogManager):
    """Step logs in the bucket, staged in this process's temporary folder unless `local_dir` is given."""

    def __init__(self, bucket, local_dir=None, **kwargs):
        super().__init__(bucket, local_dir=local_dir or temporary_folder(), **kwargs)
