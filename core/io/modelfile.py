"""Read a saved Keras model's structure and weights with h5py, without TensorFlow.

Two on-disk formats are understood:

* legacy HDF5 (``.h5``/``.hdf5``): root attributes ``model_config`` and
  ``training_config``, weights under ``model_weights/<layer>/...`` listed by each
  layer group's ``weight_names`` attribute;
* Keras v3 (``.keras``): a zip holding ``config.json``, ``metadata.json`` and
  ``model.weights.h5``, whose weights live under ``layers/<group>/vars/<i>`` with
  the layer's real name in the ``vars`` group's ``name`` attribute.

A :class:`ModelFile` lists every weight as a :class:`WeightEntry` (layer, class,
weight name, dataset path, shape) and reads one at a time, so memory stays at
the size of the largest tensor.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from prunectl.core.errors import InvalidModelError, ModelFileError, first_line
from prunectl.core.io import guard
from prunectl.core.io.atomic import discard, temporary_directory
from prunectl.core.io.slabs import RawSlabReader
from prunectl.core.io.watchdog import FILE_ERRORS, read_timeout, run_guarded
from prunectl.core.io.zipmember import StoredZipMember
from prunectl.core.layers import get_spec, is_nested_model, variable_name
from prunectl.core.layers.nesting import class_of_folder, sublayer_class

H5_SUFFIXES = (".h5", ".hdf5")
KERAS_SUFFIX = ".keras"
WEIGHTS_MEMBER = guard.WEIGHTS_MEMBER
CONFIG_MEMBER = guard.CONFIG_MEMBER
# Where each format keeps the optimizer's saved state.
OPTIMIZER_GROUPS = {"h5": "/optimizer_weights", "keras": "/optimizer"}


@dataclass(frozen=True)
class WeightEntry:
    """One weight tensor of a saved model.

    Attributes:
        layer: name of the layer that owns the weight (the innermost named layer).
        class_name: that layer's Keras class, e.g. ``"Dense"``.
        weight: the variable name (``"kernel"``), or ``"vars/<i>"`` where a
            ``.keras`` file only records a position that the layer table does not name.
        dataset: path of the dataset inside the weights HDF5 file.
        shape: tensor shape.
        dtype: numpy dtype string.
        order: position of the owning layer in the model config, for display order.
        prunable: whether this weight is pruned by weight steps. Files are read
            without that policy (it is False here); :mod:`prunectl.core.weights.catalog` sets it.
        top: for a weight of a sub-layer that is an entry of its own (``layer`` is then a path of
            layer names, ``block/attention/query``), the name of the top-level layer holding it; else "".
        sublayer: the folder path below ``layer`` where the weight sits when it is not the layer's
            own variable (an LSTM's ``cell``; a custom layer's ``dense``), else "".
    """

    layer: str
    class_name: str
    weight: str
    dataset: str
    shape: tuple[int, ...]
    dtype: str
    order: int = 0
    prunable: bool = False
    top: str = ""
    sublayer: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.weight}"


def model_format(path: Path) -> str:
    """Return ``"h5"`` or ``"keras"`` for a model path, by suffix.

    Raises:
        ModelFileError: for any other suffix.
    """
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        return "h5"
    if suffix == KERAS_SUFFIX:
        return "keras"
    raise ModelFileError(f"unsupported model file type; expected .h5, .hdf5 or .keras. Received: {str(path)!r}")


def layer_classes(model_config: dict) -> dict[str, tuple[str, int]]:
    """Map every layer name in a (possibly nested) model config to (class, order)."""
    found: dict[str, tuple[str, int]] = {}

    def walk(config: dict) -> None:
        for layer in config.get("layers", []):
            name = layer.get("config", {}).get("name") or layer.get("name")
            class_name = layer.get("class_name", "")
            if name is not None and name not in found:
                found[name] = (class_name, len(found))
            if is_nested_model(class_name) or "layers" in layer.get("config", {}):
                walk(layer.get("config", {}))

    walk(model_config.get("config", model_config))
    return found


@dataclass
class ModelFile:
    """An open saved model: its config, its weight entries, and its weights file.

    Use :func:`open_model_file` to build one, and as a context manager to close it.
    """

    path: Path
    format: str
    config: dict
    h5: h5py.File
    entries: list[WeightEntry]
    training_config: dict | None = None
    #: ``config.json`` and ``metadata.json`` of a ``.keras``, as read.
    zip_members: dict[str, bytes] = field(default_factory=dict)
    #: The other members of a ``.keras`` but the weights (assets): never read whole, the writer streams them.
    assets: tuple[str, ...] = ()
    _closers: list = field(default_factory=list)
    #: (file descriptor, offset of the weights file in it), for raw reads of plain datasets.
    raw: tuple[int, int] | None = None
    _scratch: np.ndarray | None = None
    _raw_reader: RawSlabReader | None = None

    def _buffer(self, nbytes: int) -> np.ndarray:
        """The scratch buffer, grown to at least ``nbytes`` (the old one is freed first)."""
        if self._scratch is None or self._scratch.size < nbytes:
            self._scratch = None
            self._scratch = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[:nbytes]

    def _failed(self, entry: WeightEntry, exc: BaseException) -> InvalidModelError:
        return InvalidModelError(self.path, f"cannot read weight {entry.key} ({first_line(exc)})")

    def read(self, entry: WeightEntry, reuse: bool = False) -> np.ndarray:
        """Read one weight tensor into memory.

        Args:
            entry: the weight to read.
            reuse: read into one scratch buffer kept by this object, sized for
                the largest tensor read so far, instead of a new array. The
                result is then only valid until the next ``reuse`` read; in
                exchange a pass over every weight touches fresh memory once,
                not once per tensor (page faults cost more than the copy).

        Raises:
            InvalidModelError: when the data cannot be read (a truncated file).
        """
        try:
            dataset = self.h5[entry.dataset]
            if not reuse or dataset.size == 0 or dataset.ndim == 0:
                return dataset[()]
            out = self._buffer(dataset.size * dataset.dtype.itemsize).view(dataset.dtype).reshape(dataset.shape)
            dataset.read_direct(out)
            return out
        except FILE_ERRORS as exc:
            raise self._failed(entry, exc) from None

    def slabs(self, entry: WeightEntry, slab_bytes: int = 4 << 20) -> Iterator[np.ndarray]:
        """Yield one weight's values in C order, in cache-sized slabs.

        Each slab is a view of a buffer this object reuses: it is valid only
        until the next one is asked for. A plain dataset's bytes are read
        straight from the file (see :mod:`~prunectl.core.io.slabs`); a chunked
        one whole chunks at a time, so each chunk is decompressed once.

        Raises:
            InvalidModelError: when the data cannot be read.
        """
        try:
            dataset = self.h5[entry.dataset]
            if dataset.ndim == 0 or dataset.size == 0:
                yield np.asarray(dataset[()])
                return
            offset = dataset.id.get_offset() if self.raw and dataset.dtype.isnative else None
            if offset is not None and self.raw is not None:  # contiguous, unfiltered
                if self._raw_reader is None:
                    fd, base = self.raw
                    self._raw_reader = RawSlabReader(fd, base, slab_bytes=slab_bytes)
                yield from self._raw_reader.slabs(offset, dataset.size * dataset.dtype.itemsize, dataset.dtype)
                return
            row_bytes = dataset.dtype.itemsize * (dataset.size // dataset.shape[0])
            rows = max(1, slab_bytes // row_bytes)
            if dataset.chunks:
                rows = max(dataset.chunks[0], rows - rows % dataset.chunks[0])
            buffer = self._buffer(min(rows, dataset.shape[0]) * row_bytes)
            for start in range(0, dataset.shape[0], rows):
                n = min(rows, dataset.shape[0] - start)
                out = buffer[: n * row_bytes].view(dataset.dtype).reshape((n,) + dataset.shape[1:])
                dataset.read_direct(out, np.s_[start : start + n])
                yield out
        except FILE_ERRORS as exc:
            raise self._failed(entry, exc) from None

    def close(self) -> None:
        if self._raw_reader is not None:
            self._raw_reader.close()
        try:
            self.h5.close()
        finally:
            for closer in reversed(self._closers):
                closer()
            self._closers.clear()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"model file not found. Received: {str(path)!r}")
    if path.is_dir():
        raise ModelFileError(f"model path is a directory, not a file. Received: {str(path)!r}")


def _decode_attr(path: Path, value, name: str, limit: int = guard.MAX_CONFIG_BYTES):
    if value is None:
        return None
    if not isinstance(value, (bytes, str)):
        raise InvalidModelError(path, f"attribute {name} is not text (found {type(value).__name__})")
    return guard.parse_config(path, value, f"attribute {name}", limit)


def _inspect(path: Path, fmt: str, isolate: bool, extracted: str | None = None) -> None:
    """Run the whole :mod:`~prunectl.core.io.guard` inspection, in a child process unless ``isolate`` is False."""
    run_guarded(
        lambda note: guard.inspect_model(path, fmt, extracted, note),
        path,
        read_timeout(path.stat().st_size),
        isolate=isolate,
    )


def _open_h5(path: Path, isolate: bool) -> ModelFile:
    _inspect(path, "h5", isolate)
    try:
        h5 = h5py.File(path, "r")
    except FILE_ERRORS as exc:
        raise InvalidModelError(path, f"not a readable HDF5 file ({first_line(exc)})") from None
    try:
        if "model_config" not in h5.attrs:
            if "layer_names" in h5.attrs or "vars" in h5 or "layers" in h5:
                raise ModelFileError(
                    "file holds only weights, not a model: save it with model.save(...), "
                    f"not model.save_weights(...). Received: {str(path)!r}"
                )
            raise ModelFileError(f"HDF5 file is not a saved Keras model (no model_config). Received: {str(path)!r}")
        config = _decode_attr(path, h5.attrs["model_config"], "model_config")
        if not isinstance(config, dict):
            raise InvalidModelError(path, "attribute model_config is not a JSON object")
        training = _decode_attr(path, h5.attrs.get("training_config"), "training_config", guard.MAX_METADATA_BYTES)
        if "model_weights" not in h5:
            raise ModelFileError(f"saved model has no model_weights group. Received: {str(path)!r}")
        entries = _h5_entries(h5, layer_classes(config))
    except ModelFileError:
        h5.close()
        raise
    except FILE_ERRORS as exc:
        h5.close()
        raise InvalidModelError(path, f"cannot read the model's structure ({first_line(exc)})") from None
    fd = os.open(path, os.O_RDONLY)
    return ModelFile(
        path, "h5", config, h5, entries, training_config=training, _closers=[lambda: os.close(fd)], raw=(fd, 0)
    )


def _h5_entries(h5: h5py.File, classes: dict[str, tuple[str, int]]) -> list[WeightEntry]:
    weights = h5["model_weights"]
    entries = []
    for top in _str_list(weights.attrs.get("layer_names", [])):
        group = weights[top]
        for wname in _str_list(group.attrs.get("weight_names", [])):
            parts = wname.split("/")
            at = next((i for i in range(len(parts) - 2, -1, -1) if parts[i] in classes), None)
            owner = top if at is None else parts[at]
            class_name, order = classes.get(owner, ("", len(classes)))
            # A .h5 names a sub-layer's weight by layer names only (mha/query/kernel), not by the attribute a
            # sublayers map names, so it stays with its owner, at its path (an LSTM's cell is the spec's own).
            below = parts[(at if at is not None else 0) + 1 : -1]
            sublayer = "/".join(below) if below and _opaque(class_name) else ""
            dataset = group[wname]
            entries.append(
                WeightEntry(
                    owner,
                    class_name,
                    f"{sublayer}/{parts[-1]}".lstrip("/"),
                    dataset.name,
                    tuple(dataset.shape),
                    dataset.dtype.str,
                    order,
                    sublayer=sublayer,
                )
            )
    return entries


def has_layer_list(model_config: dict) -> bool:
    """Whether a model config lists its layers (Functional, Sequential), rather than a subclass's arguments."""
    inner = model_config.get("config", model_config)
    return isinstance(inner, dict) and isinstance(inner.get("layers"), list)


def _opaque(class_name: str) -> bool:
    """Whether a ``class_name`` layer's sub-layers are layers of their own (no spec, or a ``sublayers`` map)."""
    spec = get_spec(class_name)
    return spec is None or bool(spec.sublayers)


def _keras_entries(h5: h5py.File, classes: dict[str, tuple[str, int]], listed: bool = True) -> list[WeightEntry]:
    """The weights of a ``.keras`` weights file, each owned by the innermost layer the table can name.

    A sub-layer folder the owner's ``sublayers`` map names (``query_dense`` in a
    MultiHeadAttention) is a layer of its own, named by the path of layer names
    (``mha/query``) as a live model's sub-layers are. Any other folder's weights stay
    with the owner, at their folder path (an LSTM's ``cell``). Where the config lists
    no layers (``listed`` False), a top-level folder's class is read from its name.
    """
    entries: list[WeightEntry] = []

    def visit(group: h5py.Group, folder: str, owner: tuple[str, str, int, str] | None, sublayer: str) -> None:
        # owner: (layer path, class, order, top-level layer)
        vars_group = group.get("vars")
        name = vars_group.attrs.get("name") if isinstance(vars_group, h5py.Group) else None
        name = name.decode() if isinstance(name, bytes) else name
        if owner is None or (isinstance(name, str) and name in classes and not sublayer_class(owner[1], sublayer)):
            class_name, order = classes.get(name, ("", len(classes))) if isinstance(name, str) else ("", len(classes))
            if not class_name and not listed:
                class_name = class_of_folder(folder) or ""
            owner, sublayer = (name, class_name, order, ""), ""
        elif sublayer and isinstance(name, str) and (found := sublayer_class(owner[1], sublayer)):
            owner, sublayer = (f"{owner[0]}/{name}", found, owner[2], owner[3] or owner[0]), ""
        layer, class_name, order, top = owner
        if isinstance(vars_group, h5py.Group):
            for key in sorted(vars_group, key=lambda k: int(k) if k.isdigit() else -1):
                dataset = vars_group[key]
                if not isinstance(dataset, h5py.Dataset):
                    continue
                named = variable_name(class_name, sublayer, int(key)) if key.isdigit() else None
                unnamed = f"{sublayer}/vars/{key}" if sublayer else f"vars/{key}"
                entries.append(
                    WeightEntry(
                        layer,
                        class_name,
                        named or unnamed,
                        dataset.name,
                        tuple(dataset.shape),
                        dataset.dtype.str,
                        order,
                        top=top,
                        sublayer=sublayer,
                    )
                )
        for key in group:
            if key == "vars" or not isinstance(group[key], h5py.Group):
                continue
            if key == "layers":
                for child in group[key]:
                    visit(group[key][child], child, None, "")
            else:
                visit(group[key], key, owner, f"{sublayer}/{key}".strip("/"))

    if "layers" in h5:
        for child in h5["layers"]:
            visit(h5["layers"][child], child, None, "")
    entries.sort(key=lambda e: e.order)
    return entries


def _extract(path: Path, archive: zipfile.ZipFile) -> tuple[Path, str]:
    """Extract a compressed weights member into a new folder under the system temp dir, size bounded.

    Returns:
        (the folder, the extracted file); the caller removes the folder.
    """
    # Registered before it exists, so that a signal at any point cannot leave it behind (see core.io.atomic).
    folder = temporary_directory(Path(tempfile.gettempdir()), "prunectl-")
    target = os.path.join(folder, WEIGHTS_MEMBER)
    try:
        with open(target, "wb") as out:
            guard.read_member(path, archive, WEIGHTS_MEMBER, sink=out.write)
    except BaseException:
        discard(folder)
        raise
    return folder, target


def _open_keras(path: Path, isolate: bool) -> ModelFile:
    guard.check_member_count(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as head:
            if head.read(8) == b"\x89HDF\r\n\x1a\n":
                raise InvalidModelError(path, "an HDF5 file, not a zip archive (rename it .h5)") from None
        raise InvalidModelError(path, "not a zip archive, as a .keras file is") from None
    except FILE_ERRORS as exc:
        raise InvalidModelError(path, f"cannot read the zip archive ({first_line(exc)})") from None
    closers: list = [archive.close]
    try:
        guard.check_archive(path, archive)
        info = archive.getinfo(WEIGHTS_MEMBER)
        extracted = None
        if info.compress_type != zipfile.ZIP_STORED:
            folder, extracted = _extract(path, archive)
            closers.append(lambda: discard(folder))
        _inspect(path, "keras", isolate, extracted)
        kept = [n for n in (guard.CONFIG_MEMBER, guard.METADATA_MEMBER) if n in archive.NameToInfo]
        members = {n: guard.read_member(path, archive, n) for n in kept}
        assets = tuple(
            i.filename for i in archive.infolist() if i.filename not in members and i.filename != WEIGHTS_MEMBER
        )
        config = guard.parse_config(path, members[CONFIG_MEMBER], CONFIG_MEMBER)
        if not isinstance(config, dict):
            raise InvalidModelError(path, f"{CONFIG_MEMBER} is not a JSON object")
        if extracted is None:
            source = StoredZipMember(path, info)
            closers.append(source.close)
            h5 = h5py.File(source, "r")
            raw = source.raw
        else:
            h5 = h5py.File(extracted, "r")
            raw = None
        closers.append(h5.close)
        entries = _keras_entries(h5, layer_classes(config), has_layer_list(config))
    except BaseException as exc:
        for closer in reversed(closers):
            closer()
        if isinstance(exc, FILE_ERRORS) and not isinstance(exc, ModelFileError):
            raise InvalidModelError(path, f"cannot read the model's structure ({first_line(exc)})") from None
        raise
    closers.remove(h5.close)  # ModelFile.close closes it first
    training = config.get("compile_config")
    return ModelFile(
        path,
        "keras",
        config,
        h5,
        entries,
        training_config=training,
        zip_members=members,
        assets=assets,
        _closers=closers,
        raw=raw,
    )


def open_model_file(path: str | os.PathLike, isolate: bool = True) -> ModelFile:
    """Open a saved Keras model for reading with h5py (no TensorFlow), after inspecting all of it.

    The whole file is first inspected by :func:`prunectl.core.io.guard.inspect_model`
    (links, external storage, filters, declared sizes, zip members and their
    CRC-32s, config size and depth), in a child process watched by
    :func:`prunectl.core.io.watchdog.run_guarded`, so a read that loops inside
    libhdf5 ends in an error, and Ctrl-C and SIGTERM are honoured meanwhile.

    Args:
        path: a ``.h5``/``.hdf5`` or ``.keras`` file saved by ``model.save``.
        isolate: inspect in a child process. False inspects in this process:
            only for files prunectl itself has just written.

    Returns:
        An open :class:`ModelFile`; close it or use it as a context manager.

    Raises:
        ModelFileError: missing path, directory, wrong suffix or weights-only file.
        InvalidModelError: a damaged or crafted file; the message names the object at fault.
        KeyboardInterrupt, Terminated: while the inspection runs (the child is killed first).
    """
    path = Path(path)
    _check_path(path)
    fmt = model_format(path)
    return _open_h5(path, isolate) if fmt == "h5" else _open_keras(path, isolate)


def _str_list(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
