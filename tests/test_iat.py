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
    with pytest.raises(ValueError, match="bad.pth is a text file, not a PyTorch file"):
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


# -- the clamps in training (issue 43): straight-through keeps the values, passes the gradient
def test_straight_through_keeps_the_value_bit_for_bit_and_passes_a_unit_gradient():
    from diffloss.models.iat import straight_through

    raw = torch.tensor([-0.3, 0.5, 1.7, 1e-9], requires_grad=True)
    out = straight_through(raw, raw.clamp(1e-8, 1.0))
    assert torch.equal(out.detach(), raw.detach().clamp(1e-8, 1.0))  # 1e-8 stays 1e-8, not 0
    out.sum().backward()
    assert torch.equal(raw.grad, torch.ones(4))


@pytest.mark.parametrize("clamp", ["straight-through-output", "straight-through", "leaky-output", "leaky"])
def test_a_train_clamp_changes_gradients_only_in_training(clamp):
    torch.manual_seed(0)
    hard = IAT()
    torch.manual_seed(0)
    other = IAT(train_clamp=clamp)
    with torch.no_grad():  # push most pixels of M below 0 and of the output past the lower clamp
        for net in (hard, other):
            net.local_branch.mul_head.bias.fill_(-1.0)
            net.local_branch.add_head.bias.fill_(-3.0)
    y = torch.rand(2, 3, 32, 32) * 0.2
    for net in (hard, other):
        net.eval()
    assert torch.equal(hard(y), other(y))  # evaluation: the authors' network, the same bits
    grads = {}
    for name, net in (("hard", hard), ("other", other)):
        net.train()
        raw = []  # M before its ReLU

        def keep(module, inputs, out, raw=raw):
            out.retain_grad()
            raw.append(out)

        hook = net.local_branch.mul_head.register_forward_hook(keep)
        torch.manual_seed(1)  # the same stochastic-depth draws
        z = net(y)
        hook.remove()
        grads[name, "z"] = z.detach()
        (z - 0.5).abs().mean().backward()
        below = raw[0].detach() < 0
        assert below.float().mean() > 0.5
        grads[name, "dead M"] = raw[0].grad[below].abs().sum()  # gradient where M = 0
        grads[name, "add"] = net.local_branch.add_head.weight.grad.norm()
    if clamp.startswith("straight-through"):
        assert torch.equal(grads["hard", "z"], grads["other", "z"])  # training: same values too
    else:  # leaky: the same inside the range, the overshoot added past it (on a fresh network)
        torch.manual_seed(0)
        fresh = IAT(train_clamp=clamp).train()
        bright = torch.rand(2, 3, 32, 32) * 2.0
        torch.manual_seed(2)
        st = fresh.stages(bright)
        fresh.train_clamp = "hard"
        torch.manual_seed(2)
        z_hard = fresh(bright)
        inside = (st["mixed"] > 1e-8) & (st["mixed"] < 1)
        assert inside.any() and (~inside).any()
        assert torch.equal(z_hard[inside], st["z"][inside])
        overshoot = (st["mixed"] - st["mixed"].clamp(1e-8, 1))[~inside]
        assert torch.allclose(st["z"][~inside] - z_hard[~inside], overshoot, atol=1e-6)
    assert grads["hard", "add"] < 1e-3 * grads["other", "add"]     # the output clamp passed gradient
    assert grads["hard", "dead M"] == 0
    assert (grads["other", "dead M"] > 0) == (not clamp.endswith("-output"))  # M's ReLU: not for -output


def test_a_bad_train_clamp_is_one_clear_error():
    from diffloss.training.build import build_model

    with pytest.raises(ValueError, match="train_clamp must be one of hard"):
        IAT(train_clamp="soft")
    with pytest.raises(ValueError, match="train_clamp must be one of hard"):
        build_model("iat", {"train_clamp": "soft"})
    with pytest.raises(ValueError, match="'iat' takes only train_clamp"):
        build_model("iat", {"width": 3})
    assert build_model("iat", {"train_clamp": "straight-through"}).train_clamp == "straight-through"


def test_iat_state_reads_the_clamps_and_the_dead_multiplier():
    from diffloss.models.iat_state import STATE_RULES, iat_state, state_label

    base = {"dead": 0.0, "low": 0.0, "high": 0.0, "std": 0.2}
    assert state_label(base) == "working"
    assert state_label({**base, "low": 0.95}).startswith("black")
    assert state_label({**base, "high": 0.95}).startswith("white")
    assert state_label({**base, "low": 0.3, "high": 0.3}).startswith("mostly clamped")
    assert state_label({**base, "dead": 0.9}) == STATE_RULES[4]
    assert state_label({**base, "dead": 0.9, "low": 0.2}).endswith("20% of the values at a clamp")
    assert state_label({**base, "low": 0.2}) == "partly clamped: 20% of the values at the two clamps together"
    assert state_label({**base, "low": 0.2, "std": 0.01}).startswith("flat")  # flat before partly clamped
    assert state_label({**base, "std": 0.01}).startswith("flat")
    torch.manual_seed(0)
    net = IAT()
    with torch.no_grad():
        net.local_branch.mul_head.bias.fill_(-10.0)  # M = 0 everywhere
    net.train()
    m = iat_state(net, [torch.rand(3, 16, 16) * 0.3 for _ in range(2)])
    assert m["dead"] == 1.0 and m["label"].startswith(("M mostly dead", "black", "mostly clamped"))
    assert net.training  # put back as it was
    with pytest.raises(TypeError, match="needs an IAT"):
        iat_state(torch.nn.Conv2d(3, 3, 1), [torch.rand(3, 8, 8)])
