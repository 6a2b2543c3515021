"""The paper's three tasks, and what each one picks: the synthetic degradation (offline), the
real dataset's folder layout, the default restorer and the metric convention of its field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TASKS", "Task", "task_of_layout"]


@dataclass(frozen=True)
class Task:
    """One restoration task (``TrainConfig.task``)."""

    name: str
    #: What the degraded input suffers from, for messages and figures.
    degradation: str
    #: ``TrainConfig.data`` of the real dataset (a :class:`~diffloss.data.PairedImageDataset` layout).
    layout: str
    #: The real dataset, as papers name it.
    dataset: str
    #: The default restorer (``TrainConfig.model`` when it is not set).
    model: str
    #: PSNR/SSIM on the Y channel of YCbCr (deraining papers) instead of RGB.
    y_channel: bool
    #: The command that puts the real dataset in place under ``data/``.
    prepare: str
    #: ``TrainConfig.model_kwargs`` of the default restorer when none are given.
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_space(self) -> str:
        """``"Y"`` or ``"RGB"``: where PSNR/SSIM are computed."""
        return "Y" if self.y_channel else "RGB"


TASKS: dict[str, Task] = {
    "dehaze": Task("dehaze", "haze", "dense_haze", "Dense-Haze (NTIRE 2019)", "msbdn-small", False,
                   "python data_scripts/download_dense_haze.py --root data"),
    # IAT trains with its clamps leaky (diffloss.models.iat): with the authors' hard clamps, every
    # extra loss term tried (DiffLoss with either judge, a perceptual loss) and one L1 seed drove IAT
    # into them for good (results/06_lowlight_ablation_small.json, chapter 06). Evaluation: unchanged.
    "lowlight": Task("lowlight", "low light", "lol", "LOL (our485 / eval15)", "iat", False,
                     "python data_scripts/prepare_lol.py --root data --source LOLdataset.zip",
                     model_kwargs={"train_clamp": "leaky"}),
    "derain": Task("derain", "rain", "rain", "Rain13K → Rain100H", "msbdn-small", True,
                   "python data_scripts/prepare_rain.py --root data --source train.zip "
                   "--source test.zip"),
}


def task_of_layout(layout: str) -> str | None:
    """The task whose real dataset has the folder layout ``layout`` (``None`` for synthetic)."""
    return next((t.name for t in TASKS.values() if t.layout == layout), None)
