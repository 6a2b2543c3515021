"""The VGG16 weights of :class:`~diffloss.comparison_losses.PerceptualLoss`: downloaded once through
``torch.hub`` (as torchvision does), cached, and one clear error offline or without network.

Everything is served by a small ``http.server`` on 127.0.0.1 at a random port, serving a tiny
VGG-like checkpoint that the test builds, under a torchvision-style name ``name-<sha256[:8]>.pth``.
The torch hub folder points into ``tmp_path``. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffloss.comparison_losses import PerceptualLoss, vgg16_features
from diffloss.weights import (
    OFFLINE_VARS,
    VGG16_FETCH_COMMAND,
    fetch_vgg16_weights,
    vgg16_weights_available,
    vgg16_weights_path,
)
from tests.local_server import PayloadServer


def fake_checkpoint() -> tuple[dict[str, torch.Tensor], bytes]:
    """A torchvision-shaped VGG16 state dict (features up to relu3_3 + a stub classifier), saved
    in the legacy non-zip format of torchvision's real file."""
    torch.manual_seed(3)
    state = {f"features.{k}": v for k, v in vgg16_features(15).state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    return state, buf.getvalue()


def hashed_name(payload: bytes, stem: str = "vggtest") -> str:
    """torchvision's naming convention: the first 8 hex digits of the file's SHA-256."""
    return f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


class WeightsServer(PayloadServer):
    """Serves ``payload`` at any path under ``base``; ``status`` forces an error response."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.base = self.root + "models/"


@pytest.fixture
def checkpoint() -> tuple[dict[str, torch.Tensor], bytes]:
    return fake_checkpoint()


@pytest.fixture
def server(checkpoint) -> Iterator[WeightsServer]:
    srv = WeightsServer(checkpoint[1])
    yield srv
    srv.close()


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch hub cache in tmp_path (TORCH_HOME and torch.hub.set_dir's setting), downloads allowed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))  # = set_dir, undone after
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch" / "hub"


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_first_call_downloads_second_call_uses_the_cache(hub_dir, server, checkpoint, monkeypatch):
    state, payload = checkpoint
    url = server.base + hashed_name(payload)
    assert vgg16_weights_path(url) == hub_dir / "checkpoints" / hashed_name(payload)
    assert not vgg16_weights_path(url).exists()

    assert_same_state(fetch_vgg16_weights(url, progress=False), state)
    assert server.requests == ["/models/" + hashed_name(payload)]
    assert vgg16_weights_path(url).read_bytes() == payload  # cached where torchvision caches

    assert_same_state(fetch_vgg16_weights(url, progress=False), state)
    assert len(server.requests) == 1  # the cache, no second download
    # Offline and with the server gone, the cached file is still used.
    server.close()
    monkeypatch.setenv("DIFFLOSS_OFFLINE", "1")
    assert_same_state(fetch_vgg16_weights(url, progress=False), state)


@pytest.mark.parametrize("var", OFFLINE_VARS)
def test_offline_variable_is_one_clear_error_without_any_request(hub_dir, server, checkpoint, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    url = server.base + hashed_name(checkpoint[1])
    path = vgg16_weights_path(url)
    with pytest.raises(FileNotFoundError) as info:
        fetch_vgg16_weights(url, progress=False)
    message = str(info.value)
    assert str(path) in message and VGG16_FETCH_COMMAND in message
    assert f"downloads are off ({var}=1" in message
    assert server.requests == [] and not path.exists()


def test_server_down_is_one_clear_error(hub_dir, server, checkpoint):
    url = server.base + hashed_name(checkpoint[1])
    server.close()  # nothing listens on that port any more: connection refused, like no network
    with pytest.raises(FileNotFoundError) as info:
        fetch_vgg16_weights(url, progress=False)
    message = str(info.value)
    assert str(vgg16_weights_path(url)) in message and VGG16_FETCH_COMMAND in message
    assert f"downloading them from {url} failed" in message
    assert isinstance(info.value.__cause__, OSError)  # urllib's URLError, kept as the cause
    assert not (hub_dir / "checkpoints").exists()  # no empty cache folder left behind


def test_http_error_and_wrong_hash_leave_nothing_in_the_cache(hub_dir, server, checkpoint):
    url = server.base + hashed_name(checkpoint[1])
    server.status = 404
    with pytest.raises(FileNotFoundError, match=r"(?s)failed \(HTTPError.*404"):
        fetch_vgg16_weights(url, progress=False)
    server.status = None
    bad = server.base + "vggtest-00000000.pth"  # torch.hub checks the name's hash prefix
    with pytest.raises(FileNotFoundError, match="invalid hash value"):
        fetch_vgg16_weights(bad, progress=False)
    assert not (hub_dir / "checkpoints").exists()


def test_perceptual_loss_reads_the_cache_offline_and_says_how_to_fetch_otherwise(hub_dir, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the Makefile's test target sets it
    assert not vgg16_weights_available()
    with pytest.raises(FileNotFoundError) as info:
        PerceptualLoss()
    assert str(vgg16_weights_path()) in str(info.value) and VGG16_FETCH_COMMAND in str(info.value)
    assert "weights=None" in str(info.value)
    # The file in the torch hub cache (where the download puts it) is read, offline.
    state, payload = checkpoint
    vgg16_weights_path().parent.mkdir(parents=True)
    vgg16_weights_path().write_bytes(payload)
    assert vgg16_weights_available()
    loss = PerceptualLoss()
    assert loss.pretrained
    assert_same_state({f"features.{k}": v for k, v in loss.features.state_dict().items()},
                      {k: v for k, v in state.items() if k.startswith("features.")})
