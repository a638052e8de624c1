"""One error shape for every answer that is not a success: `{"error": {"code", "message"}}`, plus `errors` (and
`request_id` when the upload was recorded) on 422. The exception handlers here turn our own `ApiError`,
Starlette's and FastAPI's exceptions (404 for an unknown route, 405, request validation), a busy status store and
any unexpected exception into it; an unexpected one never shows its traceback to the client."""
from __future__ import annotations

import http

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from imgpipe.api.models import ErrorBody, ErrorDetail, InvalidBody
from imgpipe.status.document import RowErrorModel
from imgpipe.status.store import StoreBusy

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_upload",
    500: "internal_error",
    503: "unavailable",
}
STORE_BUSY_RETRY_AFTER = "5"


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route."""

    def __init__(self, status: int, message: str, *, errors: list[dict] | None = None, code: str | None = None,
                 request_id: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.code = code
        self.request_id = request_id
        self.headers = headers


def error_response(status: int, message: str, *, errors: list[dict] | None = None, code: str | None = None,
                   request_id: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    detail = ErrorDetail(code=code or ERROR_CODES.get(status, "error"), message=message)
    if errors is None:
        body = ErrorBody(error=detail)
    else:
        recorded = {"request_id": request_id} if request_id is not None else {}
        body = InvalidBody(error=detail, errors=[RowErrorModel(**error) for error in errors], **recorded)
    # exclude_unset: `request_id` only when there is one; a problem's null row or column stays.
    return JSONResponse(body.model_dump(mode="json", exclude_unset=True), status_code=status, headers=headers)


async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, errors=exc.errors, code=exc.code, request_id=exc.request_id,
                          headers=exc.headers)


async def on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own: 404 for an unknown route, 405 (with `Allow`)."""
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else http.HTTPStatus(exc.status_code).phrase
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(exc.status_code, message, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods of every route of the request's path: Starlette's 405 names those of the first route only, and
    a path can have several (`GET` and `POST /requests`). The app's routes are in routers it includes, which
    FastAPI keeps whole: `iter_route_contexts` lists the routes inside them."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's check of declared parameters, in the contract's shape: one problem per parameter."""
    errors = [{"row": None, "column": ".".join(str(part) for part in error.get("loc", ())) or None,
               "message": str(error.get("msg", "invalid"))}
              for error in exc.errors()]
    return error_response(422, f"the request has {len(errors)} invalid parameter(s)", errors=errors,
                          code="invalid_request")


async def on_store_busy(request: Request, exc: StoreBusy) -> JSONResponse:
    return error_response(503, "the status store is busy; try again shortly",
                          headers={"Retry-After": STORE_BUSY_RETRY_AFTER})


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware sends this answer, then re-raises for the server's log.
    return error_response(500, "internal server error")


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    StarletteHTTPException: on_http_exception,
    RequestValidationError: on_validation_error,
    StoreBusy: on_store_busy,
    Exception: on_unexpected,
}
