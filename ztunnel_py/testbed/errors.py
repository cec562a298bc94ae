"""The one exception the testbed raises for anything a user can fix; its text says what to do."""

from __future__ import annotations


class TestbedError(Exception):
    """A testbed operation failed; `str(err)` names the cause and the next step."""

    # pytest collects classes named Test*; this is not a test class.
    __test__ = False
