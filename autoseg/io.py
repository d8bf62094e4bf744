"""Atomic writes and NIfTI reading/writing with full geometry.

Every artefact is written under a temporary name in the target folder and renamed into place,
so a process killed half-way never leaves a file that a rerun would trust.
Arrays follow SimpleITK's order: (z, y, x); :class:`Geometry` keeps ITK's (x, y, z) order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import errno
import json
import locale
import os
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.errors import AutosegError, fail


def make_folder(folder: str | os.PathLike) -> None:
    """Create an output folder (and its parents) if needed; why it cannot be is one line naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise fail(folder, "cannot create this folder (permission denied)", "choose a writable output folder") from None
    except (FileExistsError, NotADirectoryError):
        raise fail(folder, "cannot create this folder (a file is in the way: it or a parent is not a folder)",
                   "choose another output folder or move that file") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` keeps an extension that writers look at (``.nii.gz``, ``.npz``). On any error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    make_folder(path.parent)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp" + suffix, dir=path.parent)
    except PermissionError:
        raise fail(path.parent, "folder is not writable", "choose a writable output folder or fix its permissions") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise name_too_long(path) from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _default_file_mode())  # mkstemp makes 0600; artefacts are shared like any file
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise fail(path, "no space left on device while writing", "free disk space and rerun; finished files are kept") from None
        if e.errno == errno.ENAMETOOLONG:
            raise name_too_long(path) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


_TEMPORARY_ROOM = 32   # of a file name, for what atomic_path adds to the stem: dots, 8 random characters, .tmp.EXT


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name the file system of ``folder`` accepts (255 on most; 143 on eCryptfs)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def temporary_prefix(path: str | os.PathLike) -> str:
    """``.STEM.``: how the hidden temporary names of :func:`atomic_path` for ``path`` begin.

    A stem that would leave the temporary name over the file system's limit (a long case id: the
    temporary is longer than the final name) is cut, and a hash of the whole stem keeps the prefixes of
    two long names distinct; so any name that fits can be written atomically.
    """
    path = Path(path)
    room = name_max(path.parent if path.parent.is_dir() else ".") - _TEMPORARY_ROOM
    stem = path.stem
    if len(stem) > room:
        stem = f"{stem[:max(1, room - 9)]}~{zlib.crc32(stem.encode()):08x}"
    return f".{stem}."


def name_too_long(path: Path) -> AutosegError:
    """The one-line error for ENAMETOOLONG: which limit (the name's or the whole path's) ``path`` exceeds."""
    limit = name_max(path.parent) if path.parent.is_dir() else 255
    if len(path.name.encode()) > limit:
        return fail(path, f"file name too long for the file system ({len(path.name.encode())} bytes, at most {limit})",
                    "shorten the case id (or file name)")
    return fail(path, f"path too long for the file system ({len(os.fsencode(path.absolute()))} bytes)",
                "choose a shorter output folder, or shorten the case id")


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would have given a new file.

    Read once (reading the umask means setting it), before worker threads start writing.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (dicts, lists, dataclasses, numpy scalars) as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON; a missing or malformed file becomes a one-line AutosegError naming it."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise fail(path, "file not found", "check the path or run the stage that writes it") from None
    except json.JSONDecodeError as e:
        raise fail(path, f"malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})", "fix or regenerate the file") from None
    except UnicodeDecodeError:
        raise fail(path, "not a text JSON file", "fix or regenerate the file") from None


def save_npz_atomic(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


@dataclass(frozen=True)
class Geometry:
    """Physical placement of an image, ITK order (x, y, z): what is needed to write it back exactly."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))

    @property
    def shape_zyx(self) -> tuple[int, ...]:
        return tuple(reversed(self.size))

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def mismatch(self, other: Geometry, rtol: float = 1e-4, atol: float = 1e-3) -> str | None:
        """Describe how ``other`` differs (shape, spacing, origin, direction), or None if it matches."""
        if self.size != other.size:
            return f"shape {other.shape_zyx} differs from {self.shape_zyx}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            tol = atol + rtol * np.abs(a) if name != "origin" else 1e-2 + 1e-3 * np.abs(a)
            if np.any(np.abs(a - b) > tol):
                got, want = (tuple(float(v) for v in np.round(x, 4) + 0.0) for x in (b, a))
                return f"{name} {got} differs from {want}"
        return None


def read_header(path: str | os.PathLike) -> Geometry:
    """Read only the header (cheap): size, spacing, origin, direction."""
    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found", "check the dataset layout (see docs/formats.md)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        detail = _short_itk(e)
        if "Unable to determine ImageIO reader" in detail:   # ITK's words for "no format recognises these bytes"
            detail = "not a readable image: unknown format or corrupt header"
        raise fail(path, f"cannot read image header ({detail})", "re-export or re-download this file") from None
    geom = Geometry(tuple(int(s) for s in reader.GetSize()), tuple(reader.GetSpacing()),
                    tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    _check_3d(path, geom.size)
    return geom


def read_image(path: str | os.PathLike, dtype: type | None = None, allow_nonfinite: bool = False
               ) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image as a (z, y, x) array plus its geometry; bad files become one-line errors.

    NIfTI voxels are read with nibabel, not SimpleITK: SimpleITK 2.5 silently turns NaN/inf into 0
    and zero-fills a truncated .nii.gz, while nibabel reports both. The geometry comes from
    SimpleITK's header reader so that it matches what :func:`write_image` writes back.
    Non-finite voxels are an error unless ``allow_nonfinite``.
    """
    path = Path(path)
    geometry = read_header(path)
    if path.name.endswith((".nii", ".nii.gz")):
        array = _read_nifti_voxels(path, geometry)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise fail(path, f"cannot read image ({_short_itk(e)})",
                       "the file is truncated or corrupt; re-export or re-download it") from None
        _check_3d(path, image.GetSize(), image.GetNumberOfComponentsPerPixel())
        array = sitk.GetArrayFromImage(image)
    if not allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise fail(path, f"contains {bad} NaN/inf voxel(s)", "replace them (e.g. with 0) and re-export the image")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, geometry


def off_grid(path: Path, geometry: Geometry, first: Path, first_geometry: Geometry) -> AutosegError | None:
    """The one-line error for a file of a case (a channel or its label) that is not on the grid of the case's first
    file, or None when it is: the dataset check, preprocessing and prediction all say it this way."""
    problem = first_geometry.mismatch(geometry)
    if problem is None:
        return None
    return fail(path, f"{problem} of {first.name}", f"resample or re-export it onto the grid of {first.name}")


def read_channels(paths: Sequence[Path], skip: Collection[int] = ()) -> tuple[list[np.ndarray], Geometry]:
    """The channel files of one case as float32 (z, y, x) arrays on one grid, the first read channel's; a channel
    in ``skip`` is not read (its file may be absent) and comes back as zeros. An unreadable file, or one on
    another grid, is one line naming it. The case reader of preprocessing and prediction."""
    if all(c in skip for c in range(len(paths))):
        raise ValueError("read_channels: every channel is skipped")
    images: list[np.ndarray | None] = []
    first: tuple[Path, Geometry] | None = None
    for c, path in enumerate(paths):
        if c in skip:
            images.append(None)
            continue
        image, geometry = read_image(path, np.float32)
        if first is None:
            first = (path, geometry)
        elif (error := off_grid(path, geometry, *first)) is not None:
            raise error
        images.append(image)
    assert first is not None
    return [np.zeros(first[1].shape_zyx, np.float32) if im is None else im for im in images], first[1]


def _read_nifti_voxels(path: Path, geometry: Geometry) -> np.ndarray:
    import nibabel as nib  # local: only NIfTI needs it

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        detail = " ".join(str(e).split())[:120]
        raise fail(path, f"cannot read image data ({type(e).__name__}: {detail})",
                   "the file is truncated or corrupt; re-export or re-download it") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 or tuple(data.shape) != geometry.size:
        raise fail(path, f"voxel array of shape {data.shape} does not match its header {geometry.size}",
                   "re-export the image as a single 3D volume")
    if data.dtype.kind == "f" and data.dtype != np.float32 and np.can_cast(data.dtype, np.float32, "same_kind"):
        data = data.astype(np.float32)
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> None:
    """Write a (z, y, x) array with the given geometry, atomically."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise AutosegError(f"{path}: internal shape mismatch {array.shape} vs geometry {geometry.shape_zyx}")
    image = geometry.apply_to(sitk.GetImageFromArray(array))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        _check_written(tmp, array.nbytes, compress)


def _check_written(path: Path, nbytes: int, compressed: bool) -> None:
    """Raise ``OSError`` (ENOSPC when the disk is full) if SimpleITK left ``path`` incomplete.

    SimpleITK reports nothing when the disk fills up while it writes: it leaves an empty or truncated file, which
    would be renamed into place as a finished output. So a gzip file is read through to its checksum and must
    hold the voxels, as must an uncompressed one, and any other (no cheap check) is refused when the disk is
    full after writing it.
    """
    try:
        if path.name.endswith(".gz"):
            import gzip
            total = 0
            with gzip.open(path, "rb") as f:
                while block := f.read(1 << 22):
                    total += len(block)
            if total < nbytes:   # (an empty file is a valid empty gzip stream)
                raise EOFError("shorter than its voxels")
        elif path.name.endswith((".nii", ".mha", ".nrrd")) and (path.name.endswith(".nii") or not compressed):
            if path.stat().st_size < nbytes:   # (.mhd: the voxels are in another file)
                raise EOFError("shorter than its voxels")
        elif _free_bytes(path.parent) == 0:
            raise EOFError("the disk is full")
    except (OSError, EOFError, zlib.error) as e:
        full = _free_bytes(path.parent) < max(nbytes, 1 << 20)
        raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full else
                      f"written incompletely ({e})", str(path)) from None


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _check_3d(path: Path, size: tuple[int, ...], components: int = 1) -> None:
    if len(size) != 3 or components != 1:
        kind = f"{len(size)}D" + (f" with {components} components per voxel" if components != 1 else "")
        raise fail(path, f"is a {kind} image, a 3D single-channel image is expected",
                   "split 4D/multi-component files into one 3D file per channel (CASE_0000, CASE_0001, ...)")


def _short_itk(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = next((ln for ln in reversed(lines) if "Exception" not in ln[:20]), lines[-1] if lines else "unknown error")
    return msg.split(": ", 1)[-1][:160]


def keeps_locale(fn: Callable) -> Callable:
    """Restore the process locale after ``fn``: ITK's DICOM code (GDCM) sets it to "C", after which
    Python's default text encoding is ASCII for everything the process reads or writes later."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved = locale.setlocale(locale.LC_ALL)
        try:
            return fn(*args, **kwargs)
        finally:
            locale.setlocale(locale.LC_ALL, saved)
    return wrapper
