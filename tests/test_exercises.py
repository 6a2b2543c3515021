"""Every exercise solution of the chapters runs.

The chapters (``notebooks/src/NN_*.py``) end with exercises whose worked solutions are hidden in
``<details><summary>Solution</summary> ... </details>`` markdown blocks, each with a
self-contained ```python block. This test extracts every such block and runs it in a fresh
namespace, one thread, with the figures of any plot going to a temporary folder.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
#: Chapters that must have 2-3 exercises, each with a solution.
CHAPTERS_WITH_EXERCISES = ("01", "02", "03")
#: A solution must stay fast enough for CI on 2 CPU cores (seconds; the aim is well under 20).
TIME_LIMIT_S = 60

DETAILS = re.compile(r"<details>\s*<summary>\s*Solution\s*</summary>(.*?)</details>", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
EXERCISE = re.compile(r"\*\*Exercise (\d+)\.(\d+)\b")


def _parse_percent():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.parse_percent


def markdown(src: Path) -> str:
    return "\n\n".join(text for kind, text in _parse_percent()(src.read_text()) if kind == "markdown")


def solutions(src: Path) -> list[str]:
    """The python code of every solution block of a chapter source, in order."""
    blocks = []
    for details in DETAILS.findall(markdown(src)):
        code = PYTHON.findall(details)
        assert code, f"{src.name}: a solution without a ```python block"
        blocks.append("\n".join(code))
    return blocks


CASES = [pytest.param(src, i, id=f"{src.stem[:2]}-solution-{i + 1}")
         for src in SOURCES for i in range(len(solutions(src)))]


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_EXERCISES)
def test_each_chapter_has_two_or_three_exercises_with_solutions(chapter):
    src = next(s for s in SOURCES if s.stem.startswith(chapter))
    text = markdown(src)
    numbers = EXERCISE.findall(text)
    assert 2 <= len(numbers) <= 3, f"{src.name}: {len(numbers)} exercises"
    assert all(major == str(int(chapter)) for major, _ in numbers), numbers
    assert [int(minor) for _, minor in numbers] == list(range(1, len(numbers) + 1))
    assert len(solutions(src)) == len(numbers), f"{src.name}: every exercise needs one hidden solution"


@pytest.mark.parametrize(("src", "index"), CASES)
def test_solution_runs(src, index, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = solutions(src)[index]
    monkeypatch.setenv("DIFFLOSS_FIGURES", str(tmp_path))
    monkeypatch.setenv("DIFFLOSS_PROFILE", "ci")
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        exec(compile(code, f"{src.name}:solution-{index + 1}", "exec"), {"__name__": "__solution__"})
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"{src.name} solution {index + 1} took {elapsed:.0f} s"
