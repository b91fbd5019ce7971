"""File helpers: read the files a user names with errors that name the file; create the router's own files private.

The router's folders hold prompts' embeddings (and texts, if stored), decisions and spend: what it creates is
readable by its owner only. Folders and files that already exist are left as they are (they are the user's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, what: str) -> Any:
    """Parse a UTF-8 YAML file the user named.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"config"``).

    Returns:
        The parsed document (``None`` for an empty file).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read (a folder, no permission), is not UTF-8 text, or is not valid YAML; the
            message names the file, and for invalid YAML the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {what} file: {path}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: cannot read the {what} (not UTF-8 text at byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        where = f", line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        problem = exc.problem or "syntax error"
        if exc.context and exc.context_mark:  # e.g. where the bracket that was never closed opened
            problem += f" {exc.context} on line {exc.context_mark.line + 1}"
        raise ValueError(f"{path}{where}: invalid YAML ({problem})") from None
    except yaml.YAMLError as exc:  # e.g. a control character: no line, only a position
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None


def private_dir(path: Path) -> None:
    """Create a folder and its missing parents with mode 0700; folders that exist keep their mode.

    Args:
        path: the folder.
    """
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask


def private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists (an existing file keeps its mode and content).

    Args:
        path: the file; its folder must exist.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # the mode os.open applies is masked by the umask
    finally:
        os.close(fd)
