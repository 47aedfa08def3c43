"""The installed distribution claims only the `prunectl` import package."""

from importlib import metadata


def test_top_level_is_prunectl_only():
    dist = metadata.distribution("prunectl")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level == ["prunectl"]
    tops = {str(f).split("/")[0] for f in dist.files or []}
    assert not tops & {"cli", "core"}, tops


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("prunectl") == "prunectl.cli.main:main"
