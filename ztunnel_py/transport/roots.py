"""Where the control plane's trust roots come from: ztunnel's `CA_ROOT_CA` / `XDS_ROOT_CA`.

A value is one of (docs/istio-compat.md, "Environment variables"):

- a file path: read on every connection attempt, so the channel follows a rotated file;
- `SYSTEM`: the operating system's trust store (a control plane with a publicly trusted
  certificate, as managed control planes have);
- inline PEM: the value itself, when it starts with `-----BEGIN`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SYSTEM", "RootCerts", "RootCertsError"]

SYSTEM = "SYSTEM"
_PEM_MARK = "-----BEGIN"


class RootCertsError(Exception):
    """The roots cannot be read; the message names the source and what to do."""


@dataclass(frozen=True, slots=True)
class RootCerts:
    path: Path | None = None
    pem: bytes | None = None
    system: bool = False

    @classmethod
    def parse(cls, value: str) -> RootCerts:
        """A `CA_ROOT_CA`/`XDS_ROOT_CA` value; ValueError for an empty one."""
        text = value.strip()
        if not text:
            raise ValueError("empty: give a file path, SYSTEM or PEM text")
        if text == SYSTEM:
            return cls(system=True)
        if text.startswith(_PEM_MARK):
            return cls(pem=text.encode() + b"\n")
        return cls(path=Path(value))

    @classmethod
    def of(cls, roots: RootCerts | Path) -> RootCerts:
        return roots if isinstance(roots, RootCerts) else cls(path=roots)

    def read(self) -> bytes:
        """The PEM bundle now (a file is read again every time)."""
        if self.pem is not None:
            return self.pem
        path = self.path if self.path is not None else _system_bundle()
        try:
            return path.read_bytes()
        except OSError as e:
            raise RootCertsError(f"cannot read {self}: {e}") from None

    def __str__(self) -> str:
        if self.system:
            return "the system trust store"
        if self.pem is not None:
            return "the inline PEM roots"
        return f"root certificate file {self.path}"


def _system_bundle() -> Path:
    # The bundle OpenSSL itself uses (on Debian, /etc/ssl/certs/ca-certificates.crt).
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RootCertsError(
        "SYSTEM roots requested but no system trust store was found (install ca-certificates, "
        "or give a root certificate file)"
    )
