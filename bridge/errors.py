"""The bridge's exceptions: one root, drawn here.

* BridgeError                 -- root of everything the bridge raises on purpose
  + AppError                  -- raised by CA code: the caller gets its name, message and data
  + BadRequest                -- a message the bridge will not run (malformed, unknown method, bad name)
    + CodecError              -- a payload that cannot be decoded, or a value that cannot be encoded
  + CallError                 -- a failed call as a caller sees it (Harness, Python clients)
  + StoreError                -- the durable store failed; nothing of the call is committed
  + ConfigError               -- bad command-line or app configuration
"""

from __future__ import annotations

from typing import Any

__all__ = ["AppError", "BadRequest", "BridgeError", "CallError", "CodecError", "ConfigError", "StoreError"]


class BridgeError(Exception):
    """Root of the bridge's exceptions."""


class AppError(BridgeError):
    """An application error raised by a CA method.

    The call is rolled back; the caller receives ``name`` (the class name), ``message`` and ``data``.
    Subclass it to give errors their own names.
    """

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    @property
    def name(self) -> str:
        """The error's name as the caller sees it."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{self.name}({self.message!r}, **{self.data!r})"


class BadRequest(BridgeError):
    """A request the bridge refuses to run; nothing was executed.

    ``session``, ``request_id`` and ``codec`` are set when the rejected payload named them, so the rejection can
    be answered where the device listens.
    """

    session: str | None = None
    request_id: str | None = None
    codec: str = "cbor"


class CodecError(BadRequest, ValueError):
    """A payload that cannot be decoded, or a value outside the wire subset."""


class StoreError(BridgeError):
    """The durable store failed; the affected calls are not committed."""


class ConfigError(BridgeError):
    """Invalid configuration (command line, app path, broker URL)."""


class CallError(BridgeError):
    """A call that did not succeed, as a caller sees it: the reply's error kind, name, message and data."""

    def __init__(self, kind: str, name: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {name}: {message}")
        self.kind = kind
        self.name = name
        self.message = message
        self.data = data or {}
