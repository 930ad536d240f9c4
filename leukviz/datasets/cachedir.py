"""Where the dataset layer's caches go: the cache folder a caller gave or the default one, and a temporary
stand-in when it cannot be written (reading a dataset never needs write access)."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from leukviz.core import paths


def cache_folder(cache_dir: str | Path | None) -> Path:
    """The cache folder a caller gave, or the default one."""
    return Path(cache_dir) if cache_dir else paths.cache_root()


_FALLBACKS: dict[Path, Path] = {}  # a cache folder that cannot be written -> the temporary one used instead


def writable(folder: Path) -> Path:
    """folder, made if need be; or, when it cannot be written (a read-only LEUKVIZ_HOME, a file in the way), a
    temporary folder in its place, said once on stderr. Reading a dataset never needs write access: a cache
    is only a cache."""
    folder = Path(folder)
    if folder in _FALLBACKS:
        return _FALLBACKS[folder]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        return folder
    except OSError as e:
        tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"leukviz-cache-{os.getuid() if hasattr(os, 'getuid') else 0}" / tag
        fallback.mkdir(parents=True, exist_ok=True)
        _FALLBACKS[folder] = fallback
        print(f"note: cannot write the cache folder {folder} ({e.strerror or e}); using {fallback} instead "
              "(set LEUKVIZ_CACHE to choose another)", file=sys.stderr)
        return fallback
