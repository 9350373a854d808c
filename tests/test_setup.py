"""``make setup`` installs exactly the versions ``make test`` passed with (constraints.txt): ``pip freeze`` of the
project's venv diffed against the constraints file. Skipped (with the reason) in any other environment, such
as ``make test-latest``'s venv, whose versions differ on purpose."""

from __future__ import annotations

import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOT_PINNED = {"locas", "pip", "setuptools", "wheel"}  # the project itself and the venv's own tools


def constraints() -> tuple[dict[str, Requirement], set[str]]:
    """name -> requirement, and the names of the optional block (installed by ``make engines`` only)."""
    pins, optional, in_optional = {}, set(), False
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith("# optional"):
            in_optional = True
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        pins[name] = req
        if in_optional:
            optional.add(name)
    return pins, optional


def test_every_constraint_is_an_exact_pin():
    pins, _ = constraints()
    assert pins and all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins.values())


@pytest.mark.skipif(Path(sys.prefix).resolve() != ROOT / ".venv",
                    reason=f"not the project's .venv (this is {sys.prefix}): its versions are not the constrained ones")
def test_the_venv_holds_exactly_the_constrained_versions():
    pins, optional = constraints()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    wrong = [f"{n} {v} (constraints.txt: {pins[n].specifier})" for n, v in sorted(installed.items())
             if n in pins and not pins[n].specifier.contains(Version(v), prereleases=True)]
    extra = sorted(n for n in installed if n not in pins and n not in NOT_PINNED)
    missing = sorted(n for n in pins if n not in installed and n not in optional)
    assert not (wrong or extra or missing), f"wrong versions {wrong}, not in constraints.txt {extra}, missing {missing}"
