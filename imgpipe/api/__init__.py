"""The REST API (see `docs/api.md`), on FastAPI.

- `app`: `create_app(settings, storage=None)`, which includes a router per concern: `request_routes` (uploads,
  a request's status, the list of requests), `report_routes` (the report, its thumbnails, `/metrics`),
  `file_routes` (images, output CSVs), `health_routes`.
- `state`: what the routers share: the routes' state (the backends, locks) and the answers several give alike.
- `uploads`: the body of `POST /requests`, streamed through python-multipart under limits.
- `auth`: the bearer token (IMGPIPE_API_TOKEN), an ASGI middleware; it also takes a report's signed link
  (`imgpipe.report_links`) for that report and its thumbnails, and refuses a credential given twice.
- `models`: the request and response bodies (pydantic); the status document is `imgpipe.status.document`'s.
- `errors`: the one error shape and the exception handlers that give it.
- `openapi`: what FastAPI cannot infer for `/openapi.json` (error answers, links, request bodies, security).
- `server`: how `imgpipe api` serves the app: uvicorn with a header deadline, the keep-alive timeout, a bound on
  request headers and on open connections (IMGPIPE_API_*), so that slow clients cost themselves.

The report page is rendered by `imgpipe.report`, `/metrics` by `imgpipe.metrics`, from the status store.
"""
