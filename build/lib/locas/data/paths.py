"""Finding the data directory and reading user text files safely.

    >>> data_dir()                       # $LOCAS_DATA_DIR, else ../shared/data beside the checkout
    >>> text = read_text("book.txt")     # clear LocasError for missing / empty / binary files
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LocasError


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data directory: explicit argument, ``$LOCAS_DATA_DIR``, or ``../shared/data``."""
    candidates = [override, os.environ.get("LOCAS_DATA_DIR")]
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in list(here.parents)[2:6]]  # src/locas/data -> repo/..
    candidates.append(Path.cwd().parent / "shared" / "data")
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise LocasError("no data directory found; pass --data-dir DIR or set LOCAS_DATA_DIR "
                     "(it should hold pg19/, locomo/ and mmlu/)")


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, refusing missing, empty and binary files with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise LocasError(f"text file '{path}' not found; check the path")
    if not path.is_file():
        raise LocasError(f"'{path}' is not a file; give a text file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LocasError(f"cannot read '{path}': {exc.strerror}; check its permissions") from None
    if b"\x00" in raw[:65536]:
        raise LocasError(f"'{path}' looks binary (contains NUL bytes); give a plain UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("latin-1") if _mostly_printable(raw) else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            raise LocasError(f"'{path}' is not UTF-8 text; convert it to UTF-8") from None
    if not text.strip():
        raise LocasError(f"'{path}' is empty; give a file with some text in it")
    return text.replace("\r\n", "\n")


def _mostly_printable(raw: bytes) -> bool:
    sample = raw[:65536]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) or b >= 160 for b in sample)
    return printable >= 0.95 * len(sample)
