"""t2iroute.paths.atomic_path: the one write-then-rename every writer of files uses."""

import os
import stat

import pytest

from t2iroute.paths import atomic_path, atomic_write_bytes
from t2iroute.sweeps.local import clean_temp_parts


def test_success_replaces_the_file_in_one_rename(tmp_path):
    out = tmp_path / "table.parquet"
    out.write_bytes(b"old")
    with atomic_path(out, mode=0o640) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".tmp-{os.getpid()}-") and tmp.name.endswith(out.name)
        tmp.write_bytes(b"new")
        assert out.read_bytes() == b"old"  # readers see the old file until the block ends
    assert out.read_bytes() == b"new" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_an_error_leaves_the_old_file_and_no_temp(tmp_path):
    out = tmp_path / "image.png"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["image.png"]
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "never.bin"):
            pass  # a writer that wrote nothing is an error, not an empty file
    assert not (tmp_path / "never.bin").exists()


def test_a_dead_process_leftover_is_cleaned_a_live_one_kept(tmp_path):
    atomic_write_bytes(tmp_path / "part-0.parquet", b"x")
    live = tmp_path / f".tmp-{os.getpid()}-abc-part-1.parquet"
    dead = tmp_path / ".tmp-999999999-abc-part-2.parquet"
    live.write_bytes(b"")
    dead.write_bytes(b"")
    assert clean_temp_parts(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "part-0.parquet"])
