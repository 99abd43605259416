"""Typed errors: every failure the server reports, by what a caller does next."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .models import Version


class ContextFSError(Exception):
    """Base class. ``status`` is the HTTP status (0 when none came back),
    ``code`` the server's machine-readable code (``not_found``, ``exists``...)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InvalidRequest(ContextFSError):
    """400: a bad path, field or header; fix the call."""


class Unauthorized(ContextFSError):
    """401: missing, unknown or revoked token."""


class Forbidden(ContextFSError):
    """403: a read-only token writing, or a non-admin calling an admin route."""


class NotFound(ContextFSError):
    """404: no such path, version or project (or not this token's project)."""


class Conflict(ContextFSError):
    """409: the path is in a state the request did not expect.

    ``head`` is the node's current head version when the server named it, so
    a caller can re-read and retry without another request."""

    def __init__(self, message: str, *, status: int = 409, code: str = "", head: Optional["Version"] = None) -> None:
        super().__init__(message, status=status, code=code)
        self.head = head


class TooLarge(ContextFSError):
    """413: the content is over the server's limit."""


class ServerUnavailable(ContextFSError):
    """The server could not be reached or stayed busy (5xx) through every retry."""


class ConfigError(ContextFSError):
    """No server, token or project could be found."""
