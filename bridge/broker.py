"""The bundled broker: amqtt running in the bridge's own event loop, for development and small deployments.

Production deployments use mosquitto (broker_config/mosquitto.conf) with ``ca-bridge run --broker``.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import logging
from pathlib import Path
from typing import Any

import yaml

from bridge.errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "EmbeddedBroker"]

log = logging.getLogger("bridge.broker")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "broker_config" / "amqtt.yaml"
_FALLBACK: dict[str, Any] = {
    "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:1883", "max_connections": 10000}},
    "timeout_disconnect_delay": 0,
    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
}


def load_config(path: Path | None) -> dict[str, Any]:
    """The amqtt config dict from a YAML file (the bundled one by default)."""
    path = path or DEFAULT_CONFIG
    if not path.exists():
        if path == DEFAULT_CONFIG:
            return copy.deepcopy(_FALLBACK)
        raise ConfigError(f"broker config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"broker config {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"broker config {path} must be a mapping")
    return config


POLICY_PLUGIN = "bridge.amqtt_plugins.DevicePolicyPlugin"
# amqtt plugins that decide who may connect or use a topic: replaced by POLICY_PLUGIN when auth is on.
_ACCESS_PLUGINS = (
    "amqtt.plugins.authentication.AnonymousAuthPlugin",
    "amqtt.plugins.authentication.FileAuthPlugin",
    "amqtt.plugins.topic_checking.TopicAccessControlListPlugin",
    "amqtt.plugins.topic_checking.TopicTabooPlugin",
)


def _no_startup_traceback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Broker startup failed")


class EmbeddedBroker:
    """amqtt in this process, listening on ``host:port``. Use as an async context manager.

    ``password_file`` (an auth directory's amqtt.passwd) turns on authentication and the per-device ACL of
    bridge.amqtt_plugins for topics under ``prefix``; ``tls`` = (certfile, keyfile, host, port) adds a TLS
    listener next to the plain one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        config: dict[str, Any] | None = None,
        *,
        password_file: Path | None = None,
        prefix: str = "ca",
        tls: tuple[Path, Path, str, int] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.config = copy.deepcopy(config) if config is not None else load_config(None)
        self.config.setdefault("listeners", {}).setdefault("default", {"type": "tcp"})
        self.config["listeners"]["default"]["bind"] = f"{host}:{port}"
        if password_file is not None:
            plugins = {k: v for k, v in (self.config.get("plugins") or {}).items() if k not in _ACCESS_PLUGINS}
            plugins[POLICY_PLUGIN] = {"password_file": str(password_file), "prefix": prefix}
            self.config["plugins"] = plugins
        if tls is not None:
            certfile, keyfile, tls_host, tls_port = tls
            for f in (certfile, keyfile):
                if not Path(f).is_file():
                    raise ConfigError(f"TLS file {f} does not exist")
            max_conn = self.config["listeners"]["default"].get("max_connections", 10000)
            self.config["listeners"]["tls"] = {
                "type": "tcp", "bind": f"{tls_host}:{tls_port}", "ssl": True, "certfile": str(certfile),
                "keyfile": str(keyfile), "max_connections": max_conn,
            }
        self.tls = tls
        self._broker: Any = None

    async def __aenter__(self) -> EmbeddedBroker:
        from bridge.amqtt_plugins import broker_class  # only the embedded mode needs amqtt

        self._broker = broker_class()(self.config)
        amqtt_log = logging.getLogger("amqtt.broker")
        amqtt_log.addFilter(_no_startup_traceback)  # the failure is reported below, in one line
        try:
            await self._broker.start()
        except Exception as exc:
            raise ConfigError(self._cannot_start(exc)) from None
        finally:
            amqtt_log.removeFilter(_no_startup_traceback)
        log.info("embedded amqtt broker listening on %s:%d", self.host, self.port)
        if self.tls is not None:
            log.info("embedded amqtt broker listening with TLS on %s:%d", self.tls[2], self.tls[3])
        return self

    def _cannot_start(self, exc: Exception) -> str:
        where = f"{self.host}:{self.port}" + (f" or {self.tls[2]}:{self.tls[3]}" if self.tls is not None else "")
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return (f"embedded broker cannot listen on {where}: address already in use (by scripts/run, another "
                    "broker or another ca-bridge?); stop it first, or give this bridge its own --listen HOST:PORT "
                    "and its own --db")
        return f"embedded broker cannot listen on {where}: {cause or exc}"

    async def __aexit__(self, *exc_info: object) -> None:
        if self._broker is None:
            return
        try:
            async with asyncio.timeout(5):  # amqtt's shutdown can hang on a client that stopped reading
                await self._broker.shutdown()
        except (TimeoutError, Exception):
            log.warning("embedded broker did not shut down cleanly", exc_info=True)
        self._broker = None
