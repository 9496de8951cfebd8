#!/usr/bin/env python3
"""Summarize a py-spy raw (collapsed stacks, ``--threads``) profile or a cProfile file of the bridge.

    .venv/bin/python benchmarks/profile_summary.py /tmp/profile.raw [--top 15]
    .venv/bin/python benchmarks/profile_summary.py /tmp/profile.prof

For py-spy: samples per thread, self time by function and by source line (with the line's text, so a leaf that
calls into C, e.g. ``db.execute("COMMIT")`` or ``cbor2.dumps(...)``, says what it is), inclusive time by
function, and a breakdown of the event-loop thread's self time by component (bridge, paho, asyncio, sqlite3,
cbor2, socket I/O).
"""

from __future__ import annotations

import argparse
import linecache
import sys
import sysconfig
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SEARCH = [ROOT, Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"])]


def _source(file: str, line: int) -> str:
    for base in _SEARCH:
        path = base / file
        if path.is_file():
            return linecache.getline(str(path), line).strip()
    return ""


def _parse_frame(frame: str) -> tuple[str, str, int]:
    func, _, loc = frame.rpartition(" (")
    file, _, line = loc.rstrip(")").rpartition(":")
    return func, file, int(line) if line.isdigit() else 0


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


def _component(func: str, file: str, src: str) -> str:
    if "execute" in src and ("db." in src or "self._db" in src or "con." in src):
        return "sqlite3 (C, incl. fsync)"
    if "cbor2." in src or file.startswith("cbor2"):
        return "cbor2 (C)"
    if file.startswith("paho/"):
        if ".recv(" in src or ".send(" in src:
            return "socket send/recv (from paho)"
        return "paho (Python)"
    if file.startswith("bridge/"):
        return "bridge (own code)"
    if file.startswith("asyncio/"):
        return "asyncio"
    if file in ("selectors.py", "socket.py", "ssl.py"):
        return "selectors/socket"
    if file.startswith("concurrent/") or file == "threading.py":
        return "threads/executor"
    if file.startswith("logging/"):
        return "logging"
    return "other: " + (file.split("/")[0] if "/" in file else file)


def summarize_pyspy(path: str | Path, top: int = 15) -> str:
    threads: Counter[str] = Counter()
    self_fn: Counter[tuple[str, str]] = Counter()
    self_line: Counter[tuple[str, str, int]] = Counter()
    incl: Counter[tuple[str, str]] = Counter()
    comp: dict[str, Counter[str]] = {}
    total = 0
    waits: Counter[str] = Counter()
    for raw in Path(path).read_text().splitlines():
        stack, _, count_s = raw.rpartition(" ")
        if not count_s.isdigit() or not stack:
            continue
        count = int(count_s)
        parts = stack.split(";")
        head = parts[0]
        thread = head.split(": ", 1)[1] if ": " in head else head
        frames = [_parse_frame(f) for f in parts[1:]]
        if not frames:
            continue
        thread = "sqlite-store" if thread.startswith("sqlite-store") else thread
        func, file, line = frames[-1]
        wait = _waiting(func, file, _source(file, line))
        if wait:
            waits[f"{wait} [{thread}]"] += count
            continue
        total += count
        threads[thread] += count
        self_fn[(func, file)] += count
        self_line[(func, file, line)] += count
        for key in {(f, fl) for f, fl, _ in frames}:
            incl[key] += count
        comp.setdefault(thread, Counter())[_component(func, file, _source(file, line))] += count
    if not total:
        return f"{path}: no samples"

    def p(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    nwait = sum(waits.values())
    out = [f"py-spy profile {path}: {total} busy samples; percentages are of these. Left out: {nwait} samples "
           f"at a waiting leaf ({100 * nwait / (total + nwait):.0f}% of all):"]
    out += [f"    {n:6}  {w}" for w, n in waits.most_common()]
    out += ["", "busy samples by thread:"]
    out += [f"  {p(n)}  {t}" for t, n in threads.most_common()]
    out += ["", f"top {top} functions by self time (leaf frame; C calls are charged to the calling Python line):"]
    out += [f"  {p(n)}  {func}  ({file})" for (func, file), n in self_fn.most_common(top)]
    out += ["", f"top {top} source lines by self time:"]
    for (func, file, line), n in self_line.most_common(top):
        out.append(f"  {p(n)}  {file}:{line} {func}: {_source(file, line)[:90]}")
    out += ["", f"top {top} functions by inclusive time (own code and everything it calls):"]
    skip = {"<module>", "run", "run_forever", "_run_once", "_run", "main", "_run_module_as_main", "_run_code",
            "Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker", "_WorkItem.run",
            "Handle._run", "BaseEventLoop.run_forever", "BaseEventLoop._run_once", "BaseEventLoop.run_until_complete",
            "Runner.run", "run_until_complete"}
    shown = 0
    for (func, file), n in incl.most_common():
        if func in skip or file.startswith("runpy") or file == "bridge/__main__.py" or func == "_run" \
                or (file == "bridge/cli.py" and func in ("main", "_run")):
            continue
        out.append(f"  {p(n)}  {func}  ({file})")
        shown += 1
        if shown >= top:
            break
    out += ["", "self time by component, per thread:"]
    for thread, counter in sorted(comp.items(), key=lambda kv: -sum(kv[1].values())):
        out.append(f"  {thread}: {p(sum(counter.values()))}")
        out += [f"    {p(n)}  {c}" for c, n in counter.most_common()]
    return "\n".join(out)


def summarize_cprofile(path: str | Path, top: int = 15) -> str:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.strip_dirs()
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return f"cProfile {path} (main thread only):\n" + buf.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    if a.profile.endswith(".prof"):
        print(summarize_cprofile(a.profile, a.top))
    else:
        print(summarize_pyspy(a.profile, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
