"""Seeded fuzz: hostile variants of the sample models through the real ``prunectl report`` and ``prune``.

Each variant (tests/hostile.py) runs as ``report VARIANT --json`` and ``prune VARIANT --sparsity 0.5 -o OUT --force``
in a fresh directory with its own empty TMPDIR and a per-run timeout. Every run must: finish; exit 0 or 1; on failure
print exactly one ``Error: ...`` line that is not an "unexpected" fault of prunectl; leave the input's bytes alone;
leave no file but the output model and its report (TMPDIR empty); not accept a ``.keras`` member whose CRC fails.
Every exit-0 report is JSON; every exit-0 prune output loads in stock Keras (in a child process: a hostile file can
make libhdf5 loop) and, where the variant's weights were intact, holds weights bitwise equal to a clean run's.

All failures are collected and reported once, each with the command that rebuilds its variant.
``PRUNECTL_FUZZ_SEED`` and ``PRUNECTL_FUZZ_COUNT`` run other or larger sweeps by hand;
``PRUNECTL_FUZZ_LOG=FILE`` also writes the failure table there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from hostile import SAMPLES, SOURCES, Variant, crc_failures, make_variant, weights_intact

SUITE_SEED, SUITE_COUNT = 11, 300
SEED = int(os.environ.get("PRUNECTL_FUZZ_SEED", SUITE_SEED))
COUNT = int(os.environ.get("PRUNECTL_FUZZ_COUNT", SUITE_COUNT))
TIMEOUT = 60
PRUNECTL = Path(sys.executable).with_name("prunectl")
HOSTILE = Path(__file__).with_name("hostile.py")


@dataclass
class Outcome:
    """What the runs of one variant left to check after the subprocesses: failures so far, outputs to load."""

    variant: Variant | None
    label: str
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (command, category, detail)
    output: Path | None = None


def _env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    return env


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run_one(outcome: Outcome, data: bytes, suffix: str, command: str, root: Path) -> int | None:
    work, tmp = root / "work", root / "tmp"
    work.mkdir(parents=True)
    tmp.mkdir()
    model = work / f"model{suffix}"
    model.write_bytes(data)
    digest = hashlib.sha256(data).digest()
    out = f"out{suffix}"
    if command == "report":
        args = ["report", model.name, "--json"]
    else:
        args = ["prune", model.name, "--sparsity", "0.5", "-o", out, "--force"]

    def fail(category: str, detail: str = "") -> None:
        outcome.failures.append((command, category, detail))

    try:
        done = subprocess.run(
            [str(PRUNECTL), *args], cwd=work, env=_env(tmp), capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        fail("hang", f"no exit within {TIMEOUT} s")
        return None
    rc, stderr = done.returncode, done.stderr
    lines = stderr.strip().splitlines()
    if rc not in (0, 1):
        fail("exit code", f"{rc}: {lines[-1] if lines else ''}"[:160])
    if "Traceback" in stderr:
        fail("traceback", lines[-1][:160] if lines else "")
    if "unexpected" in stderr.lower():
        fail("unexpected", next((line for line in lines if "nexpected" in line), "")[:160])
    if rc != 0 and (len(lines) != 1 or not lines[0].startswith("Error: ")):
        fail("stderr not one Error: line", f"{len(lines)} lines: {' | '.join(lines)[:160]}")
    if hashlib.sha256(model.read_bytes()).digest() != digest:
        fail("input modified")
    expected = {model.name}
    if rc == 0 and command == "prune":
        expected |= {out, f"{out}.report.json"}
        if not (work / out).is_file():
            fail("no output on exit 0")
        else:
            outcome.output = work / out
    leftover = _files(work) - expected
    if leftover:
        fail("leftover file", ", ".join(sorted(leftover))[:160])
    if _files(tmp):
        fail("TMPDIR not empty", ", ".join(sorted(_files(tmp)))[:160])
    if rc == 0 and command == "report":
        try:
            json.loads(done.stdout)
        except ValueError as exc:
            fail("report --json not JSON", str(exc)[:160])
    return rc


def _check_variant(variant: Variant, root: Path) -> Outcome:
    outcome = Outcome(variant, f"#{variant.index} {variant.source}")
    codes = [
        _run_one(outcome, variant.data, variant.suffix, command, root / command) for command in ("report", "prune")
    ]
    if 0 not in codes:
        return outcome
    path = root / f"variant{variant.suffix}"
    path.write_bytes(variant.data)
    if variant.weights_intact is None:
        # h5py in a child: it can hang or crash on the variant, which then counts as unreadable, so not intact.
        info = _child_json([str(HOSTILE), "--intact", str(path), str(SAMPLES / variant.source)])
        outcome.variant = replace(variant, weights_intact=bool(info and info["intact"]))
    bad_member = crc_failures(path) if variant.suffix == ".keras" else None
    if bad_member is not None:
        for command, code in zip(("report", "prune"), codes):
            if code == 0:
                outcome.failures.append((command, "exit 0 on bad CRC", f"member {bad_member} fails its CRC"))
    return outcome


def _child_json(args: list[str]) -> dict | None:
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None
    return json.loads(done.stdout)


def _load_all(paths: list[Path], tmpdir: Path) -> dict[Path, list[np.ndarray] | str]:
    """Load every model in a child process, restarting it past one that hangs or crashes it.

    Keras unpacks a ``.keras`` file under TMPDIR and, for some hostile archives, leaves it there: ``tmpdir`` keeps
    that out of the machine's /tmp.
    """
    results: dict[Path, list[np.ndarray] | str] = {}
    pending = list(paths)
    while pending:
        try:
            subprocess.run(
                [sys.executable, str(HOSTILE), "--load", *map(str, pending)],
                env=_env(tmpdir),
                capture_output=True,
                timeout=120 + TIMEOUT * len(pending) // 4,
            )
        except subprocess.TimeoutExpired:
            pass
        rest: list[Path] = []
        for path in pending:
            npz, err = Path(f"{path}.npz"), Path(f"{path}.err")
            if npz.exists():
                with np.load(npz) as arrays:
                    results[path] = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
            elif err.exists():
                results[path] = err.read_text()
            elif Path(f"{path}.started").exists() and not rest:
                results[path] = "stock Keras hung or crashed loading it"
            else:
                rest.append(path)
        if rest == pending:  # the loader died before its first model: nothing will ever load
            results.update((path, "the loader process failed to start") for path in rest)
            break
        pending = rest
    return results


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b)
    )


def _table(outcomes: list[Outcome], exercised: str = "") -> str:
    counts = Counter(category for o in outcomes for category in {f[1] for f in o.failures})
    failed = sum(1 for o in outcomes if o.failures)
    lines = [
        f"{failed} of {len(outcomes)} variants failed (seed {SEED}, count {COUNT}){exercised}; variants per failure:"
    ]
    lines += [f"  {category}: {n}" for category, n in counts.most_common()]
    for outcome in outcomes:
        if not outcome.failures:
            continue
        v = outcome.variant
        head = f"{outcome.label}: {v.recipe}" if v else outcome.label
        lines.append(head[:200])
        lines += [f"    {command}: {category}: {detail}" for command, category, detail in outcome.failures]
        if v:
            lines.append(f"    rebuild: {v.rebuild()}")
    return "\n".join(lines)


def test_variants_are_reproducible_and_cover_every_kind(tmp_path):
    kinds: Counter[str] = Counter()
    for index in range(SUITE_COUNT):
        variant = make_variant(SUITE_SEED, index)
        assert make_variant(SUITE_SEED, index).data == variant.data, variant.recipe
        kinds[variant.recipe.split(" ")[0].rstrip(":") + variant.suffix] += 1
        if variant.weights_intact:
            # The harness compares these with a clean run: their weights must really be the source's.
            path = tmp_path / f"v{index}{variant.suffix}"
            path.write_bytes(variant.data)
            assert weights_intact(path, SAMPLES / variant.source), variant.recipe
            path.unlink()
    h5 = ["flip-random", "flip-superblock", "flip-header", "flip-btree-heap", "flip-attr-heap", "flip-metadata"]
    h5 += ["truncate", "truncate-metadata", "zero-range", "zero-metadata", "config"]
    archive = ["flip-random", "crc-field", "local-sizes", "central-directory", "flip-config", "flip-weights"]
    archive += ["h5-damage-in-valid-zip", "duplicate-member", "missing-member", "extra-member", "redeflate"]
    archive += ["truncate", "zero-range", "config"]
    expected = {kind + ".h5" for kind in h5} | {kind + ".keras" for kind in archive}
    assert set(kinds) == expected, kinds


@pytest.mark.slow
def test_hostile_variants(tmp_path):
    clean = []
    for source in SOURCES:
        outcome = Outcome(None, f"clean {source}")
        _run_one(outcome, (SAMPLES / source).read_bytes(), Path(source).suffix, "prune", tmp_path / "clean" / source)
        clean.append(outcome)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda i: _check_variant(make_variant(SEED, i), tmp_path / str(i)), range(COUNT)))
    (tmp_path / "keras-tmp").mkdir()
    loaded = _load_all([o.output for o in clean + outcomes if o.output is not None], tmp_path / "keras-tmp")
    reference = {}
    for source, outcome in zip(SOURCES, clean):
        assert outcome.output is not None and not outcome.failures, _table([outcome])
        weights = loaded[outcome.output]
        assert not isinstance(weights, str), f"the clean output of {source} does not load: {weights}"
        reference[source] = weights
    written = compared = 0
    for outcome in outcomes:
        if outcome.output is None:
            continue
        written += 1
        weights = loaded[outcome.output]
        variant = outcome.variant
        assert variant is not None
        if isinstance(weights, str):
            outcome.failures.append(("prune", "exit 0 but output does not load", weights[:160]))
        elif variant.weights_intact:
            compared += 1
            if not _same(weights, reference[variant.source]):
                outcome.failures.append(("prune", "weights differ from clean run", "input weights intact"))
    exercised = f"; {written} prunes exited 0, {compared} of them loaded and compared with a clean run"
    table = _table(outcomes, exercised)
    if os.environ.get("PRUNECTL_FUZZ_LOG"):
        Path(os.environ["PRUNECTL_FUZZ_LOG"]).write_text(table + "\n")
    assert not any(o.failures for o in outcomes), table


FAKE = """#!/bin/bash
# A stand-in for prunectl that misbehaves as FAKE_MODE says, to prove the harness sees each failure.
model="$2"
case "$FAKE_MODE" in
  traceback) printf 'Traceback (most recent call last):\\n  File "x"\\nValueError: x\\n' >&2; exit 1;;
  unexpected) echo "Error: unexpected ValueError: x" >&2; exit 1;;
  exit2) echo "Error: bad value" >&2; exit 2;;
  leftover) touch ".$model.tmp"; echo "Error: x" >&2; exit 1;;
  tmpdir) mkdir "$TMPDIR/extracted"; echo "Error: x" >&2; exit 1;;
  modify) echo x >> "$model"; echo "Error: x" >&2; exit 1;;
  hang) sleep 60;;
  badjson) echo "not json";;
  noout) :;;
  clean) echo "Error: $model is not a valid Keras model: x" >&2; exit 1;;
esac
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "command", "expected"),
    [
        ("traceback", "prune", {"traceback", "stderr not one Error: line"}),
        ("unexpected", "prune", {"unexpected"}),
        ("exit2", "report", {"exit code"}),
        ("leftover", "prune", {"leftover file"}),
        ("tmpdir", "report", {"TMPDIR not empty"}),
        ("modify", "prune", {"input modified"}),
        ("hang", "prune", {"hang"}),
        ("badjson", "report", {"report --json not JSON"}),
        ("noout", "prune", {"no output on exit 0"}),
        ("clean", "prune", set()),
    ],
)
def test_harness_sees_each_failure(tmp_path, monkeypatch, mode, command, expected):
    fake = tmp_path / "prunectl"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    monkeypatch.setattr(sys.modules[__name__], "PRUNECTL", fake)
    monkeypatch.setattr(sys.modules[__name__], "TIMEOUT", 5)
    monkeypatch.setenv("FAKE_MODE", mode)
    outcome = Outcome(None, mode)
    _run_one(outcome, b"model bytes", ".h5", command, tmp_path / "run")
    assert {category for _, category, _ in outcome.failures} == expected, outcome.failures
