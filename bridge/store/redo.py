"""The redo log in front of the SQLite store: a commit is one append and one fdatasync.

A SQLite WAL transaction with synchronous=FULL costs this machine about twice the CPU and wall time of the bare
write and flush under it (docs/BENCHMARKS.md): the B-tree, the WAL frames and index, and the file locks. So a
batch of changes is first made durable here, as one record appended to a log file, and applied to the SQLite file
later, many batches in one transaction (bridge.store.sqlite). Each application records, in the same transaction,
the sequence number of the last record it holds; a record is needed until then.

The log is two files, ``<db>.redo.0`` and ``<db>.redo.1``, written in turn from their start: a file is reused when
every record in it is applied. A record is::

    crc32 (4 bytes, over the rest) | length of the payload (4) | sequence number (8) | payload (CBOR)

all little-endian, at the offset where the previous one ended. Sequence numbers grow by one per record and never
restart, so reading a file from its start gives its current records: the first record that is torn (its CRC fails),
or whose number does not follow the one before, is where the old content begins. Recovery takes the records
numbered above the database's mark from both files; they must run on from the mark without a gap, and the first
gap ends them (only a power loss with synchronous=NORMAL, which never flushes the log, can make one).

The files are written over, never appended to past their end while they have room: overwriting allocated blocks
lets fdatasync skip the file system's metadata (the file's size), which is half the cost of a flush here.

When every record is flushed (synchronous FULL or EXTRA) and the file system allows it, records are written with
O_DIRECT: the 4 KiB blocks from the one the record starts in to the one it ends in, from an aligned buffer that
keeps the tail of the last block (the records before it in that block are written again, unchanged; the rest of the
block is zeros). The page cache is skipped, and so is the kernel's write-back of the page before the flush: on this
VM a write and flush took 109 us of wall time and 43 us of system CPU against 123 and 57 through the page cache
(benchmarks/flush_cpu.py, docs/BENCHMARKS.md). Where O_DIRECT is refused (some FUSE file systems, other systems)
the log writes through the page cache as before.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cbor2

from bridge import faults
from bridge.store.base import Change, SessionWrite

__all__ = ["LogReader", "RedoLog", "decode", "encode", "read_records"]

_HEAD = struct.Struct("<IIQ")  # crc, payload length, sequence number
_SEQ = struct.Struct("<IQ")  # what the crc covers before the payload: the header after the crc
FILE_BYTES = 2 << 20  # each file is written full of zeros to this size once (grown when a batch is larger)
SWITCH_AT = 1 << 20  # past this offset the next record goes to the other file, once every record there is applied
DIRECT = getattr(os, "O_DIRECT", 0)  # 0: never write around the page cache (a system without O_DIRECT)
BLOCK = 4096  # what direct writes are aligned to: a multiple of any disk's logical block size
BUFFER = 64 << 10  # the direct writes' buffer; a larger record gets a larger one for as long as it is written


def encode(changes: Sequence[Change]) -> bytes:
    """A batch as the CBOR payload of one record: per change, a flat array (readable without this module)."""
    return cbor2.dumps([
        [c.ca, c.state, c.device, c.epoch, c.dedup, c.dedup_floors,
         [[sid, w.meta, w.notes, w.note_floor, w.purge] for sid, w in c.sessions.items()] if c.sessions else None]
        for c in changes
    ])


def decode(payload: bytes) -> list[Change]:
    """The batch a record holds."""
    changes = []
    for ca, state, device, epoch, dedup, floors, sessions in cbor2.loads(payload):
        change = Change(ca, state, {}, [tuple(d) for d in dedup], floors, epoch, device)
        for sid, meta, notes, note_floor, purge in sessions or ():
            change.sessions[sid] = SessionWrite(meta, [(seq, blob) for seq, blob in notes], note_floor, purge)
        changes.append(change)
    return changes


def _scan(data: bytes) -> list[tuple[int, int, int]]:
    """The current records of one file's content, in order: (sequence number, payload start, payload end)."""
    found: list[tuple[int, int, int]] = []
    at, size, view = 0, len(data), memoryview(data)
    while at + _HEAD.size <= size:
        crc, length, seq = _HEAD.unpack_from(data, at)
        start = at + _HEAD.size
        end = start + length
        if (length == 0 or end > size or (found and seq != found[-1][0] + 1)
                or zlib.crc32(view[start:end], zlib.crc32(view[at + 4:start])) != crc):
            break
        found.append((seq, start, end))
        at = end
    return found


def read_records(base: Path, after: int) -> tuple[list[tuple[int, list[Change]]], int, bool]:
    """The records of the log at ``base`` numbered above ``after``, decoded and in order.

    Returns them, the highest sequence number found in either file (whether or not it is used), and whether a gap
    cut them short. A missing file counts as empty. Only reads: tools use it beside a running bridge.
    """
    records: list[tuple[int, int, int, bytes]] = []
    highest = after
    for path in _paths(base):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        scanned = _scan(data)
        if scanned:
            highest = max(highest, scanned[-1][0])
        records.extend((seq, start, end, data) for seq, start, end in scanned if seq > after)
    records.sort(key=lambda r: r[0])
    out: list[tuple[int, list[Change]]] = []
    expect = after + 1
    for seq, start, end, data in records:
        if seq != expect:
            return out, highest, True
        out.append((seq, decode(data[start:end])))
        expect += 1
    return out, highest, False


class LogReader:
    """read_records for a tool that loads CA after CA (``ca-bridge migrate``): the files are read again only when
    the mark or one of them changed since the last read, so a stopped bridge's log is read once, and a running
    one's whenever it moved on."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._key: tuple[Any, ...] | None = None
        self._gap = False
        self._by_ca: dict[str, list[Change]] = {}

    def read(self, after: int) -> tuple[dict[str, list[Change]], bool]:
        """The changes of the records numbered above ``after`` by CA, in order, and whether a gap cut them short
        (the same lists as last time when nothing changed: do not modify them)."""
        key = (after, *(_stamp(p) for p in _paths(self.base)))  # taken before the read: a later write changes it
        if key != self._key:
            records, _, self._gap = read_records(self.base, after)
            self._by_ca = {}
            for _, batch in records:
                for change in batch:
                    self._by_ca.setdefault(change.ca, []).append(change)
            self._key = key
        return self._by_ca, self._gap


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _written(done: int, wanted: int) -> None:
    """A write to a regular file that wrote less than asked (a file system out of its usual ways): a failure."""
    if done != wanted:
        raise OSError(errno.EIO, f"short write: {done} of {wanted} bytes")


def _paths(base: Path) -> tuple[Path, Path]:
    return base.with_name(base.name + ".redo.0"), base.with_name(base.name + ".redo.1")


class RedoLog:
    """The writing end: one thread at a time appends (bridge.store.sqlite serialises them)."""

    def __init__(self, base: Path, *, flush: bool) -> None:
        self.base = base
        self.flush = flush  # fdatasync every record (synchronous FULL or EXTRA); NORMAL leaves it to the kernel
        self.paths = _paths(base)
        self._fds: list[int] = []
        self._sizes = [0, 0]
        self._last = [0, 0]  # the highest sequence number written to each file since it was last started
        self._file = 0  # the file being written
        self._offset = 0
        self.seq = 0  # the last sequence number written
        self.applied = 0  # every record up to this one is in the database (durably): its file may be reused
        # Direct writes (module doc): a second descriptor of each file opened with O_DIRECT, and an aligned buffer
        # whose start holds the file's bytes from the block the next record starts in up to that record
        self._direct: list[int] = []
        self._buffer: mmap.mmap | None = None

    @property
    def direct(self) -> bool:
        """Whether records are written around the page cache (O_DIRECT)."""
        return bool(self._direct)

    def start(self, after: int) -> None:
        """Open both files for writing, the next record numbered ``after + 1``; everything up to ``after`` must be
        applied already (the caller recovered the log first), so writing starts over at the first file."""
        for path in self.paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            self._fds.append(fd)
        for i, fd in enumerate(self._fds):
            self._sizes[i] = os.fstat(fd).st_size
            if self._sizes[i] < FILE_BYTES:
                self._grow(i, max(FILE_BYTES, BLOCK))
        self.seq = self.applied = after
        self._last = [after, after]
        if self.flush and DIRECT:
            self._open_direct()
        self.clear()

    def _open_direct(self) -> None:
        """Open the files for direct writes and try one on each (a block of zeros at the start, which clear() wipes
        anyway); a file system that refuses leaves the log on the page cache."""
        buffer = mmap.mmap(-1, BUFFER)  # page-aligned, zeros
        try:
            for path in self.paths:
                self._direct.append(os.open(path, os.O_RDWR | DIRECT | getattr(os, "O_CLOEXEC", 0)))
                os.pwrite(self._direct[-1], memoryview(buffer)[:BLOCK], 0)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            for fd in self._direct:
                os.close(fd)
            self._direct.clear()
            buffer.close()
            return
        self._buffer = buffer

    def clear(self) -> None:
        """Start over at the first file, wiping the head of both so that nothing is read back: every record must
        be applied (at the start, and at a clean stop)."""
        self._file, self._offset = 0, 0
        self._wipe_head(0)
        self._wipe_head(1)

    def _wipe_head(self, i: int) -> None:
        os.pwrite(self._fds[i], bytes(_HEAD.size), 0)
        os.fdatasync(self._fds[i])

    def _grow(self, i: int, size: int) -> None:
        """Write zeros up to ``size`` (real blocks, not a hole: a later overwrite changes no metadata) and flush."""
        fd, have = self._fds[i], self._sizes[i]
        chunk = bytes(1 << 20)
        while have < size:
            n = os.pwrite(fd, chunk[:min(len(chunk), size - have)], have)
            have += n
        os.fsync(fd)
        self._sizes[i] = have

    def append(self, changes: Sequence[Change]) -> int:
        """Make a batch durable as the next record; returns its sequence number. On an error nothing counts as
        written: its header is wiped (best effort) and the next record takes the same place and number."""
        payload = encode(changes)
        seq = self.seq + 1
        record = _HEAD.pack(zlib.crc32(payload, zlib.crc32(_SEQ.pack(len(payload), seq))), len(payload), seq) + payload
        if self._offset + len(record) > SWITCH_AT:
            other = 1 - self._file
            if self._last[other] <= self.applied:
                self._file, self._offset = other, 0
        i = self._file
        if self._direct:
            self._append_direct(i, record)
        else:
            end = self._offset + len(record)
            if end > self._sizes[i]:
                self._grow(i, end + FILE_BYTES)
            fd = self._fds[i]
            try:
                _written(os.pwrite(fd, record, self._offset), len(record))
                faults.hit("in_commit")
                if self.flush:
                    os.fdatasync(fd)
            except BaseException:
                with contextlib.suppress(OSError):  # the batch failed: its record must not be read back after a crash
                    os.pwrite(fd, bytes(_HEAD.size), self._offset)
                raise
        self._offset += len(record)
        self._last[i] = self.seq = seq
        return seq

    def _append_direct(self, i: int, record: bytes) -> None:
        """Write and flush ``record`` at the current offset of file ``i`` around the page cache (module doc)."""
        buffer = self._buffer
        assert buffer is not None
        at = self._offset & -BLOCK  # the block the record starts in ...
        kept = self._offset - at  # ... holds this many bytes of earlier records, which the buffer starts with
        end = kept + len(record)
        size = -(-end // BLOCK) * BLOCK  # whole blocks
        if at + size > self._sizes[i]:
            self._grow(i, at + size + FILE_BYTES)
        if size > len(buffer):
            larger = mmap.mmap(-1, size)
            larger[:kept] = buffer[:kept]
            buffer.close()
            self._buffer = buffer = larger
        buffer[kept:end] = record
        buffer[end:size] = bytes(size - end)
        fd = self._direct[i]
        view = memoryview(buffer)
        try:
            _written(os.pwrite(fd, view[:size], at), size)
            faults.hit("in_commit")
            os.fdatasync(fd)
        except BaseException:
            buffer[kept:kept + _HEAD.size] = bytes(_HEAD.size)  # its record must not be read back after a crash
            with contextlib.suppress(OSError):
                os.pwrite(fd, view[:-(-(kept + _HEAD.size) // BLOCK) * BLOCK], at)  # the blocks its header is in
            raise
        finally:
            view.release()
        # the next record starts in the block this one ends in: keep that block's bytes up to here
        last = end & -BLOCK
        if last:
            buffer.move(0, last, end - last)
        if len(buffer) > BUFFER:  # back to the usual size once a large record is written
            usual = mmap.mmap(-1, BUFFER)
            usual[:end - last] = buffer[:end - last]
            buffer.close()
            self._buffer = usual

    def close(self) -> None:
        """Close the files (what is in them stays: recovery reads it)."""
        for fd in self._fds + self._direct:
            os.close(fd)
        self._fds.clear()
        self._direct.clear()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

