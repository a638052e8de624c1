"""Renditions (issue #25): an image's main output also in WebP and AVIF, and narrower, served from the main output's
own URL to the clients that take them. This module is the pure part, without Pillow or Dagster: what a request
asks for (`RenditionSpec`), which renditions that makes of an image (`planned`), their file names, the record kept
beside an image's files (`RenditionSet`), the choice of a file for an `Accept` header and a `?w=` width
(`negotiate`), and the `srcset` of an image.

Vocabulary. The *main output* is the image's output as without renditions (contract section 9). At each listed
width narrower than the image, a *fallback* is the image in the main encode's format (JPEG, or WebP for an image
with transparency) at that width; it is what a client that names no rendition format gets. An *alternative* is a
WebP or AVIF in place of the fallback (or the main output) of its width, kept only when it is smaller.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

from imgpipe.images.rendition_quality import AVIF_SPEED, SCALES, WEBP_METHOD, avif_quality, webp_quality
from imgpipe.storage.keys import CONTENT_TYPES, WIDTH_PATTERN
from imgpipe.text import ascii_int

# As requests name them, in their canonical order, and as Pillow names them.
FORMATS = ("webp", "avif")
PILLOW_FORMATS = {"webp": "WEBP", "avif": "AVIF"}
ALTERNATIVE_FORMATS = frozenset(PILLOW_FORMATS.values())
# A fallback's format, by preference: an image without transparency has a JPEG fallback, one with it a WebP.
FALLBACK_FORMATS = ("JPEG", "WEBP")
EXTENSIONS = {"JPEG": ".jpg", "WEBP": ".webp", "AVIF": ".avif", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp"}
MEDIA_TYPES = {format: CONTENT_TYPES[extension] for format, extension in EXTENSIONS.items()}
MAX_WIDTHS = 8  # each width costs an encode per format, in the image's own process and time
MAX_WIDTH = 16383  # the widest image WebP can hold
# In a plan, the fallback of a width (its format depends on the image).
FALLBACK = "fallback"
MAIN, ALTERNATIVE = "main", "alternative"  # the other roles of a file

_NAME = re.compile(rf"(?P<stem>[0-9A-Za-z_-]{{1,64}})(?P<width>{WIDTH_PATTERN})?\.[a-z]{{3,4}}")
# A width is read with as many digits as int() reads by default (a zero-padded one as well); one longer is none.
_WIDTH_DIGITS = sys.int_info.default_max_str_digits
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RenditionSpecError(ValueError):
    """A value of `renditions` or `widths` that is not one; `key` says which, `problem` what is wrong with it."""

    def __init__(self, key: str, value: str, problem: str):
        super().__init__(f"{key} {value!r} {problem}")
        self.key = key
        self.problem = problem


def parse_formats(text: str) -> tuple[str, ...]:
    """`webp,avif` (any case and order, spaces and empty items ignored) as FORMATS in canonical order."""
    named = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [part for part in named if part not in FORMATS]
    if unknown:
        raise RenditionSpecError("renditions", text, f"names {unknown[0]!r}, which is not a rendition format "
                                                     f"({' or '.join(FORMATS)})")
    return tuple(f for f in FORMATS if f in named)


def parse_widths(text: str) -> tuple[int, ...]:
    """`960,480` as (480, 960): whole numbers of pixels, sorted, each once."""
    widths = set()
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        width = ascii_int(part, _WIDTH_DIGITS)
        if width is None or not 1 <= width <= MAX_WIDTH:
            raise RenditionSpecError("widths", text, f"names {part!r}, which is not a width in pixels "
                                                     f"(a whole number from 1 to {MAX_WIDTH})")
        widths.add(width)
    if len(widths) > MAX_WIDTHS:
        raise RenditionSpecError("widths", text, f"names {len(widths)} widths, more than {MAX_WIDTHS}")
    return tuple(sorted(widths))


def canonical(text: str, parse: Callable[[str], Iterable[object]]) -> str:
    """A comma list as `parse` (`parse_formats`, `parse_widths`) reads it, written the one way (`avif, WEBP` is
    `webp,avif`); RenditionSpecError as `parse` raises it."""
    return _comma_list(parse(text))


def _comma_list(items: Iterable[object]) -> str:
    return ",".join(map(str, items))


@dataclass(frozen=True)
class RenditionSpec:
    """What a request asks for beside each main output: these formats at the main output's size and at each of
    these widths narrower than the image, and a fallback at each such width."""

    formats: tuple[str, ...] = ()  # a subset of FORMATS, in its order
    widths: tuple[int, ...] = ()  # ascending, each once, 1..MAX_WIDTH

    def __post_init__(self) -> None:
        # Built directly too (tests, the benchmark): held to what `parse` gives.
        object.__setattr__(self, "formats", parse_formats(",".join(self.formats)))
        object.__setattr__(self, "widths", parse_widths(",".join(map(str, self.widths))))

    @classmethod
    def parse(cls, formats: str = "", widths: str = "") -> RenditionSpec:
        """From the comma lists of settings, query, sidecar, Launchpad and CLI; RenditionSpecError names the
        key and the value that is wrong."""
        return cls(parse_formats(formats), parse_widths(widths))

    def __bool__(self) -> bool:
        return bool(self.formats or self.widths)

    @property
    def formats_text(self) -> str:
        return _comma_list(self.formats)  # canonical already (`__post_init__`)

    @property
    def widths_text(self) -> str:
        return _comma_list(self.widths)


@dataclass(frozen=True)
class Rendition:
    """One rendition as the image's process made it."""

    format: str  # "JPEG", "WEBP" or "AVIF", as Pillow names them
    width: int
    height: int
    data: bytes


def narrower_widths(spec: RenditionSpec, width: int) -> tuple[int, ...]:
    """The widths of `spec` that an image `width` pixels wide is made at: those below it (never upscaled)."""
    return tuple(w for w in spec.widths if w < width)


def planned(spec: RenditionSpec, width: int) -> frozenset[tuple[str, int]]:
    """What `spec` makes of an image `width` pixels wide, as (format or FALLBACK, width): a fallback at each
    narrower width, and each format at those and at the image's own width. (An alternative of the fallback's or
    the main output's own format is that file itself, and one that is not smaller is not kept.)"""
    narrower = narrower_widths(spec, width)
    return frozenset({(FALLBACK, w) for w in narrower} | {(f, w) for f in spec.formats for w in (*narrower, width)})


def height_at(width: int, full_width: int, full_height: int) -> int:
    """The height of an image `full_width` x `full_height` scaled to `width`, its aspect kept."""
    return max(1, round(full_height * width / full_width))


def rendition_suffix(format: str, width: int) -> str:
    """`.w480.avif`: what follows the image's stem in a rendition's file name."""
    return f".w{width}{EXTENSIONS[format]}"


def main_stem(name: str) -> str | None:
    """The stem of a main output's file name (`r1-p2.jpg`: `r1-p2`), whose renditions are `<stem>.w<width>.<ext>`;
    None for a rendition's name or any other."""
    match = _NAME.fullmatch(name)
    return match["stem"] if match and not match["width"] else None


def encoder_settings(jpeg_quality: int) -> str:
    """The encoders' settings for the renditions of a main output at `jpeg_quality`: a kept output's renditions
    are reused only while these are the same (a new calibration makes them again)."""
    def qualities(mapping) -> str:  # at each calibrated scale, which the qualities of every other one follow
        return "/".join(str(mapping(jpeg_quality, scale)) for scale in SCALES)

    return f"webp q{qualities(webp_quality)} m{WEBP_METHOD}; avif q{qualities(avif_quality)} s{AVIF_SPEED}"


@dataclass(frozen=True)
class RenditionFile:
    """A rendition kept in the storage, without its bytes."""

    format: str
    width: int
    height: int
    bytes: int

    @property
    def suffix(self) -> str:
        return rendition_suffix(self.format, self.width)


@dataclass(frozen=True)
class Candidate:
    """A file an image's URL can answer with."""

    name: str
    format: str
    width: int
    height: int
    bytes: int
    role: str  # MAIN, FALLBACK or ALTERNATIVE

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


@dataclass(frozen=True)
class RenditionSet:
    """An image's renditions as recorded beside its files (`<stem>.renditions.json` beside a request's image,
    `<sha256>.renditions.json` beside a kept output): the main output's size, format and bytes, and each
    rendition kept. For a kept output also what has been made of it (`made`, as `planned` names it, kept or
    not) and with which `encoder` settings, so that a later request knows whether it needs more."""

    width: int
    height: int
    main_format: str
    main_bytes: int
    files: tuple[RenditionFile, ...] = ()
    made: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    encoder: str = ""

    @classmethod
    def of(cls, renditions: Iterable[Rendition], *, width: int, height: int, main_format: str, main_bytes: int,
           spec: RenditionSpec, encoder: str) -> RenditionSet:
        """The record of what an image's process made for `spec`."""
        return cls(width, height, main_format, main_bytes,
                   tuple(RenditionFile(r.format, r.width, r.height, len(r.data)) for r in renditions),
                   planned(spec, width), encoder)

    def covers(self, spec: RenditionSpec, encoder: str) -> bool:
        """Whether everything `spec` makes has been made, with these `encoder` settings."""
        return self.encoder == encoder and planned(spec, self.width) <= self.made

    def merged(self, newer: RenditionSet) -> RenditionSet:
        """This record with what `newer` made of the same image added; only `newer` when the encoder settings
        changed, since files made with the old ones no longer stand for what a request asks."""
        if newer.encoder != self.encoder or newer.width != self.width:
            return newer
        files = {(f.format, f.width): f for f in self.files} | {(f.format, f.width): f for f in newer.files}
        return RenditionSet(self.width, self.height, self.main_format, self.main_bytes,
                            tuple(sorted(files.values(), key=lambda f: (f.width, f.format))),
                            self.made | newer.made, self.encoder)

    def for_request(self, spec: RenditionSpec) -> RenditionSet:
        """The files of this record that `spec` asks for: the fallback at each of its narrower widths, and its
        formats at those and at the image's own width."""
        asked = {PILLOW_FORMATS[f] for f in spec.formats}
        narrower = narrower_widths(spec, self.width)
        fallbacks = self._fallbacks()
        files = tuple(f for f in self.files
                      if (f.width in narrower and (f.format in asked or fallbacks.get(f.width) is f))
                      or (f.width == self.width and f.format in asked))
        return RenditionSet(self.width, self.height, self.main_format, self.main_bytes, files,
                            planned(spec, self.width), self.encoder)

    def main_name(self, stem: str) -> str:
        """The main output's file name, of which the renditions' are made."""
        return stem + EXTENSIONS[self.main_format]

    def candidates(self, main_name: str) -> list[Candidate]:
        """Every file the main output's URL (`main_name`) can answer with: the main output itself, then each
        rendition, named `<stem>.w<width>.<ext>`."""
        stem = main_name.rsplit(".", 1)[0]
        fallbacks = self._fallbacks()
        return [Candidate(main_name, self.main_format, self.width, self.height, self.main_bytes, MAIN)] + [
            Candidate(stem + f.suffix, f.format, f.width, f.height, f.bytes,
                      FALLBACK if fallbacks.get(f.width) is f else ALTERNATIVE) for f in self.files]

    def _fallbacks(self) -> dict[int, RenditionFile]:
        """The fallback of each narrower width: the file of the first of FALLBACK_FORMATS there is at it (a
        fallback is always kept, and an image with a JPEG fallback has no WebP one but an alternative)."""
        found: dict[int, RenditionFile] = {}
        for format in reversed(FALLBACK_FORMATS):
            found |= {f.width: f for f in self.files if f.format == format and f.width < self.width}
        return found

    def to_json(self) -> bytes:
        return json.dumps({
            "width": self.width, "height": self.height, "main_format": self.main_format,
            "main_bytes": self.main_bytes, "encoder": self.encoder,
            "files": [[f.format, f.width, f.height, f.bytes] for f in self.files],
            "made": sorted([format, width] for format, width in self.made),
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RenditionSet:
        """ValueError when `data` is not such a record."""
        try:
            doc = json.loads(data)
            return cls(int(doc["width"]), int(doc["height"]), str(doc["main_format"]), int(doc["main_bytes"]),
                       tuple(RenditionFile(str(f), int(w), int(h), int(b)) for f, w, h, b in doc["files"]),
                       frozenset((str(f), int(w)) for f, w in doc["made"]), str(doc["encoder"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a record of renditions: {exc}") from None


# ---------------------------------------------------------------- choosing a file for a client


def parse_accept(header: str | None) -> list[tuple[str, float]]:
    """The media ranges of an `Accept` header with their q-values, in its order (parameters other than `q`
    dropped; a range without one has q=1; anything unparsable left out)."""
    ranges = []
    for item in (header or "").split(","):
        media_range, *parameters = (part.strip() for part in item.split(";"))
        kind, _, subtype = media_range.lower().partition("/")
        if not (_TOKEN.fullmatch(kind) and _TOKEN.fullmatch(subtype)):
            continue
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 0.0  # a q the client spoiled: nothing it could rely on
        ranges.append((f"{kind}/{subtype}", q))
    return ranges


def accepted_quality(ranges: list[tuple[str, float]], media_type: str, *, wildcards: bool = True) -> float:
    """How much the client takes `media_type`: the q of the most specific range that matches it (RFC 9110 12.5.1),
    0 when none does. `wildcards=False`: only a range that names it exactly counts."""
    specificity = {media_type: 2}
    if wildcards:
        specificity |= {media_type.split("/")[0] + "/*": 1, "*/*": 0}
    best, most_specific = 0.0, -1
    for media_range, q in ranges:
        level = specificity.get(media_range, -1)
        if level > most_specific:
            best, most_specific = q, level
    return best


def choose_width(widths: Iterable[int], asked: int | None) -> int:
    """The narrowest of `widths` at least `asked` wide, the widest when none is (or nothing was asked)."""
    ordered = sorted(set(widths))
    if asked is None:
        return ordered[-1]
    return next((w for w in ordered if w >= asked), ordered[-1])


def negotiate(candidates: list[Candidate], accept: str | None, width: int | None = None) -> Candidate:
    """The file to answer with. Width first (`choose_width` over the candidates'); then, of that width's files,
    the fallback (the main output at the full width) unless the `Accept` header names image/avif or image/webp
    with a q above 0; if it does, the smallest file the client takes. An alternative is taken only where the
    header names its type (a client that sends `*/*` or `image/*` may not decode AVIF: older browsers did not); a
    fallback by any range that matches it. q=0 refuses. When the client takes none, the fallback."""
    size = choose_width((c.width for c in candidates), width)
    here = [c for c in candidates if c.width == size]
    fallback = next(c for c in here if c.role != ALTERNATIVE)
    ranges = parse_accept(accept)
    if not any(accepted_quality(ranges, MEDIA_TYPES[f], wildcards=False) > 0 for f in ALTERNATIVE_FORMATS):
        return fallback

    def quality(candidate: Candidate) -> float:
        return accepted_quality(ranges, candidate.media_type, wildcards=candidate.role != ALTERNATIVE)

    taken = [c for c in here if quality(c) > 0]
    return min(taken, key=lambda c: (c.bytes, -quality(c))) if taken else fallback


def srcset(url: str, widths: Iterable[int]) -> str:
    """A `srcset` of the image at `url` for each of `widths` (the image's own, the widest, among them): the
    narrower ones as `url?w=<width>`, each negotiated like the URL itself."""
    ordered = sorted(set(widths))
    return ", ".join(f"{url} {w}w" if w == ordered[-1] else f"{url}?w={w} {w}w" for w in ordered)


def served_links(output_url: str, files: Iterable[tuple[str, int]], *,
                 served_url: str | None = None) -> tuple[dict[str, str], str]:
    """For the image at `output_url` whose URL answers with `files` (name and width of each): each file's URL by
    its name (a rendition is served beside its main output), and the `srcset` of the image at `served_url`
    (`output_url` unless given: a page may reach the same URL by another way)."""
    files = list(files)
    folder = output_url.rsplit("/", 1)[0]
    return ({name: f"{folder}/{name}" for name, _ in files},
            srcset(output_url if served_url is None else served_url, (width for _, width in files)))
