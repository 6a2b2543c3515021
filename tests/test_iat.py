"""IAT (Cui et al., BMVC 2022) against the authors' network: parameter count and shapes, the
forward pass on a fixture made with their code, and the mapping of their checkpoints' names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import StochasticDepth

from diffloss.models import IAT
from diffloss.models.iat import iat_state_dict_from_official

FIXTURE = Path(__file__).parent / "fixtures" / "iat_official_forward.pt"


def official_fill(names: list[str], shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Deterministic weights for a state dict of the authors' names (not their trained weights):
    N(0, 0.2²) per tensor from its own seed, positive BatchNorm variances."""
    state = {}
    for i, (name, shape) in enumerate(zip(names, shapes)):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
            continue
        t = 0.2 * torch.randn(shape, generator=torch.Generator().manual_seed(1000 + i))
        state[name] = t.abs() + 0.5 if name.endswith("running_var") else t
    return state


def fixture_input() -> torch.Tensor:
    return torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(7)) * 0.3


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def test_iat_has_the_official_parameter_count():
    assert sum(p.numel() for p in IAT().parameters()) == 91_154


def test_every_official_name_maps_onto_a_parameter_of_the_same_shape(reference):
    ours = IAT().state_dict()
    mapped = iat_state_dict_from_official(
        {n: torch.zeros(s) for n, s in zip(reference["names"], reference["shapes"])})
    assert sorted(mapped) == sorted(ours)
    assert all(tuple(mapped[k].shape) == tuple(ours[k].shape) for k in ours)
    # a DataParallel prefix and a {"state_dict": ...} wrapper are accepted
    wrapped = {"state_dict": {f"module.{n}": torch.zeros(s) for n, s in
                              zip(reference["names"], reference["shapes"])}}
    assert sorted(iat_state_dict_from_official(wrapped)) == sorted(ours)
    with pytest.raises(KeyError, match="'decoder.weight' is not a parameter of the official IAT"):
        iat_state_dict_from_official({"decoder.weight": torch.zeros(1)})


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_matches_the_authors_network(reference, mode):
    """The fixture holds the authors' IAT's outputs for official_fill() weights."""
    net = IAT()
    net.load_state_dict(iat_state_dict_from_official(
        official_fill(reference["names"], reference["shapes"])))
    getattr(net, mode)()
    for m in net.modules():  # stochastic depth off: its random draws are not comparable
        if isinstance(m, StochasticDepth):
            m.p = 0.0
    with torch.no_grad():
        mul, add, out = net.components(fixture_input())
    if mode == "eval":
        assert torch.allclose(mul, reference["mul"], atol=1e-5)
        assert torch.allclose(add, reference["add"], atol=1e-5)
        assert torch.allclose(out, reference["out"], atol=1e-5)
    else:  # BatchNorm on the batch's statistics (the fixture has drop paths off too)
        assert torch.allclose(out, reference["out_train_mode"], atol=1e-5)


def test_any_size_in_and_out_and_the_identity_at_initialisation():
    torch.manual_seed(0)
    net = IAT().eval()
    y = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        mul, add, z = net.components(y)
        gamma, color = net.global_branch(y)
    assert z.shape == y.shape and 0 < float(z.min()) and float(z.max()) <= 1
    assert float(mul.min()) >= 0 and float(add.abs().max()) <= 1
    # the value projection starts at zero: γ = 1 and C = I exactly (plus the heads' biases, 0)
    assert torch.allclose(gamma, torch.ones(1, 1)) and torch.allclose(color, torch.eye(3)[None])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = IAT()
    net(torch.rand(2, 3, 32, 32)).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    net = IAT()
    rates = [m.p for m in net.local_branch.mul_body.modules() if isinstance(m, StochasticDepth)]
    assert rates == [0.01, 0.05, 0.1]
    y = torch.rand(8, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(y), net(y))


# ---------------------------------------------------------- the authors' checkpoint, downloaded
@pytest.fixture
def served(tmp_path, monkeypatch, reference):
    """A checkpoint in the authors' format served on 127.0.0.1; the torch hub dir in tmp_path."""
    import hashlib
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = official_fill(reference["names"], reference["shapes"])
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path != "/best_Epoch_lol_v1.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for var in ("DIFFLOSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    url = f"http://127.0.0.1:{server.server_address[1]}/best_Epoch_lol_v1.pth"
    yield url, hashlib.sha256(data).hexdigest(), state
    server.shutdown()


def test_the_official_checkpoint_is_downloaded_once_verified_and_loads(served, monkeypatch):
    import diffloss.models.iat as iat_module

    url, sha, state = served
    got = iat_module.fetch_iat_lol_weights(url, sha, progress=False)
    assert sorted(got) == sorted(state) and iat_module.iat_weights_path(url).is_file()
    monkeypatch.setenv("DIFFLOSS_OFFLINE", "1")  # cached now: no download needed
    assert torch.equal(iat_module.fetch_iat_lol_weights(url, sha)["local_net.conv1.weight"],
                       state["local_net.conv1.weight"])
    monkeypatch.setattr(iat_module, "IAT_LOL_V1_URL", url)
    monkeypatch.setattr(iat_module, "fetch_iat_lol_weights",
                        lambda: iat_module.torch.load(iat_module.iat_weights_path(url)))
    net = IAT.from_official_checkpoint()
    assert torch.equal(net.local_branch.stem.weight, state["local_net.conv1.weight"])


def test_a_wrong_hash_or_offline_is_one_clear_error_and_leaves_nothing(served, monkeypatch):
    import diffloss.models.iat as iat_module

    url, sha, _ = served
    with pytest.raises(FileNotFoundError, match="downloading it failed"):
        iat_module.fetch_iat_lol_weights(url, "0" * 64, progress=False)
    assert not list(iat_module.iat_weights_path(url).parent.glob("*"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"downloads are off \(HF_HUB_OFFLINE=1\).*copy it to"):
        iat_module.fetch_iat_lol_weights(url, sha)


def test_a_local_official_checkpoint_loads(tmp_path, reference):
    state = official_fill(reference["names"], reference["shapes"])
    torch.save(state, tmp_path / "best.pth")
    net = IAT.from_official_checkpoint(tmp_path / "best.pth")
    assert torch.equal(net.global_branch.query_block.queries, state["global_net.generator.attn.q"])
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pth is not a readable PyTorch state dict"):
        IAT.from_official_checkpoint(tmp_path / "bad.pth")


def test_stages_show_the_clamp_before_the_gamma() -> None:
    from diffloss.models.iat import IAT

    torch.manual_seed(0)
    net = IAT().eval()
    y = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        s = net.stages(y)
        assert torch.allclose(s["mixed"].clamp(1e-8, 1) ** s["gamma"].view(-1, 1, 1, 1), s["z"])
        assert torch.equal(s["z"], net(y))
