"""The trainer under faults and bad input (issue 12), its layout and its command line (issue 11).

Each test names the case it covers. Everything is tiny (MSBDN.small on 32×32 crops, one or
two steps) and runs with one torch thread.
"""

from __future__ import annotations

import errno
import inspect
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import diffloss
import diffloss.training.checkpoint as C
from diffloss import cli
from diffloss.models.msbdn import MSBDN
from diffloss.training import (
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    train,
)
from diffloss.training.distributed import barrier

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=2, eval_every=0, eval_max_size=40, max_size=80,
                  train_items=8, val=1, seed=0, cpu=True, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


# ------------------------------------------------------------------- layout (issue 11)


def test_train_is_a_function_and_no_module_swaps_its_class():
    assert inspect.isfunction(diffloss.train)
    for path in (REPO / "diffloss").rglob("*.py"):
        assert "__class__ =" not in path.read_text(), path
    for path in (REPO / "diffloss" / "training").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path


def test_cli_help_lists_every_subcommand_and_each_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "convert-adm", "train-tiny-prior"):
        assert command in out
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0 and "usage: diffloss " + command in capsys.readouterr().out


def test_console_script_and_python_dash_m():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "diffloss", "train", "--help"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0 and "--grad-clip" in res.stdout
    script = Path(sys.executable).parent / "diffloss"
    if script.exists():  # installed by pip install -e . (make setup)
        res = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env,
                             timeout=120)
        assert res.returncode == 0 and "convert-adm" in res.stdout


def test_cli_evaluate_scores_a_run_and_its_input(tmp_path, capsys):
    c = cfg(tmp_path, iterations=1)
    train(c, progress=False)
    report = tmp_path / "eval.json"
    assert cli.main(["evaluate", c.out, "--which", "last", "--cpu", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "test:" in out and "ood:" in out and "input PSNR" in out
    assert report.exists()
    assert cli.main(["evaluate", str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err


# ------------------------------------------------------------- 1. run folders (issue 12)


def test_a_run_without_last_pt_is_never_wiped(tmp_path):
    c = cfg(tmp_path, iterations=2, eval_every=1)
    train(c, progress=False)
    out = Path(c.out)
    (out / "last.pt").unlink()  # killed before its first last.pt, or deleted as advised
    best = (out / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(c, progress=False)
    with pytest.raises(FileNotFoundError, match="has no last.pt.*Nothing was changed"):
        train(c, progress=False, resume=True)
    assert (out / "best.pt").read_bytes() == best and (out / "history.json").exists()
    train(c, progress=False, overwrite=True)  # only an explicit overwrite starts over


def test_resume_of_a_missing_folder_is_an_error_not_a_fresh_run(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="holds no run"):
        train(cfg(tmp_path, "misspelt"), progress=False, resume=True)
    assert not (tmp_path / "misspelt").exists()
    assert cli.main(["train", "--out", str(tmp_path / "misspelt"), "--resume", "--cpu",
                     "--no-progress"]) == 1
    assert "error: cannot resume" in capsys.readouterr().err


# ------------------------------------------------------------- 2. nonsense settings


@pytest.mark.parametrize("field,value", [
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("lr", float("inf")), ("lr", float("nan")),
    ("min_lr", float("nan")), ("gamma", -1.0), ("gamma", float("inf")),
    ("lambda_sem", float("nan")), ("nat_weight", float("inf")), ("prior_size", 0),
    ("prior_size", -4), ("t_range", (500, 100)), ("weight_decay", -1.0), ("betas", (0.9, 1.5)),
    ("save_every", 0), ("eval_max_size", 0),
])
def test_nonsense_settings_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        cfg(tmp_path, **{field: value})


def test_cli_nonsense_setting_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--grad-clip", "-1", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "grad_clip must be" in capsys.readouterr().err


# ------------------------------------------------------------- 3. non-finite weights


class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_an_infinite_gradient_with_a_finite_loss_is_never_applied_or_saved(tmp_path, monkeypatch):
    c = cfg(tmp_path, iterations=3, save_every=1)
    train(c.replace(iterations=1), progress=False)
    original = MSBDN.forward
    monkeypatch.setattr(MSBDN, "forward", lambda self, x: _InfiniteGradient.apply(original(self, x)))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 2.*last good checkpoint is .*last\.pt") as err:
        train(c, progress=False, resume=True)
    assert err.value.step == 2 and not math.isfinite(err.value.parts["grad_norm"])
    state = load_checkpoint(Path(c.out) / "last.pt")
    assert state["step"] == 1 and C.nonfinite_count(state["model"]) == 0


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    weights = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(CheckpointError, match="1 non-finite weight"):
        C.save_checkpoint({"step": 1, "model": weights, "config": {}}, tmp_path / "last.pt")
    assert not (tmp_path / "last.pt").exists()


# ------------------------------------------------------------- 5. integrity of stored weights


def test_a_flipped_byte_inside_a_weight_is_caught(tmp_path):
    c = cfg(tmp_path, iterations=1)
    train(c, progress=False)
    last = Path(c.out) / "last.pt"
    state = load_checkpoint(last)
    assert len(state["sha256"]) == 64
    data = bytearray(last.read_bytes())
    # find the bytes of a weight tensor in the file and change one of them
    weight = next(v for v in state["model"].values() if v.numel() > 100)
    raw = weight.contiguous().view(torch.uint8).numpy().tobytes()[:64]
    at = bytes(data).find(raw)
    assert at > 0
    data[at + 3] ^= 0x40
    last.write_bytes(bytes(data))
    torch.load(last, weights_only=True)  # torch itself reads it without complaint ...
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        load_checkpoint(last)  # ... the checksum does not
    with pytest.raises(CheckpointError, match="corrupt"):
        train(c.replace(iterations=2), progress=False, resume=True)


# ------------------------------------------------------------- 8. interrupts and leftovers


def test_sigint_saves_last_pt_of_the_current_step(tmp_path):
    c = cfg(tmp_path, iterations=5, save_every=100)
    # the handler this process started with: Python's default, or SIG_IGN where the test run was
    # started in the background (nohup, `cmd &`): the trainer must put back whichever it found
    before = signal.getsignal(signal.SIGINT)

    def interrupt(row, history):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="SIGINT at step 2") as err:
        train(c, progress=False, callback=interrupt)
    assert err.value.step == 2
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) == before  # restored
    h = train(c, progress=False, resume=True)
    assert [r["step"] for r in h.rows] == [1, 2, 3, 4, 5]


def test_sigterm_in_a_cli_run_saves_and_exits_143(tmp_path):
    out = tmp_path / "term"
    code = (
        "import os, signal, sys\n"
        "from diffloss import cli\n"
        "import diffloss.training.loop as L\n"
        "orig = L.train_step\n"
        "def step(*a, **k):\n"
        "    r = orig(*a, **k)\n"
        "    if k.get('step') == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return r\n"
        "L.train_step = step\n"
        f"sys.exit(cli.main(['train', '--out', {str(out)!r}, '--iters', '6', '--crop', '32',"
        " '--batch', '1', '--train-items', '4', '--max-size', '80', '--eval-every', '0',"
        " '--val', '0', '--cpu', '--no-progress']))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=180)
    assert res.returncode == 143, res.stderr
    assert "SIGTERM at step 2" in res.stderr and "Traceback" not in res.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 2


def test_stale_temporaries_are_removed_and_files_follow_the_umask(tmp_path):
    c = cfg(tmp_path, iterations=1)
    out = Path(c.out)
    out.mkdir()
    (out / ".last.pt.abc123.tmp").write_bytes(b"half")  # a killed save
    old = os.umask(0o022)
    try:
        train(c, progress=False, overwrite=True)
    finally:
        os.umask(old)
    assert not list(out.glob(".*.tmp"))
    for name in ("last.pt", "config.json", "history.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


# ------------------------------------------------------------- 9. messages, not tracebacks


def test_cli_missing_config_bad_yaml_and_file_as_out(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("crop: [1, 2\nlr: :\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--config", str(bad)])
    assert exit_.value.code == 2 and "not valid YAML" in capsys.readouterr().err
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert cli.main(["train", "--out", str(afile), "--cpu", "--no-progress", "--iters", "1"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_previous_file(tmp_path, monkeypatch,
                                                                               capsys):
    c = cfg(tmp_path, iterations=2, save_every=1)
    train(c.replace(iterations=1), progress=False)
    before = (Path(c.out) / "last.pt").read_bytes()

    def full(state, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "_serialize", full)
    argv = ["train", "--out", c.out, "--iters", "2", "--crop", "32", "--batch", "2",
            "--train-items", "8", "--max-size", "80", "--eval-every", "0", "--eval-max-size", "40",
            "--val", "1", "--save-every", "1", "--cpu", "--no-progress", "--resume"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "previous last.pt is kept" in err
    assert (Path(c.out) / "last.pt").read_bytes() == before


# ------------------------------------------------------------- barrier on CUDA (issue 13)


def test_barrier_on_cuda_waits_through_accelerate_and_does_not_recurse():
    calls = []
    stand_in = SimpleNamespace(num_processes=2, device=torch.device("cuda", 0),
                               wait_for_everyone=lambda: calls.append("wait"))
    barrier(stand_in)
    assert calls == ["wait"]
    barrier(SimpleNamespace(num_processes=1, device=torch.device("cuda", 0)))  # no-op
