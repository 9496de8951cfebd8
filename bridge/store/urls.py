"""Store URLs: which ``--db`` names PostgreSQL, and how to show a URL (or a driver's message) without its password."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

__all__ = ["is_postgres_url", "redact_url", "scrub"]

def is_postgres_url(db: object) -> bool:
    """True if ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter), for messages."""
    head, sep, tail = url.partition("://")
    if not sep:
        return url
    tail = _PASSWORD_PARAM.sub(r"\1***", tail)
    if "@" in tail:
        cred, _, host = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}{sep}{user}@{host}"
    return f"{head}{sep}{tail}"


_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def scrub(text: str, url: str) -> str:
    """``text`` without ``url``'s password: libpq quotes a malformed URL, or a part of it, in its messages."""
    text = text.replace(url, redact_url(url))
    _, sep, tail = url.partition("://")
    secrets = [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(tail)] if sep else []
    if sep and "@" in tail:  # the user part ends at the first '@' for libpq, at the last one for redact_url
        secrets += [part.partition(":")[2] for part in (tail.partition("@")[0], tail.rpartition("@")[0])]
    for secret in sorted({v for s in secrets for v in (s, unquote(s)) if v}, key=len, reverse=True):
        # only where libpq shows it: quoted alone, or in a quoted piece of the URL; never inside other words
        text = re.sub(r'"[^"\n]*?' + re.escape(secret) + r'[^"\n]*"', functools.partial(_hide_quoted, secret), text)
        if len(secret) >= 6:  # a real password shown unquoted: hide it too, as a whole token (never a word's part)
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", "***", text)
    return text


def _hide_quoted(secret: str, match: re.Match[str]) -> str:
    """A double-quoted piece of a libpq message that contains ``secret``: the password alone, or a URL's part."""
    quoted = match.group(0)
    if quoted == f'"{secret}"':
        return '"***"'
    return re.sub(r"(?<=[:=])" + re.escape(secret) + r"(?=[@&#\s\"]|$)", "***", quoted)
