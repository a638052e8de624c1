"""Images in the status store: a request's slots as the intake recorded them, marked and recorded as a run
processes them, and what a successful download leaves for later requests to reuse (the source's validators, the
output kept by the input's SHA-256; docs/operations.md#re-uploads-politeness-and-retention).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Sequence

import pandas as pd

from imgpipe.status.models import (
    ContentOutput,
    ImageResult,
    ImageRow,
    ImageSlot,
    ProductRow,
    ReuseCandidate,
    image_counts,
    utcnow,
)

# The columns of a batch of results (`record_results`): a result's renditions go to a table of their own.
_RESULT_COLUMNS = [f.name for f in fields(ImageResult) if f.name != "renditions"]


class ImageRows:
    """The status store's statements about images and their reuse, mixed into `StatusStore` (whose `_transact`,
    `_execute`, `_register`, `_rows`, `_typed` and `_run` they use, and `_record_renditions` of `RenditionRows`)."""

    def manifest(self, request_id: str) -> pd.DataFrame:
        """The request's slots as the intake validated them, in the manifest's columns and order."""
        rows = self._rows(
            "SELECT i.row_number, i.serial, p.product_name, i.position, i.input_url FROM images i"
            " JOIN products p ON p.request_id = i.request_id AND p.row_number = i.row_number"
            " WHERE i.request_id = ? ORDER BY i.row_number, i.position",
            [request_id],
        )
        return pd.DataFrame(rows, columns=["row_number", "serial", "product_name", "position", "input_url"])

    def unfinished_slots(self, request_id: str) -> list[ImageSlot]:
        rows = self._rows(
            "SELECT row_number, position, input_url FROM images WHERE request_id = ? AND status <> 'compressed'"
            " ORDER BY row_number, position",
            [request_id],
        )
        return [ImageSlot(**r) for r in rows]

    def mark_processing(self, request_id: str, input_urls: Sequence[str]) -> None:
        if not input_urls:
            return
        self._run((
            "UPDATE images SET status = 'processing', attempts = attempts + 1, updated_at = ?"
            " WHERE request_id = ? AND status <> 'compressed' AND input_url IN (SELECT unnest(?))",
            [utcnow(), request_id, list(input_urls)],
        ))

    def record_results(self, request_id: str, results: Sequence[ImageResult], policy_version: int = 0) -> None:
        """The results of some images, in one transaction: their slots, and for later requests the validators
        and kept outputs of those that carry them (`policy_version`: the image policy they were made under)."""
        if not results:
            return
        now = utcnow()
        # vars, not asdict: asdict deep-copies every field, a cost that str and int values do not need.
        batch = pd.DataFrame([{**vars(r), "status": str(r.status), "obtained": r.obtained and str(r.obtained)}
                              for r in results], columns=_RESULT_COLUMNS).astype(
            {column: "Int64" for column in ("bytes_in", "bytes_out", "quality_in", "quality_out")})

        def work(con) -> None:
            self._record_renditions(con, request_id, results)
            self._register(con, "result_batch", batch)
            self._execute(
                con,
                # Casts: a column that is NULL in every result reaches PostgreSQL untyped (as text).
                "UPDATE images SET status = r.status, output_path = r.output_path, output_url = r.output_url,"
                " bytes_in = CAST(r.bytes_in AS BIGINT), bytes_out = CAST(r.bytes_out AS BIGINT),"
                " quality_in = CAST(r.quality_in AS INTEGER), quality_out = CAST(r.quality_out AS INTEGER),"
                " format_out = r.format_out, error = r.error, obtained = r.obtained, note = r.note,"
                " input_sha256 = r.input_sha256, download_seconds = CAST(r.download_seconds AS REAL),"
                " compress_seconds = CAST(r.compress_seconds AS REAL), updated_at = ?"
                " FROM result_batch r WHERE images.request_id = ? AND images.input_url = r.input_url"
                " AND images.status <> 'compressed'",
                [now, request_id],
            )
            self._execute(
                con,
                "INSERT INTO url_validators SELECT input_url, etag, last_modified, input_sha256, ?, validated_url"
                " FROM result_batch WHERE kept_extension IS NOT NULL ON CONFLICT (input_url) DO UPDATE SET"
                " etag = excluded.etag, last_modified = excluded.last_modified, input_sha256 = excluded.input_sha256,"
                " updated_at = excluded.updated_at, validated_url = excluded.validated_url",
                [now],
            )
            self._execute(
                con,
                "INSERT INTO content_outputs SELECT DISTINCT ON (input_sha256) input_sha256, ?, kept_extension,"
                " format_out, CAST(bytes_in AS BIGINT), CAST(bytes_out AS BIGINT), CAST(quality_in AS INTEGER),"
                " CAST(quality_out AS INTEGER), note, ? FROM result_batch"
                " WHERE kept_extension IS NOT NULL AND obtained = 'fetched' ORDER BY input_sha256"
                " ON CONFLICT DO NOTHING",
                [policy_version, now],
            )
            self._execute(con, "UPDATE requests SET updated_at = ? WHERE request_id = ?", [now, request_id])

        self._transact(work)

    # ------------------------------------------------------------------ reuse across requests

    def reuse_candidates(self, input_urls: Sequence[str], policy_version: int) -> dict[str, ReuseCandidate]:
        """By URL, what the last successful download of each of `input_urls` left."""
        if not input_urls:
            return {}
        rows = self._rows(
            "SELECT v.input_url, v.etag, v.last_modified, v.validated_url, v.input_sha256, c.extension, c.format_out, c.bytes_in,"
            " c.bytes_out, c.quality_in, c.quality_out, c.note FROM url_validators v LEFT JOIN content_outputs c"
            " ON c.input_sha256 = v.input_sha256 AND c.policy_version = ?"
            " WHERE v.input_url IN (SELECT unnest(?))",
            [policy_version, list(input_urls)],
        )
        return {r["input_url"]: ReuseCandidate(
            r["input_url"], r["etag"], r["last_modified"], r["validated_url"], r["input_sha256"],
            ContentOutput.from_mapping({**r, "policy_version": policy_version}) if r["extension"] else None)
            for r in rows}

    def content_output(self, input_sha256: str, policy_version: int) -> ContentOutput | None:
        rows = self._typed(ContentOutput, "SELECT * FROM content_outputs WHERE input_sha256 = ? AND policy_version = ?",
                           [input_sha256, policy_version])
        return rows[0] if rows else None

    def kept_content(self, policy_version: int) -> set[str]:
        """The SHA-256 of every input whose output is kept under `policy_version`."""
        return {r["input_sha256"] for r in self._rows(
            "SELECT input_sha256 FROM content_outputs WHERE policy_version = ?", [policy_version])}

    def forget_content(self, input_sha256: str, policy_version: int) -> None:
        """A kept output whose files are gone: it is made again next time."""
        self._run(("DELETE FROM content_outputs WHERE input_sha256 = ? AND policy_version = ?",
                   [input_sha256, policy_version]))

    def images(self, request_id: str) -> list[ImageRow]:
        return self._typed(ImageRow, "SELECT * FROM images WHERE request_id = ? ORDER BY row_number, position",
                           [request_id])

    def products(self, request_id: str) -> list[ProductRow]:
        return self._typed(ProductRow, "SELECT * FROM products WHERE request_id = ? ORDER BY row_number",
                           [request_id])

    def counts(self, request_id: str) -> dict[str, int]:
        rows = self._rows("SELECT status FROM images WHERE request_id = ?", [request_id])
        return image_counts(r["status"] for r in rows)
