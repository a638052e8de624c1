"""The REST API (contract section 6).

An upload is validated, recorded as `queued` and dropped into the inbox exactly as a folder drop would be; the
inbox sensor takes it from there. Status is read from the store. Every error answer has one shape,
`{"error": {"code", "message"}}`, plus the contract's top-level `errors` list on 422.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imgpipe.intake.csv_schema import UploadRejected, parse_upload
from imgpipe.intake.intake import enqueue_upload
from imgpipe.settings import Settings
from imgpipe.status.store import IMAGE_STATUSES, TERMINAL_STATUSES, StatusStore, StoreBusy, open_status_store
from imgpipe.storage import Storage, content_type_of, open_storage

DEFAULT_FILE_NAME = "upload.csv"
# Boundaries and the webhook field around a CSV that is itself just under the limit.
MULTIPART_ENVELOPE_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# A health probe should answer within its own timeout rather than wait out a long pipeline write.
HEALTH_LOCK_TIMEOUT = 5.0
CSV_MEDIA_TYPES = ("text/csv", "application/csv")

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_upload",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers


def error_response(status: int, message: str, *, errors: list[dict] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict = {"error": {"code": ERROR_CODES.get(status, "internal_error"), "message": message}}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def _iso(moment: datetime | None) -> str | None:
    # The store keeps naive UTC; say so in the answer.
    return moment.replace(tzinfo=timezone.utc).isoformat() if moment else None


def request_document(store: StatusStore, storage: Storage, settings: Settings, request_id: str) -> dict | None:
    """The status document of `GET /requests/{id}` (contract section 6); None for an unknown request."""
    document = _stored_document(store, settings, request_id)
    if document is not None:
        _link_output_csv(document, storage, settings)
    return document


def _link_output_csv(document: dict, storage: Storage, settings: Settings) -> None:
    """`output_csv_url` once the request has ended with its CSV in the storage (a file or an object)."""
    request_id = document["request_id"]
    if document["status"] in TERMINAL_STATUSES and storage.has_output_csv(request_id):
        document["output_csv_url"] = settings.output_csv_url(request_id)


def _stored_document(store: StatusStore, settings: Settings, request_id: str) -> dict | None:
    """The document from the status store alone, `output_csv_url` still None."""
    # The request row first: a terminal status is written last, so the images read after it are final.
    request = store.get_request(request_id)
    if request is None:
        return None
    images_by_row = defaultdict(list)
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    for image in store.images(request_id):
        images_by_row[image["row_number"]].append({
            "position": image["position"],
            "input_url": image["input_url"],
            "status": image["status"],
            "output_url": image["output_url"],
            "error": image["error"],
        })
        counts[image["status"]] += 1
    errors = json.loads(request["errors_json"]) if request["errors_json"] else []
    if request["status"] == "failed" and request["error"]:
        errors.append({"row": None, "column": None, "message": request["error"]})
    return {
        "request_id": request_id,
        "status": request["status"],
        "created_at": _iso(request["created_at"]),
        "updated_at": _iso(request["updated_at"]),
        # Counted from the listed images rather than asked separately, so the two always agree.
        "counts": {"total": sum(counts.values()), **counts},
        "output_csv_url": None,
        "errors": errors,
        "products": [
            {"serial": product["serial"], "product_name": product["product_name"],
             "images": images_by_row[product["row_number"]]}
            for product in store.products(request_id)
        ],
    }


@dataclass(frozen=True)
class Upload:
    data: bytes
    file_name: str
    webhook_url: str | None


def _base_name(name: str | None) -> str:
    """The uploaded file's name without folders; browsers on Windows may send a whole path."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base if base not in ("", ".", "..") else DEFAULT_FILE_NAME


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit`, whatever Content-Length claims."""
    too_large = ApiError(413, f"the upload is larger than the limit of {limit:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(content_type: str, body: bytes) -> dict[str, tuple[bytes, str | None]]:
    """Multipart form fields by name, as (content, file name). The standard library's MIME parser does this
    because Starlette's own form parser needs python-multipart, which the project does not depend on."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ApiError(400, "the body is not a valid multipart/form-data message")
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name not in fields:
            fields[name] = (part.get_payload(decode=True) or b"", part.get_filename())
    return fields


def _webhook_url_errors(url: str | None, max_length: int) -> list[dict]:
    if url is None:
        return []
    try:
        parts = urlsplit(url)
        # `.port` raises ValueError on a port that is not a number in range.
        valid = (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
                 and len(url) <= max_length)
    except ValueError:
        valid = False
    if valid:
        return []
    return [{"row": None, "column": "webhook_url",
             "message": f"webhook_url {url[:100]!r} is not an absolute http(s) URL of at most {max_length} characters"}]


class BearerAuth:
    """Every call but `/healthz` and `/images/...` needs the token. Images stay open because their URLs are
    handed out in output CSVs."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/healthz" or path.startswith("/images/") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "a valid 'Authorization: Bearer <token>' header is required",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _authorized(self, scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)


class Api:
    def __init__(self, settings: Settings, storage: Storage | None = None):
        self.settings = settings
        self.store = open_status_store(settings)
        self.health_store = open_status_store(settings, lock_timeout=HEALTH_LOCK_TIMEOUT)
        # DuckDB refuses a read-only and a read-write connection to one file open at the same time in one
        # process, and the store retries only other processes' locks: so this process takes turns.
        self.store_lock = threading.Lock()
        # Makes "look up the Idempotency-Key, else record a new request" atomic within this process.
        self.intake_lock = asyncio.Lock()
        self.storage = storage or open_storage(settings)

    async def in_store(self, function, *args, **kwargs):
        def locked():
            with self.store_lock:
                return function(*args, **kwargs)

        return await run_in_threadpool(locked)

    # ------------------------------------------------------------------ POST /requests

    async def create_request(self, request: Request) -> JSONResponse:
        upload = await self._read_upload(request)
        key = request.headers.get("idempotency-key", "").strip() or None
        errors = _webhook_url_errors(upload.webhook_url, self.settings.limits.max_url_length)
        if key and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            errors.append({"row": None, "column": "Idempotency-Key",
                           "message": f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"})
        errors += await run_in_threadpool(self._csv_errors, upload.data)
        if errors:
            raise ApiError(422, f"the upload has {len(errors)} problem(s)", errors=errors)
        async with self.intake_lock:
            if key:
                existing = await self.in_store(self.store.find_by_idempotency_key, key)
                if existing:
                    return self._accepted(existing["request_id"], replayed=True)
            request_id = await self.in_store(enqueue_upload, self.settings, self.store, upload.data,
                                             file_name=upload.file_name, source="api",
                                             webhook_url=upload.webhook_url, idempotency_key=key)
        return self._accepted(request_id)

    async def _read_upload(self, request: Request) -> Upload:
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        limit = self.settings.limits.max_csv_bytes
        if media_type == "multipart/form-data":
            body = await _read_body(request, limit + MULTIPART_ENVELOPE_BYTES)
            fields = await run_in_threadpool(parse_form, content_type, body)
            if "file" not in fields:
                message = "the form has no 'file' field"
                raise ApiError(422, message, errors=[{"row": None, "column": "file", "message": message}])
            data, file_name = fields["file"]
            if len(data) > limit:
                raise ApiError(413, f"the CSV is larger than the limit of {limit:,} bytes")
            webhook = fields.get("webhook_url", (b"", None))[0].decode("utf-8", errors="replace").strip()
            upload = Upload(data, _base_name(file_name), webhook or None)
        elif media_type in CSV_MEDIA_TYPES:
            body = await _read_body(request, limit)
            query = request.query_params
            upload = Upload(body, _base_name(query.get("file_name")), query.get("webhook_url", "").strip() or None)
        else:
            raise ApiError(415, "send the CSV as multipart/form-data (field 'file') or as a text/csv body")
        return upload

    def _csv_errors(self, data: bytes) -> list[dict]:
        try:
            parse_upload(data, limits=self.settings.limits)
        except UploadRejected as exc:
            return [error.to_dict() for error in exc.errors]
        return []

    def _accepted(self, request_id: str, replayed: bool = False) -> JSONResponse:
        status_url = f"{self.settings.public_base_url}/requests/{request_id}"
        body = {"request_id": request_id, "status": "queued", "status_url": status_url,
                "output_csv_url": self.settings.output_csv_url(request_id)}
        headers = {"Location": status_url}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(body, status_code=202, headers=headers)

    # ------------------------------------------------------------------ reads

    async def get_request(self, request: Request) -> JSONResponse:
        request_id = request.path_params["request_id"]
        document = await self.in_store(_stored_document, self.store, self.settings, request_id)
        if document is None:
            raise ApiError(404, f"no request {request_id}")
        # Outside the store's lock: with S3 storage this asks the bucket.
        await run_in_threadpool(_link_output_csv, document, self.storage, self.settings)
        return JSONResponse(document)

    async def output_csv(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        row = await self.in_store(self.store.get_request, request_id)
        if row is None:
            raise ApiError(404, f"no request {request_id}")
        if row["status"] not in TERMINAL_STATUSES:
            raise ApiError(409, f"request {request_id} is {row['status']}; its output CSV is written when it ends")
        data = await run_in_threadpool(self.storage.read_output_csv, request_id)
        if data is None:
            raise ApiError(404, f"request {request_id} ended {row['status']} without an output CSV")
        return Response(data, media_type="text/csv; charset=utf-8")

    async def image(self, request: Request) -> Response:
        """`/images/<request_id>/<name>` from the storage. Only names the pipeline writes are looked up, so a
        folder, a `..` or any other path is a 404 before the storage is asked."""
        path = request.path_params["path"]
        request_id, _, name = path.partition("/")
        try:
            data = await run_in_threadpool(self.storage.read_image, request_id, name)
        except ValueError:
            data = None
        if data is None:
            raise ApiError(404, f"no image {path[:200]}")
        # A slot's file is written once (a retry only fills slots that failed), so caches may keep it a day.
        return Response(data, media_type=content_type_of(name), headers={"Cache-Control": "public, max-age=86400"})

    async def healthz(self, request: Request) -> JSONResponse:
        try:
            # Any read proves the database opens and has its schema.
            await self.in_store(self.health_store.get_request, "")
        except Exception as exc:
            raise ApiError(503, f"the status store is not readable ({type(exc).__name__})") from exc
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> JSONResponse:
        return JSONResponse(openapi_document(self.settings))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, errors=exc.errors, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


async def _store_busy(request: Request, exc: StoreBusy) -> JSONResponse:
    return error_response(503, "the status store is busy; try again shortly", headers={"Retry-After": "5"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(500, "internal server error")


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> Starlette:
    """The API app; `storage` defaults to the profile's (`open_storage`)."""
    settings = settings or Settings.from_env()
    settings.ensure_folders()
    api = Api(settings, storage)
    routes = [
        Route("/requests", api.create_request, methods=["POST"]),
        Route("/requests/{request_id}", api.get_request, methods=["GET"]),
        Route("/requests/{request_id}/output.csv", api.output_csv, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/images/{path:path}", api.image, methods=["GET"]),
    ]
    middleware = [Middleware(BearerAuth, token=settings.api_token)] if settings.api_token else []
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            StoreBusy: _store_busy,
            Exception: _internal_error,
        },
    )


# ---------------------------------------------------------------------- OpenAPI


def _error_response(description: str, with_errors: bool = False) -> dict:
    schema = "#/components/schemas/ValidationError" if with_errors else "#/components/schemas/Error"
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema}}}}


def _json_response(description: str, schema_name: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def openapi_document(settings: Settings) -> dict:
    request_id = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    unauthorized = _error_response("Missing or wrong bearer token (only when IMGPIPE_API_TOKEN is set)")
    not_found = _error_response("Unknown request")
    nullable_string = {"type": ["string", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgpipe",
            "version": "1",
            "description": "Upload a CSV of product image URLs; follow its status; fetch the compressed images "
                           "and the output CSV. When IMGPIPE_API_TOKEN is set, every call but /healthz and "
                           "/images/... needs `Authorization: Bearer <token>`.",
        },
        "servers": [{"url": settings.public_base_url}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/requests": {
                "post": {
                    "operationId": "createRequest",
                    "summary": "Upload a CSV for processing",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "description": "The same key again returns the same request",
                         "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH}},
                        {"name": "webhook_url", "in": "query", "required": False,
                         "description": "With a text/csv body: the webhook to call when the request ends",
                         "schema": {"type": "string", "format": "uri"}},
                        {"name": "file_name", "in": "query", "required": False,
                         "description": f"With a text/csv body: the file's name (default {DEFAULT_FILE_NAME})",
                         "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {"schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "webhook_url": {"type": "string", "format": "uri"},
                                },
                            }},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": _json_response("Accepted and queued (or the request of a repeated Idempotency-Key)",
                                              "Accepted"),
                        "400": _error_response("Malformed multipart body"),
                        "401": unauthorized,
                        "413": _error_response(f"Larger than IMGPIPE_MAX_CSV_BYTES "
                                               f"({settings.limits.max_csv_bytes:,} bytes here)"),
                        "415": _error_response("Neither multipart/form-data nor text/csv"),
                        "422": _error_response("Invalid CSV, webhook_url or Idempotency-Key: every problem",
                                               with_errors=True),
                    },
                },
            },
            "/requests/{request_id}": {
                "get": {
                    "operationId": "getRequest",
                    "summary": "Status of a request, its products and images in input order",
                    "parameters": [request_id],
                    "responses": {
                        "200": _json_response("The request", "Request"),
                        "401": unauthorized,
                        "404": not_found,
                    },
                },
            },
            "/requests/{request_id}/output.csv": {
                "get": {
                    "operationId": "getOutputCsv",
                    "summary": "The output CSV of a finished request",
                    "parameters": [request_id],
                    "responses": {
                        "200": {"description": "The output CSV",
                                "content": {"text/csv": {"schema": {"type": "string"}}}},
                        "401": unauthorized,
                        "404": _error_response("Unknown request, or it ended without an output CSV"),
                        "409": _error_response("The request has not ended yet"),
                    },
                },
            },
            "/images/{path}": {
                "get": {
                    "operationId": "getImage",
                    "summary": "A compressed image (open without a token)",
                    "security": [],
                    "parameters": [{"name": "path", "in": "path", "required": True,
                                    "description": "<request_id>/<file name>", "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The image",
                                "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}},
                        "404": _error_response("No such image"),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the status store is readable (open without a token)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Healthy", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["status"],
                            "properties": {"status": {"const": "ok"}}}}}},
                        "503": _error_response("The status store is not readable"),
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI document",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "401": unauthorized,
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }},
                },
                "RowError": {
                    "type": "object",
                    "required": ["row", "column", "message"],
                    "properties": {
                        "row": {"type": ["integer", "null"],
                                "description": "The row a spreadsheet shows (header = 1); null for the whole file"},
                        "column": nullable_string,
                        "message": {"type": "string"},
                    },
                },
                "ValidationError": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"type": "object", "required": ["errors"], "properties": {
                            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/RowError"}}}},
                    ],
                },
                "Accepted": {
                    "type": "object",
                    "required": ["request_id", "status", "status_url", "output_csv_url"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "status": {"const": "queued"},
                        "status_url": {"type": "string", "format": "uri"},
                        "output_csv_url": {"type": "string", "format": "uri",
                                           "description": "Answers once the request has ended"},
                    },
                },
                "Counts": {
                    "type": "object",
                    "required": ["total", *IMAGE_STATUSES],
                    "properties": {name: {"type": "integer"} for name in ("total", *IMAGE_STATUSES)},
                },
                "Image": {
                    "type": "object",
                    "required": ["position", "input_url", "status", "output_url", "error"],
                    "properties": {
                        "position": {"type": "integer", "minimum": 1},
                        "input_url": {"type": "string"},
                        "status": {"enum": list(IMAGE_STATUSES)},
                        "output_url": nullable_string,
                        "error": nullable_string,
                    },
                },
                "Product": {
                    "type": "object",
                    "required": ["serial", "product_name", "images"],
                    "properties": {
                        "serial": {"type": "string"},
                        "product_name": {"type": "string"},
                        "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                    },
                },
                "Request": {
                    "type": "object",
                    "required": ["request_id", "status", "created_at", "updated_at", "counts", "output_csv_url",
                                 "errors", "products"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "status": {"enum": ["queued", "processing", "completed", "completed_with_errors",
                                            "failed", "rejected"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "counts": {"$ref": "#/components/schemas/Counts"},
                        "output_csv_url": {"type": ["string", "null"], "format": "uri"},
                        "errors": {"type": "array", "items": {"$ref": "#/components/schemas/RowError"}},
                        "products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
                    },
                },
            },
        },
    }
