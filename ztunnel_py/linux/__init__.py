"""Thin wrappers of Linux kernel interfaces that the standard library lacks; no policy here."""
