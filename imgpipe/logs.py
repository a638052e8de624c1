"""imgpipe's own log lines (the inbox intake, the REST API, `imgpipe up`): plain text for a person, or with
IMGPIPE_LOG_FORMAT=json one JSON object per line for a log pipeline.

A JSON line is `{"time", "level", "logger", "message"}`, plus `request_id` where the line is about a request
(given as `extra={"request_id": ...}`, or the request an API call is about, see `request_context`), plus any
other `extra` fields (`event`, `status`, `counts`, ...) and `exception` with the traceback when there is one.
Dagster's own lines (`context.log` in ops and sensors) are Dagster's to format.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Iterator, TextIO

from imgpipe.settings import Settings

# The request the current API call (or task) is about; log records without a request_id of their own get it.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("imgpipe_request_id", default=None)
# Attributes every LogRecord has: anything else on a record came from `extra` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName",
                                                                         "color_message"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers configured by `configure_logging`: ours.
OWN_LOGGERS = ("imgpipe",)
# python-multipart warns about each malformed body it is given; the API answers those with a 400 already.
QUIET_LOGGERS = {"python_multipart": logging.ERROR, "multipart": logging.ERROR}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = current_request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [request_id]`."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [{request_id}]" if request_id and request_id not in record.getMessage() else text


def formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


def configure_logging(settings: Settings, stream: TextIO | None = None, level: int = logging.INFO,
                      loggers: tuple[str, ...] = OWN_LOGGERS) -> logging.Handler:
    """Send `loggers` (imgpipe's own by default) to `stream` (stderr) in the format of IMGPIPE_LOG_FORMAT, and
    only there; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings))
    handler.addFilter(RequestIdFilter())
    for name in loggers:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    return handler


def uvicorn_log_config(settings: Settings) -> dict:
    """uvicorn's `log_config` for `imgpipe api`: its loggers and ours, one format (IMGPIPE_LOG_FORMAT), on
    stderr."""
    kind = "imgpipe.logs.JsonFormatter" if settings.log_format == "json" else "imgpipe.logs.TextFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "imgpipe", "filters": ["request_id"],
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "imgpipe.logs.RequestIdFilter"}},
        "formatters": {"imgpipe": {"()": kind}},
        "handlers": {"imgpipe": handler},
        "loggers": {
            **{name: {"handlers": ["imgpipe"], "level": "INFO", "propagate": False}
               for name in ("uvicorn", "uvicorn.access", *OWN_LOGGERS)},
            "uvicorn.error": {"level": "INFO"},  # propagates to "uvicorn"
            **{name: {"level": logging.getLevelName(quiet)} for name, quiet in QUIET_LOGGERS.items()},
        },
    }


@contextlib.contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Log records made meanwhile (in this task or thread) carry `request_id`."""
    token = current_request_id.set(request_id)
    try:
        yield
    finally:
        current_request_id.reset(token)
