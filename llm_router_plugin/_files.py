"""File helpers: read the files a user names with errors that name the file."""

from __future__ import annotations

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
