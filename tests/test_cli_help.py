"""A command line that explains itself (issue 24): help from TrainConfig's docs, choices listed
and enforced at parse time, --print-config output that loads back with --config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from diffloss import cli
from diffloss.training import TrainConfig
from diffloss.training.config import FIELD_CHOICES, field_docs


def _train_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["train"]


def test_every_train_option_is_documented_from_the_config():
    docs = field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        text = actions[f.name].help
        assert text and len(text) > 20 and not text.startswith("(default"), (f.name, text)
        assert docs[f.name][:30].replace("%", "%%") in text
    for name, values in FIELD_CHOICES.items():
        assert tuple(actions[name].choices) == values


def test_help_lists_the_choices_and_a_wrong_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "{synthetic,dense_haze,lol,rain}" in out and "{dehaze,lowlight,derain}" in out
    assert "l1+diffloss" in out and "(default None)" not in out.split("--task")[1][:400]
    for argv, needle in ((["--data", "kitti"], "invalid choice: 'kitti'"),
                         (["--loss", "l1+vibes"], "unknown loss 'l1+vibes'"),
                         (["--schedule", "linear"], "invalid choice: 'linear'")):
        with pytest.raises(SystemExit) as info:
            cli.main(["train", *argv, "--print-config"])
        assert info.value.code == 2
        assert needle in capsys.readouterr().err, argv


def test_print_config_loads_back_with_config(tmp_path, capsys):
    argv = ["train", "--task", "derain", "--loss", "L1+DiffLoss", "--gamma", "3", "--t-range", "0",
            "200", "--iters", "7", "--out", str(tmp_path / "r"), "--print-config"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "run.json"
    path.write_text(printed)
    assert cli.main(["train", "--config", str(path), "--print-config"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == json.loads(printed)
    assert again["loss"] == "l1+diffloss" and again["t_range"] == [0, 200] and again["model"] == "msbdn-small"


def test_every_option_of_every_subcommand_has_a_help_line():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help and action.help.strip(), (name, action.dest)
