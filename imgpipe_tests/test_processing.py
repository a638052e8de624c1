"""A shared run's requests, processed together in this process: each ends on its own, and one that fails in an
unforeseen way ends `failed` with its reason while the others complete."""
from __future__ import annotations

import uuid

from imgpipe import processing
from imgpipe.backends import open_backends
from imgpipe.intake.intake import Upload, take_upload
from imgpipe.settings import Settings
from imgpipe.status.models import Source
from imgpipe_tests.images import save_jpeg
from imgpipe_tests.pipeline import csv_for


def test_requests_of_a_shared_run_end_on_their_own_and_a_broken_one_alone(tmp_path, image_server, image_root,
                                                                        monkeypatch, webhook_receiver):
    settings = Settings(home=tmp_path / "home", allow_private_hosts="127.0.0.1")
    backends = open_backends(settings)
    store = backends.store
    folder = uuid.uuid4().hex[:8]
    ids = []
    for index in range(5):
        save_jpeg(image_root / folder / f"{index}.jpg", quality=80, seed=index)
        upload = Upload(csv_for([[image_server.url(f"img/{folder}/{index}.jpg")]]).encode(), f"s{index}.csv",
                        Source.FOLDER, webhook_url=webhook_receiver.url(f"s{index}"))
        ids.append(take_upload(backends, upload).request_id)
    real = processing.ImagesToDo.run

    def breaks_on_the_third(images, *args, **kwargs):
        if images.request_id == ids[2]:
            raise RuntimeError("the disk went away")
        return real(images, *args, **kwargs)

    monkeypatch.setattr(processing.ImagesToDo, "run", breaks_on_the_third)
    ended = list(processing.process_requests(backends, ids, "run-shared"))

    assert sorted(e.request_id for e in ended) == sorted(ids)
    statuses = {e.request_id: e.completion.status for e in ended}
    assert statuses == {**{i: "completed" for i in ids}, ids[2]: "failed"}
    assert "the disk went away" in store.get_request(ids[2]).error
    assert all((settings.outputs_dir / f"{i}.csv").exists() for i in ids)
    assert sorted(call["path"] for call in webhook_receiver.calls) == [f"/s{i}" for i in range(5)]
    # Ended requests are left alone by a second pass, unless it is a re-execution.
    assert [e.completion for e in processing.process_requests(backends, ids, "run-2")] == [None] * 5
    monkeypatch.undo()
    again = {e.request_id: e.completion for e in processing.process_requests(backends, ids,
                                                                              "run-3", again=True)}
    assert again[ids[2]].status == "completed" and all(again[i] is None for i in ids if i != ids[2])
