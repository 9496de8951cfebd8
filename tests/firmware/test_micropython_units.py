"""The codec and packet encoders under the real MicroPython, compared with cbor2 and CPython."""

import random
import subprocess
import sys

import cbor2

from conftest import HERE, device_env, interp_cmd

sys.path.insert(0, str(HERE / "scenarios"))
from wire_values import VALUES

SCRIPT = HERE / "scenarios" / "units.py"


def _random_value(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([rng.randrange(-(2**64), 2**64), rng.randrange(-(2**1024), 2**1024)])
    if kind == 1:
        return rng.choice([rng.randrange(-30, 30), rng.randrange(-70000, 70000)])
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)]))
                       for _ in range(rng.randrange(30)))
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind == 5:
        return rng.choice([True, False, None])
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(rng.randrange(1000)): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _run(tmp_path, name):
    rng = random.Random(1234)
    golden = [cbor2.dumps(v) for v in VALUES] + [cbor2.dumps(_random_value(rng)) for _ in range(300)]
    vec = tmp_path / "vectors.txt"
    vec.write_text("\n".join(g.hex() for g in golden))
    p = subprocess.run(
        [*interp_cmd(name), str(SCRIPT), str(vec)],
        env=device_env(path="{}:{}".format(HERE.parent.parent, HERE / "scenarios")),
        capture_output=True,
        timeout=60,
    )
    out = p.stdout.decode()
    assert p.returncode == 0 and out.endswith("DONE\n"), out[-500:] + p.stderr.decode()
    lines = {}
    for line in out.splitlines():
        tag, _, rest = line.partition(" ")
        lines.setdefault(tag, []).append(rest)
    return golden, lines


def test_micropython_cbor_encodes_like_cbor2(tmp_path):
    """MicroPython's firmware_client.cbor.dumps is byte-identical to cbor2.dumps on the wire values."""
    _, lines = _run(tmp_path, "micropython")
    assert lines["ENC"] == [cbor2.dumps(v).hex() for v in VALUES]


def test_micropython_cbor_decodes_cbor2_golden_vectors(tmp_path):
    """MicroPython decodes cbor2 output (incl. random nested maps) and re-encodes the same value."""
    golden, lines = _run(tmp_path, "micropython")
    assert len(lines["RE"]) == len(golden)
    for want, got in zip(golden, lines["RE"], strict=False):
        assert not got.startswith("error"), (want.hex(), got)
        assert cbor2.loads(bytes.fromhex(got)) == cbor2.loads(want)
    # byte-identical wherever no map has more than one key
    assert lines["RE"][: len(VALUES)] == [g.hex() for g in golden[: len(VALUES)]]


def test_micropython_cbor_rejects_malformed(tmp_path):
    """Truncated, indefinite, tagged, trailing, bad UTF-8, huge claims, deep nesting and bad bignums are rejected."""
    _, lines = _run(tmp_path, "micropython")
    assert lines["BAD"] == ["rejected"] * 11


def test_micropython_packets_and_json_match_cpython(tmp_path):
    """Packet bytes and JSON output are the same under MicroPython and CPython."""
    _, mp = _run(tmp_path, "micropython")
    _, cp = _run(tmp_path, "cpython")
    assert mp["PKT"] == cp["PKT"]
    assert mp["PKT"][0] == "100f00044d5154540400001e0003636964"
    assert mp["PKT"][-1] == "1 1 8"
    assert mp["JSON"] == cp["JSON"] == ['["a",{"$bytes":"AP8="},1,null]']
    assert mp["JSONBACK"] == ["b'\\x00\\xff'"]
