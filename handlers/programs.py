"""The system programs the reference handlers run, each named with the Debian package that ships it.

A handler module that runs a program declares it here as a module-level `Program`, and names
the program and its package through it (when it runs it, and in the error for a missing one);
tests/acceptance/test_deploy.py collects every `Program` of the handler modules and fails when
deploy/Dockerfile's runtime stage does not install its package.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker import Permanent


@dataclass(frozen=True, slots=True)
class Program:
    """A program a handler runs (`command`, looked up on PATH) and the Debian package that installs it."""

    command: str
    package: str

    def missing(self) -> Permanent:
        """The error of a job that needs this program on a machine without it (no retry can help)."""
        return Permanent(f"{self.command} is not installed: apt-get install {self.package}")
