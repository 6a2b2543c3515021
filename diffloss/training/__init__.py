"""Training a restoration network with a fidelity loss and, optionally, DiffLoss.

One concern a module, in the order a run uses them:

- :mod:`.config` — :class:`TrainConfig`, every knob of a run, validated, saved as
  ``config.json``; :mod:`.fields` — each field's values, type, valid range and command-line help.
- :mod:`.build` — the network and the diffusion prior named by the config.
- :mod:`.data` — the datasets (training crops, validation, the test splits) and batches that
  are a pure function of ``(seed, step)``, so a resumed run sees the same batches.
- :mod:`.terms` — the loss: fidelity plus the registered terms (DiffLoss, perceptual,
  adversarial), ``L_total = fidelity(z, x) + Σ γ_k·term_k(z, x)`` (seed Eq. 8).
- :mod:`.balance` — ``gamma="auto"``: an extra term's γ set so that its pull on the network,
  γ·‖∇θ term‖ / ‖∇θ fidelity‖, is a target ρ (:func:`balance_gamma`, also for your own loop).
- :mod:`.rundir` — the run folder: its lock, and which runs may start, resume or overwrite.
- :mod:`.setup` — everything before the first step, as one :class:`~.setup.Run`; the lr schedule.
- :mod:`.step` — :func:`train_step`, the step on one screen, and the adversarial term's own step.
- :mod:`.guards` — what stops a run: non-finite values, the deferred reads of step values,
  signals, the callback.
- :mod:`.evaluation` — whole-image or tiled restoration and PSNR/SSIM over a dataset.
- :mod:`.validation` — a run's evaluations: ``best.pt`` chosen on validation, the collapse watch.
- :mod:`.checkpoint` — checksummed atomic checkpoints, loading a trained network, a run's
  :class:`~.checkpoint.Checkpointer` (``last.pt``, ``best.pt``, the rescue rule).
- :mod:`.history` — the per-step history and the progress bar.
- :mod:`.loop` — :func:`train`: set up, then the loop (batch → step → record → evaluate →
  save → stop?) on one screen.
- :mod:`.ema`, :mod:`.distributed` — weight averaging, and the devices and processes.

The task table is :mod:`diffloss.tasks` and atomic writes :mod:`diffloss.atomic`, below this
package. The command line is ``diffloss train`` (:mod:`diffloss.cli`).
"""

from .balance import DEFAULT_RHO, GammaBalance, balance_gamma
from .build import MODELS, build_model, load_prior
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig
from .data import Datasets, StepBatchSampler, build_datasets, eval_max_size_for
from .ema import EMA
from .evaluation import EvalResult, evaluate, restore
from .history import History
from .loop import NonFiniteLossError, TrainingInterrupted, train, train_step
from .rundir import RunFolderLocked
from .terms import (
    FIDELITIES,
    LOSS_TERMS,
    LossTerm,
    build_terms,
    gradient_ratio,
    loss_parts,
    parse_loss,
    prior_input,
    register_loss_term,
    valid_losses,
)

__all__ = [
    "DEFAULT_RHO", "EMA", "FIDELITIES", "GammaBalance", "balance_gamma", "LOSS_TERMS", "MODELS", "CheckpointError", "Datasets", "EvalResult",
    "History", "LossTerm", "NonFiniteLossError", "RunFolderLocked", "StepBatchSampler", "TrainConfig",
    "TrainingInterrupted", "build_datasets", "build_model", "build_terms", "eval_max_size_for",
    "evaluate", "gradient_ratio", "load_checkpoint", "load_model", "load_prior", "loss_parts",
    "parse_loss", "prior_input", "register_loss_term", "restore", "save_checkpoint", "train",
    "train_step", "valid_losses",
]
