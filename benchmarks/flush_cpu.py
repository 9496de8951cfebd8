#!/usr/bin/env python3
"""The redo log's durable write alone, through the page cache and around it (O_DIRECT): wall time and CPU per
record on this machine's disk, in alternating rounds (a benchmark: it prints numbers, it asserts nothing).

    .venv/bin/python benchmarks/flush_cpu.py [--dir DIR] [--records 3000] [--rounds 3]

Each way writes a 300-byte record into preallocated blocks of a 2 MiB file (as bridge/store/redo.py does: real
blocks, so a flush changes no metadata) and flushes it, then moves on to the next block:

* ``page cache``: ``pwrite`` of the record, then ``fdatasync`` (the log before 2026-12-05, and still the fallback);
* ``O_DIRECT``: ``pwrite`` of the whole 4 KiB block from an aligned buffer, then ``fdatasync`` (the log now);
* ``O_DIRECT|O_DSYNC``: the same block written with O_DSYNC, no separate flush (one system call).

DIR defaults to the current directory: run it on the disk the store lives on.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

SIZE = 2 << 20
BLOCK = 4096


def _prepare(path: Path, flags: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, bytes(SIZE), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return os.open(path, os.O_RDWR | flags)


def _measure(path: Path, flags: int, write: Callable[[int, int], None], records: int) -> tuple[float, float, float]:
    """Wall, user and system microseconds per record."""
    fd = _prepare(path, flags)
    try:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        at = 0
        for _ in range(records):
            write(fd, at)
            at = (at + BLOCK) % SIZE
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
    return (1e6 * wall / records, 1e6 * (after.ru_utime - before.ru_utime) / records,
            1e6 * (after.ru_stime - before.ru_stime) / records)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=".", help="where to write the scratch file (the store's disk)")
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    path = Path(args.dir) / ".flush_cpu.scratch"
    record = os.urandom(300)
    block = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    block[: len(record)] = record
    direct = getattr(os, "O_DIRECT", 0)

    def cached(fd: int, at: int) -> None:
        os.pwrite(fd, record, at)
        os.fdatasync(fd)

    def around(fd: int, at: int) -> None:
        os.pwrite(fd, block, at)
        os.fdatasync(fd)

    def dsync(fd: int, at: int) -> None:
        os.pwrite(fd, block, at)

    ways: list[tuple[str, int, Callable[[int, int], None]]] = [("page cache", 0, cached)]
    if direct:
        ways += [("O_DIRECT", direct, around), ("O_DIRECT|O_DSYNC", direct | os.O_DSYNC, dsync)]
    else:
        print("this system has no O_DIRECT: the page cache only")
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in ways}
    try:
        for _ in range(args.rounds):
            for name, flags, write in ways:
                try:
                    results[name].append(_measure(path, flags, write, args.records))
                except OSError as exc:  # a file system that refuses O_DIRECT (EINVAL)
                    print(f"{name}: {exc}")
    finally:
        path.unlink(missing_ok=True)
    print(f"{args.records} records per round, {args.rounds} rounds, in {Path(args.dir).resolve()}; "
          "median round, us per record:")
    print(f"{'way':18} {'wall':>7} {'user':>6} {'system':>7}")
    for name, rows in results.items():
        if rows:
            wall, user, system = sorted(rows)[len(rows) // 2]
            print(f"{name:18} {wall:7.1f} {user:6.1f} {system:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
