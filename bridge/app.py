"""What app authors write: the CA base class, the @method decorator and the method table."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from bridge.device.api import DeviceAPI
    from bridge.session import SessionAPI

__all__ = ["CA", "MethodSpec", "method"]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__ca_method__"


def method(fn: F) -> F:
    """Mark a CA method as callable by devices. ``async def`` and plain ``def`` both work."""
    if not callable(fn) or fn.__name__.startswith("_"):
        raise TypeError("@method needs a public function (its name must not start with '_')")
    setattr(fn, _MARK, True)
    return fn


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A device-callable method: the function, whether to await it, and how many positional args it takes."""

    fn: Callable[..., Any]
    is_async: bool
    min_args: int
    max_args: int | None  # None: takes *args

    def accepts(self, count: int) -> bool:
        """True if ``count`` positional arguments fit the signature."""
        return count >= self.min_args and (self.max_args is None or count <= self.max_args)


def _spec(fn: Callable[..., Any]) -> MethodSpec:
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    return MethodSpec(fn, inspect.iscoroutinefunction(fn), len(required), None if star else len(positional))


class CA:
    """Base class of a Cloud Assistant.

    Subclasses define hooks (``on_init``, ``on_resume``, ``on_pulse``, ``on_presence``) and ``@method`` methods. The
    runtime gives each instance ``name``, ``state`` (a dict committed after every successful call and rolled back on
    any error), ``session`` (the session API of the running call), ``scratch`` (a dict that is neither saved nor
    rolled back) and ``log`` (a logger named after the CA).
    """

    methods: ClassVar[dict[str, MethodSpec]] = {}

    name: str
    state: dict[str, Any]
    session: SessionAPI
    scratch: dict[str, Any]
    log: logging.LoggerAdapter[logging.Logger]
    _device: Callable[[], DeviceAPI]  # set by the runtime: the running transaction's device view

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, MethodSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if getattr(value, _MARK, False) and not attr.startswith("_"):
                    table[attr] = _spec(value)
                elif attr in table:
                    del table[attr]  # overridden without @method: no longer callable
        cls.methods = table

    async def on_init(self) -> None:
        """Runs once, when a CA with a new name is created."""

    async def on_resume(self) -> None:
        """Runs each time the CA is loaded again from the store."""

    async def on_pulse(self) -> None:
        """Runs every pulse interval while the CA is loaded."""

    async def on_presence(self, session_id: str, online: bool) -> None:
        """Runs when a session's device goes online or offline (docs/PROTOCOL.md, Presence); may be a plain ``def``.

        Called once per transition, never for a repeated announcement of the same state. It runs in a transaction
        in that session (``self.session.get_session_id() == session_id``, ``self.session.is_online()`` already
        shows the new state): on an exception its effects are rolled back, but the presence change itself is kept.
        """

    @property
    def device(self) -> DeviceAPI:
        """The CA's own gadget (session ``iot``, docs/DEVICES.md): ``to_cloud`` (read-only), ``from_cloud`` (a
        dict committed with the call), ``bundle()`` / ``send()`` / ``apply()``, ``results``, ``pending``,
        ``online``, ``now_ms()``. Changes are rolled back with a call that raises."""
        return self._device()

    async def on_device_sync(self, changed: set[str]) -> None:
        """Runs when a device sync changed ``self.device.to_cloud`` (``changed``: the keys whose value changed or
        that were deleted), in the sync's transaction. If it raises, its effects roll back but the map change
        stays (the error is logged and counted)."""

    async def on_device_resume(self) -> None:
        """Runs when the device (re)started and loaded its maps (every start, the first included); like
        on_device_sync, a failure rolls back only its own effects."""

    @classmethod
    def has_pulse(cls) -> bool:
        """True if the class overrides on_pulse (the runtime skips pulses otherwise)."""
        return cls.on_pulse is not CA.on_pulse
