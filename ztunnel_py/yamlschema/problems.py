"""What is wrong in a document and where: the unit every reader of YAML reports in."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Position = tuple[int, int]  # 1-based (line, column)

# The position of each child of a container: id(container) -> key or index -> position
Positions = Mapping[int, Mapping[Any, Position]]


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    # information, not a problem (e.g. a document skipped on purpose)
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a document: the field path (`spec.ports[0].port`, "" for the document or
    the file), the reason, and the line and column when the document came from YAML text."""

    path: str
    reason: str
    severity: Severity = Severity.ERROR
    line: int | None = None
    column: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR
