"""Read kernels straight from saved files with h5py and zipfile, independently of prunectl.

These helpers know the two on-disk layouts themselves and share no code with
``prunectl.core``, so tests can check what prunectl wrote without trusting it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """All model weights of a saved model as {'<layer>/<name or index>': array}."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                    owner = obj.parent.attrs["name"]  # the `vars` group names its layer
                    out[f"{owner}/{obj.name.rsplit('/', 1)[-1]}"] = obj[()]

            f.visititems(visit)
    else:
        with h5py.File(path, "r") as f:
            weights = f["model_weights"]
            for layer in weights.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else layer
                for wname in weights[layer].attrs["weight_names"]:
                    wname = wname.decode() if isinstance(wname, bytes) else wname
                    out[wname] = weights[layer][wname][()]
    return out


def kernel(path: Path, layer: str) -> np.ndarray:
    """The kernel (variable 0) of ``layer`` read from a saved file."""
    weights = read_weights(path)
    for key in (f"{layer}/0", f"{layer}/kernel"):
        if key in weights:
            return weights[key]
    matches = [v for k, v in weights.items() if k.endswith(f"/{layer}/kernel")]
    if len(matches) == 1:
        return matches[0]
    raise KeyError(f"{layer} not in {sorted(weights)}")


def dataset_filters(path: Path) -> list[tuple[str, str | None, bool]]:
    """(dataset name, compression, shuffle) of every dataset in a saved model's weights."""
    path = Path(path)
    found = []

    def collect(f):
        f.visititems(lambda n, o: found.append((n, o.compression, o.shuffle)) if isinstance(o, h5py.Dataset) else None)

    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
                collect(f)
    else:
        with h5py.File(path, "r") as f:
            collect(f)
    return found


def keras_config(path: Path) -> dict:
    path = Path(path)
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])
