"""The status store's reads for people and dashboards: the status document's pages (docs/api.md#rest-api), what
`imgpipe up` shows, and /metrics (docs/operations.md#metrics-logs-and-the-report). Set-based and paged in SQL: a
request of 20,000 images is answered without reading every row of it.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Iterable, Sequence

from imgpipe.status.models import (
    ImageRow,
    ProductRow,
    RequestRow,
    RequestView,
    StoreMetrics,
    grouped_image_counts,
    row_dicts,
    utcnow,
)


class DashboardReads:
    """The status store's reads for people and dashboards, mixed into `StatusStore` (whose `_transact`,
    `_execute`, `_rows` and `_typed` they use, and `_bytes_out_by_format` of `RenditionRows`)."""

    def request_view(self, request_id: str, *, offset: int = 0, limit: int | None = None,
                     with_products: bool = True) -> RequestView | None:
        """In one transaction: the request row, its images' counts and bytes (grouped in SQL), how many products
        it has and, `with_products`, the products `offset`..`offset + limit` in input order (all from `offset`
        when `limit` is None) with their images. None for an unknown request."""
        def work(con) -> RequestView | None:
            found = row_dicts(self._execute(con, "SELECT * FROM requests WHERE request_id = ?", [request_id]))
            if not found:
                return None
            (view,) = self._views_without_products(con, found)
            if not with_products:
                return view
            page = " LIMIT ? OFFSET ?" if limit is not None else " OFFSET ?"
            products = [ProductRow.from_mapping(row) for row in row_dicts(self._execute(
                con, "SELECT * FROM products WHERE request_id = ? ORDER BY row_number" + page,
                [request_id, *([limit] if limit is not None else []), offset]))]
            images: list[ImageRow] = []
            if products:
                # Products are read in row order, so their images are those of the rows between the first
                # and the last of the page.
                images = [ImageRow.from_mapping(row) for row in row_dicts(self._execute(
                    con,
                    "SELECT * FROM images WHERE request_id = ? AND row_number BETWEEN ? AND ?"
                    " ORDER BY row_number, position",
                    [request_id, products[0].row_number, products[-1].row_number]))]
            return replace(view, products=products, images=images)

        return self._transact(work)

    def request_views(self, *, statuses: Sequence[str] | None = None, limit: int,
                      offset: int = 0) -> tuple[list[RequestView], int]:
        """In one transaction: the requests in `statuses` (every one when none are given), newest first (by
        `created_at`, then `request_id`), `offset`..`offset + limit` of them as `request_view(...,
        with_products=False)` reads each, and how many there are in all."""
        where, params = (" WHERE status IN (SELECT unnest(?))", [[str(s) for s in statuses]]) if statuses else ("", [])

        def work(con) -> tuple[list[RequestView], int]:
            (total,) = self._execute(con, "SELECT count(*) FROM requests" + where, params).fetchone()
            rows = row_dicts(self._execute(
                con, "SELECT * FROM requests" + where + " ORDER BY created_at DESC, request_id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset]))
            return self._views_without_products(con, rows), int(total)

        return self._transact(work)

    def _views_without_products(self, con, rows: list[dict]) -> list[RequestView]:
        """The views of the request `rows`: their images' counts and bytes and their products' count, grouped in
        SQL for all of them at once."""
        if not rows:  # PostgreSQL cannot type an empty array
            return []
        request_ids = [row["request_id"] for row in rows]
        groups: dict[str, list[dict]] = {request_id: [] for request_id in request_ids}
        for group in row_dicts(self._execute(
                con,
                "SELECT request_id, status, obtained, count(*) AS images, sum(bytes_in) AS bytes_in,"
                " sum(bytes_out) AS bytes_out FROM images WHERE request_id IN (SELECT unnest(?))"
                " GROUP BY request_id, status, obtained ORDER BY request_id, status, obtained",
                [request_ids])):
            groups[group["request_id"]].append(group)
        products_totals = dict(self._execute(
            con, "SELECT request_id, count(*) FROM products WHERE request_id IN (SELECT unnest(?))"
                 " GROUP BY request_id", [request_ids]).fetchall())
        return [RequestView(RequestRow.from_mapping(row), groups[row["request_id"]],
                            int(products_totals.get(row["request_id"], 0)), [], []) for row in rows]

    def requests_updated_since(self, moment: datetime) -> list[RequestRow]:
        """Requests recorded or changed at `moment` or later (naive UTC), oldest first: what `imgpipe up` shows."""
        return self._typed(RequestRow, "SELECT * FROM requests WHERE updated_at >= ? ORDER BY created_at", [moment])

    def image_counts_of(self, request_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """`image_counts` of each of `request_ids` (grouped in SQL); an unknown ID gets none."""
        wanted = list(request_ids)
        if not wanted:
            return {}
        rows = self._rows("SELECT request_id, status, count(*) AS images FROM images"
                          " WHERE request_id IN (SELECT unnest(?)) GROUP BY request_id, status", [wanted])
        groups: dict[str, list[dict]] = {request_id: [] for request_id in wanted}
        for row in rows:
            groups[row["request_id"]].append(row)
        return {request_id: grouped_image_counts(rows) for request_id, rows in groups.items()}

    def metrics(self, buckets: Sequence[float]) -> StoreMetrics:
        """What /metrics shows, across every process that writes the store, in one transaction of a few
        aggregate statements; `buckets`: the histograms' upper bounds (seconds), ascending."""
        bounds = [float(bound) for bound in buckets]

        def histogram(column: str) -> str:
            # Cumulative counts, the sum and the count of one duration over the compressed images. The bounds are
            # compared as REAL, the column's own precision: 0.1 kept as REAL is just above the double 0.1.
            return ("SELECT " + ", ".join([f"count(*) FILTER (WHERE {column} <= CAST(? AS REAL))"] * len(bounds))
                    + f", count({column}), coalesce(sum({column}), 0) FROM images WHERE status = 'compressed'")

        def work(con) -> StoreMetrics:
            def grouped(sql: str) -> dict[str, int]:
                return {str(key): int(count) for key, count in self._execute(con, sql).fetchall()}

            def counts(column: str) -> tuple[tuple[int, ...], int, float]:
                row = self._execute(con, histogram(column), bounds).fetchone()
                return tuple(int(n) for n in row[:len(bounds)]), int(row[-2]), float(row[-1])

            bytes_in, bytes_out = self._execute(
                con, "SELECT coalesce(sum(bytes_in), 0), coalesce(sum(bytes_out), 0) FROM images"
                     " WHERE status = 'compressed'").fetchone()
            (oldest_queued,) = self._execute(
                con, "SELECT min(updated_at) FROM requests WHERE status = 'queued'").fetchone()
            return StoreMetrics(
                requests_by_status=grouped("SELECT status, count(*) FROM requests GROUP BY status"),
                images_by_status=grouped("SELECT status, count(*) FROM images GROUP BY status"),
                images_by_obtained=grouped(
                    "SELECT obtained, count(*) FROM images WHERE obtained IS NOT NULL GROUP BY obtained"),
                bytes_in=int(bytes_in), bytes_out=int(bytes_out),
                buckets=tuple(bounds), download_seconds=counts("download_seconds"),
                compress_seconds=counts("compress_seconds"),
                webhook_attempts=grouped(
                    "SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN 'delivered'"
                    " WHEN status_code BETWEEN 300 AND 399 THEN 'http_3xx'"
                    " WHEN status_code BETWEEN 400 AND 499 THEN 'http_4xx'"
                    " WHEN status_code IS NOT NULL THEN 'http_5xx'"
                    " WHEN error LIKE 'blocked:%' THEN 'blocked' ELSE 'network_error' END, count(*)"
                    " FROM webhook_deliveries GROUP BY 1"),
                oldest_queued_at=oldest_queued, read_at=utcnow(),
                bytes_out_by_format=self._bytes_out_by_format(con))

        return self._transact(work)
