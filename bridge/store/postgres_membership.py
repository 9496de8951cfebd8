"""Cluster ownership on PostgreSQL: the :class:`bridge.store.membership.Membership` of a PostgresStore's database.

Membership is the ``node`` table (one row per running bridge, renewed by heartbeat; a row past ``expires`` is a
bridge presumed dead); ownership is the ``owner`` and ``epoch`` columns of each ``ca`` row, which the store's
commit checks in its own statement (the fence). This class shares the store's connection pool.
"""

from __future__ import annotations

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
        """Own CA ``name`` if it is free (or ours already), loading it; else say who owns it, or that it is missing."""
        async with self.store.transaction() as cur:
            for _ in range(2):
                await cur.execute(
                    "SELECT ca.owner, n.name, n.expires > now() FROM ca LEFT JOIN node n ON n.token = ca.owner "
                    "WHERE ca.name = %s FOR UPDATE OF ca",
                    (name,),
                )
                row = await cur.fetchone()
                if row is None:
                    if not create:
                        return Claim("missing")
                    await cur.execute(
                        "INSERT INTO ca (name, state, owner, epoch) VALUES (%s, '', %s, 1) ON CONFLICT DO NOTHING",
                        (name, token),
                    )
                    if cur.rowcount == 1:
                        return Claim("mine", CARecord(name, b"", epoch=1))
                    continue  # created by another bridge meanwhile: look again (the row is committed now)
                owner, owner_node, alive = row
                if owner is not None and owner != token and alive:
                    return Claim("other", node=owner_node, token=owner)
                if owner != token:
                    await cur.execute("UPDATE ca SET owner = %s, epoch = epoch + 1 WHERE name = %s", (token, name))
                found = await load_records(cur, [name])
                return Claim("mine", found[0])
        raise StoreError(f"could not claim CA {name}")

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
