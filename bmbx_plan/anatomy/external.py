"""External masks: TotalSegmentator output or any named label map, on the planning CT grid.

A plain CT separates bone, air and fat from soft tissue, but not an iliac artery from the
muscle around it, the colon from small bowel, or one gluteal muscle from the next. Tools such
as TotalSegmentator do. This module reads their output and puts every structure, as a
boolean mask, on the voxel grid of the CT being planned, so the planner can keep its
distance from the structures the CT alone cannot show.

Three inputs are accepted (see :func:`load_external_masks`):

- a folder with one binary mask file per structure, ``<structure>.nii.gz``, as
  ``TotalSegmentator -i ct.nii.gz -o segs/`` writes it;
- one multilabel file, as ``TotalSegmentator ... --ml`` writes it: names from a ``mapping``,
  else from a JSON sidecar (``labels.nii.gz`` -> ``labels.json``, name -> value), else from
  the file's NIfTI header extension (TotalSegmentator writes its label table there), else
  the TotalSegmentator v2 ``total`` class ids of :data:`TOTALSEGMENTATOR_TOTAL_V2` (said so
  in the notes);
- any label map (NIfTI, NRRD, MetaImage) with a ``mapping`` name -> value (a dict, or a JSON
  file holding one).

Names: TotalSegmentator's v2 names are kept as they are (``hip_left``,
``iliac_artery_left``, ``urinary_bladder``, ``vertebrae_L5`` ...). Every name is normalised
by :func:`canonical_name`: separators become ``_``, a known name gets its TotalSegmentator
spelling whatever its case, and the aliases of :data:`NAME_ALIASES` resolve to their
canonical name (``ilium_left`` -> ``hip_left``, ``bladder`` -> ``urinary_bladder``).
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from bmbx_plan.io import load_ct
from bmbx_plan.io.errors import InputError
from bmbx_plan.io.export import label_json_path
from bmbx_plan.io.images import IMAGE_SUFFIXES, image_format
from bmbx_plan.resample import resample_to
from bmbx_plan.volume import Volume

__all__ = [
    "DEFAULT_RISK_MARGIN_MM",
    "NAME_ALIASES",
    "RISK_GROUPS",
    "TOTALSEGMENTATOR_TOTAL_V2",
    "TRAVERSED_RISK_GROUPS",
    "ExternalMasks",
    "canonical_name",
    "load_external_masks",
]

BoolArray = NDArray[np.bool_]

_VERTEBRAE = (
    *(f"vertebrae_L{n}" for n in range(5, 0, -1)),
    *(f"vertebrae_T{n}" for n in range(12, 0, -1)),
    *(f"vertebrae_C{n}" for n in range(7, 0, -1)),
)
_RIBS = (*(f"rib_left_{n}" for n in range(1, 13)), *(f"rib_right_{n}" for n in range(1, 13)))
_TOTAL_V2_NAMES = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left",
    "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
    "lung_lower_lobe_right", "esophagus", "trachea", "thyroid_gland", "small_bowel",
    "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum", "vertebrae_S1", *_VERTEBRAE, "heart", "aorta",
    "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
    "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein",
    "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
    "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
    "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right",
    "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain",
    "skull", *_RIBS, "sternum", "costal_cartilages",
)  # fmt: skip

#: TotalSegmentator v2 ``total`` task: label value -> structure name (117 classes), as in
#: its ``map_to_binary.class_map["total"]``. Used for a ``--ml`` file that carries no names.
#: TotalSegmentator v1 numbered its classes differently: pass ``mapping`` for v1 files.
TOTALSEGMENTATOR_TOTAL_V2: dict[int, str] = dict(enumerate(_TOTAL_V2_NAMES, start=1))

#: Other names for a structure -> its canonical (TotalSegmentator) name. The ilium of the
#: planner is TotalSegmentator's hip bone; ``bladder`` is the phantom truth's name.
NAME_ALIASES: dict[str, str] = {
    "ilium_left": "hip_left",
    "ilium_right": "hip_right",
    "bladder": "urinary_bladder",
}

#: Planner risk class -> the structures it unites (canonical names). The rectum and sigmoid
#: are part of TotalSegmentator's ``colon``; the common, internal and external iliac vessels
#: are its ``iliac_artery_*`` / ``iliac_vena_*``.
RISK_GROUPS: dict[str, tuple[str, ...]] = {
    "vessels": (
        "aorta",
        "inferior_vena_cava",
        "iliac_artery_left",
        "iliac_artery_right",
        "iliac_vena_left",
        "iliac_vena_right",
    ),
    "bowel": ("colon", "small_bowel", "duodenum"),
    "bladder": ("urinary_bladder",),
    "gluteal_muscles": (
        "gluteus_maximus_left",
        "gluteus_maximus_right",
        "gluteus_medius_left",
        "gluteus_medius_right",
        "gluteus_minimus_left",
        "gluteus_minimus_right",
    ),
}

#: Risk groups every posterior approach crosses (the gluteal muscles cover the outer table
#: of the iliac wing): their clearance and the path length through them are worth
#: reporting, but they cannot be a no-go zone with a margin.
TRAVERSED_RISK_GROUPS: frozenset[str] = frozenset({"gluteal_muscles"})

#: Default clearance in mm between the needle surface and a risk group that must be avoided.
DEFAULT_RISK_MARGIN_MM = 5.0

# A mask whose foreground lies mostly outside the CT was made from another scan or lost its
# geometry; half its voxels inside still tolerates a CT with a tighter field of view.
_MIN_INSIDE_FRACTION = 0.5
# Affines equal to this (mm) are the same grid: NIfTI stores geometry in float32.
_SAME_GRID_MM = 1e-3
_SNAP = 1e-4  # voxel, as in resample_to
_MAX_SAMPLED_VOXELS = 200_000  # foreground voxels sampled for the overlap check
_MAX_HEADER_BYTES = 1 << 24
_MAX_BINCOUNT = 1 << 16
_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_KNOWN_NAMES = {name.lower(): name for name in _TOTAL_V2_NAMES}
_LABEL_XML = re.compile(
    rb'<Label\s+Key="(\d+)"[^>]*>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</Label>', re.DOTALL
)


def canonical_name(name: str) -> str:
    """The canonical spelling of a structure name.

    Runs of characters other than letters and digits become ``_`` (and are stripped at
    the ends), a TotalSegmentator v2 name gets its own spelling whatever the case, an alias
    of :data:`NAME_ALIASES` resolves to its target, and any other name is lower-cased.

    >>> canonical_name("Iliac artery-left")
    'iliac_artery_left'
    >>> canonical_name("vertebrae_l5"), canonical_name("ilium_right")
    ('vertebrae_L5', 'hip_right')
    """
    key = _SEPARATORS.sub("_", name).strip("_").lower()
    key = NAME_ALIASES.get(key, key)
    return _KNOWN_NAMES.get(key, key)


@dataclass(frozen=True, eq=False)
class ExternalMasks:
    """Boolean masks of named structures on one CT grid.

    Attributes
    ----------
    masks : dict of str to (K, J, I) ndarray of bool
        One read-only mask per structure, on the reference CT's voxel grid, keyed by
        canonical name (:func:`canonical_name`).
    shape : tuple of int
        The grid's shape ``(K, J, I)``.
    affine_lps : (4, 4) ndarray
        The grid's affine: array index ``(k, j, i)`` -> LPS mm.
    source : str
        The file or folder the masks were read from.
    notes : tuple of str
        What the loader decided: resampling, voxels outside the CT, where the names came
        from, values without a name, empty structures.

    Examples
    --------
    >>> artery = np.zeros((2, 3, 4), dtype=bool)
    >>> artery[0, 1, 1] = True
    >>> masks = ExternalMasks(
    ...     {"iliac_artery_left": artery, "colon": ~artery}, shape=(2, 3, 4), affine_lps=np.eye(4)
    ... )
    >>> masks.names
    ('colon', 'iliac_artery_left')
    >>> int(masks["Iliac Artery Left"].sum()), sorted(masks.risk_masks())
    (1, ['bowel', 'vessels'])
    """

    masks: dict[str, BoolArray]
    shape: tuple[int, int, int]
    affine_lps: NDArray[np.float64]
    source: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (K, J, I), got {self.shape}")
        affine = np.array(self.affine_lps, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine_lps must be 4x4, got {affine.shape}")
        frozen: dict[str, BoolArray] = {}
        for name, mask in self.masks.items():
            if canonical_name(name) != name:
                raise ValueError(f"mask name {name!r} is not canonical ({canonical_name(name)!r})")
            array = np.asarray(mask)
            if array.dtype != np.bool_ or array.shape != shape:
                raise ValueError(
                    f"mask {name!r} must be a bool array of shape {shape}, "
                    f"got {array.dtype} {array.shape}"
                )
            view = array.view()
            view.flags.writeable = False
            frozen[name] = view
        affine.flags.writeable = False
        object.__setattr__(self, "masks", dict(sorted(frozen.items())))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine_lps", affine)
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical names of the structures held, sorted."""
        return tuple(self.masks)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name) in self.masks

    def __getitem__(self, name: str) -> BoolArray:
        """The ``(K, J, I)`` mask of ``name`` (any spelling :func:`canonical_name` accepts)."""
        key = canonical_name(name)
        if key not in self.masks:
            raise KeyError(f"no external mask {name!r}; have {_listing(self.masks)}")
        return self.masks[key]

    def union(self, names: Iterable[str]) -> BoolArray:
        """The ``(K, J, I)`` union of the named masks (all False for no names).

        Raises
        ------
        KeyError
            A name that is not held.
        """
        out = np.zeros(self.shape, dtype=bool)
        for name in names:
            out |= self[name]
        return out

    def risk_masks(
        self, *, groups: Mapping[str, Iterable[str]] = RISK_GROUPS
    ) -> dict[str, BoolArray]:
        """Union mask per risk group, for every group with at least one structure held.

        Parameters
        ----------
        groups : mapping of str to iterable of str
            Group name -> structure names; :data:`RISK_GROUPS` by default.

        Returns
        -------
        dict of str to (K, J, I) ndarray of bool
            Only groups of which some structure is held, in the order of ``groups``.
        """
        out: dict[str, BoolArray] = {}
        for group, members in groups.items():
            held = [name for name in members if name in self]
            if held:
                out[group] = self.union(held)
        return out


def load_external_masks(
    path: str | Path,
    reference: Volume,
    *,
    mapping: Mapping[str, int] | str | Path | None = None,
    names: Iterable[str] | None = None,
) -> ExternalMasks:
    """Read external segmentations and put each structure on ``reference``'s voxel grid.

    Parameters
    ----------
    path : str or Path
        A folder of per-structure mask files (``<structure>.nii.gz``, also ``.nii``,
        ``.nrrd``, ``.mha`` ...; other files are ignored; each must hold only 0 and 1),
        or one label map file (a TotalSegmentator ``--ml`` output or any label map). A
        single file named after a TotalSegmentator structure (``colon.nii.gz``) and passed
        without ``mapping`` is read as that one structure's mask.
    reference : Volume
        The planning CT; gives the output grid ``(K, J, I)`` and its LPS geometry.
    mapping : mapping of str to int, or str or Path, optional
        For a label map file: structure name -> label value, or a JSON file holding that
        object. Overrides names in a sidecar or in the file. Not allowed with a folder.
    names : iterable of str, optional
        Load only these structures (any spelling :func:`canonical_name` accepts). Each one
        is then in the result, empty if the file names it but holds none of it. By default
        every structure with at least one voxel is loaded, and empty ones are listed in
        the notes.

    Returns
    -------
    ExternalMasks
        Masks on ``reference``'s grid. Masks stored on another grid are mapped by nearest
        neighbour (:func:`~bmbx_plan.resample.resample_to` with ``order=0``): exactly,
        voxel for voxel, when the grids differ only by flips, axis order or extent, else
        resampled; the notes say which, with both spacings.

    Raises
    ------
    InputError
        Naming the file or folder: missing path; a folder without mask files; two files
        for one structure; a mask file holding values other than 0 and 1; unreadable,
        non-3D or NaN files (from :func:`~bmbx_plan.load_ct`); a mask that does not
        overlap the CT or has less than half of its foreground inside it (both extents in
        the message: another scan, or lost geometry); requested names the input does not
        have; a mapping that is not name -> positive integer, names a structure or a value
        twice, or none of whose values occurs in the label map; label values that are
        negative or not integers.

    Notes
    -----
    Memory: every mask is a full-size bool array on the CT grid (one byte per voxel).
    Pass ``names`` (for example the members of :data:`RISK_GROUPS`) to load only what the
    planner uses from a 117-structure TotalSegmentator output.

    Examples
    --------
    >>> ct = Volume.from_components(np.zeros((4, 5, 6)), spacing_mm=(3.0, 2.0, 2.0))
    >>> load_external_masks("/no/such/segs", ct)
    Traceback (most recent call last):
    ...
    bmbx_plan.io.errors.InputError: /no/such/segs: no such file or folder
    """
    source = Path(path)
    if not source.exists():
        raise InputError(source, "no such file or folder")
    wanted = _requested_names(names)
    if source.is_dir():
        if mapping is not None:
            raise InputError(
                source,
                "a mapping applies to a label map file; in a folder each file is one "
                "structure, named by its file name",
            )
        masks, notes = _load_folder(source, reference, wanted)
    elif mapping is None and (structure := _structure_file_name(source)) is not None:
        masks, notes = _load_structure_files({structure: source}, reference, wanted, source)
    else:
        masks, notes = _load_label_map(source, reference, mapping, wanted)
    return ExternalMasks(
        masks,
        shape=reference.shape,
        affine_lps=reference.affine_lps,
        source=str(source),
        notes=tuple(notes),
    )


def _requested_names(names: Iterable[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str):
        raise InputError(
            None, f"names must be a list of structure names, not the string {names!r}"
        )
    given = list(names)
    wanted = [canonical_name(name) for name in given]
    if not all(wanted):
        raise InputError(None, f"names holds something that is no structure name: {given}")
    return tuple(dict.fromkeys(wanted))


def _listing(names: Iterable[str], limit: int = 12) -> str:
    items = sorted(names)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "nothing"


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}" if fraction >= 0.01 else "<1%"


def _file_stem(path: Path) -> str:
    lower = path.name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), "")
    return path.name[: len(path.name) - len(suffix)]


def _structure_file_name(path: Path) -> str | None:
    """The structure a file is named after, when it is a TotalSegmentator name."""
    name = canonical_name(_file_stem(path))
    return name if name in _KNOWN_NAMES.values() else None


# --- one mask file per structure --------------------------------------------------------


def _load_folder(
    folder: Path, reference: Volume, wanted: tuple[str, ...] | None
) -> tuple[dict[str, BoolArray], list[str]]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and image_format(p))
    if not files:
        raise InputError(
            folder,
            "no mask files (.nii.gz, .nii, .nrrd, .mha); a TotalSegmentator output folder "
            "holds one <structure>.nii.gz per structure",
        )
    by_name: dict[str, Path] = {}
    for file in files:
        name = canonical_name(_file_stem(file))
        if not name:
            raise InputError(file, "the file name gives no structure name")
        if name in by_name:
            raise InputError(
                folder, f"{by_name[name].name} and {file.name} are both masks of {name!r}"
            )
        by_name[name] = file
    return _load_structure_files(by_name, reference, wanted, folder)


def _load_structure_files(
    by_name: Mapping[str, Path],
    reference: Volume,
    wanted: tuple[str, ...] | None,
    source: Path,
) -> tuple[dict[str, BoolArray], list[str]]:
    if wanted is not None:
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise InputError(
                source, f"no mask for {', '.join(missing)}; found {_listing(by_name)}"
            )
    masks: dict[str, BoolArray] = {}
    grids: dict[str, list[str]] = {}
    notes: list[str] = []
    empty: list[str] = []
    for name in wanted if wanted is not None else sorted(by_name):
        file = by_name[name]
        volume = load_ct(file)
        _require_binary(volume, file)
        placed, grid_note, outside = _onto_reference(volume, reference, file)
        if grid_note:
            grids.setdefault(grid_note, []).append(name)
        if outside > 0:
            notes.append(
                f"{name}: {_percent(outside)} of its voxels lie outside the CT and were dropped."
            )
        mask = placed != 0
        if not mask.any():
            empty.append(name)
            if wanted is None:
                continue
        masks[name] = mask
    notes[:0] = [f"{_listing(members, 5)}: {text}" for text, members in grids.items()]
    if empty:
        kept = "kept as empty masks" if wanted is not None else "left out"
        notes.append(f"Empty (not in the scan), {kept}: {_listing(empty)}.")
    return masks, notes


def _require_binary(volume: Volume, path: Path) -> None:
    array = volume.array
    other = (array != 0) & (array != 1)
    if other.any():
        values = np.unique(array[other])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (" ..." if values.size > 5 else "")
        raise InputError(
            path,
            f"a per-structure mask must hold only 0 and 1, this one also holds {shown}; "
            "pass a multilabel file by its own path (with mapping= if it is named after a "
            "structure)",
        )


# --- one label map with names -----------------------------------------------------------


def _load_label_map(
    path: Path,
    reference: Volume,
    mapping: Mapping[str, int] | str | Path | None,
    wanted: tuple[str, ...] | None,
) -> tuple[dict[str, BoolArray], list[str]]:
    volume = load_ct(path)
    labels = _integer_labels(volume, path)
    table, origin = _label_table(path, mapping)
    notes = [origin]
    present = _label_values(labels)
    if not present & set(table.values()):
        raise InputError(
            path,
            f"none of the {len(table)} named label values occurs in the label map (it holds "
            f"{_listing(str(v) for v in sorted(present))}); is the mapping for this file?",
        )
    if wanted is not None:
        unknown = [name for name in wanted if name not in table]
        if unknown:
            raise InputError(
                path, f"no label named {', '.join(unknown)}; names: {_listing(table)}"
            )
    selected = wanted if wanted is not None else [n for n, v in table.items() if v in present]
    absent = [name for name in selected if table[name] not in present]
    if wanted is None and len(table) > len(selected):
        notes.append(f"{len(table) - len(selected)} of {len(table)} named labels are absent.")
    if absent:
        notes.append(f"Empty (not in the label map), kept as empty masks: {_listing(absent)}.")
    unnamed = sorted(present - set(table.values()))
    if unnamed:
        notes.append(f"Label values without a name, ignored: {_listing(map(str, unnamed))}.")
    placed, grid_note, outside = _onto_reference(volume.with_array(labels), reference, path)
    if grid_note:
        notes.append(f"The label map: {grid_note}")
    if outside > 0:
        notes.append(
            f"{_percent(outside)} of the labelled voxels lie outside the CT and were dropped."
        )
    return {name: placed == table[name] for name in selected}, notes


def _integer_labels(volume: Volume, path: Path) -> NDArray[np.int32]:
    array = volume.array
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.rint(array)):
        raise InputError(path, "a label map must hold integer values, this one holds fractions")
    if array.min() < 0:
        raise InputError(path, f"a label map must not hold negative values ({array.min():g})")
    if array.max() > np.iinfo(np.int32).max:
        raise InputError(path, f"label value {array.max():g} is too large")
    return array.astype(np.int32)


def _label_values(labels: NDArray[np.int32]) -> set[int]:
    """The non-zero values present (bincount is much faster than unique for small ids)."""
    if labels.max() > _MAX_BINCOUNT:
        return set(np.unique(labels).tolist()) - {0}
    counts = np.bincount(labels.ravel())
    return {int(value) for value in np.flatnonzero(counts) if value}


def _label_table(
    path: Path, mapping: Mapping[str, int] | str | Path | None
) -> tuple[dict[str, int], str]:
    """Structure name -> value for a label map, and a note saying where it came from."""
    if isinstance(mapping, Mapping):
        return _validated_table(mapping, path), "Names from the given mapping."
    if mapping is not None:
        json_path = Path(mapping)
        return _read_table_json(json_path), f"Names from {json_path.name}."
    sidecar = label_json_path(path)
    if sidecar.is_file():
        return _read_table_json(sidecar), f"Names from the sidecar {sidecar.name}."
    in_header = _nifti_label_table(path)
    if in_header:
        table = {name: value for value, name in in_header.items()}
        if len(table) != len(in_header):
            raise InputError(path, "the header's label table names one structure twice")
        return (
            _validated_table(table, path),
            "Names from the file's NIfTI header extension (TotalSegmentator label table).",
        )
    return dict(_V2_TABLE), (
        "The file carries no names and no mapping was given: values read as "
        "TotalSegmentator v2 'total' class ids (pass mapping= for any other label map)."
    )


_V2_TABLE = {name: value for value, name in TOTALSEGMENTATOR_TOTAL_V2.items()}


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, so that repeated keys can be seen."""


def _read_table_json(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_Pairs)
    except FileNotFoundError:
        raise InputError(path, "no such mapping file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON mapping ({type(exc).__name__})") from None
    if not isinstance(data, _Pairs):
        raise InputError(path, "the mapping must be a JSON object: structure name -> value")
    keys = [key for key, _ in data]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InputError(path, f"names given twice: {', '.join(repeated)}")
    return _validated_table(dict(data), path)


def _validated_table(table: Mapping[str, Any], path: Path) -> dict[str, int]:
    """Canonical name -> positive int; each name and each value once."""
    if not table:
        raise InputError(path, "the mapping names no structure")
    out: dict[str, int] = {}
    given: dict[str, str] = {}
    for raw, value in table.items():
        name = canonical_name(str(raw))
        if not name:
            raise InputError(path, f"mapping: {raw!r} is not a structure name")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(
                path, f"mapping: {raw!r} -> {value!r}; label values must be integers > 0"
            )
        if name in out:
            raise InputError(path, f"mapping: {given[name]!r} and {raw!r} both name {name!r}")
        out[name], given[name] = int(value), str(raw)
    by_value: dict[int, list[str]] = {}
    for name, value in out.items():
        by_value.setdefault(value, []).append(name)
    shared = {value: names for value, names in by_value.items() if len(names) > 1}
    if shared:
        value, names = next(iter(shared.items()))
        raise InputError(path, f"mapping: value {value} is given to {', '.join(names)}")
    return out


def _open(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _nifti_label_table(path: Path) -> dict[int, str] | None:
    """Label value -> name from a NIfTI header extension, as TotalSegmentator writes it.

    TotalSegmentator stores its label table as Caret XML (``<Label Key="77">...
    <![CDATA[hip_left]]></Label>``) in the extension after the header. Anything else
    gives ``None``.
    """
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open(path) as fh:
            head = fh.read(544)
            for order in "<>":
                size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
                if size == 348 and len(head) >= 352:
                    start, vox_offset = 348, int(struct.unpack(order + "f", head[108:112])[0])
                    break
                if size == 540 and len(head) >= 544:
                    start, vox_offset = 540, int(struct.unpack(order + "q", head[168:176])[0])
                    break
            else:
                return None
            if not start + 4 < vox_offset <= _MAX_HEADER_BYTES:
                return None
            data = head + fh.read(max(0, vox_offset - len(head)))
    except (OSError, EOFError, gzip.BadGzipFile):
        return None  # load_ct reports unreadable files
    extensions = data[start:vox_offset]
    if len(extensions) < 4 or extensions[0] == 0:
        return None
    table: dict[int, str] = {}
    pos = 4
    while pos + 8 <= len(extensions):
        esize = struct.unpack(order + "i", extensions[pos : pos + 4])[0]
        if esize < 8:
            break
        for match in _LABEL_XML.finditer(extensions[pos + 8 : pos + esize]):
            text = match.group(2) if match.group(2) is not None else match.group(3)
            table[int(match.group(1))] = text.decode("utf-8", errors="replace").strip()
        pos += esize
    return table or None


# --- geometry ---------------------------------------------------------------------------


def _extent(volume: Volume) -> str:
    low, high = volume.bounds_lps_mm()
    return (
        ", ".join(
            f"{axis} {lo:.0f}..{hi:.0f}" for axis, lo, hi in zip("xyz", low, high, strict=True)
        )
        + " mm (LPS)"
    )


def _spacing(volume: Volume) -> str:
    return "x".join(f"{s:.3g}" for s in volume.spacing_mm) + " mm"


def _onto_reference(
    volume: Volume, reference: Volume, path: Path
) -> tuple[NDArray[Any], str, float]:
    """``volume``'s values on ``reference``'s grid (nearest neighbour).

    Returns the array, a note on the grid change ("" when the grids are the same) and the
    fraction of the foreground that lies outside ``reference``.
    """
    outside = _outside_fraction(volume, reference, path)
    if volume.shape == reference.shape and np.allclose(
        volume.affine_lps, reference.affine_lps, rtol=0.0, atol=_SAME_GRID_MM
    ):
        return volume.array, "", outside
    mapping = np.linalg.inv(volume.affine_lps) @ reference.affine_lps
    exact = np.allclose(mapping[:3], np.rint(mapping[:3]), rtol=0.0, atol=_SNAP) and np.allclose(
        np.abs(np.rint(mapping[:3, :3])).sum(axis=0), 1.0
    )
    if exact:
        note = (
            "stored with another orientation or extent of the CT's voxel grid; mapped voxel "
            "for voxel (no interpolation)."
        )
    else:
        note = (
            f"stored on a {_spacing(volume)} grid, resampled onto the CT's {_spacing(reference)} "
            "grid by nearest neighbour."
        )
    return resample_to(volume, reference, order=0).array, note, outside


def _outside_fraction(volume: Volume, reference: Volume, path: Path) -> float:
    """Fraction of ``volume``'s foreground outside ``reference``; refuses a wrong grid."""
    foreground = np.argwhere(volume.array != 0)
    if foreground.size == 0:
        low, high = volume.bounds_lps_mm()
        ref_low, ref_high = reference.bounds_lps_mm()
        if np.all(low <= ref_high) and np.all(ref_low <= high):
            return 0.0
        raise InputError(
            path,
            f"does not overlap the CT: the mask spans {_extent(volume)}, "
            f"the CT {_extent(reference)}",
        )
    step = max(1, len(foreground) // _MAX_SAMPLED_VOXELS)
    inside = reference.contains_lps(volume.index_to_lps(foreground[::step]))
    fraction_inside = float(np.mean(inside))
    if fraction_inside < _MIN_INSIDE_FRACTION:
        raise InputError(
            path,
            f"only {fraction_inside:.0%} of the mask lies inside the CT (at least "
            f"{_MIN_INSIDE_FRACTION:.0%} needed): the mask spans {_extent(volume)}, the CT "
            f"{_extent(reference)}; was it made from another scan, or its geometry lost?",
        )
    return 1.0 - fraction_inside
