"""Renditions in the status store (issue #25): for each image of a request that has renditions, the files its URL
answers with (its main output and each rendition), for the status document, the report, the asset metadata and
/metrics. Serving an image does not read them: it negotiates from the record kept beside the image's files
(imgpipe.storage.interface `write_renditions`), so that images are answered while the pipeline holds the store.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterable, Sequence

import pandas as pd

from imgpipe.status.models import ImageResult, ImageStatus, RenditionRow, RequestView

RENDITIONS_TABLE = """
CREATE TABLE IF NOT EXISTS renditions (
    request_id VARCHAR NOT NULL,
    input_url VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    role VARCHAR NOT NULL,
    PRIMARY KEY (request_id, name)
);
"""
_COLUMNS = [f.name for f in fields(RenditionRow)]


class RenditionRows:
    """The status store's statements about renditions, mixed into `StatusStore` (whose `_transact`, `_execute`
    and `_register` they use)."""

    def _record_renditions(self, con: Any, request_id: str, results: Sequence[ImageResult]) -> None:
        """Inside the transaction that records `results`: their renditions, so that an image is never seen
        compressed without them. Recorded again (a step run twice), they stay as they were."""
        rows = [vars(row) for result in results for row in result.renditions]
        if not rows:
            return
        self._register(con, "rendition_batch", pd.DataFrame(rows, columns=_COLUMNS))
        self._execute(
            con,
            "INSERT INTO renditions SELECT ?, input_url, name, format, CAST(width AS INTEGER),"
            " CAST(height AS INTEGER), CAST(bytes AS BIGINT), role FROM rendition_batch ON CONFLICT DO NOTHING",
            [request_id])

    def renditions_of(self, request_id: str, input_urls: Iterable[str] | None = None) -> dict[str, list[RenditionRow]]:
        """By input URL, the files of the request's images that have renditions (of `input_urls`, or all), each
        image's main output first, then by width and format."""
        wanted = None if input_urls is None else list(input_urls)
        if wanted == []:  # PostgreSQL cannot type an empty array
            return {}
        only = "" if wanted is None else " AND input_url IN (SELECT unnest(?))"
        found: dict[str, list[RenditionRow]] = {}
        for row in self._typed(RenditionRow, "SELECT * FROM renditions WHERE request_id = ?" + only +
                               " ORDER BY input_url, role <> 'main', width DESC, format",
                               [request_id, *([wanted] if wanted is not None else [])]):
            found.setdefault(row.input_url, []).append(row)
        return found

    def renditions_of_view(self, view: RequestView | None) -> dict[str, list[RenditionRow]]:
        """`renditions_of` the compressed images of `view` (as `request_view` read them; call it in the same
        `held()` session, so that they are read together); none for no view."""
        if view is None:
            return {}
        return self.renditions_of(view.request.request_id, {image.input_url for image in view.images
                                                            if image.status is ImageStatus.COMPRESSED})

    def _bytes_out_by_format(self, con: Any) -> dict[tuple[str, str], int]:
        """Inside `metrics`: bytes served, by (kind, format in lower case): `main` outputs of the compressed
        images (a slot each, as imgpipe_image_bytes_total counts them), and `rendition`s (a file each)."""
        rows = self._execute(
            con,
            "SELECT 'main', lower(format_out), sum(bytes_out) FROM images WHERE status = 'compressed'"
            " AND format_out IS NOT NULL GROUP BY 2"
            " UNION ALL SELECT 'rendition', lower(format), sum(bytes) FROM renditions WHERE role <> 'main'"
            " GROUP BY 2").fetchall()
        return {(str(kind), str(format)): int(total) for kind, format, total in rows}

    def rendition_totals(self, request_id: str) -> dict[str, tuple[int, int, int]]:
        """By role and format of the request's renditions (`fallback jpeg`, `alternative avif`, ...): how many
        files, their bytes, and the bytes they save against the main output or fallback of their image and width
        (an alternative's saving; 0 for a fallback)."""
        rows = self._rows(
            "SELECT r.role || ' ' || lower(r.format) AS kind, count(*) AS files, sum(r.bytes) AS bytes,"
            " sum(CASE WHEN r.role = 'alternative' THEN base.bytes - r.bytes ELSE 0 END) AS saved"
            " FROM renditions r JOIN renditions base ON base.request_id = r.request_id"
            " AND base.input_url = r.input_url AND base.width = r.width AND base.role <> 'alternative'"
            " WHERE r.request_id = ? AND r.role <> 'main' GROUP BY 1",
            [request_id])
        return {row["kind"]: (int(row["files"]), int(row["bytes"]), int(row["saved"])) for row in rows}
