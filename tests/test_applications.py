"""Every keras.applications family prunes through the CLI, and its output loads in a fresh stock-Keras process.

The smallest variant of each family is built with ``weights=None`` at a small
input, pruned with ``--neuron-ratio 0.5 --round-to 8``, and every output is
loaded by one subprocess that imports Keras but not prunectl: the model must
run on a batch, give the right output shape, and count exactly the parameters
the plan in the report promised.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import invoke, seeded_keras
from test_benchmarks import _load

# name -> input side (the smallest each family accepts, or 32): the table the README's figures come from.
FAMILIES = _load("applications_table").SIZES
BATCH = 2
CLASSES = 10

LOAD_ALL = """
import json, sys
import numpy as np, keras
for path in sys.argv[1:]:
    model = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(0).random((BATCH, *model.input_shape[1:])).astype("float32")
    y = np.asarray(model(x, training=False))
    print(json.dumps({"path": path, "params": model.count_params(), "shape": list(y.shape),
                      "finite": bool(np.isfinite(y).all())}))
assert not [name for name in sys.modules if name.startswith("prunectl")]
""".replace("BATCH", str(BATCH))


def build(name: str, side: int):
    keras = seeded_keras()
    return getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=CLASSES)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """Per family: the CLI's result, its report (where it succeeded), and what the fresh process saw."""
    folder = tmp_path_factory.mktemp("applications")
    results = {}
    for name, side in FAMILIES.items():
        source, output, report = (folder / f"{name}{suffix}" for suffix in (".keras", ".out.keras", ".json"))
        build(name, side).save(source)
        result = invoke("prune", source, "--neuron-ratio", "0.5", "--round-to", "8", "-o", output, "--report", report)
        results[name] = {
            "result": result,
            "output": str(output),
            "report": json.loads(report.read_text()) if result.exit_code == 0 else None,
        }
    paths = [r["output"] for r in results.values() if r["report"] is not None]
    fresh = subprocess.run([sys.executable, "-c", LOAD_ALL, *paths], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    loaded = {line["path"]: line for line in map(json.loads, fresh.stdout.splitlines())}
    for entry in results.values():
        entry["loaded"] = loaded.get(entry["output"])
    return results


@pytest.mark.slow
def test_every_family_of_keras_applications_is_listed():
    keras = seeded_keras()
    public = [getattr(keras.applications, n) for n in dir(keras.applications) if n[:1].isupper()]
    families = {fn.__module__.rsplit(".", 1)[-1] for fn in public}
    listed = {getattr(keras.applications, n).__module__.rsplit(".", 1)[-1] for n in FAMILIES}
    assert families == listed


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_and_loads_in_stock_keras(pruned, name):
    entry = pruned[name]
    result = entry["result"]
    assert result.exit_code == 0, f"{result.output[-2000:]}\n{result.exception!r}"
    totals = entry["report"]["structural"]["totals"]
    assert totals["params"]["after"] < totals["params"]["before"]
    assert totals["flops"]["after"] < totals["flops"]["before"]
    loaded = entry["loaded"]
    assert loaded["shape"] == [BATCH, CLASSES]
    assert loaded["finite"]
    assert loaded["params"] == totals["params"]["after"]
