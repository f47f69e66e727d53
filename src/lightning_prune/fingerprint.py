"""A fingerprint of the code that produced a result: caches (scores, command help) never serve another code's."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def code_fingerprint(*files: str) -> str:
    """Hash of this package's source files and of ``files`` (a plugin scorer's module): scores computed by other
    code are never reused, even under the same version number."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in [*sorted(package.rglob("*.py")), *(Path(f) for f in files)]:
        digest.update(str(path.relative_to(package) if path.is_relative_to(package) else path.name).encode())
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()
