import pytest

from diffloss import profiles


def test_profiles_exist_and_are_frozen():
    assert set(profiles.PROFILES) == {"ci", "small", "gpu", "paper"}
    p = profiles.get("ci")
    with pytest.raises(AttributeError):
        p.train_iters = 5  # type: ignore[misc]
    assert profiles.get("ci").train_iters < profiles.get("small").train_iters < profiles.get("paper").train_iters
    assert profiles.get("gpu").train_iters < profiles.get("paper").train_iters


def test_gpu_profile_is_sized_for_a_16_gib_card():
    gpu, paper = profiles.get("gpu"), profiles.get("paper")
    assert (gpu.data, gpu.prior, gpu.restorer) == ("dense_haze", "adm", "msbdn")
    assert gpu.prior_checkpointing and gpu.grad_accum >= 2
    assert gpu.batch_size * gpu.grad_accum <= paper.batch_size


def test_current_reads_env(monkeypatch):
    monkeypatch.setenv("DIFFLOSS_PROFILE", "ci")
    assert profiles.current().name == "ci"
    monkeypatch.setenv("DIFFLOSS_PROFILE", "Paper")
    assert profiles.current().name == "paper"
    monkeypatch.delenv("DIFFLOSS_PROFILE")
    assert profiles.current().name == profiles.default_name()
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: False)
    assert profiles.current().name == "small"
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: True)
    assert profiles.current().name == "gpu"


def test_unknown_profile_lists_valid(monkeypatch):
    monkeypatch.setenv("DIFFLOSS_PROFILE", "huge")
    with pytest.raises(ValueError, match="ci, gpu, paper, small"):
        profiles.current()


@pytest.mark.parametrize("name", ["gpu", "paper"])
def test_missing_assets_stop_with_the_commands(tmp_path, monkeypatch, name):
    monkeypatch.delenv(profiles.FALLBACK_VAR, raising=False)
    with pytest.raises(profiles.MissingAssetError) as err:
        profiles.require_assets(profiles.get(name), root=tmp_path)
    msg = str(err.value)
    assert profiles.DENSE_HAZE_COMMAND in msg and profiles.ADM_PRIOR_COMMAND in msg
    assert profiles.FALLBACK_VAR in msg


def test_fallback_is_explicit_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv(profiles.FALLBACK_VAR, "1")
    assets = profiles.require_assets(profiles.get("gpu"), root=tmp_path)
    assert (assets.data, assets.prior) == ("synthetic", "tiny")
    assert len(assets.fallback) == 2 and "fallback" in assets.label


def test_present_assets_are_used(tmp_path, monkeypatch):
    monkeypatch.delenv(profiles.FALLBACK_VAR, raising=False)
    for split in ("train", "test"):
        (tmp_path / "data" / "dense_haze" / split).mkdir(parents=True)
    (tmp_path / profiles.ADM_PRIOR_DIR).mkdir(parents=True)
    (tmp_path / profiles.ADM_PRIOR_DIR / "config.json").write_text("{}")
    assets = profiles.require_assets(profiles.get("gpu"), root=tmp_path)
    assert (assets.data, assets.prior, assets.fallback) == ("dense_haze", "adm", ())
    assert assets.data_root == tmp_path / "data"
    small = profiles.require_assets(profiles.get("small"), root=tmp_path)
    assert (small.data, small.prior) == ("synthetic", "tiny")  # small never needs downloads


def test_repo_root_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (profiles.repo_root() / "diffloss" / "profiles.py").exists()


def test_train_iters_override(monkeypatch):
    monkeypatch.setenv("DIFFLOSS_PROFILE", "gpu")
    monkeypatch.setenv(profiles.ITERS_VAR, "3")
    p = profiles.current()
    assert (p.name, p.train_iters, p.eval_every) == ("gpu", 3, 3)
    monkeypatch.setenv(profiles.ITERS_VAR, "-2")
    with pytest.raises(ValueError, match=profiles.ITERS_VAR):
        profiles.current()


@pytest.mark.parametrize("task,layout,folders,command,model", [
    ("lowlight", "lol", ("our485", "eval15"), "prepare_lol.py", "iat"),
    ("derain", "rain", ("train/Rain13K", "test/Rain100H"), "prepare_rain.py", "msbdn"),
])
def test_the_gpu_profile_takes_each_tasks_real_dataset(tmp_path, monkeypatch, task, layout,
                                                       folders, command, model):
    from diffloss.training import TrainConfig

    monkeypatch.delenv(profiles.FALLBACK_VAR, raising=False)
    (tmp_path / profiles.ADM_PRIOR_DIR).mkdir(parents=True)
    (tmp_path / profiles.ADM_PRIOR_DIR / "config.json").write_text("{}")
    with pytest.raises(profiles.MissingAssetError, match=rf"data_scripts/{command} --root data"):
        profiles.require_assets(profiles.get("gpu"), root=tmp_path, task=task)
    for sub in folders:
        (tmp_path / "data" / layout / sub).mkdir(parents=True)
    assets = profiles.require_assets(profiles.get("gpu"), root=tmp_path, task=task)
    assert (assets.data, assets.task, assets.fallback) == (layout, task, ())
    c = TrainConfig.for_profile(profiles.get("gpu"), assets, device="cuda")
    assert (c.task, c.data, c.model, c.workers, c.val) == (task, layout, model, 2, 5)
    monkeypatch.setenv(profiles.FALLBACK_VAR, "1")
    fallback = profiles.require_assets(profiles.get("gpu"), root=tmp_path / "empty", task=task)
    assert fallback.data == "synthetic" and "synthetic" in fallback.label
