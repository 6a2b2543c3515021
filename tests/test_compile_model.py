"""``compile_model`` (issue 35): the restorer's training forward through ``torch.compile``. Under
dynamo's eager backend (graph capture, the same kernels) a run is bit-for-bit the eager run; a bad
backend name is one clear error, at the config and on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffloss import cli
from diffloss.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    values = dict(crop=16, batch=2, iterations=3, eval_every=3, eval_max_size=32, max_size=64,
                  train_items=4, val=2, seed=0, cpu=True, out=str(tmp_path / name),
                  model="tests.fixtures_nets:TinyNet", model_kwargs={"width": 4})
    values.update(kw)
    return TrainConfig(**values)


def test_compiled_under_the_eager_backend_trains_bit_for_bit_like_eager(tmp_path: Path) -> None:
    torch._dynamo.reset()
    eager = train(cfg(tmp_path, "eager"), progress=False)
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(cfg(tmp_path, "compiled", compile_model="eager"), progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the forward really went through dynamo
    assert [r["total"] for r in eager.rows] == [r["total"] for r in compiled.rows]
    assert all(torch.equal(a, b) for a, b in zip(eager.model.state_dict().values(),
                                                  compiled.model.state_dict().values()))
    assert eager.final["val_psnr"] == compiled.final["val_psnr"]


def test_a_bad_backend_is_one_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="compile_model must be true/false or a backend"):
        cfg(tmp_path, "x", compile_model="fast")
    with pytest.raises(SystemExit) as info:  # a usage error, as argparse reports one
        cli.main(["train", "--compile-model", "fast", "--out", str(tmp_path / "y"), "--iters", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "compile_model must be" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "y").exists()
