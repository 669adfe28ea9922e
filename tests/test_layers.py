"""The package layers of DESIGN.md section 2: dasd -> analysis -> figures -> probes -> cli.py.

``lint-imports`` checks the four packages against pyproject's contract; cli.py, the top layer, is a
module (import-linter lists packages only), so no package may import it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dasd", "analysis", "figures", "probes")


def test_import_contract_is_kept():
    pytest.importorskip("importlinter")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(no_cache=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_the_cli(package):
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
                 if "cli" in _imported_modules(p)]
    assert offenders == []


def test_the_scan_sees_an_import_of_the_cli(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from cli import probe_app\n", encoding="utf-8")
    assert "cli" in _imported_modules(probe)


def test_no_function_is_longer_than_80_lines():
    """Issue 14's limit: a longer function is split into named steps (decorators not
    counted)."""
    sources = [ROOT / "cli.py", *(p for package in (*PACKAGES, "benchmarks", "scripts",
                                                     "examples")
                                  for p in sorted((ROOT / package).rglob("*.py")))]
    long = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert len(sources) > 80
    assert not long, long
