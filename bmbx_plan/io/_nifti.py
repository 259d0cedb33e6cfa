"""Count NaN/inf voxels in a NIfTI file's raw data.

ITK's NIfTI reader silently replaces NaN and infinite voxels by 0 (SimpleITK 2.5), so the
loader cannot see them in the image it gets. This module reads the NIfTI-1/2 header and
streams the raw float data to count them; integer files cannot hold NaN and are skipped.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["count_nonfinite"]

_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
_CHUNK_BYTES = 1 << 24


def _open(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def count_nonfinite(path: Path) -> int:
    """Number of NaN or infinite voxels in a ``.nii``/``.nii.gz`` file (0 for integers).

    Unrecognised headers return 0: the reader that follows reports them.
    """
    with _open(path) as fh:
        head = fh.read(540)
        if len(head) < 348:
            return 0
        for order in "<>":
            size = struct.unpack(order + "i", head[:4])[0]
            if size == 348:
                datatype = struct.unpack(order + "h", head[70:72])[0]
                dims = struct.unpack(order + "8h", head[40:56])
                offset = int(struct.unpack(order + "f", head[108:112])[0])
                break
            if size == 540:
                datatype = struct.unpack(order + "h", head[12:14])[0]
                dims = struct.unpack(order + "8q", head[16:80])
                offset = struct.unpack(order + "q", head[168:176])[0]
                break
        else:
            return 0
        if datatype not in _FLOAT_TYPES:
            return 0
        dtype = np.dtype(order + _FLOAT_TYPES[datatype])
        ndim = max(min(int(dims[0]), 7), 0)
        remaining = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]])) * dtype.itemsize
        if offset >= len(head):
            fh.seek(offset)
            pending = b""
        else:
            pending = head[offset:]
        bad = 0
        while remaining > 0:
            data = (pending + fh.read(min(_CHUNK_BYTES, remaining)))[:remaining]
            usable = len(data) - len(data) % dtype.itemsize
            if usable == 0:
                break  # file shorter than its header says; the reader reports that
            values = np.frombuffer(data[:usable], dtype=dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            remaining -= usable
            pending = data[usable:]
        return bad
