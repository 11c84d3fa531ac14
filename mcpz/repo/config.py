"""git's own configuration as it applies to one repository: identity and ignore settings.

Files are read in git's order of precedence: the repository's `.git/config`, then the user's
global file (`GIT_CONFIG_GLOBAL`, else `~/.gitconfig` and `$XDG_CONFIG_HOME/git/config`), then
the system's (`GIT_CONFIG_SYSTEM`, else `/etc/gitconfig`, skipped with `GIT_CONFIG_NOSYSTEM`).
The environment is passed in, never read from `os.environ` here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from dulwich.config import ConfigFile

from mcpz.repo.model import choose_identity
from mcpz.repo.worktree import IgnoreRules


class GitSettings:
    def __init__(self, repo_config: ConfigFile, env: Mapping[str, str]) -> None:
        self._env = env
        self._files: list[ConfigFile] = [repo_config]
        for path in self._global_paths():
            with contextlib.suppress(OSError, ValueError):
                self._files.append(ConfigFile.from_path(path))

    def _home(self) -> str:
        return self._env.get("HOME") or os.path.expanduser("~")

    def _xdg(self) -> str:
        return self._env.get("XDG_CONFIG_HOME") or os.path.join(self._home(), ".config")

    def _global_paths(self) -> list[str]:
        env = self._env
        if env.get("GIT_CONFIG_GLOBAL"):
            paths = [env["GIT_CONFIG_GLOBAL"]]
        else:
            paths = [os.path.join(self._home(), ".gitconfig"), os.path.join(self._xdg(), "git", "config")]
        if env.get("GIT_CONFIG_SYSTEM"):
            paths.append(env["GIT_CONFIG_SYSTEM"])
        elif "GIT_CONFIG_NOSYSTEM" not in env:
            paths.append("/etc/gitconfig")
        return paths

    def get(self, section: str, key: str) -> str | None:
        """A setting from the first file that has it, or None."""
        for config in self._files:
            with contextlib.suppress(KeyError):
                return bytes(config.get((section.encode(),), key.encode())).decode("utf-8", "replace")
        return None

    def identity(self, author: str | None = None) -> str:
        """`author` (mcpz's setting), else GIT_AUTHOR_NAME/EMAIL, else user.name/user.email, else
        `login <login@host>` as git itself would guess."""
        import getpass
        import socket

        try:
            login = getpass.getuser()
        except (KeyError, OSError):
            login = "mcpz"
        fallback = f"{login} <{login}@{socket.gethostname() or 'localhost'}>"
        return choose_identity(
            author, self._env, self.get("user", "name"), self.get("user", "email"), fallback
        )

    def ignore_rules(self, root: str, controldir: str) -> IgnoreRules:
        """`.gitignore` files, `info/exclude` and `core.excludesFile` (default `$XDG/git/ignore`)."""
        excludes = self.get("core", "excludesFile")
        if excludes is None:
            excludes = os.path.join(self._xdg(), "git", "ignore")
        elif excludes.startswith("~/"):
            excludes = os.path.join(self._home(), excludes[2:])
        ignorecase = (self.get("core", "ignorecase") or "false").lower() == "true"
        return IgnoreRules.load(root, controldir, excludes, ignorecase)
