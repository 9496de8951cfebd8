"""Packaging: the mip manifest lists every device module, and the code stays in the MicroPython subset."""

import ast
import json

from conftest import ROOT

PKG = ROOT / "firmware_client"


def test_package_json_lists_every_device_module():
    """package.json (mpremote mip install) names each module except the CPython-only CLI."""
    manifest = json.loads((PKG / "package.json").read_text())
    listed = {dst for dst, _ in manifest["urls"]}
    want = {"firmware_client/" + p.name for p in PKG.glob("*.py") if p.name != "__main__.py"}
    assert listed == want
    assert all((PKG / src).exists() for _, src in manifest["urls"])
    assert manifest["version"] == __import__("firmware_client").__version__


def test_device_modules_avoid_fstrings_typing_and_walrus():
    """No f-strings, typing imports or walrus operators in device modules."""
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.JoinedStr), path
            assert not isinstance(node, ast.NamedExpr), path
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "typing" not in names, path
