"""What a webhook says (docs/api.md#webhook): its event type, its JSON body and its message ID."""
from __future__ import annotations

import json
from datetime import datetime, timezone

EVENT_TYPES = {
    "completed": "request.completed",
    "completed_with_errors": "request.completed",
    "failed": "request.failed",
}


def event_type(status: str) -> str:
    try:
        return EVENT_TYPES[status]
    except KeyError:
        raise ValueError(f"no webhook for request status {status!r}") from None


def build_payload(request_id: str, status: str, counts: dict, output_csv_url: str, timestamp: datetime) -> bytes:
    """The JSON body; a naive `timestamp` is taken as UTC, as the status store keeps its times."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    payload = {
        "type": event_type(status),
        "request_id": request_id,
        "status": status,
        "counts": counts,
        "output_csv_url": output_csv_url,
        "timestamp": timestamp.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def message_id(request_id: str, run_id: str) -> str:
    """Derived, not random, so that a process resuming a delivery sends the ID receivers already saw and they
    can drop the duplicate; each run of a request (a retry, a re-execution) ends with a webhook of its own."""
    return f"msg_{request_id}_{run_id[:8]}"
