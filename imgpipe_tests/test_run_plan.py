"""Which queued requests share a run: pure planning."""
from __future__ import annotations

from datetime import datetime

from imgpipe.run_plan import MAX_IMAGES_PER_RUN, MAX_REQUESTS_PER_RUN, OWN_RUN_IMAGES, PlannedRun, plan_runs
from imgpipe.status.models import RequestRow


def shared(run: PlannedRun) -> bool:
    return len(run.request_ids) > 1


def queued(request_id: str, images: int, generation: int = 0) -> RequestRow:
    now = datetime(2026, 12, 1)
    return RequestRow(request_id=request_id, status="queued", source="folder", file_name=None, webhook_url=None,
                      created_at=now, updated_at=now, total_images=images, generation=generation)


def test_a_lone_request_has_a_run_of_its_own_keyed_by_its_generation():
    [run] = plan_runs([queued("r1", 5, generation=2)])
    assert (run.run_key, run.request_ids, shared(run)) == ("r1:2", ("r1",), False)


def test_small_requests_share_runs_within_the_bounds_and_large_ones_run_alone():
    requests = [queued(f"s{i}", 5) for i in range(MAX_REQUESTS_PER_RUN + 3)]
    requests.insert(10, queued("big", OWN_RUN_IMAGES))
    runs = plan_runs(requests)
    assert [len(r.request_ids) for r in runs] == [1, MAX_REQUESTS_PER_RUN, 3]
    assert runs[0].request_ids == ("big",)
    assert [i for r in runs[1:] for i in r.request_ids] == [f"s{i}" for i in range(MAX_REQUESTS_PER_RUN + 3)]
    by_images = plan_runs([queued(f"m{i}", OWN_RUN_IMAGES - 1) for i in range(12)])
    assert all(sum(OWN_RUN_IMAGES - 1 for _ in r.request_ids) <= MAX_IMAGES_PER_RUN for r in by_images)


def test_the_same_requests_give_the_same_shared_key_and_a_retry_another():
    first = plan_runs([queued("a", 5), queued("b", 5)])
    again = plan_runs([queued("a", 5), queued("b", 5)])
    retried = plan_runs([queued("a", 5, generation=1), queued("b", 5)])
    assert first == again and shared(first[0]) and first[0].run_key != retried[0].run_key
