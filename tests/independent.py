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
    """All model weights of a saved model as {'<layer>/<name or index>': array}.

    A weight of a sub-layer (a MultiHeadAttention's query, a block's Dense) is keyed by the
    names of the layers down to it from the top-level (or nested model's) layer:
    ``transformer_layer_0/self_attention_layer/query/0``, as a ``.h5`` file names it.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(data), "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                    out[f"{_owner_path(f, name)}/{obj.name.rsplit('/', 1)[-1]}"] = obj[()]

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


def _owner_path(f: h5py.File, dataset: str) -> str:
    """The names (each folder's ``vars`` group's ``name``) of the layers from the last ``layers`` folder down."""
    parts = dataset.split("/")[:-2]  # the folders above .../vars/<i>
    names: list[str] = []
    for i, part in enumerate(parts):
        if part == "layers":
            names = []
        elif i > 0 and "vars" in f["/".join(parts[: i + 1])]:  # a list attribute's folder has none
            name = f["/".join(parts[: i + 1]) + "/vars"].attrs["name"]
            names.append(name.decode() if isinstance(name, bytes) else name)
    return "/".join(names)


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
