"""A request's report (`GET /requests/{id}/report`): one HTML page, rendered on the server with Jinja2, no
JavaScript. A summary at the top (counts, bytes in and out, total saved, how images were obtained, time taken),
then per product each image's before and after thumbnails side by side (made by the image's own process while
it was decoded anyway, kept with the outputs), bytes and quality in and out, percent saved, how it was obtained,
its note and, for a failed image, the reason; for an image with renditions, the image as its URL serves this
browser (by `Accept` and its `srcset`) and each file's size, by width and format. Products are paged (`offset`,
`limit`) in SQL, as the status document's are, so a request of 20,000 images is a page of 50 products at a time.

The thumbnails are served under the report's own path (`report/thumbs/<name>`), so that a signed link to the
report (imgpipe.report_links) also covers them and nothing else.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode, urlsplit

import jinja2

from imgpipe.images.renditions import ALTERNATIVE, MAIN, served_links
from imgpipe.status.models import ImageRow, ImageStatus, RenditionRow, RequestView
from imgpipe.status.store import StatusStore

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# No script may run and nothing may be loaded from elsewhere; links still go anywhere (input and output URLs).
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
THUMBNAIL_HEADERS = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
# Where the page finds the images it shows as served: relative to its own path, /requests/<id>/report, so that
# they come from the same origin (the page's policy allows no other) under whatever base URL the API is reached.
IMAGES_BASE = "../../images/"
# How wide the served image is shown: a browser takes the narrowest rendition that fills it.
SERVED_SIZE = "160px"

_environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                  autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                  lstrip_blocks=True)


def human_size(size: int | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(size) >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:,} B"


_environment.filters["size"] = human_size


def percent_saved(bytes_in: int | None, bytes_out: int | None) -> str | None:
    if not bytes_in or bytes_out is None:
        return None
    return f"{100 * (1 - bytes_out / bytes_in):.1f}%"


def thumbnail_stem(output_url: str | None) -> str | None:
    """The image's output file name without its extension (`r1-p2`): its thumbnails are `<stem>.before.jpg` and
    `<stem>.after.jpg`."""
    if not output_url:
        return None
    return PurePosixPath(urlsplit(output_url).path).stem or None


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def read_report(store: StatusStore, request_id: str, *, offset: int,
                limit: int) -> tuple[RequestView, dict[str, list[RenditionRow]]] | None:
    """What a page of the report shows: `request_view` and the renditions of its compressed images (read
    after it, in the same session); None for an unknown request."""
    with store.held():
        view = store.request_view(request_id, offset=offset, limit=limit)
        if view is None:
            return None
        return view, store.renditions_of_view(view)


def render_report(view: RequestView, *, offset: int, limit: int, signed: dict[str, str | int],
                  renditions: dict[str, list[RenditionRow]] | None = None, now: datetime | None = None) -> str:
    """The page of `view` (read with this `offset` and `limit`) and the `renditions` of its images (by input
    URL); `signed` (`expires` and `signature` of the link it was opened with, or empty) goes on every link the
    page makes to itself and its thumbnails."""
    request = view.request
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    counts = view.counts
    bytes_in, bytes_out = view.compressed_total("bytes_in"), view.compressed_total("bytes_out")
    if request.status.terminal and request.completed_at:
        time_taken = f"took {duration((request.completed_at - request.created_at).total_seconds())}"
    else:
        time_taken = f"{request.status}, for {duration((now - request.created_at).total_seconds())} so far"
    errors = request.shown_errors
    images_by_row: dict[int, list[dict]] = {}
    for image in view.images:
        compressed = image.status is ImageStatus.COMPRESSED
        images_by_row.setdefault(image.row_number, []).append({
            "position": image.position, "status": str(image.status), "input_url": image.input_url,
            "input_link": image.input_url.startswith(("https://", "http://")),
            "output_url": image.output_url if compressed else None,
            "stem": thumbnail_stem(image.output_url) if compressed else None,
            "bytes_in": image.bytes_in, "bytes_out": image.bytes_out if compressed else None,
            "quality_in": image.quality_in, "quality_out": image.quality_out if compressed else None,
            "percent_saved": percent_saved(image.bytes_in, image.bytes_out) if compressed else None,
            "obtained": image.obtained, "note": image.note, "error": image.error,
            **served(image, (renditions or {}).get(image.input_url, []) if compressed else []),
        })
    link_query = "?" + urlencode(signed) if signed else ""

    def page_link(start: int) -> str:
        return "?" + urlencode({"offset": start, "limit": limit, **signed})

    total = view.products_total
    return _environment.get_template("report.html").render(
        request_id=request.request_id, status=str(request.status), file_name=request.file_name or "(no name)",
        source=request.source, created_at=_shown(request.created_at), completed_at=_shown(request.completed_at),
        time_taken=time_taken, counts=counts, bytes_in=bytes_in, bytes_out=bytes_out,
        percent_saved=percent_saved(bytes_in, bytes_out) or "", obtained=sorted(view.obtained().items()),
        errors=errors, products_total=total, first=min(offset + 1, total), last=min(offset + limit, total),
        limit=limit, previous_link=page_link(max(0, offset - limit)) if offset > 0 else None,
        next_link=page_link(offset + limit) if offset + limit < total else None,
        products=[{"row_number": p.row_number, "serial": p.serial, "product_name": p.product_name,
                   "images": images_by_row.get(p.row_number, [])} for p in view.products],
        thumbs_base="report/thumbs/", link_query=link_query, served_size=SERVED_SIZE, now=_shown(now),
    )


def served(image: ImageRow, rows: list[RenditionRow]) -> dict:
    """For an image with renditions: its URL (and `srcset`) relative to the page, and its files' sizes by width,
    widest first, each {"format", "bytes", "url"}; for any other, no sizes."""
    if not rows:
        return {"sizes": []}
    main = next(row for row in rows if row.role == MAIN)
    served_url = f"{IMAGES_BASE}{image.request_id}/{main.name}"
    urls, image_srcset = served_links(image.output_url, ((row.name, row.width) for row in rows),
                                      served_url=served_url)
    by_width: dict[int, list[dict]] = {}
    for row in sorted(rows, key=lambda row: (-row.width, row.role == ALTERNATIVE, row.format)):
        by_width.setdefault(row.width, []).append({"format": row.format, "bytes": row.bytes, "url": urls[row.name]})
    return {"served_url": served_url, "srcset": image_srcset, "sizes": list(by_width.items())}


def _shown(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""
