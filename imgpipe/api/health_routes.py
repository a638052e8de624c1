"""`GET /healthz` (see `docs/api.md`): liveness, open without a token."""

from fastapi import APIRouter

from imgpipe.api import openapi
from imgpipe.api.errors import ApiError
from imgpipe.api.models import Health
from imgpipe.api.state import Api


def health_routes(api: Api) -> APIRouter:
    router = APIRouter()
    settings = api.backends.settings

    @router.get("/healthz", operation_id="health", response_model=Health,
                summary="Liveness: the status store is readable (open without a token)",
                responses=openapi.responses(settings, guarded=False), openapi_extra=openapi.security(settings, False))
    async def healthz() -> Health:
        return await _healthz(api)

    return router


async def _healthz(api: Api) -> Health:
    try:
        # Any read proves the database opens and has its schema.
        await api.in_store(api.health_store.get_request, "")
    except Exception as exc:
        raise ApiError(503, f"the status store is not readable ({type(exc).__name__})") from exc
    return Health(status="ok")
