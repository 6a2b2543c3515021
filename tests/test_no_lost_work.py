"""Nothing a user owns is lost, nothing wrong is silent (issue 31): ``--overwrite`` replaces a
run only once the new one is built, a folder that is not a run is never written over, every
failure after step 0 saves ``last.pt`` first, a resume never shortens a run, and a network that
is NaN only in ``eval()`` mode never gets a best checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffloss import cli
from diffloss.loss import restoration_loss
from diffloss.training import NonFiniteLossError, TrainConfig, load_checkpoint, train
from diffloss.training.rundir import NotARunFolder

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=2, eval_every=0, eval_max_size=40, max_size=80,
                  train_items=4, val=0, seed=0, cpu=True, out=str(tmp_path / name),
                  model="tests.fixtures_nets:TinyNet", model_kwargs={"width": 4})
    values.update(kw)
    return TrainConfig(**values)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


# ------------------------------------------------------------------ 1. --overwrite checks first

@pytest.mark.parametrize("bad", [
    dict(root="/no/such/data", data="dense_haze"),               # a typo in --root
    dict(prior="/no/such/prior", loss="l1+diffloss"),             # a bad --prior
    dict(model="no_such_module:Net", model_kwargs=None),          # a model that does not import
    dict(model="tests.fixtures_nets:HalfSize", model_kwargs=None),  # one that fails on a batch
    dict(model="tests.fixtures_nets:RaisesInInit", model_kwargs=None),
])
def test_overwrite_with_a_bad_input_leaves_the_old_run_as_it_was(tmp_path, bad):
    c = cfg(tmp_path)
    train(c, progress=False)
    before = snapshot(Path(c.out))
    assert {"last.pt", "config.json", "history.json", "history.csv"} <= set(before)
    with pytest.raises((ValueError, OSError)):
        train(c.replace(**bad), progress=False, overwrite=True)
    assert snapshot(Path(c.out)) == before


def test_overwrite_with_good_inputs_still_starts_over(tmp_path):
    c = cfg(tmp_path, iterations=2)
    train(c, progress=False)
    train(c.replace(iterations=1), progress=False, overwrite=True)
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 1


# ------------------------------------------------------------ 2. a folder that is not a run

def test_a_model_folder_is_never_taken_for_a_run(tmp_path, tiny_prior, capsys):
    prior_dir = tmp_path / "prior"
    tiny_prior.unet.save_pretrained(prior_dir)
    before = snapshot(prior_dir)
    for overwrite in (False, True):
        with pytest.raises(NotARunFolder, match="not a training run folder.*Nothing was changed"):
            train(cfg(tmp_path).replace(out=str(prior_dir)), progress=False, overwrite=overwrite)
    args = ["train", "--out", str(prior_dir), "--cpu", "--iters", "1", "--no-progress", "--crop", "32",
            "--max-size", "80", "--train-items", "4", "--val", "0", "--eval-every", "0"]
    assert cli.main([*args, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "not a training run folder" in err and "--overwrite" not in err.split("(for the traceback")[0]
    assert snapshot(prior_dir) == before


# ------------------------------------------------- 5. every failure after step 0 saves last.pt

def test_an_error_mid_run_saves_the_last_finished_step_first(tmp_path):
    """eval_every=0, save_every never reached: before, the whole run was lost."""
    c = cfg(tmp_path, iterations=10, model="tests.fixtures_nets:FailsAtStep",
            model_kwargs={"width": 4, "fail_at": 4})
    with pytest.raises(RuntimeError, match="broken at training call 4") as info:
        train(c, progress=False)
    assert any("last.pt of step 3" in n and "--resume" in n for n in info.value.__notes__)
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 3


def test_a_bad_image_met_mid_run_saves_last_pt_and_says_where(tmp_path, monkeypatch):
    from diffloss.training import data as tdata

    original = tdata.KeyedPairs.__getitem__
    calls = {"n": 0}

    def getitem(self, key):
        calls["n"] += 1
        if calls["n"] > 2 * 3:  # batch 2: the 4th step's batch is "truncated"
            raise ValueError("cannot decode data/train/hazy/07_hazy.png (image file is truncated)")
        return original(self, key)

    monkeypatch.setattr(tdata.KeyedPairs, "__getitem__", getitem)
    c = cfg(tmp_path, iterations=10)
    with pytest.raises(ValueError, match="truncated") as info:
        train(c, progress=False)
    step = load_checkpoint(Path(c.out) / "last.pt")["step"]
    assert step >= 2 and any(f"last.pt of step {step}" in n for n in info.value.__notes__)


def test_a_diverged_step_saves_the_step_before(tmp_path, monkeypatch, tiny_prior):
    from tests.conftest import nan_in_diffloss

    nan_in_diffloss(monkeypatch, "nat", lambda n: n == 3)
    c = cfg(tmp_path, iterations=10, loss="l1+diffloss", gamma=1.0)
    with pytest.raises(NonFiniteLossError) as info:
        train(c, progress=False, prior=tiny_prior)
    assert info.value.step == 3 and load_checkpoint(Path(c.out) / "last.pt")["step"] == 2
    assert info.value.checkpoint == Path(c.out) / "last.pt"
    # issue 44, case 20: the message does not also say that no checkpoint was written
    assert "No checkpoint had been written" not in str(info.value)
    assert any("last.pt of step 2" in n for n in info.value.__notes__)


# --------------------------------------------------------------- 6. a resume never shortens

def test_resume_with_fewer_iterations_than_done_is_refused_and_changes_nothing(tmp_path, capsys):
    c = cfg(tmp_path, iterations=2)
    train(c, progress=False)
    meta = json.loads((Path(c.out) / "history.json").read_text())["meta"]
    assert "first_step_seconds" in meta
    before = snapshot(Path(c.out))
    args = ["train", "--out", c.out, "--resume", "--iterations", "1", "--cpu", "--no-progress",
            "--crop", "32", "--max-size", "80", "--train-items", "4", "--val", "0", "--eval-every", "0",
            "--model", "tests.fixtures_nets:TinyNet", "--model-kwargs", '{"width": 4}']
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "already at step 2" in err and err.count("\n") == 1
    assert snapshot(Path(c.out)) == before
    # a resume of the finished run with its own iterations keeps the first step's time
    train(c, progress=False, resume=True)
    assert json.loads((Path(c.out) / "history.json").read_text())["meta"]["first_step_seconds"] == \
        meta["first_step_seconds"]


# ------------------------------------------------------- 7. the fidelity-only loss checks too

@pytest.mark.parametrize("value,match", [(float("nan"), "non-finite"), (float("inf"), "non-finite"),
                                         (255.0, r"values in \[")])
def test_restoration_loss_without_diffloss_refuses_what_diffloss_refuses(value, match):
    good = torch.rand(1, 3, 8, 8)
    bad = good.clone()
    bad[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=match):
        restoration_loss(bad, good, diffloss=None)
    assert math.isfinite(float(restoration_loss(good, good.flip(-1), diffloss=None).total))


# --------------------------------------------------- 8. NaN only in eval(): never a best.pt

def test_a_network_nan_only_in_eval_mode_fails_and_writes_no_best(tmp_path, capsys):
    c = cfg(tmp_path, iterations=4, eval_every=2, val=1, model="tests.fixtures_nets:NaNInEval")
    with pytest.raises(NonFiniteLossError, match="eval\\(\\) mode is not finite"):
        train(c, progress=False)
    assert not (Path(c.out) / "best.pt").exists()
    # a checkpoint of that network cannot be scored: an error, not "PSNR nan dB" with status 0
    good = cfg(tmp_path, "good", iterations=1)
    train(good, progress=False)
    state = load_checkpoint(Path(good.out) / "last.pt")
    state["config"]["model"] = "tests.fixtures_nets:NaNInEval"
    from diffloss.training import save_checkpoint

    save_checkpoint(state, tmp_path / "nan.pt")
    assert cli.main(["evaluate", str(tmp_path / "nan.pt"), "--cpu"]) == 1
    assert "non-finite scores" in capsys.readouterr().err


# ------------------------------------------------- a full disk: one line, the old file kept

def test_torchs_full_disk_error_is_one_clear_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc:672] ...`` (40 lines through the CLI, before)."""
    from diffloss.training import CheckpointError
    from diffloss.training import checkpoint as C

    c = cfg(tmp_path, iterations=1)
    train(c, progress=False)
    before = (Path(c.out) / "last.pt").read_bytes()

    def full(state, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448\n"
                           "frame #0: c10::ThrowEnforceNotMet(...)")

    monkeypatch.setattr(C, "_serialize", full)
    with pytest.raises(CheckpointError, match="disk is probably full.*previous last.pt is kept") as info:
        C.save_checkpoint(load_checkpoint(Path(c.out) / "last.pt"), Path(c.out) / "last.pt")
    assert "\n" not in str(info.value) and "frame #0" not in str(info.value)
    assert (Path(c.out) / "last.pt").read_bytes() == before
    assert not list(Path(c.out).glob(".last.pt.*.tmp"))
