"""Cluster ownership on PostgreSQL: the :class:`bridge.store.membership.Membership` of a PostgresStore's database.

Membership is the ``node`` table (one row per running bridge, renewed by heartbeat; a row past ``expires`` is a
bridge presumed dead); ownership is the ``owner`` and ``epoch`` columns of each ``ca`` row, which the store's
commit checks in its own statement (the fence). This class shares the store's connection pool.
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.errors import StoreError
from bridge.store.base import CARecord
from bridge.store.membership import Claim
from bridge.store.postgres import PostgresStore, load_records

__all__ = ["PostgresMembership"]

_LIVE = "EXISTS (SELECT 1 FROM node n WHERE n.token = ca.owner AND n.expires > now())"


class PostgresMembership:
    """A Membership on the database of ``store`` (open it first)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def fence(self, token: str | None) -> None:
        """The store's commits write only the CAs ``token`` owns from now on (checked in ca_bridge_commit)."""
        self.store.owner = token

    async def join(self, token: str, node: str, ttl: float) -> None:
        """Register this bridge; earlier incarnations of the same node name are gone, so their CAs are free."""
        async with self.store.transaction() as cur:
            await cur.execute("DELETE FROM node WHERE name = %s OR expires < now() - interval '1 hour'", (node,))
            await cur.execute(
                "INSERT INTO node (token, name, expires) VALUES (%s, %s, now() + make_interval(secs => %s))",
                (token, node, ttl),
            )

    async def heartbeat(self, token: str, node: str, ttl: float) -> tuple[bool, dict[str, str]]:
        """Renew this bridge's membership; returns (whether the row was still there, live tokens -> names)."""
        async with self.store.transaction() as cur:
            await cur.execute(
                "UPDATE node SET expires = now() + make_interval(secs => %s) WHERE token = %s", (ttl, token))
            present = cur.rowcount == 1
            if not present:
                await cur.execute(
                    "INSERT INTO node (token, name, expires) VALUES (%s, %s, now() + make_interval(secs => %s))",
                    (token, node, ttl),
                )
            await cur.execute("SELECT token, name FROM node WHERE expires > now()")
            return present, {t: n for t, n in await cur.fetchall()}

    async def leave(self, token: str) -> int:
        """Give up every CA and the membership (a clean shutdown): others may claim at once."""
        async with self.store.transaction() as cur:
            await cur.execute("UPDATE ca SET owner = NULL WHERE owner = %s", (token,))
            released = cur.rowcount
            await cur.execute("DELETE FROM node WHERE token = %s", (token,))
            return int(released)

    async def claim(self, name: str, token: str, *, create: bool) -> Claim:
        """One CA: a batch of one (:meth:`claim_many`)."""
        return (await self.claim_many({name: create}, token))[name]

    async def claim_many(self, names: Mapping[str, bool], token: str) -> dict[str, Claim]:
        """Claim every CA of ``names`` (name -> create it if missing) in one transaction, a few set-based
        statements whatever the batch's size: create the missing ones that may be (owned, epoch 1), lock the
        others' rows, take those without a live owner (epoch + 1), load what is now ours.

        Deadlocks between bridges claiming overlapping batches (and committing) are avoided by ordering: every
        statement that waits on other transactions' rows takes them in name order, as ca_bridge_commit does.
        A created row conflicting with another bridge's uncommitted one waits for it, then reads it as theirs."""
        out: dict[str, Claim] = {}
        take: list[str] = []  # free or dead-owned: ours now, epoch + 1
        load: list[str] = []  # ours (already, or taken): loaded whole
        todo = list(names)
        async with self.store.transaction() as cur:
            for _ in range(2):
                creatable = [n for n in todo if names[n]]
                if creatable:
                    await cur.execute(
                        "INSERT INTO ca (name, state, owner, epoch) SELECT u.name, '', %s, 1 "
                        "FROM unnest(%s::text[]) AS u(name) ORDER BY u.name ON CONFLICT DO NOTHING RETURNING name",
                        (token, creatable),
                    )
                    for (name,) in await cur.fetchall():
                        out[name] = Claim("mine", CARecord(name, b"", epoch=1))
                rest, todo = [n for n in todo if n not in out], []
                if not rest:
                    break
                await cur.execute(
                    "SELECT ca.name, ca.owner, n.name, n.expires > now() FROM ca LEFT JOIN node n "
                    "ON n.token = ca.owner WHERE ca.name = ANY(%s) ORDER BY ca.name FOR UPDATE OF ca",
                    (rest,),
                )
                for name, owner, node, alive in await cur.fetchall():
                    if owner is not None and owner != token and alive:
                        out[name] = Claim("other", node=node, token=owner)
                    else:
                        (load if owner == token else take).append(name)
                        out[name] = Claim("mine")  # its record below
                for name in rest:
                    if name in out:
                        continue
                    if names[name]:
                        todo.append(name)  # conflicted with a row gone meanwhile: try again
                    else:
                        out[name] = Claim("missing")
                if not todo:
                    break
            if todo:
                raise StoreError(f"could not claim CA {todo[0]}" + (f" and {len(todo) - 1} more" if todo[1:] else ""))
            if take:
                await cur.execute("UPDATE ca SET owner = %s, epoch = epoch + 1 WHERE name = ANY(%s)", (token, take))
            if take or load:
                for record in await load_records(cur, take + load):
                    out[record.name].record = record
        return out

    async def adopt(self, token: str, *, limit: int) -> list[CARecord]:
        """Claim up to ``limit`` CAs nobody (alive) owns, with their records: for pulses, which need an owner."""
        async with self.store.transaction() as cur:
            await cur.execute(
                f"UPDATE ca SET owner = %s, epoch = epoch + 1 WHERE name IN (SELECT name FROM ca WHERE "
                f"(owner IS NULL OR NOT {_LIVE}) ORDER BY name LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING name",
                (token, limit),
            )
            names = [r[0] for r in await cur.fetchall()]
            return await load_records(cur, names) if names else []

    async def orphans(self) -> int:
        """How many CAs have no live owner."""
        async with self.store.transaction() as cur:
            await cur.execute(f"SELECT count(*) FROM ca WHERE owner IS NULL OR NOT {_LIVE}")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def owners(self) -> dict[str, int]:
        """Live node name -> number of CAs it owns (for tools and tests)."""
        async with self.store.transaction() as cur:
            await cur.execute(
                "SELECT n.name, count(ca.name) FROM node n LEFT JOIN ca ON ca.owner = n.token "
                "WHERE n.expires > now() GROUP BY n.name ORDER BY n.name")
            return {r[0]: int(r[1]) for r in await cur.fetchall()}
