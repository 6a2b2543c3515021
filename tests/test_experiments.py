"""The paired-seed protocol of the chapters: verdicts that never overstate, paired scores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffloss.diagnostics import paired_differences
from diffloss.experiments import paired_scores, verdict


@pytest.mark.parametrize("a,b,minimum,expected", [
    ([20.0, 21.0, 22.0], [20.5, 21.6, 22.4], 0.1, "better in every seed (+0.500 dB ± 0.100)"),
    ([20.0, 21.0, 22.0], [19.5, 20.4, 21.6], 0.1, "worse in every seed (-0.500 dB ± 0.100)"),
    # chapter 04 printed "no consistent difference (…, signs −−−)" here: every seed agrees,
    # the effect is below the minimum size
    ([0.70, 0.71, 0.72], [0.695, 0.704, 0.712], 0.01,
     "same sign in every seed, below the minimum effect of 0.01 dB"),
    ([20.0, 21.0, 22.0], [20.3, 20.8, 22.2], 0.1, "no consistent difference (+0.100 dB ± 0.265, signs +−+)"),
    ([20.0], [21.0], 0.1, "no consistent difference (+1.000 dB, signs +)"),  # one seed: no claim
    # chapter 05 printed "worse in every seed" for these per-seed differences (issue 32)
    ([20.0, 21.0, 22.0], [19.652, 20.9997, 21.633], 0.1,
     "same sign in every seed, but 1 of 3 seeds below the minimum effect of 0.1 dB"),
])
def test_verdicts_speak_only_of_effects_every_seed_agrees_on(a, b, minimum, expected):
    assert verdict(paired_differences(a, b), " dB", True, minimum).startswith(expected)


def test_lower_is_better_metrics_turn_the_words_around():
    d = paired_differences([1.0, 1.1, 1.2], [0.8, 0.9, 1.0])
    assert verdict(d, "", higher_is_better=False).startswith("better in every seed")


def test_paired_scores_take_final_and_best_rows_per_seed():
    def h(final, best):
        return SimpleNamespace(final={"test_psnr": final, "test_ssim": 0.5},
                               best={"test_psnr": best, "test_ssim": 0.6})

    hist = {("L1", 0): h(20.0, 20.5), ("L1", 1): h(21.0, 21.2),
            ("D", 0): h(20.4, 20.4), ("D", 1): h(21.6, 21.0)}
    final = paired_scores(hist, ["L1", "D"], [0, 1], "test", "final")
    assert final["L1"]["psnr"] == [20.0, 21.0] and final["D"]["psnr"] == [20.4, 21.6]
    assert final["paired_difference"]["D"]["psnr"]["per_seed"] == pytest.approx([0.4, 0.6])
    best = paired_scores(hist, ["L1", "D"], [0, 1], "test", "best")
    assert best["paired_difference"]["D"]["psnr"]["per_seed"] == pytest.approx([-0.1, -0.2])


# ------------------------------------------------------------------ runs in parallel processes

def _tiny_base(tmp_path):
    from diffloss.training import TrainConfig

    return TrainConfig(crop=32, batch=2, iterations=4, eval_every=2, eval_max_size=40, max_size=80,
                       train_items=8, val=2, seed=0, cpu=True, model="tests.fixtures_nets:TinyNet",
                       model_kwargs={"width": 4}, out=str(tmp_path / "unused"))


def _same_run(a, b):
    """Two histories of one run: equal rows (wall time aside), best row and final weights."""
    import torch

    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.rows]
    assert {k: v for k, v in (a.best or {}).items() if k != "seconds"} == \
           {k: v for k, v in (b.best or {}).items() if k != "seconds"}
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parallel_runs_give_the_sequential_bits_in_the_sequential_order(tmp_path, tiny_prior, one_thread):
    """parallel=2 spawns two workers with this process's thread count: every (loss, seed) run
    must equal the one trained here, and the log must come in the same order."""
    from diffloss.experiments import run_paired

    base = _tiny_base(tmp_path)
    losses = {"L1": dict(loss="l1"), "L1 + DiffLoss": dict(loss="l1+diffloss", gamma=3.0)}
    logs: dict[int, list[str]] = {1: [], 2: []}
    runs = {p: run_paired(base, losses, [0, 1], tmp_path / f"p{p}", prior=tiny_prior,
                          log=logs[p].append, parallel=p) for p in (1, 2)}
    assert list(runs[1]) == list(runs[2]) == [("L1", 0), ("L1 + DiffLoss", 0), ("L1", 1), ("L1 + DiffLoss", 1)]
    for key in runs[1]:
        _same_run(runs[1][key], runs[2][key])
        assert runs[2][key].folder == tmp_path / "p2" / f"{dict(losses[key[0]])['loss']}_seed{key[1]}"
    strip = [line.split("|")[0].split(":")[0] + line.split("|")[1] for line in logs[1]]
    assert strip == [line.split("|")[0].split(":")[0] + line.split("|")[1] for line in logs[2]]
    # DiffLoss acted: the runs of a seed differ
    assert runs[2]["L1", 0].rows[-1]["total"] != runs[2]["L1 + DiffLoss", 0].rows[-1]["total"]


def test_an_error_in_a_worker_is_raised_here_naming_the_run(tmp_path, tiny_prior):
    from diffloss.parallel import train_in_processes

    good = _tiny_base(tmp_path).replace(out=str(tmp_path / "good"), iterations=2)
    bad = good.replace(out=str(tmp_path / "bad"), model="tests.fixtures_nets:HalfSize", model_kwargs=None)
    results = train_in_processes([good, bad], prior=tiny_prior, processes=2, threads=1)
    history, seconds = next(results)
    assert history.folder == tmp_path / "good" and seconds > 0
    with pytest.raises(ValueError, match="HalfSize") as info:
        next(results)
    assert any(str(tmp_path / "bad") in note for note in info.value.__notes__)


def test_no_more_workers_than_cores_or_runs():
    from diffloss.parallel import available_cores, train_in_processes

    assert available_cores() >= 1
    assert list(train_in_processes([], processes=4)) == []


def test_longer_runs_start_first():
    from diffloss.parallel import expected_cost
    from diffloss.training import TrainConfig

    l1, dl = TrainConfig(loss="l1", iterations=10), TrainConfig(loss="l1+diffloss", iterations=10)
    assert expected_cost(dl) > expected_cost(l1) > expected_cost(l1.replace(iterations=5))


def test_a_stopped_comparison_stops_its_workers_and_keeps_their_last_step(tmp_path, tiny_prior):
    """Leaving the loop early (an error, Ctrl-C) sets the stop event: the long run, which its
    worker took before the short one (longest first, one queue), ends at its next step with
    ``last.pt`` saved, and every worker started is joined before ``close()`` returns. Nothing
    here waits on time: ``last.pt`` exists only if the run stopped through its callback (its
    ``save_every`` is never reached), so a killed worker would fail the test."""
    import multiprocessing

    from diffloss.parallel import train_in_processes
    from diffloss.training import load_checkpoint

    short = _tiny_base(tmp_path).replace(out=str(tmp_path / "short"), iterations=2)
    long = short.replace(out=str(tmp_path / "long"), iterations=100_000, eval_every=100_000)
    results = train_in_processes([short, long], prior=tiny_prior, processes=2, threads=1)
    history, _ = next(results)  # the long run is training meanwhile
    assert history.folder == tmp_path / "short"
    results.close()
    assert not multiprocessing.active_children()
    step = load_checkpoint(tmp_path / "long" / "last.pt")["step"]
    assert 0 < step < 100_000


def test_a_worker_that_dies_is_one_clear_error_and_no_process_is_left(tmp_path, tiny_prior):
    """A worker killed outright (here: the run's model calls os._exit) is a RuntimeError
    saying what to try, and the other worker is stopped and joined."""
    import multiprocessing

    from diffloss.parallel import train_in_processes

    good = _tiny_base(tmp_path).replace(out=str(tmp_path / "good"), iterations=100_000,
                                        eval_every=100_000)
    dead = good.replace(out=str(tmp_path / "dead"), iterations=2,
                        model="tests.fixtures_nets:ExitsTheProcess", model_kwargs=None)
    with pytest.raises(RuntimeError, match="died .*parallel=1"):
        list(train_in_processes([dead, good], prior=tiny_prior, processes=2, threads=1))
    assert not multiprocessing.active_children()


def test_a_script_without_a_main_guard_gets_told_to_add_one(tmp_path):
    """Spawned workers import the calling script again: without ``if __name__ ==
    "__main__":`` they fail at start, and the parent says so in one line."""
    import subprocess
    import sys

    script = tmp_path / "compare.py"
    script.write_text(
        "from diffloss.parallel import train_in_processes\n"
        "from diffloss.training import TrainConfig\n"
        f"cfgs = [TrainConfig(out={str(tmp_path / 'a')!r}), TrainConfig(out={str(tmp_path / 'b')!r})]\n"
        "list(train_in_processes(cfgs, processes=2, threads=1))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and last.startswith("RuntimeError: a worker process failed to start"), out.stderr
    assert '__name__ == "__main__"' in last
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------- run folders by label; diverged runs (issues 31, 32)

def test_two_labels_of_one_loss_train_in_folders_of_their_own(tmp_path, tiny_prior, one_thread):
    from diffloss.experiments import run_folder_names, run_paired

    base = _tiny_base(tmp_path).replace(iterations=1, eval_every=1)
    losses = {"γ = 1": dict(loss="l1+diffloss", gamma=1.0), "γ = 3": dict(loss="l1+diffloss", gamma=3.0),
              "L1": dict(loss="l1")}
    assert run_folder_names(base, losses) == {"γ = 1": "γ_=_1", "γ = 3": "γ_=_3", "L1": "l1"}
    runs = run_paired(base, losses, [0], tmp_path / "runs", prior=tiny_prior, log=None)
    assert {h.folder.name for h in runs.values()} == {"γ_=_1_seed0", "γ_=_3_seed0", "l1_seed0"}
    assert runs["γ = 1", 0].config.gamma == 1.0 and runs["γ = 3", 0].config.gamma == 3.0
    with pytest.raises(ValueError, match="same run folder"):
        run_folder_names(base, {"a b": dict(loss="l1"), "a_b": dict(loss="l1")})


def test_a_diverged_run_is_a_result_and_the_comparison_goes_on(tmp_path, tiny_prior, one_thread,
                                                                monkeypatch):
    """The DiffLoss run of seed 0 turns NaN at its 3rd step: it is recorded as diverged at step
    3 with its last good scores, the other runs train, and the verdict counts it."""
    from diffloss.experiments import diverged, paired_scores, run_paired
    from tests.conftest import nan_in_diffloss

    nan_in_diffloss(monkeypatch, "nat", lambda n: n == 3)
    base = _tiny_base(tmp_path).replace(iterations=4, eval_every=2)
    losses = {"L1": dict(loss="l1"), "L1 + DiffLoss": dict(loss="l1+diffloss", gamma=3.0)}
    lines: list[str] = []
    runs = run_paired(base, losses, [0, 1], tmp_path / "runs", prior=tiny_prior, log=lines.append)
    assert len(runs) == 4 and diverged(runs) == [("L1 + DiffLoss", 0, 3)]
    assert "DIVERGED at step 3; last good scores (step 2)" in lines[1]
    assert runs["L1 + DiffLoss", 0].final["step"] == 2 and runs["L1 + DiffLoss", 1].final["step"] == 4
    scores = paired_scores(runs, list(losses), [0, 1], "test")
    assert scores["diverged"] == {"L1 + DiffLoss": [0]}
    d = scores["paired_difference"]["L1 + DiffLoss"]["psnr"]
    assert verdict(d, " dB", True, 0.1).endswith("1 of 2 seeds had a run that diverged")


def test_runs_without_evaluation_are_logged_and_refused_by_paired_scores(tmp_path, one_thread):
    from diffloss.experiments import paired_scores, run_paired

    base = _tiny_base(tmp_path).replace(iterations=1, eval_every=0)
    lines: list[str] = []
    runs = run_paired(base, {"L1": dict(loss="l1"), "MSE": dict(loss="mse")}, [0], tmp_path / "r",
                      log=lines.append)
    assert all("no evaluation (eval_every=0)" in line for line in lines)
    with pytest.raises(ValueError, match="eval_every"):
        paired_scores(runs, ["L1", "MSE"], [0], "test")


def test_aligned_curves_pad_a_run_that_stopped_early_with_nan():
    import math

    from diffloss.experiments import aligned_curves
    from diffloss.training import History

    full = History(rows=[{"step": s, "test_psnr": 10.0 + s} for s in (0, 2, 4)])
    short = History(rows=[{"step": 0, "test_psnr": 9.0}, {"step": 1, "test_psnr": None},
                          {"step": 2, "test_psnr": 11.0}])
    steps, values = aligned_curves([full, short], "test_psnr")
    assert steps == [0, 2, 4] and values[0].tolist() == [10.0, 12.0, 14.0]
    assert values[1, :2].tolist() == [9.0, 11.0] and math.isnan(values[1, 2])
    assert values.nanmean(0).tolist() == [9.5, 11.5, 14.0]
