"""The REST API (contract section 6) on FastAPI: `create_app(settings, storage)` is the entry point.

An upload goes straight through the intake (`take_upload`): validated once, kept in the storage
(`requests/<id>/input.csv`, or `rejected/<id>/` beside `errors.json`) and recorded, `queued` with its image slots
or `rejected`. Status is read from the store (`GET /requests/{id}` whole, paged or summarized, `GET /requests` a
page of summaries, the HTML report, `/metrics`: all paged or aggregated in SQL); images, thumbnails and output
CSVs from the storage. The app never reads the environment: `imgpipe.cli` passes the settings in.

Modules: `uploads` (the body, streamed through python-multipart under limits), `auth` (the bearer token),
`models` (request and response bodies), `errors` (the one error shape), `openapi` (what FastAPI cannot infer),
`server` (how `imgpipe api` serves the app: uvicorn with deadlines and a bound for slow clients).
"""

import contextlib
import functools
import threading
from datetime import timezone
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from imgpipe.api import openapi
from imgpipe.api.auth import BearerAuth
from imgpipe.api.errors import EXCEPTION_HANDLERS, ApiError
from imgpipe.api.image_serving import serve_image
from imgpipe.api.launching import LaunchAtOnce
from imgpipe.api.models import Accepted, Health, Purged, RequestList
from imgpipe.api.uploads import ReceivedUpload, read_upload
from imgpipe.backends import open_status_store, open_storage
from imgpipe.images.renditions import MAX_WIDTH
from imgpipe.intake.csv_schema import RowError, UploadRejected, parse_upload
from imgpipe.intake.intake import (
    WEBHOOK_URL_PATTERN,
    IntakeResult,
    KeyPending,
    Upload,
    kept_name,
    rendition_problems,
    take_upload,
    take_upload_once,
    webhook_url_problems,
)
from imgpipe.logs import current_request_id, request_context
from imgpipe.metrics import BUCKETS as METRIC_BUCKETS
from imgpipe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from imgpipe.metrics import exposition
from imgpipe.report import HEADERS as REPORT_HEADERS
from imgpipe.report import MAX_PAGE_SIZE, PAGE_SIZE, read_report, render_report
from imgpipe.report import THUMBNAIL_HEADERS
from imgpipe.settings import Settings
from imgpipe.status.document import (
    VIEWS,
    RequestDocument,
    RequestPage,
    RequestSummary,
    link_output_csv,
    stored_document,
    stored_summaries,
)
from imgpipe.status.models import RequestRow, RequestStatus, Source
from imgpipe.status.store import StatusStore
from imgpipe.storage import Storage, rejected_key

T = TypeVar("T")
log = logging.getLogger("imgpipe.api")

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# A health probe should answer within its own timeout rather than wait out a long pipeline write.
HEALTH_LOCK_TIMEOUT = 5.0
IMAGE_CACHE_CONTROL = "public, max-age=86400"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


class SerializedStore:
    """A status store whose every call holds `lock`: DuckDB lets a process have one connection to a file at a
    time, and the store only retries other processes' locks, so the threads of this process take turns. The
    lock is reentrant, so `Api.in_store` can hold it around several calls."""

    def __init__(self, store: StatusStore, lock: threading.RLock):
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def locked(*args, **kwargs):
            with self._lock:
                return attribute(*args, **kwargs)

        return locked


class Api:
    """The routes' state: settings, store, storage, and the locks of this process."""

    def __init__(self, settings: Settings, storage: Storage | None = None):
        self.settings = settings
        self.store_lock = threading.RLock()
        self.store: StatusStore = SerializedStore(open_status_store(settings), self.store_lock)
        self.health_store: StatusStore = SerializedStore(
            open_status_store(settings, lock_timeout=HEALTH_LOCK_TIMEOUT), self.store_lock)
        self.storage = storage or open_storage(settings)
        self.launcher = LaunchAtOnce(settings, self.store)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self.launcher.start()
        yield

    async def in_store(self, function: Callable[..., T], *args, **kwargs) -> T:
        """`function` in the threadpool, holding the store lock throughout (it reads the store only)."""
        def locked() -> T:
            with self.store_lock:
                return function(*args, **kwargs)

        return await run_in_threadpool(locked)

    # ------------------------------------------------------------------ POST /requests

    async def create_request(self, request: Request, idempotency_key: str | None, webhook_url: str | None,
                             file_name: str | None, fresh: bool = False, renditions: str | None = None,
                             widths: str | None = None) -> JSONResponse:
        received = await read_upload(request, self.settings.max_csv_bytes)
        key = (idempotency_key or "").strip() or None
        problems = self._request_problems(received, key, webhook_url) + rendition_problems(renditions, widths)
        if problems:
            # Nothing is recorded; the CSV's own problems are listed too, so that one answer says everything.
            if received.content is not None:
                problems += await run_in_threadpool(self._csv_problems, received.content)
            raise ApiError(422, f"the upload has {len(problems)} problem(s)", errors=[p.to_dict() for p in problems])
        # The form's field and file name win over the query's; an empty webhook URL means none.
        upload = Upload(content=received.content, file_name=received.file_name or file_name or "", source=Source.API,
                        webhook_url=received.webhook_url or webhook_url or None, idempotency_key=key, fresh=fresh,
                        renditions=renditions, widths=widths)
        try:
            result = await self._take(upload)
        except KeyPending as exc:
            raise ApiError(503, f"{exc}; send the upload again in a moment", headers={"Retry-After": "1"}) from exc
        if isinstance(result, RequestRow):  # the key's request, taken before or at the same time by another call
            return await self._replay(result, upload)
        # This call's later log lines (uvicorn's access line too: same task) are about this request.
        current_request_id.set(result.request_id)
        if not result.accepted:
            log.info("upload %s rejected with %d problem(s)", result.file_name, len(result.errors),
                     extra={"event": "rejected"})
            raise self._rejected(result.request_id, [e.to_dict() for e in result.errors])
        log.info("upload %s accepted", result.file_name, extra={"event": "accepted"})
        accepted = self._accepted(result.request_id)
        accepted.background = BackgroundTask(self.launcher.launch, result.request_id)  # once the 202 is sent
        return accepted

    def _request_problems(self, received: ReceivedUpload, key: str | None,
                          query_webhook_url: str | None) -> list[RowError]:
        """Problems outside the CSV: they refuse the upload without recording it."""
        problems = []
        if received.content is None:
            problems.append(RowError(None, "file", "the form has no 'file' field"))
        for url in dict.fromkeys(u for u in (received.webhook_url, query_webhook_url) if u is not None):
            problems += webhook_url_problems(url, self.settings.max_url_length)
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            problems.append(RowError(None, "Idempotency-Key",
                                     f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"))
        return problems

    def _csv_problems(self, content: bytes) -> list[RowError]:
        try:
            parse_upload(content, limits=self.settings)
        except UploadRejected as exc:
            return list(exc.errors)
        return []

    async def _take(self, upload: Upload) -> IntakeResult | RequestRow:
        # In the threadpool without the store lock: parsing the CSV and writing the storage need not hold up
        # other requests; each store call inside takes the lock (SerializedStore). An upload with an
        # Idempotency-Key is taken once per key, whichever API process sharing the store receives it first.
        take = take_upload if upload.idempotency_key is None else take_upload_once
        return await run_in_threadpool(take, self.store, self.storage, self.settings, upload)

    def _accepted(self, request_id: str, replayed: bool = False) -> JSONResponse:
        status_url = self.settings.status_url(request_id)
        body = Accepted(request_id=request_id, status="queued", status_url=status_url,
                        output_csv_url=self.settings.output_csv_url(request_id))
        headers = {"Location": status_url}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)

    @staticmethod
    def _rejected(request_id: str, errors: list[dict], replayed: bool = False) -> ApiError:
        return ApiError(422, f"the CSV has {len(errors)} problem(s); it is kept as rejected request {request_id}",
                        errors=errors, request_id=request_id,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)

    async def _replay(self, existing: RequestRow, upload: Upload) -> JSONResponse:
        """The answer the key's request got. A key sent again with another CSV or webhook is a client's mistake,
        not a retry: 422, recording nothing (as the IETF draft "The Idempotency-Key HTTP Header Field" says)."""
        if not await self._same_upload(existing, upload):
            message = (f"this Idempotency-Key was first used for another upload (request {existing.request_id}); "
                       "send a new key with a new upload")
            raise ApiError(422, message, errors=[{"row": None, "column": "Idempotency-Key", "message": message}])
        if existing.status is RequestStatus.REJECTED:
            raise self._rejected(existing.request_id, existing.errors, replayed=True)
        return self._accepted(existing.request_id, replayed=True)

    async def _same_upload(self, existing: RequestRow, upload: Upload) -> bool:
        if existing.webhook_url != upload.webhook_url:
            return False
        kept = await run_in_threadpool(self._kept_upload, existing)
        # A file no longer kept (retention) cannot be compared: the key's word is taken for it.
        return kept is None or kept == upload.content

    def _kept_upload(self, row: RequestRow) -> bytes | None:
        """The bytes the intake kept for `row`: its input, or its rejected file."""
        if row.status is RequestStatus.REJECTED:
            return self.storage.read(rejected_key(row.request_id, kept_name(row.file_name or "")))
        try:
            return self.storage.read_input(row.request_id)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ reads

    async def list_requests(self, statuses: list[RequestStatus] | None, limit: int, offset: int) -> JSONResponse:
        """A page of the requests, newest first, each as its summary view, and how many match in all."""
        summaries, total = await self.in_store(stored_summaries, self.store, statuses=statuses, limit=limit,
                                               offset=offset)
        # Outside the store's lock: with S3 storage this asks the bucket about each ended request.
        linked = await run_in_threadpool(
            lambda: [link_output_csv(summary, self.storage, self.settings) for summary in summaries])
        return JSONResponse(RequestList(requests=linked, requests_total=total).model_dump(mode="json"))

    async def get_request(self, request_id: str, view: str = "full", offset: int | None = None,
                          limit: int | None = None) -> JSONResponse:
        """The status document; a page of its products with `offset`/`limit`, none with `view="summary"`. Paged
        in the store's SQL, so a request of 20,000 images costs a page, not the whole document."""
        document = await self.in_store(stored_document, self.store, request_id, view=view, offset=offset,
                                       limit=limit)
        if document is None:
            return await self._gone_or_unknown(request_id)
        # Outside the store's lock: with S3 storage this asks the bucket.
        linked = await run_in_threadpool(link_output_csv, document, self.storage, self.settings)
        return JSONResponse(linked.model_dump(mode="json"))

    async def report(self, request_id: str, offset: int, limit: int, expires: int | None,
                     signature: str | None) -> Response:
        """The request's HTML report, a page of `limit` products from `offset`."""
        found = await self.in_store(read_report, self.store, request_id, offset=offset, limit=limit)
        if found is None:
            return await self._gone_or_unknown(request_id)
        view, renditions = found
        # A page opened through a signed link signs its own links (thumbnails, other pages) the same way.
        signed = {"expires": expires, "signature": signature} if expires is not None and signature else {}
        html = await run_in_threadpool(render_report, view, offset=offset, limit=limit, signed=signed,
                                       renditions=renditions)
        return HTMLResponse(html, headers=REPORT_HEADERS)

    async def thumbnail(self, request_id: str, name: str) -> Response:
        """A report's thumbnail (`<stem>.before.jpg` or `<stem>.after.jpg`); only those names are looked up."""
        data = await self._stored(self.storage.read_thumbnail, request_id, name,
                                  missing=f"no thumbnail {name[:200]} of request {request_id[:200]}")
        return Response(data, media_type="image/jpeg", headers=THUMBNAIL_HEADERS)

    async def metrics(self) -> Response:
        data = await self.in_store(exposition, lambda: self.store.metrics(METRIC_BUCKETS))
        return Response(data, media_type=METRICS_CONTENT_TYPE)

    async def output_csv(self, request_id: str) -> Response:
        row = await self.in_store(self.store.get_request, request_id)
        if row is None:
            return await self._gone_or_unknown(request_id)
        if not row.status.terminal:
            raise ApiError(409, f"request {request_id} is {row.status}; its output CSV is written when it ends")
        data = await run_in_threadpool(self.storage.read_output_csv, request_id)
        if data is None:
            raise ApiError(404, f"request {request_id} ended {row.status} without an output CSV")
        return Response(data, media_type=CSV_MEDIA_TYPE)

    async def _stored(self, read: Callable[[str, str], T | None], request_id: str, name: str, *,
                      missing: str) -> T:
        """What `read` finds of the request under a name the storage accepts; 404 for any other name or a missing
        file."""
        try:
            data = await run_in_threadpool(read, request_id, name)
        except ValueError:  # a name the pipeline never writes
            data = None
        if data is None:
            raise ApiError(404, missing)
        return data

    async def _gone_or_unknown(self, request_id: str) -> JSONResponse:
        """410 with the time for a request that was purged; 404 for one never seen."""
        purged_at = await self.in_store(self.store.purged_at, request_id)
        if purged_at is None:
            raise ApiError(404, f"no request {request_id[:200]}")
        body = Purged(request_id=request_id, status="purged", purged_at=purged_at.replace(tzinfo=timezone.utc))
        return JSONResponse(body.model_dump(mode="json"), status_code=410)

    async def image(self, path: str, accept: str | None = None, width: int | None = None) -> Response:
        """`<request_id>/<name>` from the storage; for the URL of an image with renditions, the file that suits
        `accept` and `width` (`serve_image`). Only names the pipeline writes are looked up, so a folder, a `..` or
        any other path is a 404 before the storage is asked."""
        request_id, _, name = path.partition("/")
        served = await self._stored(functools.partial(serve_image, self.storage, accept=accept, width=width),
                                    request_id, name, missing=f"no image {path[:200]}")
        # A slot's files are written once (a retry only fills slots that failed), so caches may keep them a day;
        # one answer per Accept where that chooses the file.
        headers = {"Cache-Control": IMAGE_CACHE_CONTROL, **({"Vary": "Accept"} if served.negotiated else {})}
        return Response(served.data, media_type=served.media_type, headers=headers)

    async def healthz(self) -> Health:
        try:
            # Any read proves the database opens and has its schema.
            await self.in_store(self.health_store.get_request, "")
        except Exception as exc:
            raise ApiError(503, f"the status store is not readable ({type(exc).__name__})") from exc
        return Health(status="ok")


RequestId = Annotated[str, Path(description="The ID a 202 to `POST /requests` gave")]


def status_filter(statuses: str | None) -> list[RequestStatus] | None:
    """The request statuses a comma list names (None, every request, without one). An unknown one is a 422 in the
    shape of the other parameters' errors, naming it: FastAPI's own check of the documented pattern would not."""
    if statuses is None:
        return None
    names = list(dict.fromkeys(statuses.split(",")))
    known = [str(status) for status in RequestStatus]
    unknown = [repr(name[:100]) for name in names if name not in known]
    if unknown:
        errors = [{"row": None, "column": "query.status",
                   "message": f"unknown request status {name}; known: {', '.join(known)}"} for name in unknown]
        raise ApiError(422, f"unknown request status {', '.join(unknown)}", errors=errors, code="invalid_request")
    return [RequestStatus(name) for name in names]


def create_app(settings: Settings, storage: Storage | None = None) -> FastAPI:
    """The API app over `settings`; `storage` defaults to the profile's (`open_storage`)."""
    api = Api(settings, storage)
    # /docs and /redoc are off: /openapi.json (guarded like the rest) is the description. No redirect from
    # `/requests/` to `/requests`: a path is either a route or a 404 in the one error shape.
    app = FastAPI(title="imgpipe", version="1", description=openapi.DESCRIPTION, openapi_url=None, docs_url=None,
                  redoc_url=None, redirect_slashes=False, exception_handlers=EXCEPTION_HANDLERS,
                  lifespan=api.lifespan)
    app.state.api = api
    guarded = functools.partial(openapi.security, settings, True)
    errors = functools.partial(openapi.responses, settings)
    # Where a token guards the API, a report and its thumbnails also open with a signed link.
    signed_link = {"r401": openapi.SIGNED_LINK_REFUSED} if settings.api_token else {}

    @app.post("/requests", operation_id="createRequest", summary="Upload a CSV for processing",
              status_code=202, response_model=Accepted, **openapi.create_request_docs(settings))
    async def create_request(
        request: Request,
        # `str = None`, not Optional: a header or query parameter is a string or absent, never null.
        idempotency_key: Annotated[str, Header(  # noqa: RUF013
            alias="Idempotency-Key", description="The same key again returns the same request",
            json_schema_extra={"maxLength": MAX_IDEMPOTENCY_KEY_LENGTH})] = None,
        webhook_url: Annotated[str, Query(  # noqa: RUF013
            description="The webhook to call when the request ends (a multipart `webhook_url` field wins)",
            json_schema_extra={"pattern": WEBHOOK_URL_PATTERN, "maxLength": settings.max_url_length})] = None,
        file_name: Annotated[str, Query(  # noqa: RUF013
            description="The file's name (default upload.csv; a multipart file's own name wins)")] = None,
        fresh: Annotated[bool, Query(
            description="true: fetch and encode every image again, whatever earlier requests left")] = False,
        renditions: Annotated[str, Query(  # noqa: RUF013
            description="Formats made beside each main output, a comma list of `webp` and `avif` (empty: none; "
                        "absent: IMGPIPE_RENDITIONS)")] = None,
        widths: Annotated[str, Query(  # noqa: RUF013
            description="Widths in pixels each image is also made at where narrower, e.g. `480,960` (empty: none; "
                        "absent: IMGPIPE_WIDTHS)")] = None,
    ) -> JSONResponse:
        return await api.create_request(request, idempotency_key, webhook_url, file_name, fresh, renditions, widths)

    @app.get("/requests", operation_id="listRequests", response_model=RequestList,
             summary="The requests, newest first, each as its summary", description=openapi.LIST_REQUESTS_DESCRIPTION,
             responses=errors(r422=openapi.INVALID_LIST_PARAMETER), openapi_extra=guarded())
    async def list_requests(
        status: Annotated[str, Query(  # noqa: RUF013
            description="Only requests in these statuses, a comma list (`queued,processing`); default: every one",
            json_schema_extra={"pattern": openapi.STATUS_LIST_PATTERN})] = None,
        limit: Annotated[int, Query(ge=1, le=openapi.MAX_REQUESTS_PAGE_SIZE, description=(
            f"Requests in the page, at most {openapi.MAX_REQUESTS_PAGE_SIZE}"))] = openapi.REQUESTS_PAGE_SIZE,
        offset: Annotated[int, Query(ge=0, le=openapi.MAX_OFFSET, description="Requests to skip, newest first")] = 0,
    ) -> JSONResponse:
        return await api.list_requests(status_filter(status), limit, offset)

    @app.get("/requests/{request_id}", operation_id="getRequest",
             response_model=RequestDocument | RequestPage | RequestSummary,
             summary="Status of a request, its products and images in input order",
             description=openapi.GET_REQUEST_DESCRIPTION,
             responses=errors(r404=openapi.error("Unknown request"), r410=openapi.PURGED,
                              r422=openapi.INVALID_PARAMETER),
             openapi_extra=guarded())
    async def get_request(
        request_id: RequestId,
        view: Annotated[Literal[VIEWS], Query(
            description="`summary`: the document without `products` (with `products_total`)")] = "full",
        offset: Annotated[int, Query(ge=0, le=openapi.MAX_OFFSET, description=(  # noqa: RUF013
            "Products to skip, in input order (with `limit`: a page, and `products_total`)"))] = None,
        limit: Annotated[int, Query(ge=1, le=openapi.MAX_LIMIT, description=(  # noqa: RUF013
            f"Products in the page, at most {openapi.MAX_LIMIT} (with `offset`, default 0)"))] = None,
    ) -> JSONResponse:
        return await api.get_request(request_id, view, offset, limit)

    @app.get("/requests/{request_id}/report", operation_id="getReport", response_class=Response,
             summary="The request's report: an HTML page, before and after thumbnails of every image",
             description=openapi.REPORT_DESCRIPTION,
             responses=errors(
                 r200={"description": "The report page", "content": {"text/html": {"schema": {"type": "string"}}}},
                 **signed_link, r404=openapi.error("Unknown request"), r410=openapi.PURGED, r422=openapi.INVALID_PARAMETER),
             openapi_extra=guarded())
    async def report(
        request_id: RequestId,
        offset: Annotated[int, Query(ge=0, le=openapi.MAX_OFFSET, description="Products to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Products on the page")] = PAGE_SIZE,
        expires: Annotated[int, Query(ge=0, le=openapi.MAX_EXPIRES, description=(  # noqa: RUF013
            "Of a signed link (`report_url`): when it expires, in Unix seconds"))] = None,
        signature: Annotated[str, Query(max_length=128, description=(  # noqa: RUF013
            "Of a signed link (`report_url`): opens this report and its thumbnails without a token"))] = None,
    ) -> Response:
        return await api.report(request_id, offset, limit, expires, signature)

    @app.get("/requests/{request_id}/report/thumbs/{name}", operation_id="getReportThumbnail",
             response_class=Response, summary="A thumbnail of the report: `<stem>.before.jpg` or `<stem>.after.jpg`",
             responses=errors(
                 r200={"description": "The thumbnail", "content": {
                     "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                 **signed_link, r404=openapi.error("No such thumbnail"), r422=openapi.INVALID_PARAMETER, store=False),
             openapi_extra=guarded())
    async def report_thumbnail(
        request_id: RequestId,
        name: Annotated[str, Path(description="`<image stem>.before.jpg` or `<image stem>.after.jpg`")],
        expires: Annotated[int, Query(ge=0, le=openapi.MAX_EXPIRES,  # noqa: RUF013
                                      description="Of the report's signed link")] = None,
        signature: Annotated[str, Query(max_length=128,  # noqa: RUF013
                                        description="Of the report's signed link")] = None,
    ) -> Response:
        return await api.thumbnail(request_id, name)

    @app.get("/metrics", operation_id="metrics", response_class=Response,
             summary="Prometheus metrics, derived from the status store at each scrape",
             description=openapi.METRICS_DESCRIPTION,
             responses=errors(
                 r200={"description": "Prometheus' text exposition format", "content": {
                     "text/plain": {"schema": {"type": "string"}}}}, guarded=not settings.metrics_public),
             openapi_extra=openapi.security(settings, not settings.metrics_public))
    async def metrics() -> Response:
        return await api.metrics()

    @app.get("/requests/{request_id}/output.csv", operation_id="getOutputCsv", response_class=Response,
             summary="The output CSV of a request that has ended",
             responses=errors(
                 r200={"description": "The output CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                 r404=openapi.error("Unknown request, or it ended without an output CSV"),
                 r409=openapi.error("The request has not ended yet"), r410=openapi.PURGED),
             openapi_extra=guarded())
    async def output_csv(request_id: RequestId) -> Response:
        return await api.output_csv(request_id)

    @app.get("/images/{path:path}", operation_id="getImage", response_class=Response,
             summary="A compressed image (open without a token)", description=openapi.IMAGE_DESCRIPTION,
             responses=errors(
                 r200={"description": "The image", "content": {
                     media_type: {"schema": {"type": "string", "format": "binary"}}
                     for media_type in ("image/jpeg", "image/webp", "image/avif")}},
                 r404=openapi.error("No such image"), r422=openapi.INVALID_PARAMETER, guarded=False, store=False),
             openapi_extra=openapi.security(settings, False))
    async def image(
        path: Annotated[str, Path(description="`<request_id>/<file name>`")],
        accept: Annotated[str, Header(  # noqa: RUF013
            description="With `image/avif` or `image/webp` named (q above 0): the smallest file the client takes")]
            = None,
        w: Annotated[int, Query(ge=1, le=MAX_WIDTH, description=(  # noqa: RUF013
            "The narrowest width of the image at least this wide, the widest when none is"))] = None,
    ) -> Response:
        return await api.image(path, accept, w)

    @app.get("/healthz", operation_id="health", response_model=Health,
             summary="Liveness: the status store is readable (open without a token)",
             responses=errors(guarded=False), openapi_extra=openapi.security(settings, False))
    async def healthz() -> Health:
        return await api.healthz()

    @app.get("/openapi.json", operation_id="openapi", summary="This document", response_class=JSONResponse,
             responses=errors(r200={"content": {"application/json": {"schema": {"type": "object"}}}}, store=False),
             openapi_extra=guarded())
    async def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.openapi = functools.partial(openapi.openapi_document, app, settings)

    if settings.api_token:
        app.add_middleware(BearerAuth, token=settings.api_token,
                           open_paths=("/metrics",) if settings.metrics_public else ())
    app.add_middleware(RequestIdLogContext)
    return app


class RequestIdLogContext:
    """Log lines made while a call about a request is answered (uvicorn's access line included) carry its ID."""

    PATH = re.compile(r"/(?:requests|images)/([0-9A-Za-z_-]{1,64})(?:/|$)")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = self.PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with request_context(match.group(1)):
            await self.app(scope, receive, send)

