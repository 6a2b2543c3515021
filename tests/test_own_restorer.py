"""A user's own restorer (issue 23, 3): ``TrainConfig.model = "package.module:ClassName"``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffloss import cli
from diffloss.training import TrainConfig, build_model, load_model
from diffloss.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--cpu", "--no-progress", "--max-size", "64", "--crop", "32", "--train-items", "4", "--val", "2",
         "--eval-every", "2", "--batch", "2"]


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # tests.fixtures_nets is importable from here, as a user's package is


def test_own_network_trains_resumes_and_reloads(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "tests.fixtures_nets:TinyNet", "--model-kwargs", '{"width": 4}',
            "--loss", "l1+diffloss", "--out", str(out), *QUICK]
    assert cli.main([*args, "--iters", "2"]) == 0
    assert cli.main([*args, "--iters", "4", "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tests.fixtures_nets:TinyNet" and config["model_kwargs"] == {"width": 4}
    rows = (out / "history.csv").read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [0, 1, 2, 3, 4]  # the resumed run continued at step 3
    net = load_model(out, which="last", ema=False)
    from tests.fixtures_nets import TinyNet

    assert isinstance(net, TinyNet) and net.width == 4
    saved = load_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


def test_own_network_through_the_api(tmp_path):
    config = TrainConfig(model="tests.fixtures_nets:TinyNet", model_kwargs={"width": 2}, out=str(tmp_path / "r"),
                         iterations=1, crop=32, max_size=64, train_items=2, val=0, eval_every=0, cpu=True)
    history = __import__("diffloss").train(config, progress=False)
    assert type(history.model).__name__ == "TinyNet" and len(history.rows) == 1


@pytest.mark.parametrize("model,kwargs,message", [
    ("no_such_pkg.nets:Net", None, r"cannot import 'no_such_pkg.nets'.*Install its package, or run from the folder"),
    ("tests.fixtures_nets:Missing", None, r"module 'tests.fixtures_nets' has no 'Missing'"),
    ("tests.fixtures_nets:NotANetwork", None, r"not a torch.nn.Module class"),
    ("tests.fixtures_nets:TinyNet", {"depth": 3}, r"TinyNet\(\*\*\{'depth': 3\}\) failed.*model_kwargs"),
    ("msbdn-small", {"width": 3}, r"the built-in 'msbdn-small' takes none"),
])
def test_bad_own_networks_fail_before_training_with_one_line(tmp_path, capsys, model, kwargs, message):
    out = tmp_path / "run"
    args = ["train", "--model", model, "--out", str(out), "--iters", "1", *QUICK]
    if kwargs is not None:
        args += ["--model-kwargs", json.dumps(kwargs)]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) <= 3, err
    import re

    assert re.search(message, err), err
    assert not (out / "last.pt").exists()


def test_wrong_output_shape_is_caught_on_one_batch_before_step_1(tmp_path):
    config = TrainConfig(model="tests.fixtures_nets:HalfSize", out=str(tmp_path / "r"), iterations=3, crop=32,
                         max_size=64, train_items=2, val=0, eval_every=0, cpu=True)
    with pytest.raises(ValueError, match=r"must map a B×3×H×W image.*same shape; on an input of shape "
                                         r"\(1, 3, 32, 32\) it returned a torch.float32 tensor of shape \(1, 3, 16, 16\)"):
        __import__("diffloss").train(config, progress=False)
    assert not (tmp_path / "r" / "history.csv").exists() or len(
        (tmp_path / "r" / "history.csv").read_text().strip().splitlines()) <= 1


def test_model_names_are_checked_at_parse_time(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "not a name", "--print-config"])
    assert exit_info.value.code == 2
    assert "package.module:ClassName" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--model-kwargs", "[1, 2]", "--print-config"])
    assert "expected a JSON object" in capsys.readouterr().err
    with pytest.raises(ValueError, match="model_kwargs must be a mapping"):
        TrainConfig(model_kwargs=[1, 2])


def test_build_model_builds_the_named_class():
    net = build_model("tests.fixtures_nets:TinyNet", {"width": 5})
    assert net.width == 5
    x = torch.rand(1, 3, 8, 8)
    assert net(x).shape == x.shape
