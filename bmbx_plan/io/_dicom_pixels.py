"""Read the pixels of a sorted slice stack and turn them into HU.

Engine per transfer syntax, chosen for speed (see ``benchmarks/bench_load.py``):

- uncompressed little endian: pydicom reads the file and numpy views the bytes
  (no decoder machinery; faster than SimpleITK's GDCM reader);
- RLE Lossless: pydicom with pylibjpeg-rle (about ten times faster than GDCM's RLE);
- everything else (JPEG 2000, JPEG lossless/baseline, JPEG-LS ...): SimpleITK's
  ImageSeriesReader (GDCM), whose geometry is checked against the headers; pydicom's
  decoders are the fallback when GDCM fails.

Output dtype: ``int16`` when every slice's rescale is integral and the HU values fit
(exact, half the memory of float32), else ``float32``. When the header's stored range
already guarantees the fit, pixels go straight into int16; otherwise they are read as
int32 and narrowed after a range check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from bmbx_plan.io._dicom_headers import SliceHeader
from bmbx_plan.io._dicom_stack import StackGeometry
from bmbx_plan.io._sitk import affine_from_sitk
from bmbx_plan.io.errors import InputError

__all__ = ["check_decodable", "hu_dtype", "read_stack"]

_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PYDICOM_FIRST = {"1.2.840.10008.1.2.5"}  # RLE Lossless
#: Transfer syntaxes GDCM (inside SimpleITK) decodes.
_GDCM = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
}
_INT16 = np.iinfo(np.int16)
# Geometry SimpleITK reports may differ from ours by DS rounding only.
_GEOMETRY_TOLERANCE_MM = 1e-3


def _syntax_name(uid: str) -> str:
    return f"{UID(uid).name} ({uid})" if uid else "unknown transfer syntax"


def _pydicom_can_decode(uid: str) -> bool:
    try:
        return bool(get_decoder(UID(uid)).is_available)
    except NotImplementedError:
        return False


def check_decodable(slices: Sequence[SliceHeader]) -> None:
    """Raise :class:`InputError` naming the transfer syntax no installed decoder reads."""
    for syntax in sorted({h.transfer_syntax for h in slices}):
        if syntax in _GDCM or _pydicom_can_decode(syntax):
            continue
        example = next(h for h in slices if h.transfer_syntax == syntax)
        raise InputError(
            example.path,
            f"pixel data compressed as {_syntax_name(syntax)}, which neither SimpleITK/GDCM "
            "nor the installed pydicom decoders can decode",
        )


def _stored_range(h: SliceHeader) -> tuple[int, int]:
    if h.pixel_representation == 1:
        return -(2 ** (h.bits_stored - 1)), 2 ** (h.bits_stored - 1) - 1
    return 0, 2**h.bits_stored - 1


def _fits_int16(h: SliceHeader) -> bool:
    lo, hi = _stored_range(h)
    return bool(_INT16.min <= lo and hi <= _INT16.max)


def hu_dtype(slices: Sequence[SliceHeader]) -> type[np.integer[Any] | np.floating[Any]]:
    """dtype to read HU into.

    ``int16`` when every slice's rescale is integral and its whole stored range maps into
    int16; ``int32`` when the rescale is integral but the values must be checked;
    ``float32`` otherwise.
    """
    dtype: type[np.integer[Any] | np.floating[Any]] = np.int16
    for h in slices:
        if h.slope != round(h.slope) or h.intercept != round(h.intercept):
            return np.float32
        lo, hi = _stored_range(h)
        ends = (lo * h.slope + h.intercept, hi * h.slope + h.intercept)
        if min(ends) < _INT16.min or max(ends) > _INT16.max:
            dtype = np.int32
    return dtype


def _narrow(array: NDArray[Any]) -> NDArray[Any]:
    """int32 HU -> int16 when the values fit, else float32 (exact below 2**24)."""
    if array.dtype != np.int32:
        return array
    if array.size and (array.min() < _INT16.min or array.max() > _INT16.max):
        return array.astype(np.float32)
    return array.astype(np.int16)


def _native_frame(ds: Any, h: SliceHeader) -> NDArray[Any]:
    if h.bits_allocated != 16:
        return np.asarray(ds.pixel_array)
    data = ds.PixelData
    count = h.rows * h.columns
    if len(data) < 2 * count:
        raise InputError(h.path, f"truncated pixel data: {len(data)} bytes, expected {2 * count}")
    raw = np.frombuffer(data, dtype="<i2" if h.pixel_representation else "<u2", count=count)
    frame = raw.reshape(h.rows, h.columns)
    if h.pixel_representation and h.bits_stored < 16:
        shift = 16 - h.bits_stored  # sign-extend from bit (BitsStored - 1)
        frame = (frame << shift) >> shift
    return frame


def _read_frame_pydicom(h: SliceHeader) -> NDArray[Any]:
    """Stored values of one slice, shape ``(rows, columns)``."""
    try:
        ds = pydicom.dcmread(h.path)
        if "PixelData" not in ds:
            raise InputError(h.path, "no pixel data (file truncated?)")
        if h.transfer_syntax in _NATIVE:
            frame = _native_frame(ds, h)
        else:
            frame = np.asarray(ds.pixel_array)
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise InputError(
            h.path,
            f"cannot read pixel data ({_syntax_name(h.transfer_syntax)}): "
            f"{type(exc).__name__}: {exc}",
        ) from None
    if frame.shape != (h.rows, h.columns):
        raise InputError(
            h.path, f"pixel data has shape {frame.shape}, header says {(h.rows, h.columns)}"
        )
    return frame


def _read_pydicom(slices: Sequence[SliceHeader], dtype: type[Any]) -> NDArray[Any]:
    out = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=dtype)
    for k, h in enumerate(slices):
        frame = _read_frame_pydicom(h)
        if dtype is np.int16 and h.slope == 1 and _fits_int16(h):
            out[k] = frame  # exact: the stored range fits int16
            out[k] += np.int16(h.intercept)
        elif dtype is not np.float32:
            out[k] = frame.astype(np.int32) * int(h.slope) + int(h.intercept)
        else:
            out[k] = frame.astype(np.float32) * np.float32(h.slope) + np.float32(h.intercept)
    return out


def _read_sitk(geometry: StackGeometry, dtype: type[Any]) -> NDArray[Any] | None:
    """Pixels via SimpleITK, or ``None`` when GDCM fails or disagrees on geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(h.path) for h in geometry.slices])
    pixel_type = {np.int16: sitk.sitkInt16, np.int32: sitk.sitkInt32}.get(dtype, sitk.sitkFloat32)
    reader.SetOutputPixelType(pixel_type)
    try:
        image = reader.Execute()
    except RuntimeError:
        return None
    if image.GetDimension() != 3:
        return None
    reported = affine_from_sitk(image)
    if not np.allclose(reported, geometry.affine_lps, atol=_GEOMETRY_TOLERANCE_MM, rtol=1e-5):
        return None
    return sitk.GetArrayFromImage(image)


def _interpolate(array: NDArray[Any], geometry: StackGeometry) -> NDArray[np.float32]:
    grid = geometry.grid_positions_mm
    if grid is None:
        raise ValueError("no resampling grid")
    s = geometry.positions_mm
    hi = np.clip(np.searchsorted(s, grid, side="right"), 1, len(s) - 1)
    lo = hi - 1
    weight = ((grid - s[lo]) / (s[hi] - s[lo])).astype(np.float32)
    out = np.empty((len(grid), *array.shape[1:]), dtype=np.float32)
    for k in range(len(grid)):
        out[k] = (1 - weight[k]) * array[lo[k]] + weight[k] * array[hi[k]]
    return out


def read_stack(geometry: StackGeometry) -> tuple[NDArray[Any], list[str]]:
    """Read and rescale the stack to HU on the output grid.

    Returns
    -------
    array : (K, J, I) ndarray
        HU, int16 or float32 (float32 when resampled across gaps).
    notes : list of str
    """
    slices = geometry.slices
    check_decodable(slices)
    dtype = hu_dtype(slices)
    syntaxes = {h.transfer_syntax for h in slices}
    rescale_uniform = len({(h.slope, h.intercept) for h in slices}) == 1
    notes: list[str] = []
    use_sitk = (
        geometry.grid_positions_mm is None
        and rescale_uniform
        and not syntaxes & (_NATIVE | _PYDICOM_FIRST)
        and syntaxes <= _GDCM
    )
    array = _read_sitk(geometry, dtype) if use_sitk else None
    if use_sitk and array is None:
        notes.append("SimpleITK/GDCM could not read the series; decoded with pydicom instead.")
    if array is None:
        array = _read_pydicom(slices, dtype)
    array = _narrow(array)
    if geometry.grid_positions_mm is not None:
        array = _interpolate(array, geometry)
    return array, notes
