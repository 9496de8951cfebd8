"""The one way a test says "a dependency is missing": a skip on a developer's machine, a failure under CI.

.ci/run installs everything the suite needs (mosquitto, PostgreSQL, chromium, openssl, MicroPython from the
test extras), so there a missing dependency is a broken setup, never a reason to pass with less tested. Every
"not installed" skip in tests/ goes through ``missing`` or ``require``; tests/conftest.py prints how many tests
were skipped at the end of every run (and .ci/run insists on 0).

Outside pytest (the chaos runners are scripts too) a missing dependency is an error: it exits with the message.
"""

from __future__ import annotations

import os
from typing import NoReturn

# set by tests/conftest.py's pytest_configure; False when a script (tests/chaos/run_chaos.py ...) imports this
IN_PYTEST = False


def under_ci() -> bool:
    """True when the CI environment variable is set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, hint: str = "") -> NoReturn:
    """``what`` (e.g. "mosquitto is not installed") stops the test: a failure under CI, a skip otherwise.

    ``hint`` says how to get it (e.g. "apt-get install mosquitto"); usable at module level too."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    import pytest

    reason = f"{what} ({hint})" if hint else what
    if not IN_PYTEST:
        raise SystemExit(f"error: {reason}")
    if under_ci():
        pytest.fail(f"{reason}: missing under CI, where .ci/run installs it", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(present: object, what: str, hint: str = "") -> None:
    """``missing(what, hint)`` unless ``present`` is true."""
    __tracebackhide__ = True
    if not present:
        missing(what, hint)
