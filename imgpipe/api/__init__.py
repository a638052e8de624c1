"""The REST API (contract section 6), on FastAPI.

- `app`: `create_app(settings, storage=None)`, the routes and their state (store, storage, locks).
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
