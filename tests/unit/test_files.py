import os
import stat
from pathlib import Path

from llm_router_plugin._files import private_dir, private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_dir_makes_missing_folders_owner_only_and_leaves_existing_ones(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    private_dir(shared / "a" / "b")
    assert mode(shared) == 0o755
    assert mode(shared / "a") == mode(shared / "a" / "b") == 0o700
    private_dir(shared)  # an existing folder is nobody's to tighten
    assert mode(shared) == 0o755


def test_private_file_creates_owner_only_and_leaves_an_existing_file(tmp_path: Path) -> None:
    private_file(tmp_path / "new.db")
    assert mode(tmp_path / "new.db") == 0o600 and (tmp_path / "new.db").read_bytes() == b""
    existing = tmp_path / "old.db"
    existing.write_bytes(b"data")
    existing.chmod(0o640)
    private_file(existing)
    assert mode(existing) == 0o640 and existing.read_bytes() == b"data"
