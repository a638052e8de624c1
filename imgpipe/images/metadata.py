"""An image file without its EXIF and XMP, losslessly: the same compressed pixels, the ICC profile kept.

Used when the half-quality encode is not smaller than the input (a small PNG logo, a JPEG saved at low
quality): the input itself is then the output, and it must not carry what the encode would have dropped (GPS
positions, camera serials, editing history). Pure byte surgery on the container, no decoding: JPEG (and MPO,
reduced to its first image), PNG, GIF and WebP. BMP has no such metadata. Other formats give None.
"""
from __future__ import annotations

import re
import struct

# JPEG segments that carry metadata: APP1 (Exif, XMP, extended XMP), APP2 holding an MPO's index (its other
# images are cut off), APP13 (Photoshop: IPTC, which can hold places too), COM (free text).
_JPEG_DROPPED_APP1_TO_APP15 = {0xE1, 0xED}
_MPF = b"MPF\x00"
_COM = 0xFE
_SOS = 0xDA
# A regular expression finds it in entropy-coded data, where FF is frequent, faster than bytes.find.
_JPEG_EOI = re.compile(rb"\xff\xd9")
# PNG chunks of text or EXIF; XMP travels in an iTXt chunk. Everything else (iCCP, gAMA, pixels) is kept.
_PNG_DROPPED = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The only GIF application extension kept: the loop count.
_GIF_LOOP_APPLICATIONS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")
_WEBP_DROPPED = {b"EXIF", b"XMP "}
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


class MalformedContainer(ValueError):
    """The file does not have the structure its format needs; nothing is kept of it."""


def strip_metadata(data: bytes, image_format: str, orientation: int = 1) -> bytes | None:
    """`data` (of `image_format`, as Pillow names it) without EXIF and XMP; None for a format not handled.
    A JPEG shown rotated (`orientation` other than 1) keeps a minimal EXIF holding that one tag, so that it is
    not shown askew."""
    if image_format in ("JPEG", "MPO"):
        return _strip_jpeg(data, orientation)
    if image_format == "PNG":
        return _strip_png(data)
    if image_format == "GIF":
        return _strip_gif(data)
    if image_format == "WEBP":
        return _strip_webp(data)
    if image_format == "BMP":
        return data
    return None


def _strip_jpeg(data: bytes, orientation: int) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise MalformedContainer("not a JPEG")
    kept = [b"\xff\xd8"]
    if orientation != 1:
        kept.append(_orientation_app1(orientation))
    position = 2
    while True:
        if position + 4 > len(data) or data[position] != 0xFF:
            raise MalformedContainer("JPEG segments end early")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        end = position + 2 + length
        if marker == _SOS:
            # The entropy-coded data of the first image, up to its EOI (an FF D9 cannot occur inside it);
            # an MPO's further images and anything appended after are not kept.
            eoi = _JPEG_EOI.search(data, end)
            if eoi is None:
                raise MalformedContainer("JPEG without an end of image")
            kept.append(data[position:eoi.end()])
            return b"".join(kept)
        segment = data[position:end]
        dropped = (marker in _JPEG_DROPPED_APP1_TO_APP15 or marker == _COM
                   or (marker == 0xE2 and segment[4:8] == _MPF))
        if not dropped:
            kept.append(segment)
        position = end


def _orientation_app1(orientation: int) -> bytes:
    """An Exif APP1 segment with the Orientation tag alone (big-endian TIFF, one IFD of one entry)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise MalformedContainer("not a PNG")
    kept, position = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while position < len(data):
        if position + 12 > len(data):
            raise MalformedContainer("PNG chunks end early")
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if kind not in _PNG_DROPPED:
            kept.append(data[position:end])
        position = end
        if kind == b"IEND":
            return b"".join(kept)
    raise MalformedContainer("PNG without IEND")


def _strip_gif(data: bytes) -> bytes:
    if data[:6] not in (b"GIF87a", b"GIF89a") or len(data) < 13:
        raise MalformedContainer("not a GIF")
    flags = data[10]
    position = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    kept = [data[:position]]
    while position < len(data):
        introducer = data[position]
        if introducer == 0x3B:  # trailer
            kept.append(b"\x3b")
            return b"".join(kept)
        if introducer == 0x21:  # extension: label, then sub-blocks
            label = data[position + 1]
            end = _after_sub_blocks(data, position + 2)
            block = data[position:end]
            application = data[position + 3:position + 14] if label == 0xFF else None
            comment = label == 0xFE
            if not comment and (application is None or application in _GIF_LOOP_APPLICATIONS):
                kept.append(block)
            position = end
        elif introducer == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            local = data[position + 9]
            start = position + 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            end = _after_sub_blocks(data, start + 1)
            kept.append(data[position:end])
            position = end
        else:
            raise MalformedContainer(f"GIF block 0x{introducer:02x}")
    raise MalformedContainer("GIF without a trailer")


def _after_sub_blocks(data: bytes, position: int) -> int:
    while True:
        if position >= len(data):
            raise MalformedContainer("GIF data ends early")
        size = data[position]
        position += 1 + size
        if size == 0:
            return position


def _strip_webp(data: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedContainer("not a WebP")
    chunks, position = [], 12
    while position + 8 <= len(data):
        kind = data[position:position + 4]
        (size,) = struct.unpack_from("<I", data, position + 4)
        end = position + 8 + size + (size & 1)  # chunks are padded to an even size
        if kind not in _WEBP_DROPPED:
            chunk = data[position:end]
            if kind == b"VP8X":  # the flags say which chunks follow
                chunk = chunk[:8] + bytes([chunk[8] & ~(_VP8X_EXIF | _VP8X_XMP) & 0xFF]) + chunk[9:]
            chunks.append(chunk)
        position = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body

