"""Where the controller reads Canaries and writes resources: a small interface, so the same
controller runs against a testbed's watched directory (`ctl/canary.py` wires `testbed apply`)
or any other place the control plane reads its configuration from.

Everything the controller changes goes through `apply`, as ordinary objects: the
VirtualService and DestinationRule carrying the weights, and the Canary itself with its
`status`. Implementations block (files, an API server): the controller calls them in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Document = dict[str, Any]

CANARY_KIND = "Canary"


class Resources(Protocol):
    def canaries(self) -> list[Document]:
        """Every Canary object there is now."""
        ...

    def get(self, kind: str, namespace: str, name: str) -> Document | None:
        """The object of that kind, namespace and name; None if there is none."""
        ...

    def apply(self, documents: Sequence[Document]) -> None:
        """Create or replace these objects (kubectl apply)."""
        ...


class StoreError(Exception):
    """A Resources implementation could not read or write (with the reason, for the log)."""
