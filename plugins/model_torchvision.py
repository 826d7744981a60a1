"""Every torchvision classification model, as ``torchvision:<name>``, randomly initialised.

The names are those of ``torchvision.models.list_models(module=torchvision.models)``
(ResNet, He et al. 2016; MobileNetV2, Sandler et al. 2018; ViT, Dosovitskiy et al.
2021; ...), each built with ``weights=None``: nothing is ever downloaded.

Importing ``torchvision.models`` costs about two seconds (it pulls in
``torch._dynamo``), too much for every start of the host. So unless torchvision
is already imported, the names and docstrings are read from the sources of
``torchvision/models/*.py``, the functions decorated with ``@register_model``,
which are what ``list_models`` reports; torchvision is imported on the first build.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import torch
from torch import nn

from mpsearch.api import ModelSpec, MpsearchError, hookimpl

PREFIX = "torchvision:"
DEFAULT_INPUT_SHAPE = (3, 224, 224)
# Models whose stem and pooling were designed for another resolution.
INPUT_SHAPES = {"inception_v3": (3, 299, 299)}
# Auxiliary classifiers make the training-mode forward return a tuple; without
# them the forward returns plain logits. ``init_weights=True`` keeps the current
# initialisation and silences torchvision's warning that its default will change.
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}

_RST_LINK = re.compile(r"`([^`]*?)\s*<([^<>`]+)>`_{1,2}")


def describe(doc: str | None) -> str:
    """One line from a builder's docstring: its first paragraph, links as ``title (url)``.

    The first paragraph rather than the first line, because several builders
    (``inception_v3``, ``googlenet``) break their first sentence after "from".
    """
    paragraph = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(_RST_LINK.sub(r"\1 (\2)", paragraph).split())


def _scan_sources(models_dir: Path) -> dict[str, str]:
    """Name -> docstring of the ``@register_model`` functions of ``models_dir/*.py``."""
    found: dict[str, str] = {}
    for path in sorted(models_dir.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "@register_model" not in source:
            continue
        for node in ast.parse(source, filename=str(path)).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                        and deco.func.id == "register_model"):
                    # register_model(name=...) overrides the function's name.
                    names = [k.value.value for k in deco.keywords
                             if k.arg == "name" and isinstance(k.value, ast.Constant)]
                    args = [a.value for a in deco.args if isinstance(a, ast.Constant)]
                    found[(names or args or [node.name])[0]] = ast.get_docstring(node) or ""
    return found


def catalogue() -> dict[str, str]:
    """Torchvision's classification models: name -> the builder's docstring, sorted by name."""
    spec = None if "torchvision.models" in sys.modules else importlib.util.find_spec("torchvision")
    found: dict[str, str] = {}
    if spec is not None and spec.origin:
        try:
            found = _scan_sources(Path(spec.origin).parent / "models")
        except (OSError, SyntaxError, ValueError):
            found = {}
    if not found:  # already imported, or installed without readable sources
        try:
            from torchvision import models
        except ImportError:
            return {}
        found = {n: models.get_model_builder(n).__doc__ or ""
                 for n in models.list_models(module=models)}
    return dict(sorted(found.items()))


def _replace_stem(model: nn.Module, channels: int, name: str) -> None:
    """Swap the first 3-channel convolution for one taking ``channels`` channels."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            break
    else:
        raise MpsearchError(f"torchvision:{name} has no 3-channel convolution to adapt to "
                            f"{channels} input channels.")
    old = module
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=old.groups,
                    bias=old.bias is not None, padding_mode=old.padding_mode)
    with torch.no_grad():
        # Resample the new weights from the old ones so that the stem keeps the
        # distribution the model's own initialisation chose (not PyTorch's default).
        flat = old.weight.flatten()
        new.weight.copy_(flat[torch.randint(flat.numel(), new.weight.shape)])
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def build(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build ``torchvision.models.<name>`` with random weights for ``(C, H, W)`` inputs.

    Raises:
        MpsearchError: ``input_shape`` is not ``(C, H, W)``, or the model checks the
            size at build time (vision transformers, MaxViT) and rejects it.
    """
    from torchvision import models

    if len(input_shape) != 3:
        raise MpsearchError(f"torchvision:{name} takes images shaped (C, H, W), "
                            f"not {list(input_shape)}.")
    channels, height, width = input_shape
    kwargs: dict = {"weights": None, "num_classes": num_classes, **NO_AUX.get(name, {})}
    # These two size their position embeddings / attention partitions at build time.
    if name.startswith("vit_"):
        if height != width:
            raise MpsearchError(f"torchvision:{name} takes square images, not {height}x{width}.")
        kwargs["image_size"] = height
    elif name.startswith("maxvit_"):
        kwargs["input_size"] = (height, width)
    try:
        model = models.get_model(name, **kwargs)
    except (ValueError, AssertionError) as exc:  # torchvision's own checks of the size
        raise MpsearchError(f"torchvision:{name} cannot take inputs of shape "
                            f"{list(input_shape)}: {str(exc).splitlines()[0]}") from exc
    if channels != 3:
        _replace_stem(model, channels, name)
    return model


def _spec(name: str, doc: str) -> ModelSpec:
    return ModelSpec(build=functools.partial(build, name),
                     input_shape=INPUT_SHAPES.get(name, DEFAULT_INPUT_SHAPE),
                     num_classes=1000, description=describe(doc))


@hookimpl
def register_models(register):
    for name, doc in catalogue().items():
        register(PREFIX + name, _spec(name, doc))
