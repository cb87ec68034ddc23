"""The import contracts of pyproject.toml ([tool.importlinter]) hold: config -> chatbot -> kb,
imports pointing down only, and no cycles between the modules of a package."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    # The lint-imports of the interpreter running the tests, so it sees the same packages.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports} is missing: pip install -r requirements-dev.txt"
    # --no-cache: no .import_linter_cache folder in the checkout, and never a stale graph.
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"lint-imports found broken contracts:\n{result.stdout}{result.stderr}"
