"""Memory and CPU of a process tree, from /proc, sampled every 0.2 s.

Memory: the summed VmRSS (and PSS, which does not count pages shared after fork twice) of the tree, its peak and
the processes at the peak. CPU: user + system seconds per kind of process (daemon, code server, run worker,
fork server, image processes, ...). An image process lives for milliseconds and is never sampled: its CPU is
read from its parent, the fork server, whose cutime/cstime grow by each child's total when it is reaped.
"""
from __future__ import annotations

import ctypes
import os
import resource
import threading
from pathlib import Path
from typing import Callable

TICK = os.sysconf("SC_CLK_TCK")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def tree(root: int) -> dict[int, int]:
    """`root` and all its descendants, each with its parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = {root: 0}, [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            found[child] = pid
            todo.append(child)
    return found


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # the process ended meanwhile
        pass
    return 0


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        args = [""]
    if not args[0]:
        return "(ended)"
    return " ".join([Path(args[0]).name, *args[1:6]])[:80]


def kind(pid: int, parent_kind: str | None) -> str:
    """What a process of the daemon's tree is, by its command line (or its parent's kind)."""
    if parent_kind in ("fork server", "image processes"):
        return "image processes"
    text = command(pid)
    if "imgpipe.images.fork_server" in text:  # the spare fork server too, a child of the warm run server
        return "fork server"
    if parent_kind == "warm run server":  # a run worker is forked, so it has its server's command line
        return "run worker (steps)"
    if "imgpipe.runs.warm_server" in text:
        return "warm run server"
    if "dagster-daemon" in text:
        return "daemon"
    if "api grpc" in text or "code-server" in text:
        return "code server"
    if "execute_run" in text or "execute_step" in text or "spawn_main" in text:
        return "run worker (steps)"  # a step process of the multiprocess executor
    if text.startswith("tail ") or "dagster/_core/execution/scr" in text:
        return "compute log capture"
    if "imgpipe" in text and " api" in text:
        return "REST API"
    return "other: " + text.split(" ")[0]


def cpu_times(pid: int) -> tuple[float, float, int, int, int] | None:
    """(own user+system s, reaped children's user+system s, own minor faults, reaped children's minor faults,
    start time in ticks: with the pid, what tells a process from a later one that got the same pid)"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    return ((int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK,
            int(fields[7]), int(fields[8]), int(fields[19]))


class TreeMonitor:
    """Samples `processes()` ({pid: parent pid}) every 0.2 s: memory peaks, and CPU seconds by kind of process
    between `start()` and `stop()`. PSS is read every fifth sample only: the kernel walks every page of a process
    to add it up (8 ms of CPU for one of 300 MiB, a few of those in the tree), holding that process's memory map
    all along, which slowed the processes measured."""

    PSS_EVERY = 5

    def __init__(self, processes: Callable[[], dict[int, int]]):
        self.processes = processes
        self._lock = threading.Lock()
        self._reset_memory()
        self.kinds: dict[tuple[int, int], str] = {}  # by (pid, start time)
        self._started: dict[int, int] = {}  # pid -> start time of the process that has it now
        self._cpu: dict[tuple[int, int], tuple] = {}  # (pid, start) -> last (own, children, minflt, cminflt, start)
        self._cpu_start: dict[tuple[int, int], tuple] = {}
        self._live_at_start: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._samples = 0

    def _reset_memory(self) -> None:
        self.peak_rss = self.peak_pss = 0
        self.at_peak: list[dict] = []

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self, with_pss: bool = False) -> None:
        found = self.processes()
        with_pss = with_pss or self._samples % self.PSS_EVERY == 0
        self._samples += 1
        usage = {pid: (_kib(f"/proc/{pid}/status", "VmRSS:"),
                       _kib(f"/proc/{pid}/smaps_rollup", "Pss:") if with_pss else 0) for pid in found}
        rss, pss = (sum(u[i] for u in usage.values()) for i in (0, 1))
        with self._lock:
            for pid, parent in found.items():  # parents before their children
                times = cpu_times(pid)
                if not times:
                    continue
                key = (pid, times[4])
                self._started[pid] = times[4]
                if key not in self.kinds:
                    parent_kind = self.kinds.get((parent, self._started.get(parent, -1)))
                    self.kinds[key] = kind(pid, parent_kind)
                self._cpu[key] = times
            self.peak_pss = max(self.peak_pss, pss)
            if rss > self.peak_rss:
                self.peak_rss = rss
                self.at_peak = [{"pid": pid, "ppid": found[pid], "command": command(pid), "rss_mib": r // 1024,
                                 "pss_mib": p // 1024 if with_pss else None} for pid, (r, p) in usage.items() if r]

    def seen(self, what: str) -> set[tuple[int, int]]:
        """Every process of kind `what` seen so far, by pid and start time."""
        self._sample()
        with self._lock:
            return {key for key, kind_of in self.kinds.items() if kind_of == what}

    def take_peaks(self) -> dict:
        """The memory peaks since the last call (at least the present use), in MiB."""
        self._sample(with_pss=True)
        with self._lock:
            peaks = {"peak_rss_mib": round(self.peak_rss / 1024), "peak_pss_mib": round(self.peak_pss / 1024),
                     "processes_at_peak": self.at_peak}
            self._reset_memory()
        return peaks

    def start_cpu(self) -> None:
        self._sample()
        with self._lock:
            self._cpu_start = dict(self._cpu)
            self._live_at_start = {(pid, self._started.get(pid)) for pid in self.processes()}

    def take_cpu(self) -> dict:
        """CPU seconds by kind of process since `start_cpu()`, and the image processes' minor page faults.

        An image process (a child of the fork server) counts through the server's reaped-children times, plus
        what the live ones have used; a process that ended counts up to its last sample."""
        self._sample()
        with self._lock:
            live = {(pid, self._started.get(pid)) for pid in self.processes()}
            seconds: dict[str, float] = {}
            faults = {"image processes": 0, "fork server": 0}
            for pid, now in self._cpu.items():
                what = self.kinds.get(pid, "?")
                before = self._cpu_start.get(pid, (0.0, 0.0, 0, 0, 0))
                if what == "image processes":
                    if pid in live:  # a pool worker alive now; a reaped one is in its server's children times
                        seconds[what] = seconds.get(what, 0) + now[0] - before[0]
                        faults[what] += now[2] - before[2]
                    elif pid in self._live_at_start:  # reaped since: its whole time is in its server's
                        seconds[what] = seconds.get(what, 0) - before[0]
                        faults[what] -= before[2]
                    continue
                seconds[what] = seconds.get(what, 0) + now[0] - before[0]
                if what == "fork server":
                    seconds["image processes"] = seconds.get("image processes", 0) + now[1] - before[1]
                    faults["image processes"] += now[3] - before[3]
                    faults["fork server"] += now[2] - before[2]
            self._cpu_start = dict(self._cpu)
            self._live_at_start = live
        total = sum(seconds.values())
        return {"cpu_s": {k: round(v, 2) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
                "cpu_total_s": round(total, 2), "minor_faults": faults}

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def this_process_cpu() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def keep_freed_memory() -> None:
    """Has this process's malloc keep the memory it frees, as a warm worker's does, so that the measures in this
    process are of the work and not of faulting in fresh pages for each image's buffers (glibc's dynamic mmap
    threshold would otherwise hand each decode's buffer back to the kernel and fault it in again)."""
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def own_cpu_seconds(pids) -> float:
    """The summed own CPU of `pids` now (e.g. the baseline pool's workers)."""
    return sum(t[0] for t in map(cpu_times, pids) if t)
