"""The REST API (see `docs/api.md`) on FastAPI: `create_app(settings, storage)` is the entry point.

The routes are grown as FastAPI's "Bigger Applications" do, in routers by concern, included in the order the
OpenAPI document lists them: `request_routes` (uploads, a request's status, the list of requests),
`report_routes` (the HTML report, its thumbnails, `/metrics`), `file_routes` (images, output CSVs) and
`health_routes`; `state` holds what they share. The app never reads the environment: `imgpipe.cli` passes the
settings in.

Other modules: `uploads` (the body, streamed through python-multipart under limits), `auth` (the bearer token),
`models` (request and response bodies), `errors` (the one error shape), `openapi` (what FastAPI cannot infer),
`server` (how `imgpipe api` serves the app: uvicorn with deadlines and a bound for slow clients).
"""

import functools
import re

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from imgpipe.api import openapi
from imgpipe.api.auth import BearerAuth
from imgpipe.api.errors import EXCEPTION_HANDLERS
from imgpipe.api.file_routes import file_routes
from imgpipe.api.health_routes import health_routes
from imgpipe.api.report_routes import report_routes
from imgpipe.api.request_routes import request_routes
from imgpipe.api.state import Api
from imgpipe.logs import request_context
from imgpipe.settings import Settings
from imgpipe.storage.interface import Storage


def create_app(settings: Settings, storage: Storage | None = None) -> FastAPI:
    """The API app over `settings`; `storage` defaults to the profile's (`open_storage`)."""
    api = Api(settings, storage)
    # /docs and /redoc are off: /openapi.json (guarded like the rest) is the description. No redirect from
    # `/requests/` to `/requests`: a path is either a route or a 404 in the one error shape.
    app = FastAPI(title="imgpipe", version="1", description=openapi.DESCRIPTION, openapi_url=None, docs_url=None,
                  redoc_url=None, redirect_slashes=False, exception_handlers=EXCEPTION_HANDLERS,
                  lifespan=api.lifespan)
    app.state.api = api
    for routes in (request_routes, report_routes, file_routes, health_routes):
        app.include_router(routes(api))

    @app.get("/openapi.json", operation_id="openapi", summary="This document", response_class=JSONResponse,
             responses=openapi.responses(
                 settings, r200={"content": {"application/json": {"schema": {"type": "object"}}}}, store=False),
             openapi_extra=openapi.security(settings, True))
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
