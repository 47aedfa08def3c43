"""core/io/atomic: the temporary file is flushed before the rename, the folder after it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prunectl.core.errors import OutputError
from prunectl.core.io import atomic


def test_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    if os.path.exists("/proc/self/fd"):  # which files were flushed: the temporary one, then the folder
        assert events[0][1] == events[1][1] and events[2][1] == os.path.realpath(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failure_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failed_flush_keeps_the_target(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputError, match=r"^cannot write .*out\.txt: Input/output error\. Received: "):
        atomic.write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_relative_target_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic.write_text_atomic(Path("plain.txt"), "text")
    assert (tmp_path / "plain.txt").read_text() == "text"
