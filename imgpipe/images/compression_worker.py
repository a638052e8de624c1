"""A child of the fork server (`imgpipe.images.fork_server`): it decodes and encodes an image, or, as a pool worker
(IMGPIPE_ISOLATION=pool), up to `recycle` images one after another, each under the same memory cap.

It may use only so much more memory than it started with (RLIMIT_AS), so that a decoder's memory blow-up fails
that one image; it dies with the server, which kills it when it overruns its time.
"""
from __future__ import annotations

import gc
import os
import pickle
import resource
from typing import Callable, NoReturn

from imgpipe.images.fork_server_protocol import FRAME_LENGTH, FrameReader, import_work, write_all
from imgpipe.images.image_policy import CompressedImage, ImageRejected
from imgpipe.images.renditions import RenditionSpec
from imgpipe.lifetime import die_with_parent, libc

MIB = 1024 * 1024  # not imported from imgpipe.settings: the server's heap stays without pydantic

# A child's codec buffers (a decoded photograph, an encoder's coefficients: megabytes each) come from the top of
# the heap, which malloc grows in 2 MiB steps advised for transparent huge pages, rather than from mmap regions of
# their own, which are not 2 MiB-aligned and so fault in mostly one 4 KiB page at a time; and what a child frees
# stays in its heap for the next buffer (a pool worker's next image) instead of going back to the kernel.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_HEAP_BUFFERS_UP_TO = 32 * MIB  # glibc's largest mmap threshold
_HEAP_KEPT_FREE = 64 * MIB


def worker_main(job_fd: int, answer_fd: int, inherited: list[int], works: dict[str, Callable],
                server: int) -> NoReturn:
    # os._exit in every case: the child must never return into the server's loop, nor run exit handlers.
    exit_code = 1
    try:
        for fd in inherited:
            os.close(fd)
        # Nothing a decoder prints may land in the server's answer stream or read its requests.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        die_with_parent(server)  # no spare or runaway image outlives the server
        _buffers_from_the_heap()
        empty_size = _address_space()
        jobs = FrameReader(job_fd)
        done, limit = 0, 1
        while done < limit:
            header, data = _next_frame(jobs), _next_frame(jobs)
            if data is None:
                break  # the server went away
            _, work, max_pixels, max_frames, _, memory_bytes, _, recycle, _, renditions = pickle.loads(header)
            if done == 0:
                limit = recycle
                if limit == 1:
                    gc.disable()  # one image: no cycle worth collecting, and no shared page touched by the collector
            # What it may add to its size with its job in hand; for a pool worker, to its size as a spare (with
            # this job), so that memory kept from earlier images counts too and the same cap holds for all.
            _limit_address_space(min(_address_space(), empty_size + 3 * len(data)) + memory_bytes)
            function = works.get(work) or works.setdefault(work, import_work(work))
            result, healthy = _compress_or_explain(function, data, max_pixels, max_frames, memory_bytes, renditions)
            del data
            answer = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            done += 1
            # A worker that met a bug or ran out of memory is replaced; the flag tells the server it is leaving.
            last = done >= limit or not healthy
            write_all(answer_fd, FRAME_LENGTH.pack(1 + len(answer)), b"\x01" if last else b"\x00", answer)
            if last:
                break
        exit_code = 0
    finally:
        os._exit(exit_code)


def _next_frame(reader: FrameReader) -> bytes | None:
    while True:
        for payload in reader.frames():
            return payload
        if not reader.read_available():
            return None


def _compress_or_explain(function: Callable, data: bytes, max_pixels: int, max_frames: int, memory_bytes: int,
                         renditions: RenditionSpec | None) -> tuple[CompressedImage | str, bool]:
    """The result, and whether the process is fit for another image."""
    try:
        return function(data, max_pixels=max_pixels, max_frames=max_frames, renditions=renditions), True
    except ImageRejected as exc:
        return str(exc), True
    except MemoryError:
        return f"out of memory: the image needs more than {memory_bytes // MIB} MiB", False
    except Exception as exc:  # a bug or an unforeseen decoder error: still this image's failure alone
        return f"compression failed: {type(exc).__name__}: {exc}", False


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_address_space(limit: int) -> None:
    # Relative to the process's own size when it was forked (plus its job), which varies a little.
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _buffers_from_the_heap() -> None:
    # The C library as `imgpipe.lifetime` loaded it, in the server, before the first fork: a child calls it only.
    libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BUFFERS_UP_TO)
    libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEPT_FREE)
