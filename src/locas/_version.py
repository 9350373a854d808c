"""The version of locas: the one place it is written (pyproject.toml reads it; ``locas --version`` prints it;
CHANGELOG.md says what each version changed for users)."""

__version__ = "0.3.0"
