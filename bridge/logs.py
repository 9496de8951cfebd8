"""Logging set-up: readable text, or one JSON object per line (``--log-format json``) carrying the CA, session and
request id of the work being done.

The ids come from context variables that a CA's worker sets for each item it processes (each worker is its own
asyncio task, so they never leak between CAs), or from ``extra={"ca": ...}`` on the log call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

__all__ = ["CURRENT", "JsonFormatter", "configure", "set_context"]

# (ca, session, request id) of the item being processed by the current task
CURRENT: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar("ca_bridge_item", default=None)

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def set_context(ca: str, session: str = "", request: str = "") -> None:
    """Tag what this task logs from now on with a CA, session and request id."""
    CURRENT.set((ca, session, request))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, and ca/session/request when known."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        item = CURRENT.get()
        if item is not None:
            ca, session, request = item
            out["ca"] = ca
            if session:
                out["session"] = session
            if request:
                out["request"] = request
        for key in ("ca", "session", "request"):
            value = record.__dict__.get(key)
            if isinstance(value, str):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up the root logger once, in text or JSON."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("amqtt", "transitions"):  # chatty at INFO; their warnings still show
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
