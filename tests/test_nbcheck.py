"""The browser tests' copy of nbval's output check (tests/ui/nbcheck.py): it passes a chapter
against itself and fails on each kind of difference nbval fails on (issue 44)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ui.nbcheck import checks_output, output_mismatches

CHAPTER = Path(__file__).resolve().parents[1] / "notebooks" / "03_building_diffloss.ipynb"


def _executed(nb):
    return [copy.deepcopy(c) for c in nb["cells"] if c["cell_type"] == "code"]


def _checked_stream_cell(cells):
    return next(i for i, c in enumerate(cells) if checks_output(c)
                and any(o["output_type"] == "stream" for o in c["outputs"]))


def test_a_chapter_agrees_with_itself_and_has_checked_cells():
    nb = json.loads(CHAPTER.read_text())
    cells = _executed(nb)
    assert any(checks_output(c) for c in cells)
    assert output_mismatches(nb, cells) == []


def test_a_changed_number_in_a_checked_cell_is_a_mismatch():
    nb = json.loads(CHAPTER.read_text())
    cells = _executed(nb)
    i = _checked_stream_cell(cells)
    out = next(o for o in cells[i]["outputs"] if o["output_type"] == "stream")
    text = "".join(out["text"])
    out["text"] = text.replace("0", "1", 1) if "0" in text else text + "x"
    problems = output_mismatches(nb, cells)
    assert len(problems) == 1 and problems[0].startswith(f"code cell {i}: stdout differs")


def test_streams_split_differently_and_unchecked_cells_do_not_count():
    nb = json.loads(CHAPTER.read_text())
    cells = _executed(nb)
    i = _checked_stream_cell(cells)
    outs = cells[i]["outputs"]
    k = next(j for j, o in enumerate(outs) if o["output_type"] == "stream")
    text = "".join(outs[k]["text"])
    half = len(text) // 2  # the browser may deliver one print as two stream messages
    outs[k:k + 1] = [{**outs[k], "text": text[:half]}, {**outs[k], "text": text[half:]}]
    unchecked = next(j for j, c in enumerate(cells) if not checks_output(c))
    cells[unchecked]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "anything\n"}]
    assert output_mismatches(nb, cells) == []


def test_a_missing_output_an_error_and_a_missing_cell_are_mismatches():
    nb = json.loads(CHAPTER.read_text())
    cells = _executed(nb)
    i = _checked_stream_cell(cells)
    cells[i]["outputs"] = []
    assert "output kinds" in output_mismatches(nb, cells)[0]
    cells = _executed(nb)
    cells[i]["outputs"].append({"output_type": "error", "ename": "ValueError", "evalue": "x",
                                "traceback": []})
    assert "output kinds" in output_mismatches(nb, cells)[0]
    assert "code cells ran" in output_mismatches(nb, _executed(nb)[:-1])[0]
