"""Seeded hostile variants of the sample models, for the fuzz test (tests/test_fuzz.py).

:func:`make_variant` turns ``(seed, index)`` into one damaged copy of a sample model: byte flips (random, or aimed
at the HDF5 superblock, object headers, B-trees, heaps and the model config's attribute heap), truncations, zeroed
ranges, ``.keras`` zip damage (CRC fields, local header sizes, central directory, bytes inside a member, duplicate,
missing or extra members, a member re-deflated) and config edits (units +-1, a renamed key, an unknown class or
activation, kernel_size, a dropped layer, truncated JSON, deep nesting) through h5py or by rewriting ``config.json``.
The same ``(seed, index)`` always gives the same bytes, so a failure is rebuilt with::

    python tests/hostile.py --seed S --index I --out variant.h5

The other subcommands run in a child process because a hostile file can make libhdf5 loop forever:
``intact`` tells whether a variant's weights equal its source's, ``load`` loads models with stock Keras.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SOURCES = (
    "digits_mlp.h5",
    "digits_mlp.keras",
    "digits_cnn.h5",
    "digits_cnn.keras",
    "regressor.h5",
    "regressor.keras",
)
# Signatures of HDF5 metadata blocks; damage just after one lands in a B-tree, heap or symbol table node.
H5_SIGNATURES = (b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"OCHK", b"FRHP", b"FSHD", b"BTHD", b"BTLF")
DEEP = 100_000


@dataclass(frozen=True)
class Variant:
    """One damaged copy of a sample model.

    Attributes:
        seed: the fuzz seed.
        index: the variant's number under that seed.
        source: the sample file it was made from.
        recipe: what was done to it, in words.
        data: the variant's bytes.
        weights_intact: True when the damage cannot have touched the weight bytes (config edits, damage to members
            other than the weights); None when only reading the variant can tell (see :func:`weights_intact`).
    """

    seed: int
    index: int
    source: str
    recipe: str
    data: bytes
    weights_intact: bool | None

    @property
    def suffix(self) -> str:
        return Path(self.source).suffix

    def rebuild(self) -> str:
        return f"python tests/hostile.py --seed {self.seed} --index {self.index} --out v{self.index}{self.suffix}"


# ---------------------------------------------------------------- byte damage


def _flip(data: bytearray, rng: random.Random, lo: int, hi: int, count: int) -> list[int]:
    hi = max(lo + 1, min(hi, len(data)))
    offsets = sorted(rng.randrange(lo, hi) for _ in range(count))
    for offset in offsets:
        data[offset] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return offsets


def _h5_layout(data: bytes) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Raw-data ranges of the datasets, object header addresses and metadata signature offsets of an HDF5 image."""
    import h5py

    ranges: list[tuple[int, int]] = []
    headers: list[int] = []
    with h5py.File(io.BytesIO(data), "r") as h5:

        def visit(_name, obj):
            headers.append(h5py.h5o.get_info(obj.id).addr)
            if isinstance(obj, h5py.Dataset):
                offset = obj.id.get_offset()
                if offset is not None:
                    ranges.append((offset, offset + obj.id.get_storage_size()))

        headers.append(h5py.h5o.get_info(h5.id).addr)
        h5.visititems(visit)
    signatures = []
    for sig in H5_SIGNATURES:
        start = data.find(sig)
        while start >= 0:
            signatures.append(start)
            start = data.find(sig, start + 1)
    return sorted(ranges), sorted(headers), sorted(signatures)


def _metadata_offset(data: bytes, ranges: list[tuple[int, int]], rng: random.Random) -> int:
    while True:
        offset = rng.randrange(len(data))
        if not any(lo <= offset < hi for lo, hi in ranges):
            return offset


def damage_h5(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Byte-level damage to an HDF5 image; returns the new bytes and the recipe."""
    out = bytearray(data)
    ranges, headers, signatures = _h5_layout(data)
    kind = rng.choice(
        ["flip-random", "flip-superblock", "flip-header", "flip-btree-heap", "flip-attr-heap", "flip-metadata"]
        + ["truncate", "truncate-metadata", "zero-range", "zero-metadata"]
    )
    count = rng.choice([1, 1, 2, 4, 8])
    if kind == "flip-random":
        where = _flip(out, rng, 0, len(out), count)
    elif kind == "flip-superblock":
        where = _flip(out, rng, 0, 96, count)
    elif kind == "flip-header":
        start = rng.choice(headers)
        where = _flip(out, rng, start, start + 64, count)
    elif kind == "flip-btree-heap":
        start = rng.choice(signatures)
        where = _flip(out, rng, start, start + 48, count)
    elif kind == "flip-attr-heap":
        # The model config is a variable-length string attribute: its text lives in a global heap collection.
        start = data.find(b"GCOL")
        text = data.find(b'{"class_name', start)
        lo, hi = (start, text) if rng.random() < 0.5 else (text, data.find(b"\0", text))
        where = _flip(out, rng, lo, hi, count)
    elif kind == "flip-metadata":
        where = sorted(_metadata_offset(data, ranges, rng) for _ in range(count))
        for offset in where:
            out[offset] ^= 1 << rng.randrange(8)
    elif kind in ("truncate", "truncate-metadata"):
        cut = rng.randrange(len(data)) if kind == "truncate" else _metadata_offset(data, ranges, rng)
        return bytes(out[:cut]), f"{kind} at {cut} of {len(data)}"
    else:
        size = rng.choice([1, 8, 64, 512, 4096])
        start = rng.randrange(len(data)) if kind == "zero-range" else _metadata_offset(data, ranges, rng)
        out[start : start + size] = bytes(len(out[start : start + size]))
        return bytes(out), f"{kind} {size} bytes at {start}"
    return bytes(out), f"{kind} at {where}"


# ---------------------------------------------------------------- zip damage


def _members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _zip(members: list[tuple[zipfile.ZipInfo, bytes]], deflate: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, payload in members:
            clone = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            clone.compress_type = zipfile.ZIP_DEFLATED if info.filename == deflate else info.compress_type
            clone.external_attr = info.external_attr
            archive.writestr(clone, payload)
    return buffer.getvalue()


def _central_offset(data: bytes) -> tuple[int, int]:
    eocd = data.rfind(b"PK\x05\x06")
    return struct.unpack_from("<I", data, eocd + 16)[0], eocd


def damage_keras(data: bytes, rng: random.Random) -> tuple[bytes, str, bool | None]:
    """Damage to a ``.keras`` archive; returns the new bytes, the recipe and whether the weights are surely intact."""
    members = _members(data)
    infos = {info.filename: info for info, _ in members}
    kind = rng.choice(
        ["flip-random", "crc-field", "local-sizes", "central-directory", "flip-config", "flip-weights"]
        + ["h5-damage-in-valid-zip", "duplicate-member", "missing-member", "extra-member", "redeflate"]
        + ["truncate", "zero-range"]
    )
    out = bytearray(data)
    if kind == "flip-random":
        return bytes(out), f"flip-random at {_flip(out, rng, 0, len(out), rng.choice([1, 2, 8]))}", None
    if kind == "crc-field":
        name = rng.choice(list(infos))
        where = rng.choice(["local", "central", "both"])
        new = rng.getrandbits(32)
        if where in ("local", "both"):
            struct.pack_into("<I", out, infos[name].header_offset + 14, new)
        if where in ("central", "both"):
            entry = _central_entry(data, name)
            struct.pack_into("<I", out, entry + 16, new)
        return bytes(out), f"crc-field of {name} ({where}) set to {new:#010x}", None
    if kind == "local-sizes":
        name = rng.choice(list(infos))
        field = rng.choice([18, 22])  # compressed, uncompressed size
        value = rng.choice([0, 1, infos[name].file_size - 1, infos[name].file_size + 1, 0xFFFFFFFF, 1 << 31])
        struct.pack_into("<I", out, infos[name].header_offset + field, value % (1 << 32))
        what = "compressed" if field == 18 else "uncompressed"
        return bytes(out), f"local-sizes: {name} {what} size set to {value}", None
    if kind == "central-directory":
        central, eocd = _central_offset(data)
        return bytes(out), f"central-directory flip at {_flip(out, rng, central, eocd + 22, rng.choice([1, 2]))}", None
    if kind in ("flip-config", "flip-weights"):
        name = "config.json" if kind == "flip-config" else "model.weights.h5"
        info = infos[name]
        name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's own
        start = info.header_offset + 30 + name_len + extra_len
        flipped = _flip(out, rng, start, start + info.compress_size, rng.choice([1, 2, 8]))
        return bytes(out), f"{kind}: bytes of {name} (CRC not updated) at {flipped}", None
    if kind == "h5-damage-in-valid-zip":
        weights = dict((i.filename, p) for i, p in members)["model.weights.h5"]
        damaged, recipe = damage_h5(weights, rng)
        replaced = [(i, damaged if i.filename == "model.weights.h5" else p) for i, p in members]
        return _zip(replaced), f"{kind}: model.weights.h5 {recipe}, zip rebuilt with valid CRCs", None
    if kind == "duplicate-member":
        name = rng.choice(list(infos))
        payload = dict((i.filename, p) for i, p in members)[name]
        if rng.random() < 0.5 and name == "config.json":
            payload = _edit_config(json.loads(payload), rng)[0].encode()
        second = (zipfile.ZipInfo(name, date_time=infos[name].date_time), payload)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
            rebuilt = _zip(members + [second])
        return rebuilt, f"duplicate-member {name} appended ({len(payload)} bytes)", name != "model.weights.h5"
    if kind == "missing-member":
        name = rng.choice(list(infos))
        rebuilt = _zip([(i, p) for i, p in members if i.filename != name])
        return rebuilt, f"missing-member {name}", name != "model.weights.h5"
    if kind == "extra-member":
        name = rng.choice(["assets/notes.txt", "../escape.txt", "/abs.txt", "variables/x.h5", "config.json/"])
        extra = (zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), b"hostile")
        return _zip(members + [extra]), f"extra-member {name!r}", True
    if kind == "redeflate":
        name = rng.choice(list(infos))
        return _zip(members, deflate=name), f"redeflate {name} (valid archive)", True
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return bytes(out[:cut]), f"truncate at {cut} of {len(data)}", None
    size = rng.choice([1, 8, 64, 512, 4096])
    start = rng.randrange(len(data))
    out[start : start + size] = bytes(len(out[start : start + size]))
    return bytes(out), f"zero-range {size} bytes at {start}", None


def _central_entry(data: bytes, name: str) -> int:
    central, eocd = _central_offset(data)
    offset = central
    while offset < eocd:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46 : offset + 46 + name_len].decode() == name:
            return offset
        offset += 46 + name_len + extra_len + comment_len
    raise KeyError(name)


# ---------------------------------------------------------------- config edits


def _layers(config: dict) -> list[dict]:
    found: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            if "class_name" in node and isinstance(node.get("config"), dict) and "name" in node["config"]:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config.get("config", {}))
    return found


def _edit_config(config: dict, rng: random.Random) -> tuple[str, str]:
    """One edit of a parsed model config; returns the new JSON text and the recipe."""
    layers = [layer for layer in _layers(config) if layer["class_name"] != "InputLayer"]
    kind = rng.choice(
        ["units", "rename-key", "unknown-class", "activation", "kernel-size", "drop-layer", "truncate-json", "deep"]
    )
    if kind == "units":
        layer = rng.choice([lay for lay in layers if "units" in lay["config"] or "filters" in lay["config"]])
        key = "units" if "units" in layer["config"] else "filters"
        delta = rng.choice([-1, 1])
        layer["config"][key] += delta
        return json.dumps(config), f"config {key} {delta:+d} in {layer['config']['name']}"
    if kind == "rename-key":
        layer = rng.choice(layers)
        name, key = layer["config"]["name"], rng.choice(sorted(layer["config"]))
        layer["config"][key + "_x"] = layer["config"].pop(key)
        return json.dumps(config), f"config key {key!r} of {name} renamed {key + '_x'!r}"
    if kind == "unknown-class":
        layer = rng.choice(layers)
        old = layer["class_name"]
        layer["class_name"] = rng.choice(["NotALayer", old + "X", "os.system", ""])
        return json.dumps(config), f"config class of {layer['config']['name']} {old!r} -> {layer['class_name']!r}"
    if kind == "activation":
        layer = rng.choice([lay for lay in layers if "activation" in lay["config"]] or layers)
        value = rng.choice(["reluu", "tanh", "", 7, None])
        layer["config"]["activation"] = value
        return json.dumps(config), f"config activation of {layer['config']['name']} -> {value!r}"
    if kind == "kernel-size":
        convs = [lay for lay in layers if "kernel_size" in lay["config"]]
        layer = rng.choice(convs or layers)
        kernel = rng.choice([[2, 2], [5, 5], [3], [0, 0], 3])
        layer["config"]["kernel_size"] = kernel
        return json.dumps(config), f"config kernel_size of {layer['config']['name']} -> {kernel!r}"
    if kind == "drop-layer":
        inner = config["config"].get("layers", [])
        victim = rng.randrange(len(inner))
        name = inner[victim].get("config", {}).get("name")
        del inner[victim]
        return json.dumps(config), f"config layer {victim} ({name}) dropped"
    text = json.dumps(config)
    if kind == "truncate-json":
        cut = rng.randrange(1, len(text))
        return text[:cut], f"config JSON truncated at {cut} of {len(text)}"
    depth = rng.choice([1_000, DEEP])
    nested = '"trainable": ' + "[" * depth + "]" * depth
    return text.replace('"trainable": true', nested, 1), f"config nested {depth} deep in the first 'trainable'"


def edit_h5_config(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    import h5py

    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as h5:
        raw = h5.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        text, recipe = _edit_config(config, rng)
        del h5.attrs["model_config"]
        h5.attrs["model_config"] = text
    return buffer.getvalue(), recipe + " (h5 model_config attribute)"


def edit_keras_config(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    members = _members(data)
    config = json.loads(dict((i.filename, p) for i, p in members)["config.json"])
    text, recipe = _edit_config(config, rng)
    rebuilt = [(i, text.encode() if i.filename == "config.json" else p) for i, p in members]
    return _zip(rebuilt), recipe + " (config.json rewritten)"


# ---------------------------------------------------------------- variants


def make_variant(seed: int, index: int) -> Variant:
    """The variant number ``index`` of the fuzz run ``seed``: the same pair always gives the same bytes."""
    rng = random.Random(seed * 1_000_003 + index)
    source = SOURCES[index % len(SOURCES)]
    data = (SAMPLES / source).read_bytes()
    config_edit = rng.random() < 0.3
    intact: bool | None
    if source.endswith(".h5"):
        if config_edit:
            (new, recipe), intact = edit_h5_config(data, rng), True
        else:
            (new, recipe), intact = damage_h5(data, rng), None
    elif config_edit:
        (new, recipe), intact = edit_keras_config(data, rng), True
    else:
        new, recipe, intact = damage_keras(data, rng)
    return Variant(seed, index, source, recipe, new, intact)


def _weight_datasets(h5) -> dict[str, bytes]:
    import h5py

    found: dict[str, bytes] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith(("optimizer", "optimizer_weights")):
            array = obj[()]
            found[name] = repr((array.dtype.str, array.shape)).encode() + array.tobytes()

    h5.visititems(visit)
    return found


def _weights_of(data: bytes, suffix: str) -> dict[str, bytes]:
    import h5py

    if suffix == ".keras":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read("model.weights.h5")  # CRC-checked: a damaged member is not intact
    with h5py.File(io.BytesIO(data), "r") as h5:
        return _weight_datasets(h5 if suffix == ".keras" else h5["model_weights"])


def weights_intact(variant: Path, source: Path) -> bool:
    """Whether every weight dataset of ``variant`` reads back equal to ``source``'s (unreadable: not intact)."""
    try:
        return _weights_of(variant.read_bytes(), source.suffix) == _weights_of(source.read_bytes(), source.suffix)
    except Exception:
        return False


def crc_failures(variant: Path) -> str | None:
    """The first member of a ``.keras`` archive that fails its CRC, or None (also when it is no zip at all)."""
    try:
        with zipfile.ZipFile(variant) as archive:
            return archive.testzip()
    except Exception:
        return None


def load_models(paths: list[Path]) -> None:
    """Load each model with stock Keras; write ``<path>.npz`` (its weights) or ``<path>.err`` (why not)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    for path in paths:
        Path(f"{path}.started").touch()
        try:
            model = keras.models.load_model(path, compile=False)
            np.savez(f"{path}.npz", *model.get_weights())
        except Exception as exc:
            Path(f"{path}.err").write_text(f"{type(exc).__name__}: {exc}"[:300].replace("\n", " "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--index", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--intact", nargs=2, type=Path, metavar=("VARIANT", "SOURCE"))
    parser.add_argument("--load", nargs="+", type=Path, metavar="MODEL")
    args = parser.parse_args(argv)
    if args.intact:
        print(json.dumps({"intact": weights_intact(*args.intact)}))
        return 0
    if args.load:
        load_models(args.load)
        return 0
    if args.seed is None or args.index is None or args.out is None:
        parser.error("give --seed, --index and --out (or --intact / --load)")
    variant = make_variant(args.seed, args.index)
    args.out.write_bytes(variant.data)
    print(f"{variant.source}: {variant.recipe} (weights intact: {variant.weights_intact})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
