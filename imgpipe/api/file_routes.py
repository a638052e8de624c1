"""`GET /requests/{request_id}/output.csv` and `GET /images/{request_id}/{name}` (see `docs/api.md`): a request's
output CSV, and its images, answered from the storage (an image's URL by `Accept` and width: `image_serving`)."""

import functools
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from imgpipe.api import openapi
from imgpipe.api.errors import ApiError
from imgpipe.api.image_serving import serve_image
from imgpipe.api.state import Api, RequestId
from imgpipe.images.renditions import MAX_WIDTH

IMAGE_CACHE_CONTROL = "public, max-age=86400"
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"


def file_routes(api: Api) -> APIRouter:
    router = APIRouter()
    settings = api.backends.settings
    guarded = functools.partial(openapi.security, settings, True)
    errors = functools.partial(openapi.responses, settings)

    @router.get("/requests/{request_id}/output.csv", operation_id="getOutputCsv", response_class=Response,
                summary="The output CSV of a request that has ended",
                responses=errors(
                    r200={"description": "The output CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    r404=openapi.error("Unknown request, or it ended without an output CSV"),
                    r409=openapi.error("The request has not ended yet"), r410=openapi.PURGED),
                openapi_extra=guarded())
    async def output_csv(request_id: RequestId) -> Response:
        return await _output_csv(api, request_id)

    @router.get("/images/{path:path}", operation_id="getImage", response_class=Response,
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
        return await _image(api, path, accept, w)

    return router


async def _output_csv(api: Api, request_id: str) -> Response:
    row = await api.in_store(api.backends.store.get_request, request_id)
    if row is None:
        return await api.gone_or_unknown(request_id)
    if not row.status.terminal:
        raise ApiError(409, f"request {request_id} is {row.status}; its output CSV is written when it ends")
    data = await run_in_threadpool(api.backends.storage.read_output_csv, request_id)
    if data is None:
        raise ApiError(404, f"request {request_id} ended {row.status} without an output CSV")
    return Response(data, media_type=CSV_MEDIA_TYPE)


async def _image(api: Api, path: str, accept: str | None = None, width: int | None = None) -> Response:
    """`<request_id>/<name>` from the storage; for the URL of an image with renditions, the file that suits
    `accept` and `width` (`serve_image`). Only names the pipeline writes are looked up, so a folder, a `..` or
    any other path is a 404 before the storage is asked."""
    request_id, _, name = path.partition("/")
    served = await api.stored(functools.partial(serve_image, api.backends.storage, accept=accept, width=width),
                              request_id, name, missing=f"no image {path[:200]}")
    # A slot's files are written once (a retry only fills slots that failed), so caches may keep them a day;
    # one answer per Accept where that chooses the file.
    headers = {"Cache-Control": IMAGE_CACHE_CONTROL, **({"Vary": "Accept"} if served.negotiated else {})}
    return Response(served.data, media_type=served.media_type, headers=headers)
