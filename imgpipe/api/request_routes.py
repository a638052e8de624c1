"""`POST /requests`, `GET /requests` and `GET /requests/{request_id}` (see `docs/api.md`): an upload goes straight
through the intake (`take_upload`): validated once, kept in the storage (`requests/<id>/input.csv`, or
`rejected/<id>/` beside `errors.json`) and recorded, `queued` with its image slots or `rejected`. A request's status
is read from the store, whole, paged or summarized, and a page of summaries of them all (paged in SQL)."""

import functools
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from imgpipe.api import openapi
from imgpipe.api.errors import ApiError
from imgpipe.api.models import Accepted, RequestList
from imgpipe.api.state import Api, RequestId
from imgpipe.api.uploads import ReceivedUpload, read_upload
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
from imgpipe.logs import current_request_id
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
from imgpipe.storage.keys import rejected_key

log = logging.getLogger("imgpipe.api")

MAX_IDEMPOTENCY_KEY_LENGTH = 255


def request_routes(api: Api) -> APIRouter:
    router = APIRouter()
    _add_create_request(router, api)
    _add_reads(router, api)
    return router


def _add_create_request(router: APIRouter, api: Api) -> None:
    settings = api.backends.settings

    @router.post("/requests", operation_id="createRequest", summary="Upload a CSV for processing",
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
        return await _create_request(api, request, idempotency_key, webhook_url, file_name, fresh, renditions,
                                     widths)


def _add_reads(router: APIRouter, api: Api) -> None:
    guarded = functools.partial(openapi.security, api.backends.settings, True)
    errors = functools.partial(openapi.responses, api.backends.settings)

    @router.get("/requests", operation_id="listRequests", response_model=RequestList,
                summary="The requests, newest first, each as its summary",
                description=openapi.LIST_REQUESTS_DESCRIPTION,
                responses=errors(r422=openapi.INVALID_LIST_PARAMETER), openapi_extra=guarded())
    async def list_requests(
        status: Annotated[str, Query(  # noqa: RUF013
            description="Only requests in these statuses, a comma list (`queued,processing`); default: every one",
            json_schema_extra={"pattern": openapi.STATUS_LIST_PATTERN})] = None,
        limit: Annotated[int, Query(ge=1, le=openapi.MAX_REQUESTS_PAGE_SIZE, description=(
            f"Requests in the page, at most {openapi.MAX_REQUESTS_PAGE_SIZE}"))] = openapi.REQUESTS_PAGE_SIZE,
        offset: Annotated[int, Query(ge=0, le=openapi.MAX_OFFSET, description="Requests to skip, newest first")] = 0,
    ) -> JSONResponse:
        return await _list_requests(api, status_filter(status), limit, offset)

    @router.get("/requests/{request_id}", operation_id="getRequest",
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
        return await _get_request(api, request_id, view, offset, limit)


async def _create_request(api: Api, request: Request, idempotency_key: str | None, webhook_url: str | None,
                          file_name: str | None, fresh: bool = False, renditions: str | None = None,
                          widths: str | None = None) -> JSONResponse:
    received = await read_upload(request, api.backends.settings.max_csv_bytes)
    key = (idempotency_key or "").strip() or None
    problems = _request_problems(api, received, key, webhook_url) + rendition_problems(renditions, widths)
    if problems:
        # Nothing is recorded; the CSV's own problems are listed too, so that one answer says everything.
        if received.content is not None:
            problems += await run_in_threadpool(_csv_problems, api, received.content)
        raise ApiError(422, f"the upload has {len(problems)} problem(s)", errors=[p.to_dict() for p in problems])
    # The form's field and file name win over the query's; an empty webhook URL means none.
    upload = Upload(content=received.content, file_name=received.file_name or file_name or "", source=Source.API,
                    webhook_url=received.webhook_url or webhook_url or None, idempotency_key=key, fresh=fresh,
                    renditions=renditions, widths=widths)
    try:
        result = await _take(api, upload)
    except KeyPending as exc:
        raise ApiError(503, f"{exc}; send the upload again in a moment", headers={"Retry-After": "1"}) from exc
    if isinstance(result, RequestRow):  # the key's request, taken before or at the same time by another call
        return await _replay(api, result, upload)
    # This call's later log lines (uvicorn's access line too: same task) are about this request.
    current_request_id.set(result.request_id)
    if not result.accepted:
        log.info("upload %s rejected with %d problem(s)", result.file_name, len(result.errors),
                 extra={"event": "rejected"})
        raise _rejected(result.request_id, [e.to_dict() for e in result.errors])
    log.info("upload %s accepted", result.file_name, extra={"event": "accepted"})
    accepted = _accepted(api, result.request_id)
    accepted.background = BackgroundTask(api.launcher.launch, result.request_id)  # once the 202 is sent
    return accepted


def _request_problems(api: Api, received: ReceivedUpload, key: str | None,
                      query_webhook_url: str | None) -> list[RowError]:
    """Problems outside the CSV: they refuse the upload without recording it."""
    problems = []
    if received.content is None:
        problems.append(RowError(None, "file", "the form has no 'file' field"))
    for url in dict.fromkeys(u for u in (received.webhook_url, query_webhook_url) if u is not None):
        problems += webhook_url_problems(url, api.backends.settings.max_url_length)
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        problems.append(RowError(None, "Idempotency-Key",
                                 f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"))
    return problems


def _csv_problems(api: Api, content: bytes) -> list[RowError]:
    try:
        parse_upload(content, limits=api.backends.settings)
    except UploadRejected as exc:
        return list(exc.errors)
    return []


async def _take(api: Api, upload: Upload) -> IntakeResult | RequestRow:
    # In the threadpool without the store lock: parsing the CSV and writing the storage need not hold up
    # other requests; each store call inside takes the lock (SerializedStore). An upload with an
    # Idempotency-Key is taken once per key, whichever API process sharing the store receives it first.
    take = take_upload if upload.idempotency_key is None else take_upload_once
    return await run_in_threadpool(take, api.backends, upload)


def _accepted(api: Api, request_id: str, replayed: bool = False) -> JSONResponse:
    status_url = api.backends.settings.status_url(request_id)
    body = Accepted(request_id=request_id, status="queued", status_url=status_url,
                    output_csv_url=api.backends.settings.output_csv_url(request_id))
    headers = {"Location": status_url}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


def _rejected(request_id: str, errors: list[dict], replayed: bool = False) -> ApiError:
    return ApiError(422, f"the CSV has {len(errors)} problem(s); it is kept as rejected request {request_id}",
                    errors=errors, request_id=request_id,
                    headers={"Idempotent-Replayed": "true"} if replayed else None)


async def _replay(api: Api, existing: RequestRow, upload: Upload) -> JSONResponse:
    """The answer the key's request got. A key sent again with another CSV or webhook is a client's mistake,
    not a retry: 422, recording nothing (as the IETF draft "The Idempotency-Key HTTP Header Field" says)."""
    if not await _same_upload(api, existing, upload):
        message = (f"this Idempotency-Key was first used for another upload (request {existing.request_id}); "
                   "send a new key with a new upload")
        raise ApiError(422, message, errors=[{"row": None, "column": "Idempotency-Key", "message": message}])
    if existing.status is RequestStatus.REJECTED:
        raise _rejected(existing.request_id, existing.errors, replayed=True)
    return _accepted(api, existing.request_id, replayed=True)


async def _same_upload(api: Api, existing: RequestRow, upload: Upload) -> bool:
    if existing.webhook_url != upload.webhook_url:
        return False
    kept = await run_in_threadpool(_kept_upload, api, existing)
    # A file no longer kept (retention) cannot be compared: the key's word is taken for it.
    return kept is None or kept == upload.content


def _kept_upload(api: Api, row: RequestRow) -> bytes | None:
    """The bytes the intake kept for `row`: its input, or its rejected file."""
    if row.status is RequestStatus.REJECTED:
        return api.backends.storage.read(rejected_key(row.request_id, kept_name(row.file_name or "")))
    try:
        return api.backends.storage.read_input(row.request_id)
    except FileNotFoundError:
        return None


async def _list_requests(api: Api, statuses: list[RequestStatus] | None, limit: int, offset: int) -> JSONResponse:
    """A page of the requests, newest first, each as its summary view, and how many match in all."""
    summaries, total = await api.in_store(stored_summaries, api.backends.store, statuses=statuses, limit=limit,
                                          offset=offset)
    # Outside the store's lock: with S3 storage this asks the bucket about each ended request.
    linked = await run_in_threadpool(
        lambda: [link_output_csv(summary, api.backends) for summary in summaries])
    return JSONResponse(RequestList(requests=linked, requests_total=total).model_dump(mode="json"))


async def _get_request(api: Api, request_id: str, view: str = "full", offset: int | None = None,
                       limit: int | None = None) -> JSONResponse:
    """The status document; a page of its products with `offset`/`limit`, none with `view="summary"`. Paged
    in the store's SQL, so a request of 20,000 images costs a page, not the whole document."""
    document = await api.in_store(stored_document, api.backends.store, request_id, view=view, offset=offset,
                                  limit=limit)
    if document is None:
        return await api.gone_or_unknown(request_id)
    # Outside the store's lock: with S3 storage this asks the bucket.
    linked = await run_in_threadpool(link_output_csv, document, api.backends)
    return JSONResponse(linked.model_dump(mode="json"))


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
