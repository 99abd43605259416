"""Where the server, token and project come from: arguments, then the
environment (``CONTEXTFS_SERVER``, ``CONTEXTFS_TOKEN``, ``CONTEXTFS_PROJECT``),
then ``contextfs login``'s file ``$XDG_CONFIG_HOME/contextfs/config.toml``
(``~/.config/contextfs/config.toml``). Nothing is written."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as _toml


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base else Path.home() / ".config"
    return root / "contextfs" / "config.toml"


def _saved() -> Dict[str, str]:
    path = config_path()
    try:
        with open(path, "rb") as f:
            data = _toml.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    return {k: v for k, v in data.items() if isinstance(v, str)}


@dataclass(frozen=True)
class Settings:
    server: str
    token: str
    project: Optional[str]


def resolve(server: Optional[str], token: Optional[str], project: Optional[str], *, need_project: bool) -> Settings:
    saved: Optional[Dict[str, str]] = None

    def pick(given: Optional[str], env: str, key: str) -> Optional[str]:
        nonlocal saved
        if given:
            return given
        if os.environ.get(env):
            return os.environ[env]
        if saved is None:
            saved = _saved()
        return saved.get(key)

    server = pick(server, "CONTEXTFS_SERVER", "server")
    token = pick(token, "CONTEXTFS_TOKEN", "token")
    project = pick(project, "CONTEXTFS_PROJECT", "project")
    if not server:
        raise ConfigError("no server: pass server=, set CONTEXTFS_SERVER or run `contextfs login`")
    if not token:
        raise ConfigError("no token: pass token=, set CONTEXTFS_TOKEN or run `contextfs login`")
    if need_project and not project:
        raise ConfigError("no project: pass project=, set CONTEXTFS_PROJECT or run `contextfs login`")
    return Settings(server=server.rstrip("/"), token=token, project=project)
