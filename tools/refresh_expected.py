"""Run every exercise solution of the chapters and write what it prints as its "Expected
output:" block in ``notebooks/src/NN_*.py`` (after a change that moves the numbers, such as a
retrained prior). ``tests/test_exercises.py`` then checks the shown output against a fresh run.

    python tools/refresh_expected.py            # every chapter
    python tools/refresh_expected.py 03 05      # chapters by prefix

Run `make notebooks` (or `python tools/build_notebooks.py`) and re-execute the chapters after.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _commented(text: str) -> str:
    """Markdown text as the percent-format source holds it: every line behind ``# ``."""
    return "\n".join(("# " + line).rstrip() for line in text.rstrip("\n").split("\n"))


def refresh(src: Path) -> int:
    """Rewrite the expected outputs of ``src``; returns how many changed."""
    from tests.test_exercises import expected_outputs, run_solution, same_output

    text, changed = src.read_text(), 0
    for i, old in enumerate(expected_outputs(src)):
        printed = run_solution(src, i)
        new = printed.rstrip("\n") + "\n"
        if old is None or same_output(new, old):
            continue
        before = _commented(old)
        if text.count(before) != 1:
            raise SystemExit(f"{src.name} solution {i + 1}: its expected output is not found once in the source")
        text = text.replace(before, _commented(new))
        changed += 1
        print(f"{src.name} solution {i + 1}: expected output updated")
    src.write_text(text)
    return changed


def main(argv: list[str]) -> int:
    os.environ.setdefault("DIFFLOSS_PROFILE", "ci")
    os.environ.setdefault("DIFFLOSS_FIGURES", str(Path(os.environ.get("TMPDIR", "/tmp")) / "diffloss-refresh"))
    os.chdir(ROOT)
    prefixes = argv or [""]
    for src in sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py")):
        if any(src.name.startswith(p) for p in prefixes):
            refresh(src)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
