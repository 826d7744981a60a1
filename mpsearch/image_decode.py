"""One image file's bytes decoded to a uint8 ``(3, H, W)`` tensor: torchvision, else PIL.

Shared by the folders decoded once and cached (:mod:`mpsearch.image_folder`) and the
files decoded batch by batch (:mod:`mpsearch.streaming`); every failure is a
:class:`~mpsearch.errors.DatasetError` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from mpsearch.errors import DatasetError


def read_image_file(path: Path, layout: str) -> torch.Tensor:
    """Read and decode one image file to uint8 ``(3, H, W)`` (see :func:`decode_image_bytes`).

    Raises:
        DatasetError: the file is gone or unreadable, or not an image.
    """
    try:
        with open(path, "rb", buffering=0) as f:
            data = f.read()
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read ({type(exc).__name__}); "
                           f"expected {layout}.") from None
    return decode_image_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8)
                              if data else torch.empty(0, dtype=torch.uint8), path, layout)


def decode_image_bytes(blob: torch.Tensor, path: Path, layout: str) -> torch.Tensor:
    """Decode one file's bytes to uint8 ``(3, H, W)``: torchvision, else PIL; a GIF's first frame.

    Raises:
        DatasetError: neither can read it (the message names ``path``).
    """
    from torchvision.io import ImageReadMode, decode_image

    try:
        img = decode_image(blob, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        img = _decode_pil(blob.numpy().tobytes(), path, layout)
    return img[0] if img.dim() == 4 else img  # animated GIF: its first frame


def _decode_pil(data: bytes, path: Path, layout: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise DatasetError(f"{path} is not an image that torchvision or PIL can read "
                           f"({type(exc).__name__}); expected {layout}.") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
