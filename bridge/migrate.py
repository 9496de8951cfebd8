"""`ca-bridge migrate`: copy a SQLite store into PostgreSQL, CA by CA, in batched transactions.

Each CA moves whole (state, sessions with their queued notifications, dedup records) inside one transaction, so an
interrupted migration leaves whole CAs behind, never half of one; running it again with ``--replace`` finishes the
job. The copied CAs have no owner: whichever bridge is asked for one first claims it. The app the SQLite store
belongs to becomes the database's (a database of another app is refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bridge.errors import ConfigError
from bridge.store import CARecord, Change, SessionWrite, is_postgres_url, open_store, redact_url
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SQLiteStore

__all__ = ["migrate", "record_change"]


def record_change(record: CARecord) -> Change:
    """A Change that writes ``record`` over whatever the target holds for that CA."""
    return Change(
        record.name,
        state=record.state,
        sessions={
            sid: SessionWrite(meta=s.meta, notes=list(s.notes), purge=True) for sid, s in record.sessions.items()
        },
        dedup=list(record.dedup),
        device=record.device,  # the device record (bridge.device), if any
    )


async def migrate(
    source: Path, target: str, *, batch: int = 500, replace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy every CA of the SQLite file ``source`` into the PostgreSQL database ``target``; returns the count."""
    if not is_postgres_url(target):
        raise ConfigError("the target must be a postgresql:// URL")
    if not await asyncio.to_thread(source.exists):
        raise ConfigError(f"no store at {source}")
    src = open_store(source, exclusive=False)  # a tool, not a bridge: it does not take the bridge's lock on the file
    dst = open_store(target, application_name="ca-bridge-migrate")
    assert isinstance(src, SQLiteStore) and isinstance(dst, PostgresStore)  # a path, a postgresql:// URL (above)
    await src.open()
    try:
        await dst.open()
        try:
            names = await src.names()
            clash = set(names) & set(await dst.names())
            if clash and not replace:
                raise ConfigError(f"{len(clash)} of these CAs exist in the target already (e.g. {min(clash)}); "
                                  "use --replace to overwrite them")
            app = await src.app()
            other = None if app is None else await dst.bind_app(app)
            if other is not None:
                raise ConfigError(f"{source} is the store of app {app}, {redact_url(target)} the store of app {other}: "
                                  "migrate into a database of its own")
            copied = 0
            for start in range(0, len(names), max(1, batch)):
                chunk = names[start : start + max(1, batch)]
                records = [r for r in [await src.load(n) for n in chunk] if r is not None]
                await dst.import_changes([record_change(r) for r in records], replace=replace)
                copied += len(records)
                if progress is not None:
                    progress(copied, len(names))
            return copied
        finally:
            await dst.close()
    finally:
        await src.close()
