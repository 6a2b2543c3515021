"""tools/numbers_check.py: each number of a chapter's prose traced to the output that prints it,
the code that sets it, or reported as typed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("numbers_check", ROOT / "tools" / "numbers_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("steps = 200\nprint('gain: +5.92 dB')")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="gain: +5.92 dB\n")]
    nb.cells = [code, nbformat.v4.new_markdown_cell(
        "L1 gains 5.92 dB in 200 steps. It beats DiffLoss by 0.7 dB.\n\n"
        "```text\n0.31 in a fenced block\n```")]
    path = tmp_path / "99_test.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_number_is_printed_set_in_code_or_typed(tmp_path):
    by_number = {f.number: (f.source, f.where) for f in _tool().check(_notebook(tmp_path))}
    assert by_number == {"5.92": ("printed", 0), "200": ("in the code", 0), "0.7": ("typed", None)}


def test_every_chapter_can_be_checked():
    tool = _tool()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        findings = tool.check(nb)
        assert findings, f"{nb.name}: no number found in its prose"
        assert {f.source for f in findings} <= {"printed", "in the code", "typed"}
