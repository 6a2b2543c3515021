"""A reviewer's check: every number in a chapter's prose, and where it comes from.

For each markdown sentence of an executed chapter that contains a number, the number is looked
up in the chapter's code cells and outputs:

- ``printed (cell k)``: an output of code cell k shows it (the closest such cell is named);
- ``in the code (cell k)``: it is a setting written in code cell k (a constant, not a result);
- ``typed``: neither; a number a reader cannot trace to this chapter's run. Most are harmless
  (section numbers, equation numbers, a paper's constants); a *result* that is typed is the
  defect to look for, because another profile or another machine will not change it.

    python tools/numbers_check.py                 # every chapter
    python tools/numbers_check.py 06 --typed      # chapter 06, the typed numbers only

Fenced code blocks (exercise solutions and their expected output, which ``tests/test_exercises.py``
runs) are left out. Numbers inside ``$...$`` are read too (an equation's constants are usually "typed"). The
matching is textual: ``0.97`` is found in ``pulls 0.97 at``; ``+0.26`` matches ``0.26``; a number
rounded differently in the prose than in the output (``5.0×`` for a printed ``4.97``) is
reported as typed, which is what a reader would find too.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A number as prose writes it: 12, 0.97, 1,524, 1e-3, 2.5×, with an optional sign.
NUMBER = re.compile(r"(?<![\w.])[+\-−]?(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e[+\-−]?\d+)?)(?![\w])")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z*$`(\[])|\n\s*[*\-] |\n\n")


@dataclass
class Finding:
    cell: int          #: the markdown cell's index in the notebook
    sentence: str
    number: str
    source: str        #: "printed", "in the code" or "typed"
    where: int | None  #: the code cell that prints it or holds it


def _text_outputs(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append("".join(out["text"]))
        for kind in ("text/plain", "text/markdown"):
            if kind in out.get("data", {}):
                parts.append("".join(out["data"][kind]))
    return "\n".join(parts)


def _tokens(text: str) -> set[str]:
    return {m.group(1) for m in NUMBER.finditer(text.replace("−", "-"))}


def check(notebook: Path) -> list[Finding]:
    """Every number of every markdown sentence of ``notebook``, with its source."""
    cells = json.loads(notebook.read_text())["cells"]
    outputs = {i: _tokens(_text_outputs(c)) for i, c in enumerate(cells) if c["cell_type"] == "code"}
    code = {i: _tokens("".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"}
    findings = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = FENCE.sub("", "".join(cell["source"]))  # code blocks (exercise solutions) are not prose
        for sentence in (s.strip() for s in SENTENCE.split(text)):
            for number in sorted(_tokens(sentence), key=sentence.replace("−", "-").find):
                near = sorted(outputs, key=lambda k: abs(k - i))
                printed = next((k for k in near if number in outputs[k]), None)
                if printed is not None:
                    findings.append(Finding(i, sentence, number, "printed", printed))
                    continue
                held = next((k for k in near if number in code[k]), None)
                findings.append(Finding(i, sentence, number, "in the code" if held is not None else "typed", held))
    return findings


def report(notebook: Path, typed_only: bool = False) -> str:
    lines = [f"## {notebook.name}"]
    last = None
    for f in check(notebook):
        if typed_only and f.source != "typed":
            continue
        if f.sentence != last:
            lines.append(f"- cell {f.cell}: {f.sentence[:160]}{'…' if len(f.sentence) > 160 else ''}")
            last = f.sentence
        where = f" (cell {f.where})" if f.where is not None else ""
        lines.append(f"    {f.number}: {f.source}{where}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    typed_only = "--typed" in argv
    prefixes = [a for a in argv if not a.startswith("--")] or [""]
    notebooks = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if any(p.name.startswith(x) for x in prefixes))
    if not notebooks:
        print(f"numbers_check: no chapter in notebooks/ starts with {' or '.join(prefixes)}")
        return 2
    print("\n\n".join(report(nb, typed_only) for nb in notebooks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
