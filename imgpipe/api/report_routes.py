"""`GET /requests/{request_id}/report`, its thumbnails, and `/metrics` (see `docs/operations.md`, "Metrics, logs
and the report"): the report page is rendered by `imgpipe.report`, the metrics by `imgpipe.metrics`, both from the
status store; the thumbnails come from the storage."""

import functools
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from imgpipe.api import openapi
from imgpipe.api.state import Api, RequestId
from imgpipe.metrics import BUCKETS as METRIC_BUCKETS
from imgpipe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from imgpipe.metrics import exposition
from imgpipe.report import HEADERS as REPORT_HEADERS
from imgpipe.report import MAX_PAGE_SIZE, PAGE_SIZE, THUMBNAIL_HEADERS, read_report, render_report


def report_routes(api: Api) -> APIRouter:
    router = APIRouter()
    settings = api.backends.settings
    guarded = functools.partial(openapi.security, settings, True)
    errors = functools.partial(openapi.responses, settings)
    # Where a token guards the API, a report and its thumbnails also open with a signed link.
    signed_link = {"r401": openapi.SIGNED_LINK_REFUSED} if settings.api_token else {}

    @router.get("/requests/{request_id}/report", operation_id="getReport", response_class=Response,
                summary="The request's report: an HTML page, before and after thumbnails of every image",
                description=openapi.REPORT_DESCRIPTION,
                responses=errors(
                    r200={"description": "The report page", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **signed_link, r404=openapi.error("Unknown request"), r410=openapi.PURGED,
                    r422=openapi.INVALID_PARAMETER),
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
        return await _report(api, request_id, offset, limit, expires, signature)

    @router.get("/requests/{request_id}/report/thumbs/{name}", operation_id="getReportThumbnail",
                response_class=Response,
                summary="A thumbnail of the report: `<stem>.before.jpg` or `<stem>.after.jpg`",
                responses=errors(
                    r200={"description": "The thumbnail", "content": {
                        "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                    **signed_link, r404=openapi.error("No such thumbnail"), r422=openapi.INVALID_PARAMETER,
                    store=False),
                openapi_extra=guarded())
    async def report_thumbnail(
        request_id: RequestId,
        name: Annotated[str, Path(description="`<image stem>.before.jpg` or `<image stem>.after.jpg`")],
        expires: Annotated[int, Query(ge=0, le=openapi.MAX_EXPIRES,  # noqa: RUF013
                                      description="Of the report's signed link")] = None,
        signature: Annotated[str, Query(max_length=128,  # noqa: RUF013
                                        description="Of the report's signed link")] = None,
    ) -> Response:
        return await _thumbnail(api, request_id, name)

    @router.get("/metrics", operation_id="metrics", response_class=Response,
                summary="Prometheus metrics, derived from the status store at each scrape",
                description=openapi.METRICS_DESCRIPTION,
                responses=errors(
                    r200={"description": "Prometheus' text exposition format", "content": {
                        "text/plain": {"schema": {"type": "string"}}}}, guarded=not settings.metrics_public),
                openapi_extra=openapi.security(settings, not settings.metrics_public))
    async def metrics() -> Response:
        return await _metrics(api)

    return router


async def _report(api: Api, request_id: str, offset: int, limit: int, expires: int | None,
                  signature: str | None) -> Response:
    """The request's HTML report, a page of `limit` products from `offset`."""
    found = await api.in_store(read_report, api.backends.store, request_id, offset=offset, limit=limit)
    if found is None:
        return await api.gone_or_unknown(request_id)
    view, renditions = found
    # A page opened through a signed link signs its own links (thumbnails, other pages) the same way.
    signed = {"expires": expires, "signature": signature} if expires is not None and signature else {}
    html = await run_in_threadpool(render_report, view, offset=offset, limit=limit, signed=signed,
                                   renditions=renditions)
    return HTMLResponse(html, headers=REPORT_HEADERS)


async def _thumbnail(api: Api, request_id: str, name: str) -> Response:
    """A report's thumbnail (`<stem>.before.jpg` or `<stem>.after.jpg`); only those names are looked up."""
    data = await api.stored(api.backends.storage.read_thumbnail, request_id, name,
                            missing=f"no thumbnail {name[:200]} of request {request_id[:200]}")
    return Response(data, media_type="image/jpeg", headers=THUMBNAIL_HEADERS)


async def _metrics(api: Api) -> Response:
    data = await api.in_store(exposition, lambda: api.backends.store.metrics(METRIC_BUCKETS))
    return Response(data, media_type=METRICS_CONTENT_TYPE)
