# Values written literally so that CPython (cbor2) and MicroPython (firmware_client.cbor) build the
# same objects. Dicts have at most one key: MicroPython dicts do not keep insertion order.
VALUES = [
    0, 1, 23, 24, 255, 256, 65535, 65536, 4294967295, 4294967296, 18446744073709551615,
    -1, -24, -25, -256, -257, -65536, -65537, -4294967296, -4294967297, -18446744073709551616,
    # bignums (tags 2 and 3): 2**64, -2**64 - 1, 2**70, -3**100, 2**1024 - 1, -2**1024
    18446744073709551616, -18446744073709551617, 1180591620717411303424,
    -515377520732011331036461129765621272702107522001, (1 << 1024) - 1, -(1 << 1024),
    0.0, -0.0, 1.5, -2.25, 0.1, 1e300, -1e-300, 3.141592653589793, float("inf"), float("-inf"),
    "", "a", "h\u00e9llo", "\u6f22\u5b57", "x" * 23, "y" * 24, "z" * 300,
    b"", b"\x00\xff", b"b" * 24, b"c" * 70000,
    True, False, None,
    [], [1, [2, [3, []]]], ["t", b"u", None, True, 1.5],
    {}, {"t": "call"}, {"args": [1, {"k": b"v"}]}, {1: "int key"},
    list(range(30)),
]
