"""Dataset zips and uploads: safe extraction (no path outside, no link, size, ratio and free-disk limits),
uploads stored in a folder named by their content under their own safe name, and messages in that name."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from leukviz.core import paths
from leukviz.datasets.dataset import DataError
from leukviz.datasets.decode import _is_image
from leukviz.datasets.layouts import find_cnmc_root

MAX_ZIP_BYTES = 32 << 30  # uncompressed total; the full C-NMC set is about 10 GB of BMPs
MAX_ZIP_RATIO = 200  # per entry; BMPs of cells on black compress well, but not this well


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _check_members(zip_name: str, files: list[zipfile.ZipInfo]) -> None:
    """Before extracting: an entry name given twice (which file is meant?), and a zip that holds zips but no
    image (a zip of the dataset's zip), each one line naming the zip and the entry."""
    seen: set[str] = set()
    for info in files:
        key = info.filename.replace("\\", "/").rstrip("/")
        if key in seen:
            raise DataError(f"{zip_name}: the entry {info.filename!r} appears twice, so which file is meant is "
                            "unclear; make the zip again from the folder")
        seen.add(key)
    folders = {str(parent) for key in seen for parent in Path(key).parents if str(parent) != "."}
    if clash := sorted(seen & folders):  # extracting both would fail with "File exists"
        raise DataError(f"{zip_name}: {clash[0]!r} is both a file and a folder in the zip, so one cannot be "
                        "extracted; rename one of them and make the zip again")
    names = [Path(i.filename.replace("\\", "/")) for i in files]
    inner = [n.name for n in names if n.suffix.lower() == ".zip"]
    if inner and not any(_is_image(n) for n in names):
        raise DataError(f"{zip_name} holds another zip ({', '.join(inner[:3])}) and no images: give the inner zip "
                        "itself, or zip the dataset's folder")


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract a dataset zip safely: no paths outside dest, no links, size and ratio limits; returns the root."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{Path(zip_path).name}: not a readable zip file ({e})") from None
    with zf:
        total = 0
        members = []
        for info in zf.infolist():
            if info.flag_bits & 0x1:
                raise DataError(f"{Path(zip_path).name}: encrypted zips are not supported")
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name.replace("\\", "/")).parts or ":" in name:
                raise DataError(f"{Path(zip_path).name}: unsafe entry {name!r} (absolute path or '..')")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"{Path(zip_path).name}: entry {name!r} is a symbolic link; links are refused")
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise DataError(f"{Path(zip_path).name}: expands to over {_size(MAX_ZIP_BYTES)}; refused")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 1 << 20:
                raise DataError(f"{Path(zip_path).name}: entry {name!r} is compressed {info.file_size // info.compress_size}:1, "
                                "a zip bomb; refused")
            if "__MACOSX" in name:
                continue
            members.append(info)
        _check_members(Path(zip_path).name, [m for m in members if not m.is_dir()])
        free = shutil.disk_usage(dest.parent).free
        if total > free:
            raise DataError(f"{Path(zip_path).name}: expands to {_size(total)} but only {_size(free)} is free in "
                            f"{dest.parent}")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        try:
            for info in members:
                target = (tmp / info.filename).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise DataError(f"{Path(zip_path).name}: unsafe entry {info.filename!r}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as s, open(target, "wb") as d:
                        shutil.copyfileobj(s, d, 1 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                    # a damaged entry, a size that lies (zipfile stops at the declared size, then the CRC
                    # fails), or a full disk: nothing is kept, the temporary folder goes below
                    raise DataError(f"{Path(zip_path).name}: cannot extract {info.filename!r} "
                                    f"({e.__class__.__name__}: {e})") from None
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    # a single top folder (zip of a folder) is unwrapped
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and find_cnmc_root(dest) is None:
        return entries[0]
    return dest


def shown_upload_name(name: str) -> str:
    """An upload's name fit to show: control characters (a NUL byte, a newline) as visible escapes."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in str(name))


def upload_refusal(name: str, kinds: tuple[str, ...]) -> str | None:
    """Why an uploaded file is not taken, judged by its name alone, as one line naming it; None when its
    extension is one of kinds. The pages' uploaders take any file and ask this instead of Streamlit's own
    type check, which raises on a name holding a NUL byte and so replaced the whole page: here that one
    file gets a message and the others go on."""
    shown = shown_upload_name(name)
    if "\0" in name:
        return f"{shown}: the file name holds a NUL byte, which no real file name can: rename it and upload it again"
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in kinds:
        return f"{shown}: not a file type taken here (.{ext or '?'}); give " + ", ".join(f".{k}" for k in kinds)
    return None


def save_upload(blob: bytes, folder: Path, suffix: str = ".zip", name: str | None = None) -> Path:
    """Store an uploaded dataset in a folder named by its content. With name (the upload's own file name),
    the file keeps that name, made safe (its bare name, letters, digits, '.', '-', '_' and spaces only), so
    pages can call the dataset as the user does; the name is only ever shown, never followed as a path."""
    digest = hashlib.sha256(blob).hexdigest()[:16]
    if name:
        bare = re.sub(r"[^\w.\- ]", "_", Path(str(name).replace("\\", "/")).name).strip(" .")[:80] or "upload"
        path = folder / digest / (bare if bare.lower().endswith(suffix) else bare + suffix)
    else:
        path = folder / f"{digest}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path


def upload_name(spec: str | Path) -> str | None:
    """The user's own file name of a dataset uploaded with one (save_upload's name), else None."""
    p = Path(spec)
    try:
        inside = p.parent.parent == paths.uploads()
    except (OSError, ValueError):
        return None
    return p.name if inside and len(p.parent.name) == 16 else None


def as_uploaded(text: str, stored: str | Path, name: str) -> str:
    """A message about an uploaded dataset as its user may see it: the upload's own file name in place of
    the name it is stored under (a content hash, save_upload) and of any server path of the uploads, the
    cache it was unpacked into, or a temporary fallback cache."""
    for where in (paths.cache_root(), paths.uploads(), Path(tempfile.gettempdir())):
        text = re.sub(re.escape(str(where)) + r"[^\s:;,()'\"]*", lambda m: name, text)
    return text.replace(Path(stored).name, name)
