"""API keys: who is asking, and so whose memories and jobs a request may see.

Without a keys file the server is open (loopback by default) and everything belongs to
``public``. With ``--api-keys FILE`` (one key per line; ``#`` comments and blank lines ignored)
every request needs ``Authorization: Bearer <key>``; a key's memories and jobs belong to it alone.
Owners are a hash of the key, so keys never reach the disk.

    >>> keys = ApiKeys.from_file("keys.txt")
    >>> owner = keys.owner("Bearer sk-abc")      # "k-3f2a..." or raises Unauthorized
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from ..errors import LocasError

PUBLIC = "public"


class Unauthorized(Exception):
    """No key, or a key the server does not know."""


class ApiKeys:
    def __init__(self, keys: list[str] | None = None):
        self.keys = {k: "k-" + hashlib.sha256(k.encode()).hexdigest()[:16] for k in (keys or [])}

    @classmethod
    def from_file(cls, path) -> ApiKeys:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise LocasError(f"cannot read the API keys file '{path}' ({exc.strerror}); check the path") from None
        keys = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not keys:
            raise LocasError(f"'{path}' holds no API key; put one key per line")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def owner(self, authorization: str | None) -> str:
        """The owner of a request's ``Authorization`` header (``public`` when the server has no keys)."""
        if not self.enabled:
            return PUBLIC
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        for known, owner in self.keys.items():
            if hmac.compare_digest(known, key.strip()):
                return owner
        raise Unauthorized("unknown API key")
