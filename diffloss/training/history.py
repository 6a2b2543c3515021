"""The history of a run: one row per step, evaluations, written as training goes; and the
progress bar that shows it live (:class:`ProgressBar`)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import atomic_write_text
from ..tasks import TASKS
from .checkpoint import BEST, LAST
from .config import CONFIG_FILE, TrainConfig

__all__ = ["History", "ProgressBar", "HISTORY_CSV", "HISTORY_JSON", "history_columns", "run_meta"]

HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"


@dataclass
class History:
    """What a run did: one row per step, written to ``history.csv``/``history.json``.

    Row keys (``columns``): ``step``, ``seconds`` (wall time since the start of the run, across
    resumes), ``lr``, ``total``, ``fidelity`` and each extra term's parts (``diffloss``, ``nat``,
    ``sem``; DiffLoss values are unweighted, ``total = fidelity + γ·diffloss``), then at
    evaluation steps ``test_psnr``, ``test_ssim`` (the main test split), ``<split>_psnr``,
    ``<split>_ssim`` for each further test split (``ood`` for synthetic haze) and, with a
    validation split, ``val_psnr``, ``val_ssim``. Step 0 holds the evaluation of the untrained network. Missing values are
    ``None`` (empty in the CSV). ``evals`` keeps the per-image values of every evaluation.

    After :func:`train`, ``model`` is the trained network (eval mode; EMA weights when the
    run used EMA; ``raw_model`` holds the plain weights then). Neither is saved.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    config: TrainConfig | None = None
    folder: Path | None = None
    best: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    raw_model: nn.Module | None = field(default=None, repr=False)

    def resume_from(self, state: dict[str, Any]) -> None:
        """The rows, evaluations and best of a run saved at ``state["step"]`` (``last.pt``), and
        its first step's time (kept by a resume that runs no step)."""
        start = int(state["step"])
        if "first_step_seconds" in (state.get("meta") or {}):
            self.meta["first_step_seconds"] = state["meta"]["first_step_seconds"]
        self.rows = [r for r in state.get("history", []) if r["step"] <= start]
        self.best = state.get("best")
        self.evals = [e for e in state.get("evals", []) if e["step"] <= start]

    def new_row(self, **values: Any) -> dict[str, Any]:
        """A row with every column (``None`` where no value is given)."""
        row: dict[str, Any] = {c: None for c in self.columns}
        row.update(values)
        return row

    def record(self, row: dict[str, Any], write: bool) -> None:
        """Append a finished row (and to ``history.csv`` when ``write``: the main process)."""
        self.rows.append(row)
        if write:
            self.append_csv(row)

    # -- access -----------------------------------------------------------------------------
    @property
    def paths(self) -> dict[str, Path | None]:
        """Files of the run: ``config``, ``csv``, ``json``, ``last``, ``best`` (``None`` if absent)."""
        if self.folder is None:
            return {k: None for k in ("config", "csv", "json", "last", "best")}
        f = self.folder
        return {"config": f / CONFIG_FILE, "csv": f / HISTORY_CSV, "json": f / HISTORY_JSON,
                "last": f / LAST, "best": (f / BEST) if (f / BEST).exists() else None}

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of the rows where ``name`` has a value (e.g. ``"test_psnr"``)."""
        pairs = [(r["step"], r[name]) for r in self.rows if r.get(name) is not None]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        """The rows with a test evaluation."""
        return [r for r in self.rows if r.get("test_psnr") is not None]

    @property
    def final(self) -> dict[str, Any] | None:
        """The last evaluated row (final test PSNR/SSIM)."""
        rows = self.eval_rows
        return rows[-1] if rows else None

    def __len__(self) -> int:
        return len(self.rows)

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "best": self.best,
                "config": self.config.to_dict() if self.config else None,
                "evals": self.evals, "meta": self.meta}

    def write_json(self, folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        atomic_write_text(folder / HISTORY_JSON, json.dumps(_json_safe(self.to_json()), indent=1) + "\n")

    def write_csv(self, folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(_csv_row(row, self.columns))
        atomic_write_text(folder / HISTORY_CSV, buf.getvalue())

    def append_csv(self, row: dict[str, Any], folder: Path | None = None) -> None:
        folder = Path(folder or self.folder or ".")
        with open(folder / HISTORY_CSV, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                _csv_row(row, self.columns))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> History:
        """Read ``history.json`` of a run folder (the CSV holds the same rows)."""
        folder = Path(folder)
        path = folder / HISTORY_JSON if folder.is_dir() else folder
        if not path.exists():
            raise FileNotFoundError(f"no {HISTORY_JSON} in {folder}")
        data = json.loads(path.read_text())
        config = TrainConfig.from_dict(data["config"]) if data.get("config") else None
        return cls(rows=data["rows"], columns=data["columns"], config=config, folder=path.parent,
                   best=data.get("best"), evals=data.get("evals", []), meta=data.get("meta", {}))


class ProgressBar:
    """The run's ``tqdm.auto`` bar (main process with ``progress=True``; elsewhere every call does
    nothing): steps done, the live loss and the last test PSNR (``psnr``)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str, rows: list[dict[str, Any]],
                 compiling: bool = False) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if enabled else None
        self.compiling = self.bar is not None and compiling  # the prior is compiled in the first step
        self.psnr = next((r["test_psnr"] for r in reversed(rows) if r.get("test_psnr") is not None), None)
        if self.compiling:
            self.bar.set_postfix_str("compiling the prior: the first step takes longer", refresh=True)

    def first_step(self, seconds: float) -> None:
        if self.compiling:
            self.bar.set_postfix_str(f"first step {seconds:.1f} s (compiling the prior)")

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, row: dict[str, Any]) -> None:
        """The loss of ``row`` and the last test PSNR."""
        if self.bar is not None:
            post = {"loss": f"{row['total']:.4f}"}
            if self.psnr is not None:
                post["test_psnr"] = f"{self.psnr:.2f}"
            self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _csv_row(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    return {c: ("" if row.get(c) is None else row[c]) for c in columns}


def _json_safe(obj: Any) -> Any:
    """NaN/inf → strings JSON can hold (``"nan"``, ``"inf"``), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def history_columns(config: TrainConfig, has_val: bool, test_splits: list[str]) -> list[str]:
    """The columns of a run's history: step, time, lr, the loss parts, ‖∇θ‖, the scores."""
    from .terms import LOSS_TERMS

    cols = ["step", "seconds", "lr", "total", "fidelity"]
    for name in config.terms:
        cols += [name, *LOSS_TERMS[name].parts]
    cols.append("grad_norm")
    for split in test_splits:
        cols += [f"{split}_psnr", f"{split}_ssim"]
    if has_val:
        cols += ["val_psnr", "val_ssim"]
    return cols


def run_meta(config: TrainConfig, world: int, device: Any, mixed: str, iterations: int, n_train: int,
             val_ds: Any, tests: dict[str, Any]) -> dict[str, Any]:
    """``history.meta`` at the start of a run: where and how it runs, and on what."""
    return {"world_size": world, "device": str(device), "mixed_precision": mixed,
            "metric_space": TASKS[str(config.task)].metric_space, "iterations": iterations,
            "train_items": n_train, "val_items": 0 if val_ds is None else len(val_ds),
            "test_items": {k: len(d) for k, d in tests.items()},
            "best_selection": ("val_psnr" if val_ds is not None else
                               "none: no validation split, best.pt is not written "
                               "(report the last checkpoint)")}
