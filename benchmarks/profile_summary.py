#!/usr/bin/env python3
"""Summarize a py-spy raw (collapsed stacks, ``--threads``) profile or a cProfile file of the bridge.

    .venv/bin/python benchmarks/profile_summary.py /tmp/profile.raw [--top 15]
    .venv/bin/python benchmarks/profile_summary.py /tmp/profile.prof

For py-spy: samples per thread, self time by function and by source line (with the line's text, so a leaf that
calls into C, e.g. ``db.execute("COMMIT")`` or ``cbor2.dumps(...)``, says what it is), inclusive time by
function, and each thread's self time by component (bridge, paho, asyncio, sqlite3, cbor2, socket I/O).
"""

from __future__ import annotations

import argparse
import io
import linecache
import pstats
import sys
import sysconfig
from collections import Counter
from pathlib import Path

_SEARCH = [Path(__file__).resolve().parent.parent, *(Path(sysconfig.get_paths()[k]) for k in ("purelib", "stdlib"))]
_OUTER = {"<module>", "run", "run_forever", "_run_once", "_run", "main", "_run_module_as_main", "_run_code",
          "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "_WorkItem.run", "Handle._run",
          "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "BaseEventLoop.run_until_complete", "Runner.run",
          "run_until_complete"}  # frames every stack has: left out of the inclusive ranking


def _source(file: str, line: int) -> str:
    path = next((base / file for base in _SEARCH if (base / file).is_file()), None)
    return linecache.getline(str(path), line).strip() if path else ""


def _waiting(func: str, file: str, src: str) -> str | None:
    """A leaf where the thread waits rather than computes (py-spy may sample it as active when the thread is
    runnable but not yet running, e.g. on a busy machine)."""
    if file == "selectors.py" and "poll(" in src:
        return "waiting: epoll (event loop idle)"
    if file == "concurrent/futures/thread.py" and ".get(" in src:
        return "waiting: executor queue"
    if file == "threading.py" and ("wait" in func or "acquire" in src):
        return "waiting: lock/condition"
    return None


def _component(file: str, src: str) -> str:
    if "execute" in src and ("db." in src or "self._db" in src or "con." in src):
        return "sqlite3 (C, incl. fsync)"
    if "cbor2." in src or file.startswith("cbor2"):
        return "cbor2 (C)"
    if file.startswith("paho/"):
        return "socket send/recv (from paho)" if ".recv(" in src or ".send(" in src else "paho (Python)"
    for prefix, name in (("bridge/", "bridge (own code)"), ("asyncio/", "asyncio"), ("concurrent/", "threads/executor"),
                         ("threading.py", "threads/executor"), ("logging/", "logging"), ("selectors.py",
                         "selectors/socket"), ("socket.py", "selectors/socket"), ("ssl.py", "selectors/socket")):
        if file.startswith(prefix):
            return name
    return "other: " + file.split("/")[0]


def summarize_pyspy(path: str | Path, top: int = 15) -> str:
    threads, waits = Counter[str](), Counter[str]()
    self_fn, self_line, incl = Counter[tuple[str, str]](), Counter[tuple[str, str, int]](), Counter[tuple[str, str]]()
    comp: dict[str, Counter[str]] = {}
    for raw in Path(path).read_text().splitlines():
        stack, _, count_s = raw.rpartition(" ")
        parts = stack.split(";")
        if not count_s.isdigit() or len(parts) < 2:
            continue
        count, thread = int(count_s), parts[0].split(": ", 1)[-1]
        thread = "sqlite-store" if thread.startswith("sqlite-store") else thread
        frames = []
        for frame in parts[1:]:
            func, _, loc = frame.rpartition(" (")
            file, _, line = loc.rstrip(")").rpartition(":")
            frames.append((func, file, int(line) if line.isdigit() else 0))
        func, file, line = frames[-1]
        src = _source(file, line)
        wait = _waiting(func, file, src)
        if wait:
            waits[f"{wait} [{thread}]"] += count
            continue
        threads[thread] += count
        self_fn[(func, file)] += count
        self_line[(func, file, line)] += count
        for key in {(f, fl) for f, fl, _ in frames}:
            incl[key] += count
        comp.setdefault(thread, Counter())[_component(file, src)] += count
    total, nwait = sum(threads.values()), sum(waits.values())
    if not total:
        return f"{path}: no samples"

    def p(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [f"py-spy profile {path}: {total} busy samples; percentages are of these. Left out: {nwait} samples "
           f"at a waiting leaf ({100 * nwait / (total + nwait):.0f}% of all):"]
    out += [f"    {n:6}  {w}" for w, n in waits.most_common()]
    out += ["", "busy samples by thread:", *(f"  {p(n)}  {t}" for t, n in threads.most_common())]
    out += ["", f"top {top} functions by self time (leaf frame; C calls are charged to the calling Python line):"]
    out += [f"  {p(n)}  {func}  ({file})" for (func, file), n in self_fn.most_common(top)]
    out += ["", f"top {top} source lines by self time:"]
    out += [f"  {p(n)}  {file}:{line} {func}: {_source(file, line)[:90]}"
            for (func, file, line), n in self_line.most_common(top)]
    out += ["", f"top {top} functions by inclusive time (own code and everything it calls):"]
    ranked = [(k, n) for k, n in incl.most_common() if k[0] not in _OUTER and not k[1].startswith("runpy")
              and k[1] != "bridge/__main__.py" and not (k[1] == "bridge/cli.py" and k[0] in ("main", "_run"))]
    out += [f"  {p(n)}  {func}  ({file})" for (func, file), n in ranked[:top]]
    out += ["", "self time by component, per thread:"]
    for thread, counter in sorted(comp.items(), key=lambda kv: -sum(kv[1].values())):
        out += [f"  {thread}: {p(sum(counter.values()))}", *(f"    {p(n)}  {c}" for c, n in counter.most_common())]
    return "\n".join(out)


def summarize_cprofile(path: str | Path, top: int = 15) -> str:
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf).strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return f"cProfile {path} (main thread only):\n" + buf.getvalue()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print((summarize_cprofile if a.profile.endswith(".prof") else summarize_pyspy)(a.profile, a.top))
    sys.exit(0)
