"""No judge ever saw a pixel of any split (DESIGN.md, Conventions).

The judge of chapters 04–07 (DiffLoss's prior there, ``Profile.judge``) is checked against the
pixels each split of the synthetic data is made from: the restorers' training crops, the
validation crops that choose the knobs and ``best.pt``, the in-distribution test band and the
out-of-distribution scenes. The regions are read from the datasets themselves (each item's crop
window), and the judge's training pixels from its record: FFDNet's are photos of other datasets
(none of the bundled ones); the tiny prior's are the columns its provenance names. The tiny
prior is the negative control: it trained on the region the validation crops come from, so it
must be caught.
"""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from diffloss import profiles
from diffloss.priors.ffdnet import FFDNET_TRAINED_ON
from diffloss.training import TrainConfig, build_datasets


def _seen(judge: str) -> dict[str, tuple[float, float]]:
    """The judge's training pixels in the bundled photos: photo → columns as fractions of its width."""
    if judge == "ffdnet":
        return {}  # FFDNET_TRAINED_ON: BSD400, ImageNet validation, Waterloo; no bundled photo
    if judge == "tiny":
        info = json.loads(files("diffloss").joinpath("assets/tiny_prior/provenance.json").read_text())
        return {name: (lo / w, hi / w) for name, (lo, hi, w) in info["train_region"]["columns"].items()}
    raise AssertionError(f"no provenance record for judge {judge!r}")


def _split_regions(profile: profiles.Profile) -> dict[str, dict[str, set[tuple[float, float]]]]:
    """split → photo → the column ranges (fractions of the photo's width) its items are cut from."""
    config = TrainConfig.for_profile(profile, profiles.require_assets(profile), "cpu")
    train, val, tests = build_datasets(config)
    out: dict[str, dict[str, set[tuple[float, float]]]] = {}
    for split, ds in {"train": train, "val": val, **tests}.items():
        widths = {s.name: s.image.shape[-1] for s in ds.samples}
        for i in range(min(len(ds), 64)):
            p = ds.params(i)
            _, left, _, width = p.box
            w = widths[p.image]
            out.setdefault(split, {}).setdefault(p.image, set()).add((left / w, (left + width) / w))
    return out


def _overlaps(seen: dict[str, tuple[float, float]], regions: dict[str, set[tuple[float, float]]]) -> list[str]:
    return [f"{name} {lo:.2f}–{hi:.2f}" for name, spans in regions.items() if name in seen
            for lo, hi in spans if lo < seen[name][1] and hi > seen[name][0]]


@pytest.mark.parametrize("name", ["ci", "small"])
def test_the_profiles_judge_saw_no_pixel_of_any_split(name: str) -> None:
    profile = profiles.get(name)
    regions = _split_regions(profile)
    assert set(regions) == {"train", "val", "test", "ood"}
    for split, by_photo in regions.items():
        assert not _overlaps(_seen(profile.judge), by_photo), (profile.judge, split)
    assert "BSD400" in " ".join(FFDNET_TRAINED_ON)


def test_the_tiny_prior_would_be_caught_as_a_judge() -> None:
    """The negative control: the tiny prior trained on the training region, where the validation
    crops (and training crops) come from, but not on either test split."""
    regions = _split_regions(profiles.get("ci"))
    seen = _seen("tiny")
    assert _overlaps(seen, regions["val"]) and _overlaps(seen, regions["train"])
    assert not _overlaps(seen, regions["test"]) and not _overlaps(seen, regions["ood"])
