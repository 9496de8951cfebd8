"""The README's code blocks, checked and run: what a new user copies from it must work as written.

Every ```python block is either the verbatim text of a file under examples/ (which the tests below run) or at
least compiles; every ```sh block names files that exist and commands that exist. Then the README is followed top
to bottom: the Shop quickstart (bridge command line and device command line, as the README writes them, with only
the port and store moved to free ones), its unit test in a project of its own, the device `main.py` under CPython
and the real MicroPython (with `network` stubbed), and the Raspberry Pi command line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, stop

README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.py"))
REPO_DIRS = ("examples/", "scripts/", "tests/", "benchmarks/", "broker_config/", "firmware_client/", "docs/", "bridge/")


def blocks(lang: str | None = None) -> list[tuple[str, str, str]]:
    """(language, text, section heading) of each fenced block of the README, in order."""
    out = []
    section = ""
    lines = README.read_text().splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.strip("# \n")
        if line.startswith("```"):
            tag = line[3:].strip()
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            if lang is None or tag == lang:
                out.append((tag, "".join(lines[i + 1 : j]), section))
            i = j
        i += 1
    return out


def section_text(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    nxt = re.search(r"^#{1,3} ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + nxt.start()] if nxt else text[start:]


def command_lines() -> list[tuple[list[str], str]]:
    """Each command of each sh block (comments dropped), split as a shell would, with its section."""
    out = []
    for _, text, section in blocks("sh"):
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append((words, section))
    return out


def find(pred) -> list[str]:
    found = [words for words, _ in command_lines() if pred(words)]
    assert found, "the README has no such command any more"
    return found[0]


def program(word: str) -> str:
    """A README command's program as this test runs it: `.venv/bin/X` from the venv running the tests."""
    if word.startswith(".venv/bin/"):
        return str(VENV_BIN / word.removeprefix(".venv/bin/"))
    if word in ("python", "python3"):
        return sys.executable
    return word


def example(name: str) -> str:
    return (ROOT / "examples" / "shop" / name).read_text()


class Output:
    """A child process whose stdout is read without blocking, until a pattern shows up."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.text = ""

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.text += (self.proc.stdout.read() or b"").decode(errors="replace")
            if (m := re.search(pattern, self.text)) is not None:
                return m
            if self.proc.poll() is not None:
                self.text += (self.proc.stdout.read() or b"").decode(errors="replace")
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the output of {self.proc.args}:\n{self.text[-3000:]}")

    def stop(self) -> None:
        stop(self.proc)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# -- the blocks themselves -------------------------------------------------------------------------------------------


def test_every_python_block_is_an_example_file_or_compiles():
    verbatim = {p.read_text(): p for p in EXAMPLES}
    python = blocks("python")
    assert len(python) >= 4
    for _, text, section in python:
        if text not in verbatim:
            compile(text, f"README.md ({section})", "exec")


@pytest.mark.parametrize("name", ["shop.py", "test_shop.py", "main.py"])
def test_the_shop_files_are_in_the_readme_verbatim(name):
    assert example(name) in [text for _, text, _ in blocks("python")]


def test_the_readme_shop_has_what_its_own_text_calls():
    """The quickstart calls get_counters, PersistentSession calls begin (and end), the unit test calls begin and buy."""
    from bridge.cli import load_app

    shop = load_app("examples/shop/shop.py:Shop")
    called = {"get_counters", "begin", "end", "buy"}
    assert called <= set(shop.methods)


def test_sh_blocks_name_existing_files_and_commands():
    from bridge.cli import _parser as bridge_parser

    sub = next(a for a in bridge_parser()._actions if a.dest == "command")
    assert command_lines()
    for words, section in command_lines():
        for word in words:
            path = word.split(":", 1)[0]
            if path.startswith(REPO_DIRS) and not path.endswith("..."):
                assert (ROOT / path).exists(), f"README ({section}): {word} does not exist"
        bridge_cmd = words[0].endswith("ca-bridge") or words[:3] in (["python", "-m", "bridge"],
                                                                      [".venv/bin/python", "-m", "bridge"])
        if bridge_cmd:
            rest = words[1:] if words[0].endswith("ca-bridge") else words[3:]
            assert rest[0] in sub.choices, f"README ({section}): ca-bridge has no command {rest[0]!r}"
        if words[0].startswith((".venv/bin/", "scripts/")):
            assert Path(program(words[0])).exists() or (ROOT / words[0]).exists(), words[0]


def test_firmware_client_command_lines_parse():
    from firmware_client.__main__ import _parser as device_parser

    lines = [w for w, _ in command_lines() if "firmware_client" in w]
    assert len(lines) >= 3
    for words in lines:
        device_parser().parse_args(words[words.index("firmware_client") + 1 :])


def fenced_commands(path: Path) -> list[list[str]]:
    """Each command line of ``path``'s sh blocks (a heredoc's text is not a command)."""
    out, inside, heredoc = [], False, None
    for line in path.read_text().splitlines():
        if heredoc is not None:
            heredoc = None if line == heredoc else heredoc
            continue
        if line.startswith("```"):
            inside = line == "```sh"
            continue
        if inside:
            command, _, rest = line.partition("<<")
            if rest:
                heredoc = rest.split()[0].strip("'\"-")
            if words := shlex.split(command, comments=True):
                out.append(words)
    return out


def launcher(words: list[str]) -> str:
    return next(w for w in words if "=" not in w)  # past VAR=value prefixes


@pytest.mark.parametrize("doc", ["README.md", "firmware_client/README.md"])
def test_no_command_needs_a_bare_python(doc):
    """Review item 5b: stock Debian/Ubuntu has `python3` but no `python`: commands say `python3` (stdlib only) or
    `.venv/bin/python` (the project's dependencies)."""
    commands = fenced_commands(ROOT / doc)
    assert commands
    bare = [" ".join(w) for w in commands if launcher(w) == "python"]
    assert bare == []
    prose = re.findall(r"`(python [^`]*)`", (ROOT / doc).read_text())
    assert prose == []


def test_the_micropython_forever_run_has_its_own_ca():
    """Review item 5a: the MicroPython forever.py run buys in a CA of its own, so "until all is bought once" holds."""
    runs = [w for w, _ in command_lines() if any(x.endswith("forever.py") for x in w)]
    names = [next((x.split("=", 1)[1] for x in w if x.startswith("CA_NAME=")), "cart1") for w in runs]
    assert any(w[-1].endswith("micropython") for w in runs), runs
    assert len(runs) >= 2 and len(set(names)) == len(names), runs
    prose = re.findall(r"`([^`]*forever\.py \.venv/bin/micropython)`", README.read_text())
    assert prose and all("CA_NAME=" in p and "CA_NAME=cart1" not in p for p in prose), prose


def test_unit_testing_elsewhere_says_how_to_get_bridge_and_the_loop_scope():
    """Review item 5c: another project learns how to install `bridge` and which pytest-asyncio settings to set, and
    those settings are the ones this repository uses."""
    text = " ".join(section_text("### Unit-testing a CA").split())
    said = re.search(r"`pip install (\S+) pytest pytest-asyncio`", text)
    assert said and said.group(1).endswith("ca-bridge"), text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'name = "ca-bridge"' in pyproject
    for setting in ('asyncio_mode = "auto"', 'asyncio_default_fixture_loop_scope = "function"'):
        assert f"`{setting}`" in text and setting in pyproject


def test_mpremote_says_where_it_comes_from():
    """Review item 5d."""
    assert "`pip install mpremote`" in " ".join(section_text("## On a device").split())


def test_bare_ca_bridge_is_explained_where_it_is_used():
    """`ca-bridge` alone is on PATH only in an activated venv: each section using it bare says so."""
    sections = {section for words, section in command_lines() if words[0] == "ca-bridge"}
    assert sections
    for section in sections:
        assert ".venv/bin/activate" in section_text(f"## {section}"), section


# -- following the README ----------------------------------------------------------------------------------------------


@pytest.fixture
def shop_bridge(tmp_path):
    """The README's `ca-bridge run` line for the Shop, on a free port and a throwaway store."""
    words = find(lambda w: w[0].endswith("ca-bridge") and w[1] == "run" and "Shop" in w[2])
    port = free_port()
    bridge = Output([program(words[0]), *words[1:], "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "s.db")])
    try:
        bridge.wait_for(r"listening on")
        yield port
    finally:
        bridge.stop()


def device_cli(words: list[str], port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """A README `firmware_client` line, pointed at ``port`` (and 127.0.0.1 for `--host`), with ``args`` replacing
    its method and arguments when given."""
    at = words.index("firmware_client") + 1
    rest = ["127.0.0.1" if w == "pi.local" else w for w in words[at:]]
    if args:
        rest = rest[: rest.index("--ca") + 2] + list(args)
    cmd = [program(words[0]), *words[1:at], "--port", str(port), *rest]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_quickstart_shop_from_the_device_command_line(shop_bridge):
    words = find(lambda w: "firmware_client" in w and "get_counters" in w and "--host" not in w)
    first = device_cli(words, shop_bridge)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {}
    nonce = json.loads(device_cli(words, shop_bridge, "begin").stdout)["nonce"]
    bought = device_cli(words, shop_bridge, "buy", nonce, "0", "apple")
    assert bought.returncode == 0, bought.stderr
    assert json.loads(bought.stdout) == {"apple": 1}
    assert json.loads(device_cli(words, shop_bridge, "end", nonce).stdout) is True
    pi = find(lambda w: "firmware_client" in w and "get_counters" in w and "--host" in w)
    on_pi = device_cli(pi, shop_bridge)
    assert on_pi.returncode == 0, on_pi.stderr
    assert json.loads(on_pi.stdout) == {"apple": 1}


def test_the_unit_test_runs_in_a_project_of_its_own(tmp_path):
    """The README's test, next to the README's shop.py, with no pytest configuration but pytest-asyncio's defaults."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("shop.py", "test_shop.py"):
        (project / name).write_text(example(name))
    (project / "pytest.ini").write_text("[pytest]\n")  # the project's own: not this repository's asyncio_mode=auto
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
                         cwd=project, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_the_unit_test_runs_as_the_readme_says(tmp_path):
    """`.venv/bin/python -m pytest examples/shop`, from the repository, as the README's sentence says."""
    said = re.search(r"run it with `(\.venv/bin/python -m pytest [^`]+)`", section_text("### Unit-testing a CA"))
    assert said is not None
    words = shlex.split(said.group(1))
    out = subprocess.run([program(words[0]), *words[1:], "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


NETWORK_STUB = """\
STA_IF = 0


class WLAN:
    def __init__(self, interface):
        self.up = False

    def active(self, on):
        self.up = on

    def connect(self, ssid, password):
        pass

    def isconnected(self):
        return self.up
"""


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_device_main_py_runs_against_the_bridge(interp, shop_bridge, tmp_path):
    """examples/shop/main.py (the README's block) with only the ESP32's network stubbed and the host moved."""
    if interp == "cpython":
        cmd = [sys.executable]
    else:
        binary = shutil.which("micropython", path=str(VENV_BIN)) or shutil.which("micropython")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("micropython is not installed (scripts/bootstrap --tests installs it)")
            pytest.skip("micropython is not installed")
        cmd = [binary]
    main = example("main.py")
    host = 'host="192.168.1.10"'
    assert main.count(host) == 1
    (tmp_path / "main.py").write_text(main.replace(host, f'host="127.0.0.1", port={shop_bridge}'))
    (tmp_path / "network.py").write_text(NETWORK_STUB)
    path = f"{tmp_path}:{ROOT}"
    device = Output([*cmd, "main.py"], cwd=tmp_path, env={"PYTHONPATH": path, "MICROPYPATH": f".frozen:{path}"})
    try:
        device.wait_for(r"\{'apple': 1\}")
        assert device.proc.poll() is None, device.text  # still polling, as the README's loop does
    finally:
        device.stop()
    assert "Traceback" not in device.text
