"""Every exercise solution of the chapters runs.

The chapters (``notebooks/src/NN_*.py``) end with exercises whose worked solutions are hidden in
``<details><summary>Solution</summary> ... </details>`` markdown blocks, each with a
self-contained ```python block, followed by "Expected output:" and a ```text block with what
it prints. This test extracts every such block, runs it in a fresh namespace, one thread, with
the figures of any plot going to a temporary folder, and compares what it printed with the
expected output shown to the reader.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import time
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))
#: Chapters that must have 2-3 exercises, each with a solution.
CHAPTERS_WITH_EXERCISES = ("01", "02", "03", "04", "05")
#: A solution must stay fast enough for CI on 2 CPU cores (seconds; the aim is well under 20).
TIME_LIMIT_S = 60

DETAILS = re.compile(r"<details>\s*<summary>\s*Solution\s*</summary>(.*?)</details>", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
EXPECTED = re.compile(r"Expected output:\s*```text\n(.*?)```", re.S)
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


def expected_outputs(src: Path) -> list[str | None]:
    """The "Expected output:" text of every solution block, in order (None where missing)."""
    return [(m.group(1) if (m := EXPECTED.search(details)) else None)
            for details in DETAILS.findall(markdown(src))]


NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:e[-+]\d+)?")


def same_output(printed: str, expected: str) -> bool:
    """The printed text equals the expected one, numbers within two units of their last shown
    digit or 0.1 % (CPU kernels differ in the last bits; a changed result does not pass)."""
    a, b = printed.strip().replace("−", "-"), expected.strip().replace("−", "-")
    if NUMBER.split(a) != NUMBER.split(b):  # the words and layout around the numbers
        return False
    for x, y in zip(NUMBER.finditer(a), NUMBER.finditer(b)):
        mantissa, _, exponent = y.group(0).partition("e")
        unit = 10.0 ** (-len(mantissa.partition(".")[2]) + float(exponent or 0))
        if abs(float(x.group(0)) - float(y.group(0))) > max(2 * unit, 1e-3 * abs(float(y.group(0)))):
            return False
    return True


def test_same_output_tolerates_last_digits_only():
    assert same_output("PSNR 31.86 dB\nTrue", "PSNR 31.87 dB\nTrue")
    assert not same_output("PSNR 31.56 dB", "PSNR 31.86 dB")
    assert not same_output("pulls: False", "pulls: True")
    assert same_output("ρ 9.70e-03", "ρ 9.71e-03") and not same_output("ρ 9.7e-03", "ρ 9.7e-02")


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


def run_solution(src: Path, index: int) -> str:
    """Run solution ``index`` of chapter ``src`` as the reader would, in a fresh namespace with
    one torch thread and any plot closed after; returns what it printed. (Also used by
    ``tools/refresh_expected.py``, which writes that output into the chapter.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = solutions(src)[index]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{src.name}:solution-{index + 1}", "exec"), {"__name__": "__solution__"})
    finally:
        torch.set_num_threads(threads)
        plt.close("all")
    return printed.getvalue()


@pytest.mark.parametrize(("src", "index"), CASES)
def test_solution_runs(src, index, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLOSS_FIGURES", str(tmp_path))
    monkeypatch.setenv("DIFFLOSS_PROFILE", "ci")
    monkeypatch.chdir(ROOT)
    expected = expected_outputs(src)[index]
    assert expected is not None, f"{src.name} solution {index + 1} shows no expected output"
    start = time.perf_counter()
    printed = run_solution(src, index)
    elapsed = time.perf_counter() - start
    if elapsed > TIME_LIMIT_S:  # the reader's budget, reported; never a failure that depends on the machine
        warnings.warn(f"{src.name} solution {index + 1} took {elapsed:.0f} s (budget {TIME_LIMIT_S} s)",
                      stacklevel=1)
    assert same_output(printed, expected), (
        f"{src.name} solution {index + 1} printed\n{printed}\nbut shows\n{expected}")
