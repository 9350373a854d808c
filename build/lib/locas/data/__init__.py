"""Data loaders: local data directory first (``--data-dir`` / ``$LOCAS_DATA_DIR`` /
``../shared/data``), canonical public download second."""

from .paths import data_dir, read_text

__all__ = ["data_dir", "read_text"]
