"""diffloss.pt_files: what an unreadable .pt file is, in one line (issue 44, case 15)."""

from __future__ import annotations

import pytest
import torch

from diffloss.pt_files import describe_unreadable, first_line


def _why(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the failure is what is described
        return describe_unreadable(path, exc)
    raise AssertionError(f"{path} loaded")


@pytest.mark.parametrize(("content", "phrase"), [
    (b"", "is empty (0 bytes)"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "is a PNG image, not a PyTorch file"),
    (b"\xff\xd8\xff\xe0" + bytes(40), "is a JPEG image, not a PyTorch file"),
    (b"step,loss\n1,0.5\n", "is a text file, not a PyTorch file"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, content, phrase):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    assert _why(path).startswith(phrase)


def test_a_pickled_module_and_a_truncated_file_say_so_without_escape_codes(tmp_path):
    torch.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "m.pt")
    why = _why(tmp_path / "m.pt")
    assert "pickled Python object (a whole nn.Module" in why and "state_dict()" in why and "\x1b" not in why
    torch.save({"w": torch.zeros(1000)}, tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    assert _why(tmp_path / "t.pt").startswith("is a damaged or truncated PyTorch file")


def test_first_line_drops_escape_codes_and_keeps_the_type():
    assert first_line(ValueError("\x1b[1mbold\x1b[0m text\nmore")) == "ValueError: bold text"
    assert first_line(EOFError("")) == "EOFError"
