"""Every command, every bad input a user can make: one line on stderr, never a traceback, a
non-zero exit status, and nothing of the user's changed (issue 31). Grow the table with every
case fixed. Usage errors (argparse: exit 2) print the usage first; everything else is one line."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from diffloss import cli

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--cpu", "--no-progress", "--iters", "2", "--crop", "32", "--max-size", "80",
         "--train-items", "4", "--val", "0", "--eval-every", "0"]

#: TRAIN for a dataset layout: --max-size and --train-items shape the synthetic data only.
TRAIN_LAYOUT = [a for i, a in enumerate(TRAIN) if a not in ("--max-size", "--train-items")
                and TRAIN[i - 1] not in ("--max-size", "--train-items")]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def _module(tmp: Path, name: str, body: str) -> str:
    """Write the user's module ``name`` (again: a changed module is imported afresh)."""
    (tmp / f"{name}.py").write_text(textwrap.dedent(body))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return name


def _run_folder(tmp: Path) -> Path:
    """A finished run of a user's network (module ``usernet`` in ``tmp``)."""
    _module(tmp, "usernet", """
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            def forward(self, y):
                return (y + self.conv(y)).clamp(0, 1)
    """)
    assert cli.main([*TRAIN, "--out", str(tmp / "run"), "--model", "usernet:Net"]) == 0
    return tmp / "run"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# each case: (id, setup(tmp) -> argv, expected exit status, a phrase the one line must hold)
Case = tuple[str, Callable[[Path], list[str]], int, str]
CASES: list[Case] = [
    # -- train
    ("train: missing --config", lambda t: [*TRAIN, "--config", str(t / "nope.yaml"), "--out", str(t / "o")],
     1, "nope.yaml"),
    ("train: out is a file", lambda t: (t / "f").write_text("x") and [*TRAIN, "--out", str(t / "f")],
     1, "is a file"),
    ("train: out is a model folder", lambda t: (t / "m").mkdir() or (t / "m" / "config.json").write_text(
        '{"_class_name": "UNet2DModel"}') and [*TRAIN, "--out", str(t / "m"), "--overwrite"],
     1, "not a training run folder"),
    ("train: model module does not import", lambda t: [*TRAIN, "--out", str(t / "o"), "--model", "nosuch:Net"],
     1, "cannot import 'nosuch'"),
    ("train: model module has a syntax error", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--model", _module(t, "broken", "def f(:\n    pass\n") + ":Net"],
     1, "SyntaxError"),
    ("train: model constructor raises", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--model", _module(t, "raiser", """
            import torch
            class Net(torch.nn.Module):
                def __init__(self):
                    raise RuntimeError("weights file mynet.pth not found")
        """) + ":Net"], 1, "mynet.pth not found"),
    ("train: --overwrite with a typo in --root", lambda t: [
        *TRAIN_LAYOUT, "--out", str(_run_folder(t)), "--model", "usernet:Net", "--overwrite",
        "--data", "dense_haze", "--root", str(t / "dat")], 1, "dat"),
    ("train: --resume after the model's code changed", lambda t: (
        _run_folder(t), _module(t, "usernet", """
            import torch
            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3, 3, 5, padding=2)
                def forward(self, y):
                    return y
        """))[0] and ["train", "--out", str(t / "run"), "--resume", "--iters", "3", "--no-progress"],
     1, "do not fit the network 'usernet:Net' as it is now"),
    ("train: --resume of a missing folder", lambda t: ["train", "--out", str(t / "none"), "--resume"],
     1, "holds no run"),
    ("train: --resume with fewer iterations", lambda t: [
        "train", "--out", str(_run_folder(t)), "--resume", "--iters", "1", "--no-progress"],
     1, "already at step 2"),
    ("train: bad prior", lambda t: [*TRAIN, "--out", str(t / "o"), "--loss", "l1+diffloss",
                                    "--prior", str(t / "no_prior")], 1, "no_prior"),
    ("train: nonsense value", lambda t: [*TRAIN, "--out", str(t / "o"), "--lr", "-1"], 2, "lr"),
    # -- evaluate
    ("evaluate: missing path", lambda t: ["evaluate", str(t / "nope")], 1, "no such run folder"),
    ("evaluate: empty folder", lambda t: (t / "empty").mkdir() or ["evaluate", str(t / "empty")], 1, "empty"),
    ("evaluate: truncated checkpoint", lambda t: (_run_folder(t), _truncate(t / "run" / "last.pt"))[0] and
     ["evaluate", str(t / "run"), "--which", "last", "--cpu"], 1, "last.pt"),
    ("evaluate: --data with a missing root", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--data", "dense_haze",
        "--root", str(t / "dat")], 1, "dat"),
    ("evaluate: --semantics with no crops", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--semantics", "--crops", "0"],
     2, "--crops must be from 1 to 256"),
    # issue 44, case by case (the numbers)
    ("44.1 evaluate: --json is the run's own checkpoint", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--json", str(t / "run" / "last.pt")],
     1, "not a report of `diffloss evaluate`"),
    ("44.1 evaluate: --json is the run's config.json", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--json", str(t / "run" / "config.json")],
     1, "not a report of `diffloss evaluate`"),
    ("44.14 evaluate: --json is a folder", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--json", str(t)], 1, "is a folder"),
    ("44.3 evaluate: --eval-max-size 0", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--eval-max-size", "0"],
     2, "--eval-max-size must be at least 1"),
    ("44.12 evaluate: negative --overlap", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--tile", "40", "--overlap", "-1"],
     2, "--overlap at least 0"),
    ("44.10 evaluate: too many --crops", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--semantics", "--crops", "100000"],
     2, "--crops must be from 1 to 256"),
    ("44.10 evaluate: --crops without --semantics", lambda t: [
        "evaluate", str(_run_folder(t)), "--which", "last", "--cpu", "--crops", "8"],
     2, "give --semantics too"),
    ("44.4 train: NaN in --model-kwargs", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--model-kwargs", '{"width": NaN}'], 2, "NaN, not a finite number"),
    ("44.4 train: Infinity in --model-kwargs", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--model-kwargs", '{"width": Infinity}'], 2, "Infinity"),
    ("44.8 train: --rho beyond its range", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--loss", "l1+diffloss", "--gamma", "auto", "--rho", "1e9"],
     2, "rho must be None or a number in (0, 1000]"),
    ("44.9 train: --stop-on-collapse that can never fire", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--stop-on-collapse"], 2, "stop_on_collapse needs eval_every > 0"),
    ("44.5 train: an empty --config", lambda t: (t / "c.yaml").write_text("# nothing yet\n") and [
        *TRAIN, "--out", str(t / "o"), "--config", str(t / "c.yaml")], 2, "sets no value"),
    ("44.5 train: a key twice in a YAML --config", lambda t: (t / "c.yaml").write_text(
        "lr: 0.001\nlr: 0.1\n") and [*TRAIN, "--out", str(t / "o"), "--config", str(t / "c.yaml")],
     2, "the key 'lr' is given twice"),
    ("44.5 train: a key twice in a JSON --config", lambda t: (t / "c.json").write_text(
        '{"lr": 0.001, "lr": 0.1}') and [*TRAIN, "--out", str(t / "o"), "--config", str(t / "c.json")],
     2, "the key 'lr' is given twice"),
    ("44.16 train: a network without parameters", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--model", _module(t, "noparams", """
            import torch
            class Net(torch.nn.Module):
                def forward(self, y):
                    return y
        """) + ":Net"], 1, "has no trainable parameters"),
    ("44.17 train: --prior is a training run", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--loss", "l1+diffloss", "--prior", str(_run_folder(t))],
     1, "is a training run of diffloss"),
    ("44.17 train: --prior is a run's last.pt", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--loss", "l1+diffloss", "--prior", str(_run_folder(t) / "last.pt")],
     1, "is a checkpoint of a training run of diffloss"),
    ("44.7 train: --max-size and --train-items with a dataset layout", lambda t: [
        *TRAIN, "--out", str(t / "o"), "--data", "dense_haze", "--root", str(t)],
     2, "--max-size and --train-items shape the synthetic data only"),
    ("44.11 train-tiny-prior: --lr 0", lambda t: ["train-tiny-prior", "--out", str(t / "p"), "--lr", "0"],
     2, "--lr must be a finite number > 0"),
    ("44.11 train-tiny-prior: --lr -1", lambda t: ["train-tiny-prior", "--out", str(t / "p"), "--lr", "-1"],
     2, "--lr must be a finite number > 0"),
    ("44.18 train-tiny-prior: --size 5", lambda t: ["train-tiny-prior", "--out", str(t / "p"), "--size", "5"],
     2, "--size must be a multiple of 4"),
    # -- convert-adm
    ("convert-adm: missing checkpoint", lambda t: ["convert-adm", str(t / "adm.pt"), str(t / "out")],
     1, "adm.pt"),
    ("convert-adm: not a checkpoint", lambda t: (t / "adm.pt").write_text("hello") and
     ["convert-adm", str(t / "adm.pt"), str(t / "out")], 1, "adm.pt"),
    ("44.15 evaluate: a pickled nn.Module", lambda t: torch.save(torch.nn.Linear(2, 2), t / "m.pt") or [
        "evaluate", str(t / "m.pt"), "--cpu"], 1, "holds a pickled Python object (a whole nn.Module"),
    ("44.15 evaluate: a text file", lambda t: (t / "t.pt").write_text("hello\n") and [
        "evaluate", str(t / "t.pt"), "--cpu"], 1, "t.pt is a text file, not a PyTorch file"),
    ("44.15 evaluate: an empty file", lambda t: (t / "e.pt").write_bytes(b"") or [
        "evaluate", str(t / "e.pt"), "--cpu"], 1, "e.pt is empty (0 bytes)"),
    ("44.15 train: --resume with an empty last.pt", lambda t: (
        _run_folder(t), (t / "run" / "last.pt").write_bytes(b""))[0] and [
        "train", "--out", str(t / "run"), "--resume", "--iters", "3", "--no-progress"], 1, "empty (0 bytes)"),
    ("44.15 convert-adm: a PNG", lambda t: (t / "a.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)) and [
        "convert-adm", str(t / "a.pt"), str(t / "out")], 1, "a.pt is a PNG image, not a PyTorch file"),
    ("44.15 convert-adm: a training run's last.pt", lambda t: [
        "convert-adm", str(_run_folder(t) / "last.pt"), str(t / "out")], 1, "is a diffloss training checkpoint"),
    ("44.15 convert-adm: a pickled nn.Module", lambda t: torch.save(torch.nn.Linear(2, 2), t / "m.pt") or [
        "convert-adm", str(t / "m.pt"), str(t / "out")], 1, "torch.save(model.state_dict(), path)"),
    # -- train-tiny-prior
    ("train-tiny-prior: out is a file", lambda t: (t / "f").write_text("x") and
     ["train-tiny-prior", "--out", str(t / "f"), "--steps", "1"], 1, "is an existing file"),
    ("train-tiny-prior: out holds other files", lambda t: (t / "d").mkdir() or (t / "d" / "notes.txt").write_text(
        "mine") and ["train-tiny-prior", "--out", str(t / "d"), "--steps", "1"], 1, "notes.txt"),
    ("train-tiny-prior: zero steps", lambda t: ["train-tiny-prior", "--out", str(t / "p"), "--steps", "0"],
     2, "--steps"),
]


@pytest.mark.parametrize("name,setup,status,phrase", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(name, setup, status, phrase, tmp_path, monkeypatch,
                                                     capsys):
    monkeypatch.chdir(tmp_path)  # the user's own modules are imported from the current folder
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = setup(tmp_path)
    capsys.readouterr()
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) if status == 2 else _no_exit() as info:
        code = cli.main(argv)
    if status == 2:
        code = info.value.code
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    assert "\x1b" not in err, "a terminal escape code in the message"
    lines = err.strip().splitlines()
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert phrase in lines[-1], err
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file of the user's changed"


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError):
        cli.main(["train", "--out", str(tmp_path / "o"), "--cpu", "--model", "nosuch:Net", "--debug"])
    monkeypatch.setenv("DIFFLOSS_DEBUG", "1")
    with pytest.raises(ValueError):
        cli.main(["train", "--out", str(tmp_path / "o"), "--cpu", "--model", "nosuch:Net"])


def test_an_error_from_a_dataloader_worker_is_its_own_last_line():
    try:
        raise ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most "
                         "recent call last):\n  File \"x.py\", line 1\nValueError: cannot decode "
                         "07_hazy.png (truncated)\n")
    except ValueError as exc:
        assert cli.one_line(exc) == "ValueError: cannot decode 07_hazy.png (truncated)"


def test_a_subcommands_usage_error_prints_the_subcommands_usage(tmp_path, capsys):
    """Issue 44, case 19: ``usage: diffloss evaluate ...``, not the top-level ``usage: diffloss COMMAND``."""
    with pytest.raises(SystemExit):
        cli.main(["train-tiny-prior", "--out", str(tmp_path / "p"), "--lr", "0"])
    err = capsys.readouterr().err
    assert "usage: diffloss train-tiny-prior" in err and "--lr must be" in err


def test_a_run_without_evaluation_prints_its_done_line(tmp_path, capsys, monkeypatch):
    """Issue 44, case 21: ``--eval-every 0 --no-progress`` still says that it finished, and where."""
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TRAIN, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("done: step 2, not evaluated") and str(tmp_path / "o") in out[-1]


def test_an_existing_report_may_be_replaced(tmp_path, capsys, monkeypatch):
    """Issue 44, case 1: --json onto an earlier report of evaluate is allowed (and rewritten)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = _run_folder(tmp_path)
    report = tmp_path / "report.json"
    args = ["evaluate", str(run), "--which", "last", "--cpu", "--json", str(report)]
    assert cli.main(args) == 0 and cli.main(args) == 0
    import json

    assert {"checkpoint", "splits", "metric_space"} <= json.loads(report.read_text()).keys()
