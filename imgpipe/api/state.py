"""What the API's routers share: `Api`, the routes' state (the backends, and the locks of this process), with the
answers several routes give alike, and `RequestId`, the path parameter of a request's routes."""

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from datetime import timezone
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from imgpipe.api.errors import ApiError
from imgpipe.api.launching import LaunchAtOnce
from imgpipe.api.models import Purged
from imgpipe.backends import Backends, open_status_store, open_storage
from imgpipe.settings import Settings
from imgpipe.status.store import StatusStore
from imgpipe.storage.interface import Storage

T = TypeVar("T")

# A health probe should answer within its own timeout rather than wait out a long pipeline write.
HEALTH_LOCK_TIMEOUT = 5.0

RequestId = Annotated[str, Path(description="The ID a 202 to `POST /requests` gave")]


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

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The store's session for this thread's calls inside, with the lock held throughout (through
        `__getattr__` it would be held only while the session's context manager is made)."""
        with self._lock, self._store.held():
            yield


class Api:
    """The routes' state: the backends (their store serialized by `store_lock`), and the locks of this process."""

    def __init__(self, settings: Settings, storage: Storage | None = None):
        self.store_lock = threading.RLock()
        self.backends = Backends(settings, SerializedStore(open_status_store(settings), self.store_lock),
                                 storage or open_storage(settings))
        self.health_store: StatusStore = SerializedStore(
            open_status_store(settings, lock_timeout=HEALTH_LOCK_TIMEOUT), self.store_lock)
        self.launcher = LaunchAtOnce(self.backends)

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

    async def stored(self, read: Callable[[str, str], T | None], request_id: str, name: str, *,
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

    async def gone_or_unknown(self, request_id: str) -> JSONResponse:
        """410 with the time for a request that was purged; 404 for one never seen."""
        purged_at = await self.in_store(self.backends.store.purged_at, request_id)
        if purged_at is None:
            raise ApiError(404, f"no request {request_id[:200]}")
        body = Purged(request_id=request_id, status="purged", purged_at=purged_at.replace(tzinfo=timezone.utc))
        return JSONResponse(body.model_dump(mode="json"), status_code=410)
