"""TLS for the MQTT connection (imported only when ``ssl=`` is set: a plain connection does not pay its heap)."""


def _der(data):
    """First certificate of a PEM file as DER (MicroPython's mbedtls wants DER cadata)."""
    start = data.find(b"-----BEGIN")
    if start < 0:
        return data
    body = data[data.find(b"\n", start) + 1 : data.find(b"-----END")]
    import binascii

    return binascii.a2b_base64(body.replace(b"\n", b"").replace(b"\r", b""))


def wrap(sock, opts, host):
    """Wrap ``sock`` in TLS. ``opts``: an SSLContext, True (default CA store) or a dict with
    cafile, certfile, keyfile, server_hostname, verify (bool)."""
    import ssl as _ssl

    if hasattr(opts, "wrap_socket") and not isinstance(opts, dict):
        return opts.wrap_socket(sock, server_hostname=host)
    cfg = opts if isinstance(opts, dict) else {}
    name = cfg.get("server_hostname", host)
    verify = cfg.get("verify", True)
    if hasattr(_ssl, "create_default_context"):  # CPython
        ctx = _ssl.create_default_context(cafile=cfg.get("cafile"))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = _ssl.CERT_NONE
    else:  # MicroPython
        ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = _ssl.CERT_REQUIRED if verify else _ssl.CERT_NONE
        if cfg.get("cafile"):
            with open(cfg["cafile"], "rb") as f:
                ctx.load_verify_locations(cadata=_der(f.read()))
    if cfg.get("certfile"):
        ctx.load_cert_chain(cfg["certfile"], cfg.get("keyfile"))
    return ctx.wrap_socket(sock, server_hostname=name)
