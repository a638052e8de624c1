"""What FastAPI cannot infer for `/openapi.json`: the error answers of each operation, the links from an
accepted upload to its status and output CSV, the two request body media types of `POST /requests`, the bearer
security scheme, and which operations it guards."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imgpipe.api.auth import SCHEME_NAME, SECURITY_SCHEME
from imgpipe.api.models import ErrorBody, InvalidBody, Purged, UploadForm
from imgpipe.api.uploads import (
    MAX_HEADER_LINE_BYTES,
    MAX_PARTS,
    MAX_WEBHOOK_FIELD_BYTES,
    MULTIPART_ENVELOPE_BYTES,
)
from imgpipe.settings import Settings
from imgpipe.status.models import RequestStatus

DESCRIPTION = (
    "Upload a CSV of product image URLs; follow its status; fetch the compressed images and the output CSV. "
    "Every error answer is `{\"error\": {\"code\", \"message\"}}`, with `errors` (every problem) on 422."
)
EXAMPLE_CSV = ("S. No.,Product Name,Input Image Urls\n"
               "1,Running shoe,\"https://example.com/shoe-front.jpg, https://example.com/shoe-side.jpg\"\n"
               "2,Sun hat,https://example.com/hat.png\n")
REQUEST_ID_FROM_BODY = {"request_id": "$response.body#/request_id"}
ACCEPTED_LINKS = {
    "GetRequest": {
        "operationId": "getRequest",
        "parameters": REQUEST_ID_FROM_BODY,
        "description": "The status document of the request just accepted (answers 200 from the moment of the 202).",
    },
    "GetOutputCsv": {
        "operationId": "getOutputCsv",
        "parameters": REQUEST_ID_FROM_BODY,
        "description": "Its output CSV, once the request has ended (409 until then).",
    },
}


PURGED = {"model": Purged, "description": "The request was purged by retention; its images are gone (404)"}
SIGNED_LINK_REFUSED = {"model": ErrorBody, "description": (
    "Missing or wrong `Authorization: Bearer <token>`, and no signed link, or one that expired or whose signature "
    "does not match (the message says which)")}
INVALID_PARAMETER = {"model": InvalidBody, "description": "A query parameter out of its range (`errors` says which)"}
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
MAX_EXPIRES = 10**12
REQUESTS_PAGE_SIZE = 50
MAX_REQUESTS_PAGE_SIZE = 500
_STATUS = "(?:" + "|".join(RequestStatus) + ")"
STATUS_LIST_PATTERN = f"^{_STATUS}(?:,{_STATUS})*$"
INVALID_LIST_PARAMETER = {"model": InvalidBody, "description": (
    "An unknown status, or `limit` or `offset` out of its range (`errors` says which)")}
LIST_REQUESTS_DESCRIPTION = (
    f"The requests, newest first (by `created_at`, then `request_id`): `limit` of them (default "
    f"{REQUESTS_PAGE_SIZE}, at most {MAX_REQUESTS_PAGE_SIZE}) from `offset`, each exactly as "
    "`GET /requests/{request_id}?view=summary` answers, and `requests_total`, how many match `status` in all. "
    "The page and every count in it are read in one transaction of the status store.")
GET_REQUEST_DESCRIPTION = (
    "Without parameters: the whole document, every product with its images. For a large request, "
    "`?limit=N&offset=M` answers that page of products (in input order) with `products_total`, and "
    "`?view=summary` answers without `products` (counts, links, errors and `products_total`): both are read "
    "in pages from the status store, never the whole request. `report_url` links to the HTML report.")
REPORT_DESCRIPTION = (
    "One HTML page per request, rendered on the server, no JavaScript: a summary (counts, bytes in and out, total "
    "saved, how the images were obtained, time taken), then per product each image's before and after "
    "thumbnails side by side, bytes and quality in and out, percent saved, how it was obtained, its note, "
    "for a failed image the reason, and for one with renditions its sizes by width and format; `limit` products "
    "per page. With IMGPIPE_API_TOKEN set it wants the token, "
    "or the `expires` and `signature` of the request's `report_url`: a signed link to this report and its "
    "thumbnails only, which opens in a browser.")
IMAGE_DESCRIPTION = (
    "A compressed image, or one of its renditions by its own name (`<stem>.w<width>.<ext>`, listed in the status "
    "document). The URL of an image made with renditions answers by the request's `Accept`: without it, or with "
    "only wildcards, the main output as always; when it names `image/avif` or `image/webp` with a q above 0, the "
    "smallest file the client takes (an AVIF or WebP only where named, q=0 refusing), with `Vary: Accept`. `?w=N` "
    "picks the narrowest width at least N (the widest when none is).")
METRICS_DESCRIPTION = (
    "Prometheus' text format: `imgpipe_requests_total{status}`, `imgpipe_images_total{status}`, "
    "`imgpipe_images_obtained_total{obtained}`, `imgpipe_image_bytes_total{direction}`, "
    "`imgpipe_image_bytes_out_total{kind,format}` (main outputs and renditions by format), the histograms "
    "`imgpipe_image_download_seconds` and `imgpipe_image_compress_seconds`, "
    "`imgpipe_webhook_attempts_total{outcome}` and `imgpipe_oldest_queued_request_age_seconds`. Derived from the "
    "status store at each scrape, so true across every process and machine. Wants the token unless "
    "IMGPIPE_METRICS_PUBLIC=1.")


def error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


def responses(settings: Settings, *, guarded: bool = True, store: bool = True, **by_status: dict) -> dict:
    """The error answers of an operation: `by_status` (keys `r404`, ...), 401 when a token guards it, 503 when
    it reads the status store."""
    answers: dict[int | str, dict] = {int(key.removeprefix("r")): value for key, value in by_status.items()}
    if guarded and settings.api_token:
        answers.setdefault(401, error("Missing or wrong `Authorization: Bearer <token>` (IMGPIPE_API_TOKEN is set)"))
        twice = "the `Authorization` header, or a signed link's `expires` or `signature`, given more than once"
        answers[400] = (error(twice[0].upper() + twice[1:]) if 400 not in answers else
                        {**answers[400], "description": f"{answers[400]['description']}; or {twice}"})
    if store:
        answers[503] = error("The status store is busy (with `Retry-After`) or unreadable")
    return dict(sorted(answers.items(), key=lambda item: str(item[0])))


def security(settings: Settings, guarded: bool) -> dict:
    """Per operation: the token when one is configured and the operation is guarded, else none."""
    return {"security": [{SCHEME_NAME: []}] if guarded and settings.api_token else []}


def create_request_docs(settings: Settings) -> dict[str, Any]:
    limit = settings.max_csv_bytes
    form = UploadForm.model_json_schema()
    form["properties"]["webhook_url"]["maxLength"] = settings.max_url_length
    return {
        "responses": responses(
            settings,
            r202={"links": ACCEPTED_LINKS, "headers": {
                "Location": {"description": "The status URL", "schema": {"type": "string"}},
                "Idempotent-Replayed": {"description": "`true` when this is the request of a repeated "
                                                       "Idempotency-Key", "schema": {"type": "string"}}}},
            r400=error(f"Malformed multipart body: no boundary, bad framing, more than {MAX_PARTS} parts, a part "
                       f"header line over {MAX_HEADER_LINE_BYTES:,} bytes"),
            r413=error(f"The CSV is larger than IMGPIPE_MAX_CSV_BYTES ({limit:,} bytes here), the body larger "
                       f"than that plus {MULTIPART_ENVELOPE_BYTES:,} bytes of multipart envelope, or the "
                       f"webhook_url field larger than {MAX_WEBHOOK_FIELD_BYTES:,} bytes"),
            r415=error("Neither multipart/form-data nor text/csv"),
            r422={"model": InvalidBody, "description": (
                "Every problem at once. An invalid CSV is recorded as a `rejected` request (its file kept "
                "beside errors.json) and `request_id` names it; a bad webhook_url or Idempotency-Key, a form "
                "without `file`, or an Idempotency-Key first sent with another CSV or webhook_url, is recorded "
                "nowhere. The same upload with the same Idempotency-Key again gives the same 422.")},
        ),
        "openapi_extra": {
            **security(settings, guarded=True),
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": form,
                                            "encoding": {"file": {"contentType": "text/csv"}},
                                            "example": {"file": EXAMPLE_CSV,
                                                        "webhook_url": "https://hooks.example.com/imgpipe"}},
                    "text/csv": {"schema": {"type": "string", "description": (
                        "The CSV itself; its name and webhook come from the query")},
                                 "example": EXAMPLE_CSV},
                },
            },
        },
    }


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, with the security scheme, and without the 422 it adds by default to operations with
    parameters: only `POST /requests` can answer 422, and it declares its own."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                           servers=[{"url": settings.public_base_url}])
    for operations in document["paths"].values():
        for operation in operations.values():
            default_422 = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(default_422.get("content", {})):
                del operation["responses"]["422"]
    components = document.setdefault("components", {})
    schemas = components.get("schemas", {})
    if "HTTPValidationError" not in str(document["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    # Always declared; operations name it only when IMGPIPE_API_TOKEN is set (see `security`).
    components["securitySchemes"] = {SCHEME_NAME: dict(SECURITY_SCHEME)}
    app.openapi_schema = document
    return document
