"""The body of `POST /requests`, read as it streams in with every limit enforced while reading.

A multipart/form-data body goes through python-multipart's streaming `MultipartParser`; a raw `text/csv` body
is collected as it is. Nothing is held beyond what the limits allow, whatever the client declares:

- the whole body: `max_csv_bytes` (a raw CSV) or `max_csv_bytes` + 64 KiB (multipart: boundaries, part
  headers and the webhook field around a CSV just under the limit); a declared Content-Length over it is
  refused before anything is read, and counting while reading stops a chunked or lying body (413);
- the `file` part: `max_csv_bytes` (413); the `webhook_url` part: 8 KiB (413); any other part is skipped;
- at most 16 parts, 8 header lines per part, 8 KiB per header line (400); the request's Content-Type header
  at most 1 KiB and the boundary at most 256 bytes (python-multipart's own bound) (400).

Content-Disposition parameters are read by python-multipart's `parse_options_header`, which is linear in its
input (measured: about 2 ms per 1 KB at worst, quoted values full of `;`), and only ever sees a header line the
parser has already bounded to 8 KiB. (The standard library's `email` parser this replaces took about 3 GB on a
280 KB part header of thousands of parameters.)
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from imgpipe.api.errors import ApiError
from imgpipe.text import declares_over

KIB = 1024
MULTIPART_ENVELOPE_BYTES = 64 * KIB
MAX_PARTS = 16
MAX_HEADERS_PER_PART = 8
MAX_HEADER_LINE_BYTES = 8 * KIB
MAX_WEBHOOK_FIELD_BYTES = 8 * KIB
MAX_CONTENT_TYPE_BYTES = 1 * KIB
CSV_MEDIA_TYPES = ("text/csv", "application/csv")
MULTIPART_MEDIA_TYPE = "multipart/form-data"
FILE_FIELD, WEBHOOK_FIELD = "file", "webhook_url"


@dataclass(frozen=True)
class ReceivedUpload:
    """What came in: the CSV (None when a form had no `file` part), its name as the client sent it (possibly
    with folders; None when it sent none) and the webhook URL as sent (None when absent)."""

    content: bytes | None
    file_name: str | None
    webhook_url: str | None


def too_large(what: str, limit: int) -> ApiError:
    return ApiError(413, f"{what} is larger than the limit of {limit:,} bytes")


def media_type_of(content_type: str) -> tuple[str, dict[bytes, bytes]]:
    if len(content_type) > MAX_CONTENT_TYPE_BYTES:
        raise ApiError(400, f"the Content-Type header is longer than {MAX_CONTENT_TYPE_BYTES:,} bytes")
    media_type, options = parse_options_header(content_type)
    return media_type.decode("latin-1"), options


async def read_upload(request: Request, max_csv_bytes: int) -> ReceivedUpload:
    """The upload of a multipart form (fields `file`, `webhook_url`) or of a raw CSV body. 415 for any other
    body."""
    media_type, options = media_type_of(request.headers.get("content-type", ""))
    if media_type == MULTIPART_MEDIA_TYPE:
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(400, "the multipart/form-data Content-Type has no boundary")
        limit = max_csv_bytes + MULTIPART_ENVELOPE_BYTES
        refuse_declared_length(request, limit)
        return await read_form(request.stream(), boundary, max_csv_bytes=max_csv_bytes)
    if media_type in CSV_MEDIA_TYPES:
        refuse_declared_length(request, max_csv_bytes)
        content = await read_body(request.stream(), max_csv_bytes)
        return ReceivedUpload(content, None, None)
    raise ApiError(415, "send the CSV as multipart/form-data (field 'file') or as a text/csv body")


def refuse_declared_length(request: Request, limit: int) -> None:
    """413 before reading when the client says the body is longer than `limit` (the body may never come)."""
    if declares_over(request.headers.get("content-length", ""), limit):
        raise too_large("the upload", limit)


async def _chunks(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, 413 as soon as they add up to more than `limit`."""
    size = 0
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise too_large("the upload", limit)
            yield chunk
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the body ended") from None


async def read_body(stream: AsyncIterator[bytes], limit: int) -> bytes:
    body = bytearray()
    async for chunk in _chunks(stream, limit):
        body += chunk
    return bytes(body)


async def read_form(stream: AsyncIterator[bytes], boundary: bytes, *, max_csv_bytes: int) -> ReceivedUpload:
    form = _Form(max_csv_bytes)
    try:
        parser = MultipartParser(boundary, callbacks=form.callbacks(), max_header_count=MAX_HEADERS_PER_PART,
                                 max_header_size=MAX_HEADER_LINE_BYTES)
        async for chunk in _chunks(stream, max_csv_bytes + MULTIPART_ENVELOPE_BYTES):
            # After the closing boundary only an epilogue can follow, which RFC 2046 says to ignore: it is
            # still counted against the limit, but not parsed.
            if not form.ended:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, _parse_error_message(exc)) from None
    if not form.ended:
        raise ApiError(400, "the multipart body ends before its closing boundary")
    return form.upload()


def _parse_error_message(exc: FormParserError) -> str:
    text = str(exc)
    if "header size" in text:
        return f"a part's header line is longer than {MAX_HEADER_LINE_BYTES:,} bytes"
    if "header count" in text:
        return f"a part has more than {MAX_HEADERS_PER_PART} header lines"
    return f"the body is not a valid multipart/form-data message ({text[:200]})"


class _Form:
    """Collects the parts of one multipart body from the parser's callbacks, keeping only the first `file`
    and `webhook_url` parts, each within its own limit; other parts are skipped."""

    def __init__(self, max_csv_bytes: int):
        self.limits = {FILE_FIELD: max_csv_bytes, WEBHOOK_FIELD: MAX_WEBHOOK_FIELD_BYTES}
        self.fields: dict[str, bytearray] = {}
        self.file_name: bytes | None = None
        self.parts = 0
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._target: str | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(400, f"the form has more than {MAX_PARTS} parts")
        self._disposition = None
        self._target = None

    # The parser has bounded every header line to MAX_HEADER_LINE_BYTES before it calls these; the checks
    # here hold the bound even if it did not.
    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._append_header(self._header_name, data[start:end])

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._append_header(self._header_value, data[start:end])

    def _append_header(self, buffer: bytearray, data: bytes) -> None:
        if len(self._header_name) + len(self._header_value) + len(data) > MAX_HEADER_LINE_BYTES:
            raise ApiError(400, f"a part's header line is longer than {MAX_HEADER_LINE_BYTES:,} bytes")
        buffer += data

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition" and self._disposition is None:
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        if self._disposition is None:
            return
        _, options = parse_options_header(self._disposition.decode("latin-1"))
        name = options.get(b"name", b"").decode("latin-1")
        if name in self.limits and name not in self.fields:
            self._target = name
            self.fields[name] = bytearray()
            if name == FILE_FIELD:
                self.file_name = options.get(b"filename")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target is None:
            return
        buffer, limit = self.fields[self._target], self.limits[self._target]
        if len(buffer) + (end - start) > limit:
            what = "the CSV" if self._target == FILE_FIELD else f"the {self._target} field"
            raise too_large(what, limit)
        buffer += data[start:end]

    def _part_end(self) -> None:
        self._target = None

    def _end(self) -> None:
        self.ended = True

    def upload(self) -> ReceivedUpload:
        content = self.fields.get(FILE_FIELD)
        webhook = self.fields.get(WEBHOOK_FIELD)
        # Header bytes are latin-1 on the wire; browsers send a UTF-8 name, so read it back as UTF-8 (bytes that
        # are not stay as lone surrogates, which the intake turns into U+FFFD).
        file_name = self.file_name.decode("utf-8", errors="surrogateescape") if self.file_name else None
        return ReceivedUpload(bytes(content) if content is not None else None, file_name,
                              webhook.decode("utf-8", errors="replace") if webhook is not None else None)
