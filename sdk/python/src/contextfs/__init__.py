"""contextfs: a shared, versioned cloud workspace for AI agents.

    from contextfs import ContextFS
    ctx = ContextFS()                      # CONTEXTFS_SERVER / _TOKEN / _PROJECT
    v = ctx.write("notes/today.md", "# Today\\n")
    print(ctx.read_text("notes/today.md"), v.version, v.status)
"""

from .aio import AsyncContextFS
from .client import ContextFS
from .errors import (
    ConfigError,
    Conflict,
    ContextFSError,
    Forbidden,
    InvalidRequest,
    NotFound,
    ServerUnavailable,
    TooLarge,
    Unauthorized,
)
from .models import Change, Entry, ReadResult, Version

__all__ = [
    "AsyncContextFS",
    "Change",
    "ConfigError",
    "Conflict",
    "ContextFS",
    "ContextFSError",
    "Entry",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "ReadResult",
    "ServerUnavailable",
    "TooLarge",
    "Unauthorized",
    "Version",
]

__version__ = "0.1.0"
