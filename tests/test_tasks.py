"""One command, three tasks: the synthetic data, the default restorer and the metric convention
that ``TrainConfig.task`` picks, offline, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffloss import cli
from diffloss.data import SyntheticLowLight, SyntheticRain
from diffloss.metrics import psnr, ssim
from diffloss.tasks import TASKS
from diffloss.training import TrainConfig, build_datasets
from diffloss.training.rundir import check_resume_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(task: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", task, "--out", str(out), "--cpu", "--iters", "2", "--no-progress",
            "--crop", "32", "--max-size", "80", "--eval-max-size", "64", "--train-items", "4",
            "--val", "2", "--eval-every", "2", *extra]


def test_each_task_picks_its_data_restorer_and_metric():
    for name, task in TASKS.items():
        c = TrainConfig(task=name)
        assert c.model == task.model and c.data == "synthetic"
    assert TrainConfig(task="lowlight").model == "iat"
    assert TrainConfig(task="lowlight", model="msbdn-small").model == "msbdn-small"
    assert TrainConfig(data="rain", root="data").task == "derain"  # the layout names the task
    assert TrainConfig().task == "dehaze" and TrainConfig().model == "msbdn-small"
    c = TrainConfig(task="derain", crop=32, max_size=80, eval_max_size=64, train_items=4, val=2)
    d = build_datasets(c)
    assert isinstance(d.train, SyntheticRain) and set(d.tests) == {"test", "ood"}
    assert isinstance(build_datasets(c.replace(task="lowlight")).val, SyntheticLowLight)


@pytest.mark.parametrize("task,model,space", [("lowlight", "iat", "RGB"),
                                              ("derain", "msbdn-small", "Y")])
def test_train_and_evaluate_a_task_offline_from_the_command_line(tmp_path, capsys, task, model,
                                                                  space):
    out = tmp_path / task
    assert cli.main(_args(task, out)) == 0
    saved = json.loads((out / "config.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert saved["task"] == task and saved["model"] == model
    assert history["meta"]["metric_space"] == space
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--cpu", "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert f"task {task}: PSNR/SSIM on {space}" in printed
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["metric_space"] == space
    # the input baseline, scored by hand with the task's convention
    ds = build_datasets(TrainConfig.from_dict(saved)).tests["ood"]
    y = space == "Y"
    by_hand = [float(psnr(d[None], c[None], y_channel=y)) for d, c, _ in (ds[i] for i in range(len(ds)))]
    assert report["splits"]["ood"]["input"]["psnr"] == pytest.approx(sum(by_hand) / len(by_hand),
                                                                     abs=1e-9)
    ssim_rgb = float(ssim(ds[0][0][None], ds[0][1][None]))
    first = report["splits"]["ood"]["input"]["per_image"][0]["ssim"]
    assert (first == pytest.approx(ssim_rgb, abs=1e-9)) == (space == "RGB")


@pytest.mark.parametrize("layout,script", [("lol", "prepare_lol.py"), ("rain", "prepare_rain.py"),
                                           ("dense_haze", "download_dense_haze.py")])
def test_a_real_dataset_without_root_names_the_command_that_prepares_it(tmp_path, capsys, layout,
                                                                       script):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--data", layout, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"python data_scripts/{script} --root data" in err
    assert not (tmp_path / "x").exists()


def test_a_dataset_of_another_task_is_refused(capsys, tmp_path):
    with pytest.raises(ValueError, match=r"data='lol' is the lowlight dataset, but task='derain'"):
        TrainConfig(task="derain", data="lol", root="data")
    with pytest.raises(SystemExit):
        cli.main(["train", "--task", "dehaze", "--data", "rain", "--root", "data",
                  "--out", str(tmp_path / "x")])
    assert "pass data='dense_haze'" in capsys.readouterr().err


def test_a_run_saved_before_tasks_existed_still_resumes():
    saved = TrainConfig().to_dict()
    del saved["task"]  # config.json of a run from before this field
    check_resume_config(saved, TrainConfig(), Path("last.pt"))  # no "task: None → 'dehaze'" error
    with pytest.raises(ValueError, match="task"):
        check_resume_config(saved, TrainConfig(task="derain"), Path("last.pt"))


def test_low_light_trains_iat_with_leaky_clamps_unless_told_otherwise():
    assert TrainConfig(task="lowlight").model_kwargs == {"train_clamp": "leaky"}
    assert TrainConfig(task="lowlight", model_kwargs={"train_clamp": "hard"}).model_kwargs == {"train_clamp": "hard"}
    assert TrainConfig(task="dehaze", model="iat").model_kwargs is None  # the task's default only
    assert TrainConfig(task="dehaze").model_kwargs is None
