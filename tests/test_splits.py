"""The splits of the synthetic haze data: training crops never touch the test regions.

Geometry (``SyntheticHaze`` docstring): training and validation crops lie in columns
``[0, ⌊0.75·W⌋)`` of each training photo, the in-distribution test band is ``[⌈0.78·W⌉, W)``,
and the two out-of-distribution scenes are never used by ``train`` or ``id_test``. The checks
below are made in the coordinates of the *original* photos, including the support of the
antialiasing kernel of the downscaling, so that they hold when training and evaluation
downscale to different ``max_size``.
"""

from __future__ import annotations

import pytest
import torch

from diffloss.data import (
    ID_TEST_BAND,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_REGION,
    SyntheticHaze,
    id_test_columns,
    sample_images,
    train_columns,
)

ORIGINAL_WIDTH = {s.name: int(s.image.shape[-1]) for s in sample_images("train")}
MAX_SIZES = (None, 64, 96, 128, 192, 256, 384)


def _source_span(left: int, width: int, scaled_width: int, original_width: int) -> tuple[float, float]:
    """Columns ``[lo, hi]`` of the original photo that feed scaled columns ``[left, left+width)``.

    Downscaling by ``s = scaled/original`` (antialiased bilinear) maps output column ``j`` to
    source centre ``(j + 0.5)/s − 0.5`` with a triangle kernel of radius ``1/s`` (measured: a
    source column changes output columns whose centres lie within 0.99 output pixels of it).
    """
    s = scaled_width / original_width
    if s >= 1:  # not resized
        return float(left), float(left + width - 1)
    radius = 1.0 / s
    lo = (left + 0.5) / s - 0.5 - radius
    hi = (left + width - 1 + 0.5) / s - 0.5 + radius
    return lo, hi


def _band_spans(max_size: int | None) -> dict[str, tuple[float, float]]:
    ds = SyntheticHaze("id_test", max_size=max_size)
    spans = {}
    for i in range(len(ds.image_names)):
        p = ds.params(i)
        top, left, h, w = p.box
        scaled_w = ds.samples[ds.image_names.index(p.image)].image.shape[-1]
        spans[p.image] = _source_span(left, w, scaled_w, ORIGINAL_WIDTH[p.image])
    return spans


def test_band_constants_leave_a_guard_gap() -> None:
    assert TRAIN_REGION[0] == 0.0 and TRAIN_REGION[1] < ID_TEST_BAND[0] < ID_TEST_BAND[1] == 1.0
    assert 0.20 <= ID_TEST_BAND[1] - ID_TEST_BAND[0] <= 0.25
    for width in range(34, 800):
        t0, t1 = train_columns(width)
        b0, b1 = id_test_columns(width)
        assert t0 == 0 and t1 < b0 < b1 == width, width


@pytest.mark.parametrize("crop", [16, 32, 48, 64, 80])
@pytest.mark.parametrize("train_max", [None, 96, 128, 192, 256])
def test_training_crops_never_overlap_the_id_test_band(crop: int, train_max: int | None) -> None:
    try:
        SyntheticHaze("train", crop=crop, n=1, max_size=train_max)
    except ValueError:
        pytest.skip("crop larger than the training region at this max_size")
    bands = {m: _band_spans(m) for m in MAX_SIZES}
    for spans in bands.values():  # the band starts at ~78 % of the width (the check is not vacuous)
        assert all(lo < 0.79 * ORIGINAL_WIDTH[name] for name, (lo, _) in spans.items())
    for seed in (0, 7919):  # the training items and the trainer's validation items
        ds = SyntheticHaze("train", crop=crop, n=400, seed=seed, max_size=train_max)
        lefts: dict[str, list[int]] = {}
        for i in range(len(ds)):
            p = ds.params(i)
            top, left, h, w = p.box
            assert (h, w) == (crop, crop)
            sample = ds.samples[ds.image_names.index(p.image)]
            H, W = sample.image.shape[-2:]
            assert 0 <= top and top + h <= H
            assert 0 <= left and left + w <= train_columns(W)[1] < id_test_columns(W)[0]
            lo, hi = _source_span(left, w, W, ORIGINAL_WIDTH[p.image])
            for m, spans in bands.items():
                assert hi < spans[p.image][0], (p.image, crop, train_max, m, hi, spans[p.image])
            lefts.setdefault(p.image, []).append(left + w)
        # The windows do reach the edge of the training region (they are not all at the left).
        for name, rights in lefts.items():
            W = ds.samples[ds.image_names.index(name)].image.shape[-1]
            assert max(rights) > train_columns(W)[1] - crop, name


def test_whole_image_training_items_stay_in_the_training_region() -> None:
    ds = SyntheticHaze("train", crop=None, n=8, max_size=128)
    for i in range(len(ds)):
        hazy, clean, _ = ds[i]
        p = ds.params(i)
        W = ds.samples[ds.image_names.index(p.image)].image.shape[-1]
        assert p.box[1] == 0 and p.box[3] == train_columns(W)[1] == clean.shape[-1]


@pytest.mark.parametrize("max_size", [None, 128, 256])
def test_id_test_items_are_the_bands_with_their_own_haze(max_size: int | None) -> None:
    ds = SyntheticHaze("id_test", max_size=max_size)
    assert set(ds.image_names) == set(TRAIN_IMAGES)
    assert len(ds) == 3 * len(TRAIN_IMAGES)
    photos = {s.name: s.image for s in sample_images("train", max_size=max_size)}
    betas: dict[str, set[float]] = {}
    for i in range(len(ds)):
        hazy, clean, name = ds[i]
        p = ds.params(i)
        W = photos[p.image].shape[-1]
        b0, b1 = id_test_columns(W)
        assert p.box == (0, b0, photos[p.image].shape[-2], b1 - b0) and not p.flipped
        torch.testing.assert_close(clean, photos[p.image][:, :, b0:b1])
        assert name == f"{p.image}_band{i // len(TRAIN_IMAGES)}"
        assert hazy.shape == clean.shape and not torch.equal(hazy, clean)
        betas.setdefault(p.image, set()).add(p.beta)
    assert all(len(b) == 3 for b in betas.values())  # several haze draws per band


@pytest.mark.parametrize("split", ["id_test", "test", "ood_test"])
def test_test_items_are_deterministic(split: str) -> None:
    a = SyntheticHaze(split, max_size=96, seed=5)
    b = SyntheticHaze(split, max_size=96, seed=5)
    for i in reversed(range(len(a))):  # order of access does not matter
        ha, ca, na = a[i]
        hb, cb, nb = b[i]
        assert na == nb and a.params(i) == b.params(i)
        assert torch.equal(ha, hb) and torch.equal(ca, cb)
    c = SyntheticHaze(split, max_size=96, seed=6)
    assert any(a.params(i).beta != c.params(i).beta for i in range(len(a)))


def test_id_test_haze_differs_from_training_and_validation_draws() -> None:
    id_test = SyntheticHaze("id_test", max_size=128)
    train = SyntheticHaze("train", crop=32, n=len(id_test), max_size=128)
    val = SyntheticHaze("train", crop=32, n=len(id_test), seed=7919, max_size=128)
    ids = [id_test.params(i).beta for i in range(len(id_test))]
    assert not set(ids) & {train.params(i).beta for i in range(len(train))}
    assert not set(ids) & {val.params(i).beta for i in range(len(val))}


def test_ood_scenes_never_appear_in_train_or_id_test() -> None:
    for ds in (SyntheticHaze("train", crop=32, n=200, max_size=128),
               SyntheticHaze("id_test", max_size=128)):
        assert not set(ds.image_names) & set(TEST_IMAGES)
        assert {ds.params(i).image for i in range(len(ds))} <= set(TRAIN_IMAGES)
    ood = SyntheticHaze("ood_test", max_size=128)
    assert ood.split == "test" and set(ood.image_names) == set(TEST_IMAGES)
    old = SyntheticHaze("test", max_size=128)
    for i in range(len(old)):
        assert old.params(i) == ood.params(i)
        assert old[i][2] == ood[i][2] in TEST_IMAGES


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticHaze("val")


def test_crop_wider_than_the_training_region_is_rejected() -> None:
    # chelsea at max_size 96 is 64×96: its training region is 72 columns wide.
    with pytest.raises(ValueError, match="training region"):
        SyntheticHaze("train", crop=(32, 80), max_size=96)


# ------------------------------------------------------- the tiny prior's crops (issue 32)

def _marked_training_photos():
    """The training photos with every pixel outside the restorers' training region (guard gap,
    in-distribution test band) set to NaN: a crop that any of them reaches, even through the
    antialiasing filter of a downscale, has a NaN."""
    from dataclasses import replace

    marked = []
    for s in sample_images("train"):
        img = s.image.clone()
        img[..., train_columns(img.shape[-1])[1]:] = float("nan")
        marked.append(replace(s, image=img))
    return marked


@pytest.mark.parametrize("scale_range", [(0.25, 0.6), (0.25, 0.25), (0.6, 0.6), (1.0, 1.0)])
def test_the_priors_crops_never_touch_a_test_or_guard_pixel(scale_range) -> None:
    """2,000 crops of the prior's crop generator, at its scales and at their ends (and at full
    size): not one value comes from outside the training region."""
    from diffloss.data.samples import prior_training_images
    from diffloss.priors.tiny import random_crops

    images = prior_training_images(_marked_training_photos())
    assert [int(i.shape[-1]) for i in images] == [train_columns(w)[1] for w in ORIGINAL_WIDTH.values()]
    crops = random_crops(images, 2000, 32, torch.Generator().manual_seed(0), scale_range=scale_range)
    assert crops.shape == (2000, 3, 32, 32) and not crops.isnan().any()


def test_the_marks_would_show_a_leak() -> None:
    """The same check on the whole marked photos (what the prior trained on before): it fails."""
    from diffloss.priors.tiny import random_crops

    crops = random_crops([s.image for s in _marked_training_photos()], 400, 32,
                         torch.Generator().manual_seed(0))
    assert crops.isnan().any(dim=(1, 2, 3)).float().mean() > 0.1


def test_train_tiny_learns_from_the_training_region_only(tmp_path, monkeypatch) -> None:
    """train_tiny takes its pixels from prior_training_images, and says so in provenance.json."""
    import json

    from diffloss.data import samples
    from diffloss.priors import train_tiny

    seen = []
    original = samples.prior_training_images

    def spy(images=None):
        out = original(images)
        seen.append([tuple(i.shape) for i in out])
        return out

    monkeypatch.setattr(samples, "prior_training_images", spy)
    train_tiny(tmp_path / "p", steps=1, batch_size=2, width=8, n_eval=2, progress=False)
    assert seen and all(shape[-1] == train_columns(w)[1] for shape, w in zip(seen[0], ORIGINAL_WIDTH.values()))
    info = json.loads((tmp_path / "p" / "provenance.json").read_text())
    assert info["train_region"]["columns"] == {n: [0, train_columns(w)[1], w] for n, w in ORIGINAL_WIDTH.items()}


def test_the_shipped_prior_names_its_training_region() -> None:
    import json
    from importlib.resources import files

    info = json.loads(files("diffloss").joinpath("assets/tiny_prior/provenance.json").read_text())
    assert info["train_region"]["columns"] == {n: [0, train_columns(w)[1], w] for n, w in ORIGINAL_WIDTH.items()}
    # trained on the four training photos only: every out-of-distribution scene is unseen (the two
    # it names, and the two scikit-learn photos added to the split after it was trained)
    assert info["train_images"] == list(TRAIN_IMAGES) and info["steps"] == 1200
    assert not set(info["train_images"]) & set(TEST_IMAGES)
    assert set(info["heldout_images"]) <= set(TEST_IMAGES)
