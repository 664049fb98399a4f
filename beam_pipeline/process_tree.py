"""CPU seconds and resident memory of a process and its descendants, read from /proc (Linux):
what ``--estimate`` measures its sample run by (the benchmarks use the same readings)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Optional

__all__ = ["PAGE", "TICK", "TreeSampler", "cpu_and_rss", "descendants"]

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from one walk of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """CPU seconds of ``pid`` itself (not its children) and its resident bytes; (0, 0) once
    it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        with open(f"/proc/{pid}/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0.0, 0
    fields = stat[stat.rindex(")") + 2:].split()
    # utime, stime: fields 14-15 of proc(5), 12-13 after the command name.
    return (int(fields[11]) + int(fields[12])) * TICK, rss


class TreeSampler:
    """A thread that samples ``root``'s process tree every ``every`` seconds into ``samples``:
    ``(clock s, tree CPU s, tree RSS bytes, extra())``. A process's last CPU reading is
    kept after it exits, so the CPU column never falls; new descendants are looked for every
    ``scan`` seconds (a walk of /proc costs more than reading the known ones)."""

    def __init__(self, root: int, *, every: float = 0.1, scan: float = 0.25,
                 extra: Optional[Callable[[], object]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.samples: list[tuple[float, float, int, object]] = []
        self.pids: dict[int, float] = {}
        self._root, self._every, self._scan, self._extra = root, every, scan, extra
        self._clock = clock
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        last_scan = 0.0
        while True:
            now = self._clock()
            if now - last_scan >= self._scan:
                for pid in descendants(self._root):
                    self.pids.setdefault(pid, 0.0)
                last_scan = now
            rss = 0
            for pid in list(self.pids):
                cpu, resident = cpu_and_rss(pid)
                if resident:  # alive: otherwise keep its last reading
                    self.pids[pid] = cpu
                    rss += resident
            extra = self._extra() if self._extra else None
            self.samples.append((now, sum(self.pids.values()), rss, extra))
            if self._done.wait(self._every):
                return
