"""The data of a training run: its datasets, and batches that are a pure function of the step.

The batches are a pure function of ``(seed, step)`` (:class:`StepBatchSampler`, with per-item
seeds applied by :class:`KeyedPairs`), so a resumed run sees exactly the batches the
uninterrupted run would have seen, whatever the number of workers or processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .config import eval_max_size_for

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["Datasets", "Downscaled", "KeyedPairs", "StepBatchSampler", "build_datasets",
           "eval_max_size_for", "first_batches", "mix_seed"]


class KeyedPairs(Dataset):
    """``(degraded, clean)`` only (drops the name), with per-item seeding of torch's RNG.

    Items are addressed by ``(index, item_seed)``: the global torch RNG, which
    :class:`~diffloss.data.PairedImageDataset`'s crop/flip/rotation draws from, is seeded with
    ``item_seed`` for the item and restored afterwards. Every item is thus a pure function of
    its key, whatever the worker or the process.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, item_seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            degraded, clean = self.dataset[index][:2]
        return degraded, clean


class Downscaled(Dataset):
    """Whole-image pairs downscaled (antialiased bilinear) so the longer side is ``max_size``."""

    def __init__(self, dataset: Dataset, max_size: int) -> None:
        self.dataset, self.max_size = dataset, int(max_size)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        degraded, clean, name = self.dataset[index]
        h, w = degraded.shape[-2:]
        scale = self.max_size / max(h, w)
        if scale < 1:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))

            def resize(x: Tensor) -> Tensor:
                return F.interpolate(x[None], size=size, mode="bilinear", antialias=True,
                                     align_corners=False)[0].clamp_(0, 1)

            degraded, clean = resize(degraded), resize(clean)
        return degraded, clean, name


class Datasets(NamedTuple):
    """A run's data: ``train`` crops, ``val`` (selects ``best.pt``; ``None`` when there is no
    validation split) and the test splits by name: ``"test"``, the main one (its PSNR/SSIM are
    the ``test_*`` columns of the history), and, for synthetic data, ``"ood"``: whole scenes
    never seen in training (``ood_*`` columns). Items are ``(degraded, clean, name)``."""

    train: Dataset
    val: Dataset | None
    tests: dict[str, Dataset]


def build_datasets(config: TrainConfig) -> Datasets:
    """The :class:`Datasets` of ``config``.

    ``train`` yields ``crop``-sized pairs; ``val`` and the test splits are evaluated image by
    image. No test image takes part in training or model selection.
    """
    from ..data import PairedImageDataset, synthetic_dataset

    if config.data == "synthetic":  # the task's degradation on the bundled images
        n_val = 8 if config.val is None else config.val

        def synthetic(split: str, **kw: object) -> Dataset:
            return synthetic_dataset(str(config.task), split, **kw)

        train_ds: Dataset = synthetic("train", crop=config.crop, n=config.train_items,
                                      seed=config.data_seed, max_size=config.max_size)
        val_ds: Dataset | None = None
        if n_val:
            # Crops of the *training* regions (no test pixel), with their own windows and draws.
            val_ds = synthetic("train", crop=config.crop, n=n_val, seed=config.data_seed + 7919,
                               max_size=config.max_size)
        tests: dict[str, Dataset] = {
            # Held-out bands of the training photos, never cropped for training, own draws.
            "test": synthetic("id_test", seed=config.data_seed, max_size=config.max_size),
            # Whole scenes that training never sees.
            "ood": synthetic("ood_test", seed=config.data_seed, max_size=config.eval_max_size),
        }
        return Datasets(train_ds, val_ds, tests)

    root = str(config.root)
    train_full = PairedImageDataset(root, config.data, "train", crop=config.crop,
                                    augment=config.augment)
    test_ds: Dataset = PairedImageDataset(root, config.data, "test")
    if config.eval_max_size:
        test_ds = Downscaled(test_ds, config.eval_max_size)
    n_val = config.val or 0
    if not n_val:
        return Datasets(train_full, None, {"test": test_ds})
    if n_val >= len(train_full):
        raise ValueError(f"val={n_val} would hold out every one of the {len(train_full)} training pairs")
    order = np.random.default_rng(config.data_seed).permutation(len(train_full))
    held, kept = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    whole: Dataset = PairedImageDataset(root, config.data, "train")
    if config.eval_max_size:
        whole = Downscaled(whole, config.eval_max_size)
    return Datasets(Subset(train_full, kept), Subset(whole, held), {"test": test_ds})


class StepBatchSampler:
    """Index batches as a pure function of ``(seed, micro-step, rank)``; infinite.

    The stream of training items is the concatenation of per-epoch permutations of the
    dataset (epoch ``e`` uses ``torch.randperm(n)`` seeded with ``(seed, e)``). Micro-step ``m``
    takes the ``batch·world`` items at positions ``m·batch·world …``, and process ``rank`` its
    ``batch`` of them. Each item carries a seed drawn from ``(seed, position)`` for its random
    crop/augmentation (:class:`KeyedPairs`). No state beyond ``start`` is needed to resume.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch, self.seed = int(n), int(batch), int(seed)
        self.start, self.rank, self.world = int(start), int(rank), int(world)
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5EED))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def keys(self, micro_step: int) -> list[tuple[int, int]]:
        """The ``(index, item_seed)`` keys of this process's batch at ``micro_step``."""
        first = (micro_step * self.world + self.rank) * self.batch
        out = []
        for pos in range(first, first + self.batch):
            epoch, k = divmod(pos, self.n)
            out.append((int(self._perm(epoch)[k]), mix_seed(self.seed, pos, 0xA06)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        while True:
            yield self.keys(m)
            m += 1


def first_batches(train_ds: Dataset, config: TrainConfig, k: int, rank: int = 0,
                  world: int = 1) -> list[tuple[Tensor, Tensor]]:
    """The run's first ``k`` training batches ``(degraded, clean)``, as its steps will see them."""
    sampler = StepBatchSampler(len(train_ds), config.batch, config.seed, rank=rank,  # type: ignore[arg-type]
                               world=world)
    keyed = KeyedPairs(train_ds)
    batches = []
    for _, keys in zip(range(k), sampler):
        items = [keyed[key] for key in keys]
        batches.append((torch.stack([y for y, _ in items]), torch.stack([x for _, x in items])))
    return batches


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values])
               .generate_state(1, np.uint64)[0] >> np.uint64(1))


