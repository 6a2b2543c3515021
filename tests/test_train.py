"""The trainer: config round-trip, history files, bit-identical resume, atomic checkpoints,
non-finite losses, evaluation (tiled), the CLI, and a 2-process (gloo) run.

Everything is tiny (MSBDN.small on 32×32 crops, a few steps, a random tiny prior) and runs
with one torch thread: on a shared 2-core machine two OpenMP threads can be 40× slower.
Set ``DIFFLOSS_SKIP_DISTRIBUTED=1`` to skip the 2-process test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_prior, nan_in_diffloss

import diffloss
import diffloss.training.checkpoint as C
from diffloss import cli
from diffloss.data import TEST_IMAGES
from diffloss.training import (
    LOSS_TERMS,
    CheckpointError,
    History,
    LossTerm,
    NonFiniteLossError,
    StepBatchSampler,
    TrainConfig,
    build_model,
    evaluate,
    load_checkpoint,
    load_model,
    register_loss_term,
    restore,
    train,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prior():
    return make_tiny_prior()


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory, prior):
    folder = tmp_path_factory.mktemp("tiny_prior")
    prior.save_pretrained(folder)
    return folder


def cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=3, eval_every=2, eval_max_size=40, max_size=80,
                  train_items=12, val=2, seed=0, cpu=True, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


def state_hash(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- config


def test_config_round_trips_through_json_and_yaml(tmp_path):
    c = TrainConfig(loss="L1+DiffLoss", t_range=(10, 500), ema=0.99, schedule="cosine",
                    eval_tile=96, data="synthetic")
    assert c.loss == "l1+diffloss" and c.fidelity == "l1" and c.terms == ("diffloss",)
    for name in ("c.json", "c.yaml"):
        c.save(tmp_path / name)
        back = TrainConfig.load(tmp_path / name)
        assert back == c and back.t_range == (10, 500)
    assert TrainConfig.from_dict(json.loads((tmp_path / "c.json").read_text())) == c


def test_config_errors_name_the_valid_options(tmp_path):
    with pytest.raises(ValueError, match=r"unknown loss 'l1\+lpips'.*l1, mse, l1\+diffloss"):
        TrainConfig(loss="l1+lpips")
    with pytest.raises(ValueError, match="unknown model 'unet'.*msbdn, msbdn-small"):
        TrainConfig(model="unet")
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="needs root"):
        TrainConfig(data="dense_haze")
    with pytest.raises(ValueError, match="unknown config key.*'lr_rate'.*Valid keys: task, model"):
        TrainConfig.from_dict({"lr_rate": 1.0})
    (tmp_path / "bad.yaml").write_text("loss: l2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown loss 'l2'"):
        TrainConfig.load(tmp_path / "bad.yaml")


def test_registering_a_term_makes_its_loss_valid():
    term = LossTerm("dummy", ("a",), lambda config, prior: torch.nn.Identity())
    register_loss_term(term)
    try:
        assert TrainConfig(loss="l1+dummy").terms == ("dummy",)
    finally:
        del LOSS_TERMS["dummy"]


# ---------------------------------------------------------------------------------- runs


def test_short_run_writes_history_checkpoints_and_config(tmp_path):
    c = cfg(tmp_path, schedule="cosine", warmup=1)
    seen = []
    h = train(c, progress=False, callback=lambda row, hist: seen.append(row["step"]))
    assert seen == [1, 2, 3]
    folder = Path(c.out)
    for name in ("config.json", "history.csv", "history.json", "last.pt", "best.pt"):
        assert (folder / name).exists(), name
    assert TrainConfig.load(folder / "config.json") == c
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    # test = the in-distribution split, ood = the held-out scenes (synthetic haze)
    assert list(rows[0]) == ["step", "seconds", "lr", "total", "fidelity", "grad_norm", "test_psnr",
                             "test_ssim", "ood_psnr", "ood_ssim", "val_psnr", "val_ssim"]
    assert all(float(r["grad_norm"]) > 0 for r in rows[1:])
    steps = [int(r["step"]) for r in rows]
    assert steps == [0, 1, 2, 3]
    assert [s for s, r in zip(steps, rows) if r["test_psnr"]] == [0, 2, 3]  # start, every 2, end
    assert all(float(r["total"]) > 0 for r in rows[1:])
    secs = [float(r["seconds"]) for r in rows]
    assert secs == sorted(secs)
    loaded = History.load(folder)
    assert [r["step"] for r in loaded.rows] == steps and loaded.columns == h.columns
    assert loaded.config == c and loaded.best["step"] in (2, 3)
    assert "val_psnr" in loaded.meta["best_selection"]
    assert loaded.final["step"] == 3 and loaded.final["test_psnr"] == pytest.approx(h.final["test_psnr"])
    assert {e["split"] for e in loaded.evals} == {"test", "ood", "val"}
    ood = next(e for e in loaded.evals if e["split"] == "ood")
    assert len(ood["per_image"]) == len(TEST_IMAGES)  # rocket, motorcycle_left, china, flower
    # best.pt is chosen on validation PSNR, and load_model rebuilds the network from it
    best = load_checkpoint(folder / "best.pt")
    assert best["best"]["val_psnr"] == max(v for _, v in zip(*h.column("val_psnr")) if _ > 0)
    model = load_model(folder, "last")
    assert state_hash(model.state_dict()) == state_hash(h.model.state_dict())
    # a second run into the same folder must be explicit
    with pytest.raises(FileExistsError, match="resume=True"):
        train(c, progress=False)


def test_diffloss_run_logs_nat_and_sem(tmp_path, prior):
    c = cfg(tmp_path, loss="l1+diffloss", iterations=2, val=0, gamma=1e-2)
    h = train(c, progress=False, prior=prior)
    assert h.columns[:8] == ["step", "seconds", "lr", "total", "fidelity", "diffloss", "nat", "sem"]
    assert "val_psnr" not in h.columns and h.best is None and h.paths["best"] is None
    assert "no validation split" in h.meta["best_selection"]
    for row in h.rows[1:]:
        assert row["nat"] > 0 and row["sem"] > 0
        expected = row["fidelity"] + 1e-2 * (row["nat"] + 1e-3 * row["sem"])
        assert row["total"] == pytest.approx(expected, rel=1e-5)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, prior):
    common = dict(loss="l1+diffloss", iterations=4, eval_every=0, schedule="cosine", ema=0.9,
                  grad_accum=2, batch=1, lr=1e-3)
    full = train(cfg(tmp_path, "full", **common), progress=False, prior=prior)
    c = cfg(tmp_path, "parts", **common)
    part = train(c, progress=False, prior=prior, stop_after=2)
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 2 and len(part.rows) == 2
    assert state_hash(part.raw_model.state_dict()) != state_hash(full.raw_model.state_dict())
    resumed = train(c, progress=False, prior=prior, resume=True)
    assert state_hash(resumed.raw_model.state_dict()) == state_hash(full.raw_model.state_dict())
    assert state_hash(resumed.model.state_dict()) == state_hash(full.model.state_dict())  # EMA
    a = load_checkpoint(Path(c.out) / "last.pt")
    b = load_checkpoint(tmp_path / "full" / "last.pt")
    assert state_hash({str(k): v for k, v in _flat(a["optimizer"]).items()}) == \
        state_hash({str(k): v for k, v in _flat(b["optimizer"]).items()})
    assert [r["total"] for r in resumed.rows] == [r["total"] for r in full.rows]
    # a changed setting that is not resumable is refused
    with pytest.raises(ValueError, match="lr: 0.001 → 0.002"):
        train(c.replace(lr=2e-3, iterations=5), progress=False, prior=prior, resume=True)


def _flat(opt_state: dict) -> dict:
    return {(i, k): v for i, s in opt_state["state"].items() for k, v in s.items()
            if isinstance(v, torch.Tensor)}


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    c = cfg(tmp_path, iterations=1, eval_every=0)
    train(c, progress=False)
    last = Path(c.out) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=r"last\.pt is a damaged or truncated PyTorch file"):
        train(c.replace(iterations=2), progress=False, resume=True)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    c = cfg(tmp_path, iterations=2, eval_every=0, save_every=1)
    train(c.replace(iterations=1), progress=False)
    last = Path(c.out) / "last.pt"
    before = last.read_bytes()

    def broken(state, f):  # a crash / full disk in the middle of writing
        f.write(b"PK\x03\x04 half a checkpoint")

    monkeypatch.setattr(C, "_serialize", broken)
    with pytest.raises(CheckpointError, match=r"writing .*last\.pt failed.*previous last\.pt is kept"):
        train(c, progress=False, resume=True)
    assert last.read_bytes() == before
    assert load_checkpoint(last)["step"] == 1
    assert sorted(p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_non_finite_diffloss_part_names_step_and_part(tmp_path, prior, monkeypatch):
    nan_in_diffloss(monkeypatch, "nat", lambda n: n >= 3)
    c = cfg(tmp_path, loss="l1+diffloss", iterations=4, eval_every=0, save_every=1, val=0)
    with pytest.raises(NonFiniteLossError, match=r"step 3: nat is not finite \(and so diffloss, total\)") as err:
        train(c, progress=False, prior=prior)
    assert err.value.step == 3 and err.value.checkpoint == Path(c.out) / "last.pt"
    assert "last good checkpoint" in str(err.value)
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 2
    assert [r["step"] for r in History.load(c.out).rows] == [1, 2]


def test_non_finite_network_output_names_fidelity(tmp_path, monkeypatch):
    from diffloss.models.msbdn import MSBDN

    original = MSBDN.forward

    def diverged(self, x):
        return original(self, x) * float("nan")

    monkeypatch.setattr(MSBDN, "forward", diverged)
    c = cfg(tmp_path, iterations=2, eval_every=0)
    with pytest.raises(NonFiniteLossError, match=r"step 1: fidelity is not finite.*network diverged"):
        train(c, progress=False)
    assert not (Path(c.out) / "last.pt").exists()


def _dense_haze(root: Path, n_train: int = 6, n_test: int = 2) -> Path:
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(0)
    for split, ids in (("train", range(1, n_train + 1)),
                       ("test", range(n_train + 1, n_train + n_test + 1))):
        for sub in ("hazy", "GT"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            gt = torch.randint(0, 256, (3, 40, 52), generator=g, dtype=torch.uint8)
            write_png(gt, str(root / split / "GT" / f"{i:02d}_GT.png"))
            write_png((gt.float() * 0.5 + 100).to(torch.uint8), str(root / split / "hazy" / f"{i:02d}_hazy.png"))
    return root


def test_folder_layout_with_validation_hold_out(tmp_path):
    root = _dense_haze(tmp_path / "dense_haze")
    c = cfg(tmp_path, data="dense_haze", root=str(root), val=2, eval_max_size=32, iterations=2,
            eval_every=2)
    a = train(c, progress=False)
    assert (a.meta["train_items"], a.meta["val_items"], a.meta["test_items"]) == (4, 2, {"test": 2})
    test_eval = next(e for e in a.evals if e["split"] == "test")
    assert [r["name"] for r in test_eval["per_image"]] == ["07", "08"]
    val_names = {r["name"] for e in a.evals if e["split"] == "val" for r in e["per_image"]}
    assert len(val_names) == 2 and not val_names & {"07", "08"}
    # random crops/flips/rotations are seeded per item: a second run is identical
    b = train(c.replace(out=str(tmp_path / "again")), progress=False)
    assert state_hash(a.raw_model.state_dict()) == state_hash(b.raw_model.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_run(tmp_path, prior):
    """On CUDA: bf16 mixed precision by default, the prior on the GPU but not wrapped."""
    c = cfg(tmp_path, loss="l1+diffloss", cpu=False, iterations=3, eval_every=3)
    assert c.resolved_mixed_precision() == "bf16"
    h = train(c, progress=False, prior=prior)
    assert h.meta["device"].startswith("cuda") and h.meta["mixed_precision"] == "bf16"
    assert next(prior.parameters()).is_cuda and not any(p.requires_grad for p in prior.parameters())
    assert all(r["nat"] > 0 for r in h.rows[1:]) and h.final["test_psnr"] > 0
    resumed = train(c.replace(iterations=4), progress=False, prior=prior, resume=True)
    assert [r["step"] for r in resumed.rows] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------- pieces


def test_batches_are_a_pure_function_of_step_and_disjoint_across_ranks():
    one = StepBatchSampler(n=10, batch=4, seed=3)
    later = iter(StepBatchSampler(n=10, batch=4, seed=3, start=5))
    assert next(later) == one.keys(5)
    r0 = StepBatchSampler(n=10, batch=2, seed=3, rank=0, world=2).keys(7)
    r1 = StepBatchSampler(n=10, batch=2, seed=3, rank=1, world=2).keys(7)
    assert r0 + r1 == StepBatchSampler(n=10, batch=4, seed=3).keys(7)
    # each epoch is a permutation: every item exactly once per 10 positions
    items = [k[0] for m in range(5) for k in one.keys(m)]
    assert sorted(items[:10]) == list(range(10)) and sorted(items[10:20]) == list(range(10))


def test_tiled_evaluation():
    from diffloss.data import SyntheticHaze
    from diffloss.models.msbdn import MSBDN

    torch.manual_seed(0)
    model = MSBDN.small()
    ds = SyntheticHaze("test", crop=None, max_size=72)
    whole = evaluate(model, ds)
    assert model.training  # mode restored
    assert len(whole.per_image) == len(TEST_IMAGES) and {r["name"] for r in whole.per_image} == set(ds.image_names)
    big_tile = evaluate(model, ds, tile=128, overlap=16)
    assert big_tile.psnr == pytest.approx(whole.psnr, abs=1e-6)
    tiled = evaluate(model, ds, tile=48, overlap=16)
    assert abs(tiled.psnr - whole.psnr) < 3.0  # same network, seams blended
    x = torch.rand(1, 3, 50, 70)
    # an identity "model": tiles must blend back to the input exactly
    assert torch.allclose(restore(lambda t: t, x, tile=32, overlap=8), x, atol=1e-6)


def test_package_entry_is_callable():
    import inspect

    assert inspect.isfunction(diffloss.train) and diffloss.train is train
    from diffloss import train as entry

    assert entry is train


# ---------------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=path)
    env.pop("WORLD_SIZE", None)
    return env


def test_cli_end_to_end(tmp_path, prior_dir, capsys):
    out = tmp_path / "cli"
    (tmp_path / "c.yaml").write_text(f"crop: 32\nbatch: 2\nmax_size: 80\ntrain_items: 8\nval: 1\n"
                                     f"eval_max_size: 40\nout: {out}\n")
    cmd = [sys.executable, "-m", "diffloss", "train", "--config", str(tmp_path / "c.yaml"),
           "--loss", "l1+diffloss", "--prior", str(prior_dir), "--iters", "2", "--eval-every", "1",
           "--t-range", "0", "500", "--lr", "2e-4", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "done: step 2" in res.stdout
    saved = TrainConfig.load(out / "config.json")
    assert (saved.loss, saved.iterations, saved.t_range, saved.lr, saved.crop) == \
        ("l1+diffloss", 2, (0, 500), 2e-4, 32)
    # The same command line in-process (faster): resume to step 3, then usage errors.
    again = [*cmd[3:], "--resume"]
    again[again.index("--iters") + 1] = "3"
    assert cli.main(again) == 0
    assert [r["step"] for r in History.load(out).rows] == [0, 1, 2, 3]
    assert cli.main(cmd[3:]) == 1  # the folder holds a run: neither --resume nor --overwrite
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--loss", "l1+gan"])
    assert exit_.value.code == 2 and "unknown loss 'l1+gan'" in capsys.readouterr().err


RANK_SCRIPT = """
import hashlib, json, os, sys, torch
from diffloss.training import StepBatchSampler, TrainConfig, train
cfg = TrainConfig.load(sys.argv[1])
h = train(cfg, progress=False)
sd = h.raw_model.state_dict()
digest = hashlib.sha256()
for k in sorted(sd):
    digest.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
rank = int(os.environ["RANK"])
keys = StepBatchSampler(h.meta["train_items"], cfg.batch, cfg.seed, rank=rank,
                        world=h.meta["world_size"]).keys(0)
torch.save(sd, os.path.join(sys.argv[2], f"weights{rank}.pt"))
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump({"sha256": digest.hexdigest(), "world": h.meta["world_size"], "keys": keys}, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(os.environ.get("DIFFLOSS_SKIP_DISTRIBUTED") == "1",
                    reason="DIFFLOSS_SKIP_DISTRIBUTED=1")
def test_two_processes_gloo_end_with_identical_weights(tmp_path):
    """torchrun, 2 CPU processes (accelerate picks gloo): DDP keeps the replicas equal, and
    2 ranks × batch 1 match 1 process × batch 2 (same items, averaged gradients). Values are
    read every 2 steps (the GPU path: a DeviceGuard, fused Adam, reads at the same steps on
    both ranks)."""
    c = cfg(tmp_path, "ddp", batch=1, iterations=3, eval_every=0, lr=1e-3, log_every=2)
    c.save(tmp_path / "ddp.json")
    (tmp_path / "rank.py").write_text(textwrap.dedent(RANK_SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(tmp_path / "rank.py"), str(tmp_path / "ddp.json"), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=150)
    assert res.returncode == 0, "\n".join(
        line for line in res.stderr.splitlines() if "[rank" in line or "Error" in line)[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["sha256"] == r1["sha256"]
    assert {tuple(k) for k in r0["keys"]}.isdisjoint({tuple(k) for k in r1["keys"]})
    # One process with the global batch of 2 takes the same steps, up to float rounding (which
    # Adam amplifies for near-zero gradients: compare with how far the weights moved, lr 1e-3).
    torch.manual_seed(0)
    init = build_model(c.model).state_dict()
    single = train(c.replace(batch=2, out=str(tmp_path / "single")), progress=False)
    ddp = torch.load(tmp_path / "weights0.pt")
    diff = moved = 0.0
    for k, v in single.raw_model.state_dict().items():
        assert (v - ddp[k]).abs().max() < 1e-4, k
        diff += float((v - ddp[k]).abs().sum())
        moved += float((v - init[k]).abs().sum())
    assert moved > 0 and diff / moved < 1e-4
