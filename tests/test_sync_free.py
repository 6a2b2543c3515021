"""The trainer's step without host–device synchronisation, and the compiled prior.

On a GPU every read of a device value (``.item()``, ``float(t)``, ``.tolist()``, a range check)
drains the queue. The trainer reads the step's values every ``log_every`` steps; in between a
:class:`DeviceGuard` makes fused Adam skip every update from the first non-finite value on.
These CPU tests check what can be checked without a GPU: that a guarded step reads nothing
(every read of a floating-point tensor is made to fail), that the guard skips exactly the bad
steps' updates, that deferred reads give the same run as per-step reads, that a NaN between
reads stops the run naming its step, and that ``DiffusionPrior.compile_unet`` (with dynamo's
``eager`` backend, which traces without generating code) gives the eager values and falls back
to eager when compiling fails. ``benchmarks/gpu_perf.py`` counts the syncs on a real GPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_prior, nan_in_diffloss

from diffloss.prior import DiffusionPrior
from diffloss.training import (
    NonFiniteLossError,
    TrainConfig,
    build_model,
    build_terms,
    train,
    train_step,
)
from diffloss.training.guards import DeviceGuard, StepValues, read_all

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prior():
    return make_tiny_prior()


def cfg(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    values = dict(crop=32, batch=2, iterations=6, eval_every=0, max_size=80, train_items=12, val=0,
                  seed=0, cpu=True, loss="l1+diffloss", lr=1e-3, out=str(tmp_path / name))
    values.update(kw)
    return TrainConfig(**values)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_log_every_defaults_per_device_and_is_validated():
    c = TrainConfig()
    assert c.resolved_log_every(torch.device("cpu")) == 1
    assert c.resolved_log_every(torch.device("cuda")) == 10
    assert c.replace(log_every=4).resolved_log_every(torch.device("cpu")) == 4
    with pytest.raises(ValueError, match="log_every"):
        TrainConfig(log_every=0)


def test_a_guarded_step_reads_nothing_back(prior, monkeypatch):
    """Every read of a floating-point tensor fails inside the guarded step (integer reads, such
    as the CPU crop offsets and the timestep range check on CPU, are not device reads)."""
    c = cfg(Path("unused"))
    torch.manual_seed(0)
    net = build_model(c.model)
    terms = build_terms(c, prior)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    guard = DeviceGuard(torch.device("cpu"))
    hazy, clear = _batch()

    def forbidden(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if self.is_floating_point():
                raise AssertionError(f"Tensor.{name} read a float value inside the step")
            return original(self, *args, **kwargs)
        return read

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
            m.setattr(torch.Tensor, name, forbidden(name))
        values, _ = train_step(net, hazy, clear, c, terms, opt,
                               generator=torch.Generator().manual_seed(0), guard=guard)
    assert values._values is None and values.tensor is not None  # still on the device
    assert set(values) == {"total", "fidelity", "diffloss", "nat", "sem", "grad_norm"}
    assert all(torch.isfinite(torch.tensor(list(values.values.values()))))


def test_the_guard_skips_every_update_from_the_first_bad_step_on(prior):
    c = cfg(Path("unused"), loss="l1")
    torch.manual_seed(0)
    net = build_model(c.model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    guard = DeviceGuard(torch.device("cpu"))
    hazy, clear = _batch()
    gen = torch.Generator().manual_seed(0)
    train_step(net, hazy, clear, c, {}, opt, generator=gen, guard=guard)  # step 1: applied
    after_1 = {k: v.clone() for k, v in net.state_dict().items()}
    bad = clear.clone()
    bad[0, 0, 0, 0] = float("nan")
    values = [train_step(net, hazy, bad, c, {}, opt, generator=gen, step=2, guard=guard)[0],
              train_step(net, hazy, clear, c, {}, opt, generator=gen, step=3, guard=guard)[0]]
    for k, v in net.state_dict().items():  # steps 2 (NaN) and 3 (finite, after it): skipped
        assert torch.equal(v, after_1[k]), k
    assert all(float(s["step"]) == 1 for s in opt.state.values())
    read_all(values)
    with pytest.raises(NonFiniteLossError, match="step 2: fidelity is not finite"):
        values[0].check(None)
    values[1].check(None)  # the later step's own values are finite


def test_step_values_read_many_steps_in_one_go():
    vals = [StepValues(s, {"total": torch.tensor(float(s)), "grad_norm": torch.tensor(2.0 * s)},
                       torch.tensor(0)) for s in (1, 2, 3)]
    read_all(vals)
    assert [dict(v) for v in vals] == [{"total": s, "grad_norm": 2.0 * s} for s in (1.0, 2.0, 3.0)]
    assert all(v.tensor is None for v in vals)


def test_deferred_reads_give_the_same_run_as_reading_every_step(tmp_path, prior):
    """Equal by design, on every CPU: both runs use the same (fused) Adam kernel and the same
    data, (t, ε) draws and forward/backward kernels; deferring reads changes only *when* values
    are read, so every value and weight must be bit-identical. (With foreach Adam in one run and
    fused in the other, as before, Adam's first steps turn last-bit differences of near-zero
    gradients into steps of ±lr: 3,715 of 32,768 weights of one layer differed by up to 1.7e-4
    on an AVX2 CPU.)"""
    every = train(cfg(tmp_path, "every", log_every=1), progress=False, prior=prior)
    deferred = train(cfg(tmp_path, "deferred", log_every=4), progress=False, prior=prior)
    assert [r["step"] for r in deferred.rows] == [r["step"] for r in every.rows] == list(range(1, 7))
    for a, b in zip(every.rows, deferred.rows):
        for k in ("total", "fidelity", "nat", "sem", "grad_norm"):
            assert b[k] == a[k], (a["step"], k)
    for k, v in every.raw_model.state_dict().items():
        assert torch.equal(deferred.raw_model.state_dict()[k], v), k


def test_the_trainer_uses_one_adam_kernel_whatever_log_every(tmp_path, prior, monkeypatch):
    """foreach and fused Adam differ in the last bits; the trainer must not switch between them
    with log_every (a resumable setting), or reading values more often would change the run."""
    seen = []
    original = torch.optim.Adam.__init__

    def spy(self, params, *args, **kwargs):
        seen.append(kwargs.get("fused"))
        original(self, params, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", spy)
    for n, log_every in enumerate((1, 3)):
        train(cfg(tmp_path, f"r{n}", log_every=log_every, iterations=1), progress=False, prior=prior)
    assert seen == [True, True]


def test_a_nan_between_reads_stops_the_run_at_its_step(tmp_path, prior, monkeypatch):
    nan_in_diffloss(monkeypatch, "sem", lambda n: n == 3)  # one bad step, finite after it
    c = cfg(tmp_path, log_every=5, save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3: sem is not finite.*updates stopped on the "
                                                 r"device from this step on") as err:
        train(c, progress=False, prior=prior)
    assert err.value.step == 3
    # last.pt of step 2 was written at its (forced) read; nothing after the NaN was saved
    from diffloss.training import History, load_checkpoint
    assert load_checkpoint(Path(c.out) / "last.pt")["step"] == 2
    assert [r["step"] for r in History.load(c.out).rows] == [1, 2]


# ------------------------------------------------------------------------- compiled prior
def _grad(prior: DiffusionPrior, x: torch.Tensor, t: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = prior(x, t, compiled=True)
    (out.eps.square().mean() + out.hspace.square().mean()).backward()
    return out.eps.detach(), out.hspace.detach(), x.grad


def test_compiled_prior_gives_the_eager_values_and_gradients():
    prior = make_tiny_prior()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 700])
    eager = _grad(prior, x, t)
    assert prior.compile_unet(backend="eager") and prior.compiled
    compiled = _grad(prior, x, t)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-6)
    assert "_compiled" not in dict(prior.named_modules())  # no duplicate parameters
    assert list(prior.state_dict()) == list(make_tiny_prior().state_dict())


def test_a_failing_compile_falls_back_to_eager_with_a_warning():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    prior = make_tiny_prior()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    expected = prior(x, t).eps
    prior.compile_unet(backend=broken_backend)
    prior(x, t)  # calls other than DiffLoss's stay eager: nothing compiles, no warning
    assert prior.compiled
    with pytest.warns(RuntimeWarning, match="runs eagerly from now on"):
        out = prior(x, t, compiled=True)
    assert not prior.compiled and torch.allclose(out.eps, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior(x, t, compiled=True)  # eager now, no more warnings


def test_compile_prior_in_a_run_records_the_first_step(tmp_path, monkeypatch):
    prior = make_tiny_prior()
    original = DiffusionPrior.compile_unet
    monkeypatch.setattr(DiffusionPrior, "compile_unet",
                        lambda self, mode=None, backend="inductor": original(self, backend="eager"))
    h = train(cfg(tmp_path, iterations=2, compile_prior=True), progress=False, prior=prior)
    assert prior.compiled and h.meta["first_step_seconds"] > 0
    assert all(r["nat"] > 0 for r in h.rows)


def test_under_a_loss_scaler_an_overflowing_gradient_is_not_an_error():
    """fp16: GradScaler skips a step whose gradient overflowed and lowers its scale; that is
    normal, not divergence. A non-finite loss still stops the run."""
    inf = float("inf")
    v = StepValues(4, {"total": torch.tensor(0.5), "grad_norm": torch.tensor(inf)}, torch.tensor(0))
    v.check(None, scaler=True)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient at step 4"):
        v.check(None, scaler=False)
    bad = StepValues(5, {"total": torch.tensor(inf), "grad_norm": torch.tensor(inf)}, torch.tensor(0))
    with pytest.raises(NonFiniteLossError, match="step 5"):
        bad.check(None, scaler=True)


def test_profiles_carry_compile_prior_into_the_config():
    from diffloss import profiles

    assert profiles.get("paper").compile_prior and not profiles.get("gpu").compile_prior
    assert TrainConfig.for_profile(profiles.get("paper")).compile_prior is True
    assert TrainConfig.for_profile(profiles.get("small")).compile_prior is False


def test_resume_with_deferred_reads_is_bit_identical(tmp_path, prior):
    common = dict(iterations=5, log_every=3, schedule="cosine", grad_accum=2, batch=1)
    full = train(cfg(tmp_path, "full", **common), progress=False, prior=prior)
    c = cfg(tmp_path, "parts", **common)
    part = train(c, progress=False, prior=prior, stop_after=2)  # stops between two reads
    assert [r["step"] for r in part.rows] == [1, 2]
    resumed = train(c, progress=False, prior=prior, resume=True)
    for k, v in full.raw_model.state_dict().items():
        assert torch.equal(resumed.raw_model.state_dict()[k], v), k
    assert [r["total"] for r in resumed.rows] == [r["total"] for r in full.rows]


def test_a_refused_step_leaves_no_gradient_behind():
    c = cfg(Path("unused"), loss="l1")
    torch.manual_seed(0)
    net = build_model(c.model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    hazy, clear = _batch()
    clear[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="nothing from this step was applied"):
        train_step(net, hazy, clear, c, {}, opt, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in net.parameters()) and not opt.state
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
