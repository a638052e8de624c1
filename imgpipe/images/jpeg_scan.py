"""Whether a JPEG's entropy-coded data can be what its header says (the image policy's check, contract
section 9).

When libjpeg meets a marker before a scan's entropy-coded data has coded every block, it only warns ("Corrupt
JPEG data: premature end of data segment"), leaves the rest of the scan's blocks at zero and carries on; Pillow's
decoder drops libjpeg's warnings (src/libImaging/JpegDecode.c) and raises only when the data runs out with no
marker at all. So a header may claim 7000x7000 pixels over data for one 8x8 block closed by an EOI, and decode
to a grey image. These checks read the file's own structure instead:

- before decoding, every restart interval of every scan must be there and hold at least the fewest bits that
  can code its blocks: this refuses a header claiming more pixels than its data holds, whatever marker ends it;
- after decoding, the last interval of the last scan, where a file cut short and closed with a marker ends, must
  hold the Huffman codes of all its MCUs. Reading them costs about half a second per MB in Python, so in a
  sequential image it is done only when the last MCU came out mid-grey, as zeros decode (a cut inside the last
  MCU itself, damaging no more than that MCU, goes unseen).

Not checked beyond the bound: a progressive AC refinement scan (its codes depend on every scan before it, and a
cut one lacks only low bits of some coefficients), an interval that ends early inside a file that goes on, and
lossless, hierarchical or arithmetic-coded JPEGs.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, replace

from PIL import Image


_SOF_SEQUENTIAL = frozenset({0xC0, 0xC1})  # baseline and extended sequential, Huffman-coded
_SOF_PROGRESSIVE = 0xC2
# Lossless, hierarchical and arithmetic-coded frames are coded otherwise; their data is not checked here.
_SOF_UNCHECKED = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_DHT, _DRI, _SOS, _EOI = 0xC4, 0xDD, 0xDA, 0xD9
_MAX_EOB_RUN = 32767  # blocks that one progressive end-of-band code can close
# An FF starts a marker unless a 00 follows it: in a scan that is a data byte FF, elsewhere stray bytes, which
# libjpeg skips. FF fill bytes may come before either. (A literal first byte makes the search fast.)
_MARKER = re.compile(rb"\xff\xff*[^\x00\xff]")
_STUFFED_FF = re.compile(rb"\xff+\x00")
# A block of zero coefficients decodes to mid-grey in every component, so to these pixels in Pillow's modes.
_ZERO_PIXELS = {"L": 128, "RGB": (128, 128, 128)}


@dataclass(frozen=True)
class _Frame:
    progressive: bool
    width: int
    height: int
    sampling: dict[int, tuple[int, int]]  # component ID -> horizontal and vertical sampling factor

    @property
    def max_sampling(self) -> tuple[int, int]:
        return max(h for h, _ in self.sampling.values()), max(v for _, v in self.sampling.values())

    def mcu_grid(self) -> tuple[int, int]:
        h_max, v_max = self.max_sampling
        return math.ceil(self.width / (8 * h_max)), math.ceil(self.height / (8 * v_max))

    def block_grid(self, component: int) -> tuple[int, int]:
        """The blocks of one component, as a scan of that component alone codes them (T.81 A.2.2)."""
        (h, v), (h_max, v_max) = self.sampling[component], self.max_sampling
        return math.ceil(math.ceil(self.width * h / h_max) / 8), math.ceil(math.ceil(self.height * v / v_max) / 8)


_HuffmanTable = tuple[bytes, bytes]  # code counts per length 1..16, symbols


@dataclass(frozen=True)
class _Scan:
    units: tuple[tuple[_HuffmanTable | None, _HuffmanTable | None], ...]  # each block of an MCU: DC, AC table
    mcus: int
    restart_interval: int  # MCUs per interval; 0: the scan is one interval
    spectral_start: int
    spectral_end: int
    refines: bool  # a successive-approximation refinement (Ah > 0)
    every_component: bool
    intervals: tuple[tuple[int, int], ...] = ()  # where the entropy-coded data of each restart interval lies

    def interval_sizes(self) -> list[int]:
        """The MCUs in each restart interval."""
        size = self.restart_interval or max(self.mcus, 1)
        return [min(size, self.mcus - start) for start in range(0, self.mcus, size)]


@dataclass(frozen=True)
class ScanData:
    data: bytes  # the whole file, as stuffed: an interval is unstuffed only when its codes are read
    frame: _Frame
    scans: list[_Scan]

    def unstuffed(self, interval: tuple[int, int]) -> bytes:
        return _unstuffed(self.data[interval[0]:interval[1]])


def check_scan_lengths(scan_data: ScanData) -> None:
    """Before decoding: every restart interval of every scan is there, with at least the fewest bits its blocks
    can be coded in. Refuses a header that claims far more pixels than its data can hold, without decoding them."""
    for scan in scan_data.scans:
        sizes = scan.interval_sizes()
        if len(scan.intervals) < len(sizes):  # a file cut and closed with a marker lacks the intervals after the cut
            raise _ends_early()
        for mcus, (start, end) in zip(sizes, scan.intervals):
            fewest = _fewest_bits(scan_data.frame, scan, mcus)
            # Unstuffing removes at most one byte per FF, so the raw length less its FFs is a lower bound, and
            # enough for any real image; only an interval that falls short of it is unstuffed and measured.
            if ((end - start - scan_data.data.count(b"\xff", start, end)) * 8 < fewest
                    and len(scan_data.unstuffed((start, end))) * 8 < fewest):
                raise _ends_early()


def check_where_it_ends(scan_data: ScanData, image: Image.Image) -> None:
    """After decoding into `image`: the last interval of the last scan, where a file cut and closed with a marker
    ends, holds the codes of every one of its MCUs."""
    frame, last = scan_data.frame, scan_data.scans[-1]
    sizes = last.interval_sizes()
    if sizes and _worth_decoding(frame, last, image) and not _codes_fit(
            frame, last, sizes[-1], scan_data.unstuffed(last.intervals[len(sizes) - 1])):
        raise _ends_early()


class CorruptScanData(ValueError):
    """The JPEG's entropy-coded data cannot be what its header says; Pillow reports it as a corrupt image."""


def _ends_early() -> CorruptScanData:
    return CorruptScanData("the JPEG data ends before the image is complete")


def read_scan_data(data: bytes) -> ScanData | None:
    """The frame and scans of the first image in `data`, up to its EOI (what follows, such as an MPO's further
    frames, is not its data); None for a kind of JPEG not checked here. Where libjpeg would refuse the structure,
    it already has, while Pillow opened the file or will while it decodes."""
    frame, scans, tables, restart_interval = None, [], {}, 0
    position = 2  # after SOI
    while True:
        marker, position = _next_marker(data, position)
        if marker is not None and not (0xD0 <= marker <= 0xD7 or marker in (0x01, _EOI)):  # those have no segment
            length = int.from_bytes(data[position:position + 2], "big")
            if length < 2 or position + length > len(data):  # cut inside a segment: libjpeg never got past it
                marker = None
            segment, position = data[position + 2:position + length], position + length
        if marker is None or marker == _EOI:
            return ScanData(data, frame, scans) if frame is not None and scans else None
        if marker in _SOF_UNCHECKED:
            return None
        if marker in _SOF_SEQUENTIAL or marker == _SOF_PROGRESSIVE:
            frame = frame or _frame(marker, segment)  # libjpeg refuses a second one
        elif marker == _DHT:
            tables.update(_huffman_tables(segment))
        elif marker == _DRI:
            restart_interval = int.from_bytes(segment[:2], "big")
        elif marker == _SOS:
            scan = _scan(frame, segment, tables, restart_interval) if frame else None
            if scan is None:
                return None
            intervals, position = _entropy_coded_data(data, position)
            scans.append(replace(scan, intervals=intervals))


def _next_marker(data: bytes, position: int) -> tuple[int | None, int]:
    """The next marker's code and the position after it."""
    marker = _MARKER.search(data, position)
    return (data[marker.end() - 1], marker.end()) if marker else (None, len(data))


def _entropy_coded_data(data: bytes, position: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """Where one scan's data from `position` lies, split at its restart markers, and where the marker that ends
    it starts."""
    intervals = []
    for marker in _MARKER.finditer(data, position):
        intervals.append((position, marker.start()))
        if not 0xD0 <= data[marker.end() - 1] <= 0xD7:  # not RSTn, which starts the next restart interval
            return tuple(intervals), marker.start()
        position = marker.end()
    intervals.append((position, len(data)))
    return tuple(intervals), len(data)


def _unstuffed(data: bytes) -> bytes:
    # FF 00 is a data byte FF. Fill bytes before it are unusual, and need the slower regular expression.
    return _STUFFED_FF.sub(b"\xff", data) if b"\xff\xff" in data else data.replace(b"\xff\x00", b"\xff")


def _frame(marker: int, segment: bytes) -> _Frame:
    height, width, count = struct.unpack_from(">HHB", segment, 1)
    sampling = {segment[6 + 3 * i]: (segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(count)}
    return _Frame(marker == _SOF_PROGRESSIVE, width, height, sampling)


def _huffman_tables(segment: bytes) -> dict[int, _HuffmanTable]:
    """By class (0 DC, 1 AC) << 4 | ID, as a scan's selectors name them."""
    tables, position = {}, 0
    while position < len(segment):
        counts = segment[position + 1:position + 17]
        end = position + 17 + sum(counts)
        tables[segment[position]] = (bytes(counts), bytes(segment[position + 17:end]))
        position = end
    return tables


def _scan(frame: _Frame, segment: bytes, tables: dict[int, _HuffmanTable], restart_interval: int) -> _Scan | None:
    """The scan an SOS header starts, without its data yet; None when it names a component the frame lacks."""
    count = segment[0]
    members = [(segment[1 + 2 * i], segment[2 + 2 * i]) for i in range(count)]
    if not members or any(component not in frame.sampling for component, _ in members):
        return None
    spectral_start, spectral_end, approximation = segment[1 + 2 * count:4 + 2 * count]
    if count == 1:  # one component alone: each MCU is one of its blocks
        columns, rows = frame.block_grid(members[0][0])
        units = [(tables.get(members[0][1] >> 4), tables.get(0x10 | members[0][1] & 15))]
    else:
        columns, rows = frame.mcu_grid()
        units = []
        for component, selectors in members:
            h, v = frame.sampling[component]
            units += [(tables.get(selectors >> 4), tables.get(0x10 | selectors & 15))] * (h * v)
    if not frame.progressive:  # libjpeg decodes every coefficient of a sequential scan, whatever it says
        spectral_start, spectral_end, approximation = 0, 63, 0
    return _Scan(tuple(units), columns * rows, restart_interval, spectral_start, spectral_end,
                 frame.progressive and approximation >> 4 > 0, count == len(frame.sampling))


def _shortest_code(table: _HuffmanTable | None) -> int:
    counts = table[0] if table else b""
    return next((length for length, count in enumerate(counts, 1) if count), 0)


def _fewest_bits(frame: _Frame, scan: _Scan, mcus: int) -> int:
    """The fewest bits in which any encoder can code `mcus` MCUs of `scan`: no Huffman code is shorter than its
    table's shortest. A sequential block takes a DC and an AC code (an end of block, at least), a progressive
    DC scan a code or, refining, one bit per block, and a progressive AC scan a code per 32767 blocks."""
    if scan.spectral_start > 0:
        return math.ceil(mcus / _MAX_EOB_RUN) * _shortest_code(scan.units[0][1])
    if frame.progressive:
        return mcus * (len(scan.units) if scan.refines else sum(_shortest_code(dc) for dc, _ in scan.units))
    return mcus * sum(_shortest_code(dc) + _shortest_code(ac) for dc, ac in scan.units)


def _worth_decoding(frame: _Frame, scan: _Scan, image: Image.Image) -> bool:
    """Whether the last interval of the last scan must have its codes read to tell whether it ends early.

    A refinement scan is left to the bound above: a DC one has exactly one bit per block, and an AC one's codes
    depend on every scan before it. A sequential scan of the whole image that ended early leaves its last MCUs
    zero, which decode to mid-grey; so the codes are read only when the last MCU is grey (or cannot be seen).
    """
    if scan.refines:
        return False
    zero = _ZERO_PIXELS.get(image.mode)
    if frame.progressive or not scan.every_component or zero is None:
        return True
    (columns, rows), (h_max, v_max) = frame.mcu_grid(), frame.max_sampling
    # Upsampled chroma blends in the neighbouring MCUs' samples at an MCU's first row and column: this pixel
    # depends on the last MCU alone.
    x = (columns - 1) * 8 * h_max + (h_max > 1)
    y = (rows - 1) * 8 * v_max + (v_max > 1)
    return x >= image.width or y >= image.height or image.getpixel((x, y)) == zero


def _codes_fit(frame: _Frame, scan: _Scan, mcus: int, interval: bytes) -> bool:
    """Whether `interval` holds the Huffman codes of `mcus` MCUs of a first (not refining) scan."""
    # A table the scan uses but no DHT defined makes libjpeg refuse the file: nothing was decoded to check.
    if scan.spectral_start > 0:
        ac = scan.units[0][1]
        return ac is None or _ac_codes_fit(interval, _decoding_table(*ac), mcus, scan.spectral_start,
                                           scan.spectral_end)
    if any(dc is None or (ac is None and not frame.progressive) for dc, ac in scan.units):
        return True
    units = [(_decoding_table(*dc), None if frame.progressive else _decoding_table(*ac)) for dc, ac in scan.units]
    return _block_codes_fit(interval, units, mcus)


def _decoding_table(counts: bytes, symbols: bytes) -> list[tuple[int, int] | None]:
    """Every 16-bit window of the data -> (length, symbol) of the code it starts with; None: no code does."""
    table: list[tuple[int, int] | None] = [None] * 65536
    code = index = 0
    for length, count in enumerate(counts, 1):
        for _ in range(count):
            if index >= len(symbols) or code >= 1 << length:
                raise SyntaxError("bad Huffman table")  # libjpeg refuses it too
            start, span = code << (16 - length), 1 << (16 - length)
            table[start:start + span] = [(length, symbols[index])] * span
            code, index = code + 1, index + 1
        code <<= 1
    return table


def _bad_code() -> CorruptScanData:
    return CorruptScanData("the JPEG data holds an invalid Huffman code")


def _block_codes_fit(interval: bytes, units: list, mcus: int) -> bool:
    """Sequential blocks (a DC code, then AC codes up to an end of block or the 63rd coefficient), or
    progressive DC blocks (`units` without AC tables): whether `interval` holds `mcus` MCUs of them.
    Only code lengths and magnitude sizes matter, so no coefficient is computed."""
    limit, data, from_bytes = len(interval) * 8, interval + bytes(3), int.from_bytes
    position = 0
    for _ in range(mcus):
        for dc, ac in units:
            # The 16 bits from `position`; past the end they are zero, as libjpeg pads, and start a valid code.
            entry = dc[from_bytes(data[position >> 3:(position >> 3) + 3]) >> (8 - (position & 7)) & 0xFFFF]
            if entry is None:
                raise _bad_code()
            position += entry[0] + entry[1]
            coefficient = 1
            while ac is not None and coefficient < 64:
                entry = ac[from_bytes(data[position >> 3:(position >> 3) + 3]) >> (8 - (position & 7)) & 0xFFFF]
                if entry is None:
                    raise _bad_code()
                length, run_size = entry
                position += length + (run_size & 15)
                if run_size == 0:  # end of block
                    break
                coefficient += (run_size >> 4) + 1
            if position > limit:
                return False
    return True


def _ac_codes_fit(interval: bytes, ac: list, blocks: int, start: int, end: int) -> bool:
    """A progressive first AC scan of one component: whether `interval` holds `blocks` blocks' codes for the
    band start..end, with end-of-band runs (EOBn) closing many blocks at once."""
    limit, data, from_bytes = len(interval) * 8, interval + bytes(3), int.from_bytes
    position = run = 0
    for _ in range(blocks):
        if run:
            run -= 1
            continue
        coefficient = start
        while coefficient <= end:
            entry = ac[from_bytes(data[position >> 3:(position >> 3) + 3]) >> (8 - (position & 7)) & 0xFFFF]
            if entry is None:
                raise _bad_code()
            length, run_size = entry
            position += length
            zeros, size = run_size >> 4, run_size & 15
            if size:
                position += size
                coefficient += zeros + 1
            elif zeros == 15:  # ZRL: sixteen zero coefficients
                coefficient += 16
            else:  # EOBn: this block and 2**n - 1 + (n more bits) blocks after it end here
                window = from_bytes(data[position >> 3:(position >> 3) + 3])
                run = (1 << zeros) - 1 + (window >> (24 - (position & 7) - zeros) & ((1 << zeros) - 1))
                position += zeros
                break
        if position > limit:
            return False
    return True
