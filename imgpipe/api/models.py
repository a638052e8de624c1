"""The bodies the REST API takes and gives (contract section 6), as pydantic models: FastAPI documents them in
`/openapi.json` and answers with them. The status document itself is `imgpipe.status.document.RequestDocument`,
shared with the CLI."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from imgpipe.intake.intake import WEBHOOK_URL_PATTERN
from imgpipe.status.document import RequestSummary, RowErrorModel

URI = {"format": "uri"}
class Accepted(BaseModel):
    """202 to `POST /requests`: the request is recorded `queued` (or it is the request of a repeated
    Idempotency-Key)."""

    request_id: str
    status: Literal["queued"]
    status_url: str = Field(json_schema_extra=URI, description="`GET` it for the request's status document.")
    output_csv_url: str = Field(json_schema_extra=URI, description="Answers with the output CSV once the "
                                                                   "request has ended (409 until then).")


class ErrorDetail(BaseModel):
    code: str = Field(description="bad_request, unauthorized, not_found, method_not_allowed, conflict, "
                                  "payload_too_large, unsupported_media_type, invalid_upload, invalid_request, "
                                  "unavailable or internal_error.")
    message: str = Field(description="What went wrong, for a person.")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


class InvalidBody(ErrorBody):
    """422: the error, plus every problem found (contract section 6: `errors`)."""

    errors: list[RowErrorModel]
    request_id: str | None = Field(
        None, description="Set when the upload itself was recorded: a CSV that breaks a rule is kept and its "
                          "request recorded `rejected` with these errors. Absent when the problems lie outside "
                          "the CSV (webhook_url, Idempotency-Key, no file field): then nothing was recorded.")


class Purged(BaseModel):
    """410 to a request purged by retention (`imgpipe purge`, IMGPIPE_RETENTION_DAYS): it existed, and is gone."""

    request_id: str
    status: Literal["purged"]
    purged_at: datetime


class RequestList(BaseModel):
    """`GET /requests`: a page of the requests, newest first, each as `GET /requests/{id}?view=summary` answers."""

    requests: list[RequestSummary]
    requests_total: int = Field(ge=0, description="How many requests match `status`, whatever `limit` and `offset`.")


class Health(BaseModel):
    status: Literal["ok"]


class UploadForm(BaseModel):
    """The multipart/form-data body of `POST /requests` (documentation only: the body is parsed as it streams
    in, see `imgpipe.api.uploads`)."""

    file: bytes = Field(json_schema_extra={"format": "binary"},
                        description="The CSV (UTF-8, with or without BOM). Its file name is kept, without folders.")
    # Not Optional: a form field is a string or absent, never null.
    webhook_url: str = Field(
        None, pattern=WEBHOOK_URL_PATTERN,
        description="An absolute http(s) URL, called (Standard Webhooks) when the request ends; absent or empty: "
                    "IMGPIPE_WEBHOOK_URL. Also accepted as the `webhook_url` query parameter (the field wins).")
