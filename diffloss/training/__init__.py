"""Training a restoration network with a fidelity loss and, optionally, DiffLoss.

One concern a module, in the order a run uses them:

- :mod:`.config` — :class:`TrainConfig`, every knob of a run, validated, saved as ``config.json``.
- :mod:`.build` — the network and the diffusion prior named by the config.
- :mod:`.data` — the datasets (training crops, validation, the test splits) and batches that
  are a pure function of ``(seed, step)``, so a resumed run sees the same batches.
- :mod:`.terms` — the loss: fidelity plus the registered terms (DiffLoss, perceptual,
  adversarial), ``L_total = fidelity(z, x) + Σ γ_k·term_k(z, x)`` (seed Eq. 8).
- :mod:`.balance` — ``gamma="auto"``: an extra term's γ set so that its pull on the network,
  γ·‖∇θ term‖ / ‖∇θ fidelity‖, is a target ρ (:func:`balance_gamma`, also for your own loop).
- :mod:`.collapse` — a run whose output goes black (or worse than its input) is reported once.
- :mod:`.setup` — everything before the first step, as one :class:`~.setup.Run`.
- :mod:`.loop` — :func:`train` and :func:`train_step`, the step on one screen.
- :mod:`.evaluation` — whole-image or tiled restoration and PSNR/SSIM over a dataset.
- :mod:`.ema`, :mod:`.checkpoint`, :mod:`.atomic`, :mod:`.rundir`, :mod:`.history`,
  :mod:`.distributed` — weight averaging, checksummed atomic checkpoints, the run folder's
  rules, the per-step history, and the processes.

The command line is ``diffloss train`` (:mod:`diffloss.cli`).
"""

from .balance import DEFAULT_RHO, GammaBalance, balance_gamma
from .build import MODELS, build_model, load_prior
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig
from .data import Datasets, StepBatchSampler, build_datasets, eval_max_size_for
from .ema import EMA
from .evaluation import EvalResult, evaluate, restore
from .history import History
from .lock import RunFolderLocked
from .loop import NonFiniteLossError, TrainingInterrupted, train, train_step
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
