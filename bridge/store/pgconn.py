"""PostgreSQL plumbing shared by the store and the membership: pooled transactions, and psycopg's errors turned
into StoreError (one line, no password)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bridge.errors import StoreError

__all__ = ["Transaction", "is_db_error", "reason", "store_error"]

log = logging.getLogger("bridge.postgres")  # the name these messages always had


class Transaction:
    """``async with``: a pooled connection in one transaction, as a cursor; psycopg errors become StoreError.

    When the connection turns out broken (the server restarted, a failover, connections cut), the pool's idle
    connections are most likely broken too: they are checked before the error is raised, so that the next
    transaction gets a working connection instead of failing on the next stale one, pool size times in a row.
    """

    def __init__(self, pool: Any, recheck_timeout: float, atomic: bool = True) -> None:
        self._pool = pool
        self._atomic = atomic
        self._recheck_timeout = recheck_timeout
        self._conn: Any = None
        self._conn_cm: Any = None
        self._tx_cm: Any = None

    async def __aenter__(self) -> Any:
        try:
            self._conn_cm = self._pool.connection()
            self._conn = await self._conn_cm.__aenter__()
        except Exception as exc:
            raise StoreError(f"database unavailable: {reason(exc)}") from None
        try:
            if self._atomic:
                self._tx_cm = self._conn.transaction()
                await self._tx_cm.__aenter__()
            return self._conn.cursor()
        except BaseException as exc:
            await self._release(exc)
            if not isinstance(exc, Exception):  # cancellation: never turned into a StoreError
                raise
            raise StoreError(f"database unavailable: {reason(exc)}") from None

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> None:
        failure: BaseException | None = exc
        try:
            if self._tx_cm is not None:
                await self._tx_cm.__aexit__(et, exc, tb)  # COMMIT, or ROLLBACK if the body raised
        except BaseException as commit_exc:
            failure = commit_exc
        finally:
            await self._release(failure)
        if failure is not None and failure is not exc:
            raise store_error(failure) from None
        if exc is not None and not isinstance(exc, StoreError) and is_db_error(exc):
            raise store_error(exc) from None

    async def _release(self, failure: BaseException | None) -> None:
        broken = failure is not None and bool(self._conn.broken)
        try:
            await self._conn_cm.__aexit__(type(failure) if failure else None, failure, None)
        except Exception:  # the pool discards a broken connection; never mask the first error
            log.debug("returning a connection to the pool failed", exc_info=True)
        if broken and isinstance(failure, Exception):
            await _recheck(self._pool, self._recheck_timeout)


_rechecks: dict[int, asyncio.Task[None]] = {}  # id(pool) -> its running check (one at a time)


async def _recheck(pool: Any, timeout: float) -> None:
    """Check the idle connections of ``pool``, replacing the broken ones; wait for it at most ``timeout``.

    The check goes on in the background if it takes longer (cancelling it midway would lose connections).
    """
    task = _rechecks.get(id(pool))
    if task is None or task.done():
        task = _rechecks[id(pool)] = asyncio.ensure_future(pool.check())
        task.add_done_callback(lambda t: _rechecks.pop(id(pool), None) if _rechecks.get(id(pool)) is t else None)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except Exception:  # the database is still down, or slow: the next transaction tells
        log.debug("checking the pool's connections failed", exc_info=True)


def is_db_error(exc: BaseException) -> bool:
    import psycopg

    # UnicodeEncodeError: a str psycopg cannot send (a lone surrogate) is bad data, as psycopg's DataError is
    return isinstance(exc, psycopg.Error | OSError | UnicodeEncodeError)


def store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError) or not is_db_error(exc):
        return exc
    return StoreError(f"database error: {reason(exc)}")


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
