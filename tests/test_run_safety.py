"""Nothing lost, nothing silently wrong (issue 20): a run folder's lock, config values checked
by type before anything is written, and a checkpoint whose config names another network."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffloss import cli
from diffloss.training import (
    RunFolderLocked,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train,
)
from diffloss.training.rundir import LOCK_FILE, RunLock

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=2, eval_every=0, eval_max_size=40, max_size=80,
                  train_items=4, val=0, seed=0, cpu=True, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--cpu", "--iters", "2", "--no-progress", "--crop", "32",
            "--max-size", "80", "--train-items", "4", "--val", "0", "--eval-every", "0", *extra]


# ----------------------------------------------------------------------- the run folder lock
@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of tmp_path/'run' (as a second training would)."""
    out = tmp_path / "run"
    out.mkdir()
    code = textwrap.dedent(f"""
        import sys, time
        from diffloss.training.rundir import RunLock
        RunLock({str(out)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_training_in_a_locked_folder_stops_at_once(holder, capsys):
    out, proc = holder
    with pytest.raises(RunFolderLocked, match=rf"in use by another training run: process {proc.pid} "):
        train(cfg(out.parent), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    assert cli.main(_train_args(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"process {proc.pid}" in err and "choose another out folder" in err
    # resume and overwrite are refused too: the other run owns the folder
    for flag in ("--resume", "--overwrite"):
        assert cli.main(_train_args(out, flag)) == 1
        assert "in use by another training run" in capsys.readouterr().err


def test_a_stale_lock_after_a_crash_is_reported_and_taken_over(holder, caplog):
    out, proc = holder
    proc.send_signal(signal.SIGKILL)  # crashed: the lock file stays, the flock goes
    proc.wait()
    assert (out / LOCK_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="diffloss.train"):
        history = train(cfg(out.parent), progress=False)
    assert f"stale lock of process {proc.pid}" in caplog.text
    assert history.meta["stale_lock"]["pid"] == proc.pid
    assert json.loads((out / "history.json").read_text())["meta"]["stale_lock"]["pid"] == proc.pid
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_two_trainings_started_together_do_not_share_a_folder(tmp_path):
    """The case of the report: both exited 0 with their rows interleaved in history.csv."""
    out = tmp_path / "x"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "diffloss", *_train_args(out), "--iters", "20"]  # last wins
    procs = [subprocess.Popen([*args, "--seed", str(s)], stderr=subprocess.PIPE, text=True, env=env)
             for s in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 1], [0, 0]), results
    if codes == [0, 0]:  # the second started after the first had finished: refused as a rerun
        pytest.skip("the two runs did not overlap on this machine")
    failed = next(err for code, err in results if code == 1)
    assert "in use by another training run" in failed or "already holds a run" in failed
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 21))  # one run's rows


def test_the_lock_is_released_when_a_run_fails_and_an_empty_folder_is_removed(tmp_path):
    bad = cfg(tmp_path, "new", crop=96)  # larger than the images: fails while building the data
    with pytest.raises(ValueError, match="larger than image"):
        train(bad, progress=False)
    assert not (tmp_path / "new").exists()  # made for the run, left empty: removed
    train(cfg(tmp_path, "new"), progress=False)  # not "in use": the lock was released
    assert not (tmp_path / "new" / LOCK_FILE).exists()


def test_the_same_process_cannot_take_a_held_lock_twice(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderLocked):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released: free again
        pass


# ----------------------------------------------------------------------- config value types
@pytest.mark.parametrize("values,message", [
    ({"cpu": "no", "augment": "false"},
     r"augment must be true or false, got the string 'false'; cpu must be true or false, got "
     r"the string 'no'"),
    ({"iterations": "2"}, r"iterations must be an integer, got the string '2'"),
    ({"crop": 32.7}, r"crop must be an integer, got 32.7 \(float\)"),
    ({"betas": 0.9}, r"betas must be a list of 2 values \(a number, a number\), got 0.9"),
    ({"lr": "fast"}, r"lr must be a number, got the string 'fast'"),
    ({"seed": True}, r"seed must be an integer, got True \(bool\)"),
    ({"gamma": [1.0]}, r"gamma must be a number or a string or null \(None\), got \[1.0\]"),
    ({"t_range": [0, "x"]}, r"t_range must be a list of 2 values"),
    ({"loss": 3}, r"loss must be a string, got 3 \(int\)"),
])
def test_config_values_of_the_wrong_type_are_refused_naming_each_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_lossless_conversions_are_kept():
    c = TrainConfig.from_dict({"crop": 64.0, "lr": 1, "betas": [0.9, 0.99], "out": Path("runs/a"),
                               "t_range": [0, 200.0]})
    assert (c.crop, c.lr, c.betas, c.out, c.t_range) == (64, 1.0, (0.9, 0.99), "runs/a", (0, 200))
    assert type(c.crop) is int and type(c.lr) is float


def test_a_yaml_config_of_the_wrong_type_writes_nothing(tmp_path, capsys):
    """iterations: "2" used to write config.json and the history, then die with a TypeError."""
    config = tmp_path / "run.yaml"
    config.write_text(f'iterations: "2"\ncpu: "no"\nout: {tmp_path / "run"}\n')
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--config", str(config), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "iterations must be an integer" in err and "cpu must be" in err
    assert not (tmp_path / "run").exists()


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-4 as a string; a config means the number."""
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-4\nmin_lr: 0\ngamma: 3\nlambda_sem: 1.0e-3\n")
    c = TrainConfig.load(config)
    assert (c.lr, c.min_lr, c.gamma, c.lambda_sem) == (1e-4, 0.0, 3.0, 1e-3)


# ------------------------------------------- a checkpoint whose config names another network
def test_evaluate_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(tmp_path, capsys):
    history = train(cfg(tmp_path, "run"), progress=False)
    state = load_checkpoint(Path(history.folder) / "last.pt")
    state.pop("sha256", None)
    state["config"]["model"] = "msbdn"  # weights of msbdn-small, config of the full network
    save_checkpoint(state, tmp_path / "edited.pt")
    assert cli.main(["evaluate", str(tmp_path / "edited.pt"), "--cpu"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "do not fit the network its config names (model='msbdn')" in err
