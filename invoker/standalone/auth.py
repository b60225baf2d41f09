"""The guest key: OpenWhisk's ``uuid:key`` form, kept in a file, never logged.

Standalone mode does not print the key. It prints the path of a file that holds it
(mode 0600) and a ``wsk`` command that reads it from there: terminal scrollback, CI
logs and screen recordings then never contain the secret, and the same file is what
scripts and tests read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from pathlib import Path

_KEY_ALPHABET = string.ascii_letters + string.digits
_FORMAT = re.compile(r"^[0-9a-fA-F-]{36}:[A-Za-z0-9]{8,128}$")


class AuthKeyError(ValueError):
    """The configured key file does not hold a ``uuid:key`` pair."""


@dataclass(frozen=True)
class GuestKey:
    uuid: str
    key: str = field(repr=False)

    @classmethod
    def generate(cls) -> GuestKey:
        return cls(str(uuid.uuid4()), "".join(secrets.choice(_KEY_ALPHABET) for _ in range(64)))

    @classmethod
    def parse(cls, text: str) -> GuestKey:
        text = text.strip()
        if not _FORMAT.match(text):
            raise AuthKeyError("an OpenWhisk auth key is <uuid>:<key> (letters and digits)")
        uuid_part, key = text.split(":", 1)
        return cls(uuid_part, key)

    @property
    def api_key(self) -> str:
        return f"{self.uuid}:{self.key}"

    def __repr__(self) -> str:
        return f"GuestKey(uuid={self.uuid!r}, key=***)"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization: Basic ...`` header carries this key (constant time)."""
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(authorization[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.api_key.encode())


def load_or_create(path: Path) -> tuple[GuestKey, bool]:
    """The key in ``path``, or a new one written there (0600). Returns (key, created)."""
    if path.exists():
        return GuestKey.parse(path.read_text()), False
    key = GuestKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with 0600 from the start: no moment where another user could read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key.api_key + "\n")
    return key, True
