"""No silent collapse (issue 32): a run built to collapse (a black output from the start) is
noticed once, at its first evaluation after step 0, and stopped there on request with last.pt."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from diffloss.training import TrainConfig, load_checkpoint, train
from diffloss.training.validation import CollapseWatch, saturated_share

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path: Path, model: str = "tests.fixtures_nets:GoesBlack", **kw) -> TrainConfig:
    values = dict(crop=16, batch=2, iterations=6, eval_every=2, eval_max_size=32, max_size=64,
                  train_items=4, val=2, seed=0, cpu=True, out=str(tmp_path / "run"), model=model)
    values.update(kw)
    return TrainConfig(**values)


def test_a_collapsing_run_is_reported_once_and_runs_on(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = train(cfg(tmp_path), progress=False)
    notes = [w for w in caught if "collapsed" in str(w.message)]
    assert len(notes) == 1 and "step 4 (2 evaluations in a row)" in str(notes[0].message)
    assert h.meta["collapse"]["step"] == 4 and h.meta["collapse"]["split"] == "val"
    assert "sit at 0 or 1" in h.meta["collapse"]["reason"] and "below the degraded input" in h.meta["collapse"]["reason"]
    assert h.meta["finished"] and h.rows[-1]["step"] == 6


def test_stop_on_collapse_stops_there_with_last_pt(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="collapsed at step 4"):
        h = train(cfg(tmp_path, stop_on_collapse=True), progress=False)
    assert not h.meta["finished"] and "collapse at step 4" in h.meta["stopped"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def test_a_working_run_is_not_called_collapsed(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        h = train(cfg(tmp_path, model="tests.fixtures_nets:TinyNet", model_kwargs={"width": 4}),
                  progress=False)
    assert "collapse" not in h.meta


def test_the_watch_compares_with_the_degraded_input_and_its_own_darkness() -> None:
    dark = [(torch.full((3, 16, 16), 0.001), torch.full((3, 16, 16), 0.2))]  # the input itself at the clamp
    watch = CollapseWatch.for_split("val", dark, torch.device("cpu"), y_channel=False)
    assert watch.baseline_saturated == 1.0
    assert watch.check(1, psnr=watch.input_psnr - 1.0, saturated=1.0) is None  # as dark as its input
    assert watch.check(2, psnr=watch.input_psnr - 3.5, saturated=None) is None  # one evaluation
    assert "below the degraded input" in watch.check(3, psnr=watch.input_psnr - 3.5, saturated=None)
    assert watch.check(4, psnr=-50.0, saturated=None) is None  # once


def test_the_untrained_network_is_the_start_not_a_collapse() -> None:
    """An untrained MSBDN's output is mostly outside [0, 1]: staying there is not a collapse."""
    pairs = [(torch.full((3, 16, 16), 0.4), torch.full((3, 16, 16), 0.5))]
    watch = CollapseWatch.for_split("val", pairs, torch.device("cpu"), y_channel=False)
    assert watch.check(0, psnr=5.0, saturated=0.9) is None
    assert watch.check(1, psnr=4.0, saturated=0.95) is None  # half of the free values: not more
    assert "below the degraded input" in watch.check(2, psnr=1.0, saturated=0.95, last=True)


def test_a_black_phase_that_passes_is_not_a_collapse_but_an_end_in_black_is() -> None:
    pairs = [(torch.full((3, 16, 16), 0.1), torch.full((3, 16, 16), 0.5))]
    watch = CollapseWatch.for_split("val", pairs, torch.device("cpu"), y_channel=False)
    assert watch.check(0, psnr=10.0, saturated=0.3) is None
    assert watch.check(1, psnr=10.0, saturated=1.0) is None  # black once (IAT under DiffLoss, early)
    assert watch.check(2, psnr=12.0, saturated=0.2) is None  # and out of it
    assert "sit at 0 or 1" in watch.check(3, psnr=12.0, saturated=0.99, last=True)  # ends black
    assert saturated_share(torch.tensor([0.0, 0.5, 1.0, 0.999])) == 0.75


def test_the_cli_says_a_run_stopped_on_a_collapse(tmp_path: Path, capsys) -> None:
    """Issue 44, case 22: a --stop-on-collapse stop is named on the last line, not called 'done'."""
    from diffloss import cli

    argv = ["train", "--cpu", "--no-progress", "--model", "tests.fixtures_nets:GoesBlack", "--crop", "16",
            "--batch", "2", "--iters", "6", "--eval-every", "2", "--eval-max-size", "32", "--max-size", "64",
            "--train-items", "4", "--val", "2", "--out", str(tmp_path / "run"), "--stop-on-collapse"]
    with pytest.warns(UserWarning, match="collapsed at step 4"):
        assert cli.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("stopped: collapse at step 4 (stop_on_collapse)"), last
