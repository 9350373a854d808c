"""PG-19 books from the data directory (``pg19/<id>.txt``) or a path.

    >>> text = load_book("10146")              # by PG-19 id, from the data directory
    >>> text = load_book("/path/to/book.txt")  # any text file
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from ..errors import LocasError
from .paths import data_dir, read_text

PG19_URL = "https://storage.googleapis.com/deepmind-gutenberg/test/{id}.txt"


def book_path(book: str, data: str | os.PathLike | None = None) -> Path:
    """Resolve a book argument: an existing path, or a PG-19 id looked up in ``<data>/pg19``."""
    if os.path.sep in book or book.endswith(".txt") or Path(book).exists():
        return Path(book)
    if not book.isdigit():
        raise LocasError(f"book '{book}' is neither a file nor a PG-19 id; give a path or a numeric id")
    local = data_dir(data) / "pg19" / f"{book}.txt"
    if local.is_file():
        return local
    cache = Path(os.path.expanduser("~/.cache/locas/pg19")) / f"{book}.txt"
    if not cache.is_file():
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(PG19_URL.format(id=book), timeout=20) as r:
                cache.write_bytes(r.read())
        except OSError:
            raise LocasError(f"PG-19 book {book} is not in {local.parent} and cannot be downloaded here; "
                             "put the file there or pass its path") from None
    return cache


def load_book(book: str, data: str | os.PathLike | None = None) -> str:
    return read_text(book_path(book, data))


def first_chapter(text: str, min_chars: int = 2000, max_chars: int = 12000) -> str:
    """The opening of a book up to the second 'CHAPTER' heading (bounded), for quick demos."""
    upper = text.upper()
    first = upper.find("CHAPTER")
    second = upper.find("CHAPTER", first + 1) if first >= 0 else -1
    end = second if second >= min_chars else max_chars
    return text[: min(end, max_chars)]
