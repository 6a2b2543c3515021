import pytest

from diffloss import profiles


def test_profiles_exist_and_are_frozen():
    assert set(profiles.PROFILES) == {"ci", "small", "paper"}
    p = profiles.get("ci")
    with pytest.raises(AttributeError):
        p.train_iters = 5  # type: ignore[misc]
    assert profiles.get("ci").train_iters < profiles.get("small").train_iters < profiles.get("paper").train_iters


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
    assert profiles.current().name == "paper"


def test_unknown_profile_lists_valid(monkeypatch):
    monkeypatch.setenv("DIFFLOSS_PROFILE", "huge")
    with pytest.raises(ValueError, match="ci, paper, small"):
        profiles.current()
