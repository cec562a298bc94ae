"""Kubernetes' object name rules (DNS-1123 labels and subdomains, DNS-1035 labels), shared by
the control plane's validation and the CNI plugin, which takes pod names from its runtime.

Each check returns None for a valid name, else why it is not one. The whole text must match:
a trailing newline (which `$` would let through) makes a name invalid.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def dns1123_label(text: str) -> str | None:
    if len(text) > 63 or not _DNS1123_LABEL.fullmatch(text):
        return (
            f"{text!r} is not a valid name: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1123_subdomain(text: str) -> str | None:
    if len(text) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(text):
        return (
            f"{text!r} is not a valid name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters"
        )
    return None


def dns1035_label(text: str) -> str | None:
    if len(text) > 63 or not _DNS1035_LABEL.fullmatch(text):
        return (
            f"{text!r} is not a valid name: at most 63 lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None
