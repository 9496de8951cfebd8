"""`ca-bridge inspect`: read a store and describe its CAs (never writes)."""

from __future__ import annotations

import json
from typing import Any

from bridge import codec
from bridge.device import device_view
from bridge.session import SessionData
from bridge.store import CARecord

__all__ = ["describe", "render", "session_view"]


def session_view(data: SessionData, queue: list[tuple[int, bytes]]) -> dict[str, Any]:
    """One session as `ca-bridge inspect` and the dashboard show it: presence, queue, limit, persistent status."""
    return {
        "online": data.online,
        "queued": len(queue),
        "first_seq": queue[0][0] if queue else data.next_seq,
        "next_seq": data.next_seq,
        "limit": data.limit,
        "pinned": data.pinned,
        "has_nonce": data.nonce is not None,
        "has_memento": data.memento is not None,
        "codec": data.codec,
    }


def describe(record: CARecord) -> dict[str, Any]:
    """One CA as plain data: state, and per session its queue, limit and persistent-session status."""
    sessions = {}
    dedup_by_session: dict[str, int] = {}
    for _pos, sid, _rid, _reply in record.dedup:
        dedup_by_session[sid] = dedup_by_session.get(sid, 0) + 1
    for sid, srec in record.sessions.items():
        data = SessionData.from_record(codec.loads(srec.meta), srec.notes)
        sessions[sid] = {**session_view(data, srec.notes), "dedup_records": dedup_by_session.get(sid, 0)}
    state = codec.loads(record.state) if record.state else None  # empty: created, on_init not run yet
    return {"name": record.name, "state": state, "sessions": sessions,
            "dedup_records": len(record.dedup), "device": device_view(record.device)}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def render(value: Any, as_json: bool) -> str:
    """JSON for scripts, or a readable listing."""
    if as_json:
        return json.dumps(_plain(value), indent=2, sort_keys=True)
    if isinstance(value, list):  # a listing of CAs
        lines = [f"{'CA':<32} {'sessions':>8} {'queued':>8}"]
        lines += [f"{ca['name']:<32} {len(ca['sessions']):>8} "
                  f"{sum(s['queued'] for s in ca['sessions'].values()):>8}" for ca in value]
        return "\n".join(lines)
    lines = [f"CA {value['name']}", "state:", json.dumps(_plain(value["state"]), indent=2, sort_keys=True), "sessions:"]
    for sid, s in value["sessions"].items():
        lines.append(
            f"  {sid}: {s['queued']} queued (seq {s['first_seq']}..{s['next_seq'] - 1}), limit {s['limit']}"
            f"{' pinned' if s['pinned'] else ''}, nonce {'yes' if s['has_nonce'] else 'no'}, "
            f"memento {'yes' if s['has_memento'] else 'no'}, {s['dedup_records']} dedup records, {s['codec']}"
            f"{', online' if s.get('online') else ''}"
        )
    device = value.get("device")
    if device is not None:
        lines.append(f"device: boot {device['boot']}, commands {json.dumps(device['commands'], sort_keys=True)}")
        lines.append(f"  to_cloud (version {device['tv']}): {json.dumps(_plain(device['to_cloud']), sort_keys=True)}")
        lines.append(f"  from_cloud (version {device['fv']}): "
                     f"{json.dumps(_plain(device['from_cloud']), sort_keys=True)}")
        b = device["pending"]
        lines.append("  pending bundle: none" if b is None else
                     f"  pending bundle {b['index']} ({b['mode']}, start {b['start']}, done {b['done']}): "
                     f"{json.dumps(_plain(b['commands']))}; {device['unfinished']} unfinished")
        lines.append("  recent results: " + (", ".join(f"{i}: {'true' if ok else 'false'}"
                                                       for i, ok in device["results"]) or "none"))
    return "\n".join(lines)
