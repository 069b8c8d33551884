"""Small file and process helpers shared across the project."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def private_dir(directory: Path, *, tighten: bool = True) -> Path:
    """Create ``directory`` (and missing parents) for this user only (0700).

    With ``tighten`` an existing folder is set to 0700 too (for folders that only
    faec-rec uses: the private Redis, crops); without, an existing folder (a data
    folder the user chose) keeps its mode.
    """
    existed = directory.is_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if tighten or not existed:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    return directory


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so a reader never sees half a file (see :func:`atomic_writer`)."""
    with atomic_writer(path, fsync=fsync, mode=mode) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, fsync: bool = False, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into, piece by piece; a reader never
    sees half a file.

    Writes a uniquely named temporary file in the same folder (created with the umask's
    usual permissions, not mkstemp's 0600, unless ``mode`` is given), optionally fsyncs it,
    then renames it over ``path`` when the block ends; the temporary file is removed on
    any failure (``path`` keeps its old content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        with open(tmp, "wb" if mode is not None else "xb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The image formats the loader decodes (``faces.image``: recognised by their first
# bytes, decoded by OpenCV) with the file suffixes a folder walk picks up for each
# (any letter case); one list for both, so the walk never collects a file the
# loader refuses (TIFF) nor skips one it reads (GIF, PNM).
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WebP": (".webp",),
    "GIF": (".gif",),
    "PNM": (".pnm", ".ppm", ".pgm", ".pbm"),
}
IMAGE_SUFFIXES = frozenset(s for suffixes in IMAGE_FORMATS.values() for s in suffixes)


def is_image_path(path: Path) -> bool:
    """True for a file name with one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def iter_files(root: Path) -> Iterator[tuple[Path, bool]]:
    """``(path, is_image)`` for every file under folder ``root``, recursively, lazily.

    A generator over ``os.scandir``: paths come out in the order ``sorted(root.rglob("*"))``
    gives (each folder's names sorted, depth first), but only one folder's names are held at
    a time, so walking a tree of 100,000 photos costs the memory of its largest folder's
    names, not of the whole tree. Hidden files and anything inside hidden folders (names
    starting with '.') are left out; symlinks to files are followed, symlinks to folders are
    not (as ``rglob``). A folder that cannot be read is logged and skipped.
    """
    # a stack of sorted name lists, one per open folder (reversed: pop() gives the next name)
    stack: list[tuple[Path, list[str]]] = [(root, _sorted_names(root))]
    while stack:
        folder, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                stack.append((path, _sorted_names(path)))
                continue
            is_file = path.is_file()
        except OSError:  # vanished or unreadable meanwhile
            continue
        if is_file:
            yield path, is_image_path(path)


def _sorted_names(folder: Path) -> list[str]:
    """Visible entry names of ``folder``, sorted and reversed (for pop()); [] if unreadable."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if not entry.name.startswith(".")]
    except OSError as exc:
        log.warning("skipped folder %s: %s", display_name(str(folder)), exc.strerror or exc)
        return []
    names.sort(reverse=True)
    return names


def walk_images(root: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) under folder ``root`` as two sorted lists (see :func:`iter_files`;
    for a large tree iterate that instead)."""
    images: list[Path] = []
    others: list[Path] = []
    for path, is_image in iter_files(root):
        (images if is_image else others).append(path)
    return images, others


# ---- file names that are not valid UTF-8 --------------------------------------
# Python hands such names over as str with lone surrogates (surrogateescape: byte
# 0xe9 -> '\udce9'); they open fine but cannot be encoded as UTF-8 (JSON, Redis,
# HTML, the terminal). Everything that shows or stores a name uses these.

def name_bytes(name: str) -> bytes:
    """The file name's exact bytes (lossless inverse of ``os.fsdecode``)."""
    return name.encode("utf-8", "surrogateescape")


def is_clean_name(name: str) -> bool:
    """True when ``name`` is valid UTF-8 text (no escaped bytes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_name(name: str) -> str:
    """``name`` as valid UTF-8 text for showing and storing: undecodable bytes
    written as ``\\xe9`` (unchanged for a clean name)."""
    if is_clean_name(name):
        return name
    return name_bytes(name).decode("utf-8", "backslashreplace")


# ---- output paths, checked before a job runs ----------------------------------

def _probe_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (created if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".faec-write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        with open(probe, "xb"):
            pass
        probe.unlink()
    except FileExistsError:
        return f"{folder} is a file, not a folder"
    except NotADirectoryError:
        return f"a part of {folder} is a file, not a folder"
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}"
    return None


def writable_dir(folder: Path, what: str) -> Path:
    """``folder`` if files can be created in it (made if missing), else :class:`ConfigError`."""
    from faec_rec.errors import ConfigError

    why = _probe_folder(Path(folder))
    if why:
        raise ConfigError(f"{what} {folder} is not usable: {why}")
    return Path(folder)


def check_outputs(outputs: dict[str, Path | None], inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, output files that cannot be written, that are one
    of the ``inputs`` (``--report photo.jpg`` would overwrite the photo) or that
    are the same file as another output. ``outputs``: option name -> path (None: not asked).
    Raises :class:`ConfigError` naming the option."""
    from faec_rec.errors import ConfigError

    def same(a: Path, b: Path) -> bool:
        try:
            return os.path.samefile(a, b)
        except OSError:
            return os.path.realpath(a) == os.path.realpath(b)

    given = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    sources = [Path(p) for p in inputs]
    for i, (name, path) in enumerate(given):
        for source in sources:
            if same(path, source):
                raise ConfigError(f"{name} {path} is an input of this command: it would be overwritten; "
                                  "write the output elsewhere")
        for other_name, other in given[:i]:
            if same(path, other):
                raise ConfigError(f"{name} and {other_name} are the same file ({path}): give two different paths")
        if path.is_dir():
            raise ConfigError(f"{name} {path} is a folder: give a file name")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(f"{name} {path} is not writable")
        why = _probe_folder(path.parent if str(path.parent) else Path("."))
        if why:
            raise ConfigError(f"{name} {path} cannot be written: {why}")
