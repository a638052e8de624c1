"""The documentation site's generated reference pages: `docs/configuration.md` from the `Settings` model and
`docs/reference/openapi.json` from the REST API's app.

    .venv/bin/python -m imgpipe.docs_reference

writes both; `imgpipe_tests/test_docs.py` fails while either differs from what this module makes, so a setting or
an API call is never missing from the documentation. Both functions are pure: the configuration page needs only the
pydantic model (no Dagster), and the OpenAPI document is built from an app over default settings in a temporary,
empty home, which it leaves untouched, so the output holds no path, time or value of this machine.
"""
from __future__ import annotations

import json
import tempfile
import types
import typing
from pathlib import Path

from imgpipe.settings import ENV_PREFIX, SECRET_FIELDS, Limits, Settings, env_name

GENERATOR = "`.venv/bin/python -m imgpipe.docs_reference`"
ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION_PAGE = ROOT / "docs" / "configuration.md"
OPENAPI_DOCUMENT = ROOT / "docs" / "reference" / "openapi.json"
# The token the OpenAPI document is built with: the document then shows which calls a token guards (their 401s and
# `security`), as an API with IMGPIPE_API_TOKEN set serves it. The value itself appears nowhere in the document.
DOCUMENTED_TOKEN = "documented-token-never-shown"

INTRO = f"""\
# Configuration

<!-- Generated from imgpipe/settings.py by {GENERATOR.strip('`')}; do not edit by hand:
     change the settings or the generator (imgpipe/docs_reference.py), then run it. -->

Every setting is a field of `imgpipe.settings.Settings` named after its variable (`IMGPIPE_MAX_PIXELS` is
`max_pixels`), checked when it is read: a wrong value names its variable (`IMGPIPE_MAX_PIXELS='many': Input should
be a valid integer`). An empty variable means its default. The environment is read in one place
(`imgpipe/settings.py`); the code location passes the settings to Dagster as the fields of its `imgpipe` resource,
so ops and sensors take them from there (and a run launched with other resource config uses that), and the REST API
and the CLI receive them as an argument. In the Dagster UI, **Deployment → Resources → imgpipe** shows them, the
secret ones as the names of their variables, never their values.

The limits (`IMGPIPE_MAX_*` and the timeouts) are described, with what happens at each, in
[Safety](safety.md#safety). How the processes are started with these variables is in
[Operations](operations.md#processes).

This page is generated from `imgpipe/settings.py` by {GENERATOR}, and `imgpipe_tests/test_docs.py` fails while it
is out of date.
"""

# Variables that are not fields of Settings: Dagster's, the distributed instance's, and the system's.
OTHER_VARIABLES = """\
## Other variables

| variable | meaning | default |
| --- | --- | --- |
| `DAGSTER_HOME` | the Dagster instance folder; copy `dagster.yaml` from the repository root into it (`deploy/distributed/dagster.yaml` in the distributed profile) | `$IMGPIPE_HOME/dagster_home` (`make run`) |
| `DAGSTER_COMPUTE_LOGS_BUCKET`, `DAGSTER_COMPUTE_LOGS_PREFIX` | distributed: where `deploy/distributed/dagster.yaml` puts the steps' logs (`BucketStepLogs`, dagster-aws' `S3ComputeLogManager`), e.g. the storage bucket and `imgpipe/dagster-logs`; every process that loads the instance needs them, and refuses to start without them (see [Safety](safety.md#a-distributed-process-missing-a-variable-does-not-start)) | unset |
| `TMPDIR` | distributed: each process's own temporary folder, where the steps' logs are staged before they go to the bucket; optional (systemd services and Kubernetes pods do not set it) | the system's (`/tmp`) |
| `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ... | distributed: the standard `AWS_*` variables for `IMGPIPE_STORAGE_URL`'s bucket (`AWS_ENDPOINT_URL` for an S3-compatible server) | unset |
"""

# What the documentation says about a setting beyond its field's description: hand-written, one entry per field at
# most, appended to the description in the table. A key that is no field fails the generator.
NOTES: dict[str, str] = {
    "home": "With `make run`, `./data` of the repository (git-ignored but for `data/samples`, the sample CSV).",
    "api_token": "`Authorization: Bearer <token>`, for every call but `/healthz` and `/images/` (see "
                 "[REST API](api.md#rest-api)).",
    "webhook_secret": "`whsec_` + base64. The file is `$IMGPIPE_HOME/webhook_secret`. The distributed profile needs "
                      "it set (a secret generated on one machine would not be known to the others).",
    "compress_workers": "At once in one process, whichever of its steps they come from; the fork server queues "
                        "the rest.",
    "executor": "`in_process`: steps in the run's process (images still each in a fork of their own); "
                "`multiprocess`: a process per step, forkserver with the code preloaded.",
    "profile": "`embedded` runs the steps on this machine; for `distributed` see "
               "[Scaling out](scaling.md#scaling-out).",
    "database_url": "A `postgresql://user@host:5432/db` URL.",
    "broker_url": "`redis://127.0.0.1:6379/0` or `amqp://guest:guest@127.0.0.1:5672//` (RabbitMQ). The steps' "
                  "results go to the same Redis, or with `amqp://` to PostgreSQL (`IMGPIPE_DATABASE_URL`, table "
                  "`celery_taskmeta`); each is deleted once the run has read it.",
    "storage_url": "Also the steps' outputs; with the standard `AWS_*` variables (`AWS_ENDPOINT_URL` for an "
                   "S3-compatible server).",
    "max_batches": "At least 16 images each.",
    "worker_lost_timeout": "Its steps go to another worker (Redis: the visibility timeout live workers renew; "
                           "RabbitMQ: twice the heartbeat), and a run none of whose workers answers that long fails "
                           "(see [A worker lost](scaling.md#a-worker-lost)).",
    "reuse": "See [Re-uploads](operations.md#re-uploads-politeness-and-retention).",
    "renditions": "See [Renditions](images.md#renditions).",
    "widths": "At most 8, each 1-16383 (see [Renditions](images.md#renditions)).",
    "per_host_connections": "Whatever `IMGPIPE_DOWNLOAD_THREADS` says.",
    "fetch_attempts": "Network errors, timeouts, 408, 429, 502, 503 and 504 are retried.",
    "request_deadline": "Images not done by then fail.",
    "retention_days": "By the daily `retention_schedule` (see "
                      "[Retention](operations.md#re-uploads-politeness-and-retention)).",
    "max_runs": "Derived: one per core, fewer when memory is short (768 MiB a run), at least 2; distributed: 8 (see "
                "[Many small requests](operations.md#many-small-requests)).",
    "isolation": "In pool mode each image is still under the memory cap and timeout, and a worker is replaced after "
                 "`IMGPIPE_POOL_RECYCLE` images or any failure but a rejected image (see "
                 "[Performance](performance.md#performance)).",
    "log_format": "With `request_id` where there is one.",
    "api_header_timeout": "Counted however slowly the headers trickle; 408 if part of a request came (see "
                          "[Slow clients](safety.md#slow-clients-and-a-server-in-front)).",
    "api_keepalive_timeout": "Idle: until a next request begins.",
    "api_max_connections": "Waiting for a request means idle, or its headers incomplete. The API raises its soft "
                           "open-file limit to hold them.",
}
LIMIT_NOTE = "A limit: see [Safety](safety.md#safety)."


def configuration_markdown() -> str:
    """The configuration page: the intro, a table of every `Settings` field (its `IMGPIPE_*` variable, type,
    default and description), and the variables that are not settings."""
    unknown = sorted(set(NOTES) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"NOTES names fields Settings does not have: {', '.join(unknown)}")
    lines = [INTRO, "## Settings", "",
             f"Each variable is `{ENV_PREFIX}` and its field's name in capitals; the fields of `Limits`, which "
             "`Settings` inherits, come first.", "",
             "| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = [_cell(field.description or "")]
        if name in NOTES:
            meaning.append(NOTES[name])
        if name in Limits.model_fields:
            meaning.append(LIMIT_NOTE)
        lines.append(f"| `{env_name(name)}` | {_type_name(field.annotation)} | {_default(name, field.default)} | "
                     f"{' '.join(meaning)} |")
    lines += ["", OTHER_VARIABLES]
    return "\n".join(lines).rstrip("\n") + "\n"


def openapi_json() -> str:
    """The REST API's OpenAPI document, as `GET /openapi.json` answers it with a token set, sorted and indented."""
    from imgpipe.api.app import create_app  # FastAPI and the API's modules: only here

    with tempfile.TemporaryDirectory(prefix="imgpipe-docs-") as home:
        document = create_app(Settings(home=home, api_token=DOCUMENTED_TOKEN)).openapi()
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    for leak in (home, DOCUMENTED_TOKEN):
        if leak in text:
            raise RuntimeError(f"the OpenAPI document holds {leak!r}; it must not depend on this machine")
    return text


def main() -> None:
    for path, text in ((CONFIGURATION_PAGE, configuration_markdown()), (OPENAPI_DOCUMENT, openapi_json())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"written {path.relative_to(ROOT)}")


def _type_name(annotation) -> str:
    """`int`, `float`, `str`, `bool`; `int, optional` for an Optional; the choices of a Literal."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return ", ".join(_type_name(arg) for arg in inner) + ", optional"
    return getattr(annotation, "__name__", str(annotation))


def _default(name: str, default) -> str:
    if name in SECRET_FIELDS:
        return "unset" if default is None else "(secret, not shown)"
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def _cell(text: str) -> str:
    """A description as a table cell: one line, no unescaped bar."""
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    main()
