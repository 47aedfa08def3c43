"""The installed distribution claims only the `prunectl` import package."""

from importlib import metadata


def installed_distribution():
    """The installed prunectl (with a RECORD), not an egg-info left in the source tree."""
    for dist in metadata.distributions(name="prunectl"):
        if dist.read_text("RECORD") is not None:
            return dist
    raise AssertionError("prunectl is not installed (no RECORD found)")


def test_top_level_is_prunectl_only():
    dist = installed_distribution()
    assert (dist.read_text("top_level.txt") or "prunectl").split() == ["prunectl"]
    tops = {str(f).split("/")[0] for f in dist.files}
    assert not tops & {"cli", "core"}, sorted(tops)


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in installed_distribution().entry_points if ep.group == "console_scripts"}
    assert scripts == {"prunectl": "prunectl.cli.main:main"}
