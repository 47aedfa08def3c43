"""Write a saved model anew: every group and attribute copied, weights transformed and compressed.

This is how prunectl writes every model, whichever engine pruned it: the
weights file is rebuilt dataset by dataset (so memory holds one tensor at a
time), each tensor passed through an optional transform and written through
:class:`~prunectl.core.io.compress.ChunkWriter`. For ``.keras`` the other archive
members are copied and deflated; the weights member is stored, because its
datasets are already compressed and Keras reads it fastest that way.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from prunectl.core.errors import InvalidModelError
from prunectl.core.io.atomic import (
    atomic_path,
    discard,
    is_write_error,
    register,
    scratch_tempdir,
    temporary_file,
    write_error,
)
from prunectl.core.io.compress import ChunkWriter, Policy, chunk_shape, policy_for
from prunectl.core.io.guard import DATASET_FLOOR
from prunectl.core.io.keras_io import saved_optimizer
from prunectl.core.io.modelfile import OPTIMIZER_GROUPS, WEIGHTS_MEMBER, ModelFile, WeightEntry

Transform = Callable[[str, np.ndarray], np.ndarray]
Reader = Callable[[h5py.Dataset], np.ndarray]
EntryTransform = Callable[[WeightEntry, np.ndarray], np.ndarray]
Progress = Callable[[str, int, int], None]

#: HDF5 file format of every output: HDF5 1.10's (compact groups, single-chunk and fixed-array chunk indexes) holds a
#: small model's structure in a few kB where 1.8's B-trees and heaps took ~25 kB (half of a 90%-sparse digits MLP).
#: Any HDF5 since 1.10 (2017) reads it: every h5py wheel Keras 3 and tf_keras install.
LIBVER = ("v110", "v110")

#: Optimizers whose every slot variable starts at zero (lowercase class names). For these a fresh state
#: can be written without Keras: Adagrad and Ftrl start their accumulators at a configured value, Nadam
#: keeps a running product, so theirs (and any other optimizer's) are dropped instead.
ZERO_START_OPTIMIZERS = frozenset({"adam", "adamw", "adamax", "sgd", "rmsprop", "lion", "adadelta"})


def optimizer_class(model: ModelFile) -> str | None:
    """The lowercase class name of the optimizer ``model`` was compiled with, or None."""
    optimizer = saved_optimizer(model.training_config)
    if isinstance(optimizer, dict):
        optimizer = optimizer.get("class_name")
    return optimizer.lower() if isinstance(optimizer, str) else None


def fresh_optimizer_value(data: np.ndarray) -> np.ndarray:
    """A saved optimizer variable as a newly built optimizer of a zero-start class holds it.

    Counters (integer ``iterations``) restart at 0 and slot tensors at zeros; a float scalar is the
    learning rate (or another hyperparameter variable) and keeps its value.
    """
    if data.dtype.kind == "f" and data.ndim == 0:
        return data
    return np.zeros_like(data)


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for name in src.attrs:
        attr = src.attrs.get_id(name)
        dst.attrs.create(name, _raw_text(src.attrs[name]), shape=attr.shape, dtype=attr.dtype)


def _raw_text(value):
    """A string attribute's value as the bytes the file held, so text that is not valid in its encoding copies too.

    h5py decodes a byte its encoding lacks to a lone surrogate, which it cannot encode back; Keras reads such
    text, so the copy keeps the bytes rather than refusing the file.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, np.ndarray) and value.dtype == object:
        raw = np.empty(value.shape, dtype=object)
        raw.ravel()[:] = [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v for v in value.ravel()]
        return raw
    return value


def _read(dataset: h5py.Dataset) -> np.ndarray:
    return dataset[()]


def _write_zeros(group: h5py.Group, name: str, like: np.ndarray) -> h5py.Dataset:
    """A dataset of zeros shaped like ``like``: unstored (read as the fill value) while the guard accepts that."""
    if like.nbytes <= DATASET_FLOOR:
        return group.create_dataset(name, shape=like.shape, dtype=like.dtype)
    # Larger unstored datasets look like a decompression bomb to the guard; zeros deflate ~1000x anyway.
    chunks = chunk_shape(like.shape, like.dtype.itemsize)
    return group.create_dataset(name, data=like, chunks=chunks, compression="gzip", compression_opts=1)


def _copy_tree(
    src: h5py.Group,
    dst: h5py.Group,
    writer: ChunkWriter,
    transform: Transform | None,
    skip: frozenset[str] = frozenset(),
    read: Reader = _read,
    zeros_under: str | None = None,
) -> None:
    _copy_attrs(src, dst)
    for name in src:
        if f"{src.name.rstrip('/')}/{name}" in skip:
            continue
        link = src.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            # open_model_file refuses links; never copy one into an output if a file slips past it.
            raise InvalidModelError(src.file.filename, f"{src.name.rstrip('/')}/{name} is a link")
        obj = src[name]
        if isinstance(obj, h5py.Group):
            _copy_tree(obj, dst.create_group(name), writer, transform, skip, read, zeros_under)
        elif obj.dtype.kind in "fiub" and obj.shape is not None:
            data = read(obj)
            if transform is not None:
                data = transform(obj.name, data)
            if zeros_under and obj.name.startswith(zeros_under) and data.ndim and not data.any():
                _copy_attrs(obj, _write_zeros(dst, name, data))
            else:
                _copy_attrs(obj, writer.write(dst, name, data))
        else:
            src.copy(obj, dst, name=name)


def write_h5(
    source: h5py.File,
    target: Path,
    compression: str | Policy,
    transform: Transform | None = None,
    skip: frozenset[str] = frozenset(),
    read: Reader = _read,
    zeros_under: str | None = None,
) -> None:
    """Write ``source``'s HDF5 tree, less the ``skip`` paths, to ``target`` (not atomic).

    ``read`` reads each dataset (so callers can report failures in their terms). Tensors of zeros
    under the group ``zeros_under`` (a fresh optimizer's slots) are written at almost no cost.
    """
    with h5py.File(target, "w", libver=LIBVER) as out, ChunkWriter(compression) as writer:
        _copy_tree(source, out, writer, transform, skip, read, zeros_under)


def write_model(
    model: ModelFile,
    target: Path,
    compression: str | Policy,
    transform: EntryTransform | None = None,
    keep_optimizer: bool = False,
    progress: Progress | None = None,
    members: dict[str, bytes] | None = None,
) -> None:
    """Write ``model`` to ``target`` atomically, in the same format.

    Args:
        model: the open source model.
        target: output path, ``.h5``/``.hdf5`` for an HDF5 source, ``.keras`` for a ``.keras`` one.
        compression: a ``--compression`` name (``options.COMPRESSIONS``) or a
            :class:`~prunectl.core.io.compress.Policy`; ``none`` writes uncompressed datasets.
        transform: called as ``transform(entry, array)`` for every model weight;
            returns the array to write.
        keep_optimizer: keep the optimizer's saved state (slot variables).
            By default it is not kept: it is dense (so it would hold the file's size
            at about three times the weights) and stale once weights are pruned.
            A ``.keras`` file of a zero-start optimizer (:data:`ZERO_START_OPTIMIZERS`)
            gets a fresh state instead (zeros, which compress to almost nothing), because
            Keras builds the optimizer when it loads a compiled model and warns
            "Skipping variable loading for optimizer" when the file holds fewer
            variables. Otherwise the state is dropped (a ``.h5`` loads without it quietly).
        progress: called as ``progress(weight_key, done, total)`` per weight written.
        members: ``.keras`` archive members written instead of the source's (e.g. a new ``config.json``).
    """
    fmt = "keras" if target.suffix.lower() == ".keras" else "h5"
    if fmt != model.format:
        raise ValueError(f"write_model cannot convert {model.format} to {fmt}; use the Keras engine")
    group = OPTIMIZER_GROUPS[model.format]
    # A new config (members) may change the variables the optimizer builds for: the old layout would not fit.
    fresh = (
        not keep_optimizer
        and model.format == "keras"
        and not (members and "config.json" in members)
        and optimizer_class(model) in ZERO_START_OPTIMIZERS
    )
    skip = frozenset() if keep_optimizer or fresh else frozenset({group})
    by_path = {e.dataset: e for e in model.entries}
    written: list[str] = []

    def read(dataset: h5py.Dataset) -> np.ndarray:
        entry = by_path.get(dataset.name)
        if entry is not None:
            return model.read(entry, reuse=True)
        try:
            return dataset[()]
        except (OSError, ValueError, RuntimeError) as exc:
            raise InvalidModelError(model.path, f"cannot read dataset {dataset.name} ({exc})") from None

    def on_dataset(path: str, data: np.ndarray) -> np.ndarray:
        entry = by_path.get(path)
        if entry is None:
            return fresh_optimizer_value(data) if fresh and path.startswith(group + "/") else data
        if transform is not None:
            data = transform(entry, data)
        written.append(entry.key)
        if progress:
            progress(entry.key, len(written), len(by_path))
        return data

    with atomic_path(target) as tmp:
        zeros_under = group + "/" if fresh or keep_optimizer else None
        if fmt == "h5":
            write_h5(model.h5, tmp, compression, on_dataset, skip, read, zeros_under)
            return
        weights_tmp = register(tmp.with_name(tmp.name + ".weights"))  # before h5py creates it
        try:
            write_h5(model.h5, weights_tmp, compression, on_dataset, skip, read, zeros_under)
            written_members = {**model.zip_members, **(members or {})}
            assets = [name for name in model.assets if name not in written_members]
            _write_keras_zip(tmp, written_members, weights_tmp, policy_for(compression), model.path, assets)
        finally:
            discard(weights_tmp)


def _write_keras_zip(
    target: Path, members: dict[str, bytes], weights: Path, policy: Policy, source: Path, assets: list[str]
) -> None:
    deflate = zipfile.ZIP_DEFLATED if policy else zipfile.ZIP_STORED
    order = ["metadata.json", "config.json"]
    names = [n for n in order if n in members] + sorted(n for n in members if n not in order)
    # The members are small text (config.json): level 9 costs little and they are a real part of a small model.
    with zipfile.ZipFile(target, "w", compresslevel=9) as archive:
        for name in names:
            archive.writestr(name, members[name], compress_type=deflate)
        if assets:
            # Assets are streamed from the source archive, never held whole in memory.
            with zipfile.ZipFile(source) as original:
                for name in sorted(assets):
                    info = original.getinfo(name)
                    copy = zipfile.ZipInfo(name, date_time=info.date_time)
                    copy.compress_type = deflate
                    if info.is_dir():
                        archive.writestr(copy, b"")
                        continue
                    with original.open(info) as src, archive.open(copy, "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, 4 << 20)
        # Stored unless the policy says otherwise: its datasets are compressed already, and Keras and prunectl
        # read a stored member in place.
        weights_type = zipfile.ZIP_DEFLATED if policy.whole_member else zipfile.ZIP_STORED
        archive.write(weights, WEIGHTS_MEMBER, compress_type=weights_type)


def save_keras_model(
    model,
    target: Path,
    compression: str | Policy,
    transform_for: Callable[[ModelFile], EntryTransform | None] | None = None,
    keep_optimizer: bool = False,
    progress: Progress | None = None,
) -> None:
    """Save a live Keras model to ``target`` compressed, atomically, in the format its suffix names.

    Keras saves uncompressed, beside the target; the saved file is then rewritten
    through :func:`write_model` like every other output, and removed.

    Args:
        model: the ``keras.Model``.
        target: the output path (``.h5``/``.hdf5`` or ``.keras``).
        compression: as in :func:`write_model`.
        transform_for: called with the file Keras saved (its entries list every
            weight); returns the transform :func:`write_model` applies, or None.
        keep_optimizer: keep the optimizer's saved state. Otherwise a ``.keras`` output holds the optimizer
            as newly built for the model's variables (so Keras loads it without a warning) and a ``.h5`` none.
        progress: as in :func:`write_model`.
    """
    from prunectl.core.io.keras_io import save_model
    from prunectl.core.io.modelfile import open_model_file

    # Beside the file the output names (through a link), where write_model puts its own temporary file.
    directory = Path(os.path.realpath(target)).parent
    try:
        raw = temporary_file(directory, f".{target.stem}.", target.suffix)
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        try:
            with scratch_tempdir():
                save_model(model, raw, fresh_optimizer=not keep_optimizer)
        except (OSError, RuntimeError) as exc:
            if not is_write_error(exc):
                raise
            raise write_error(target, exc) from None
        with open_model_file(raw, isolate=False) as saved:
            transform = transform_for(saved) if transform_for is not None else None
            # The state Keras saved is already the one wanted in a .keras (see save_model's fresh_optimizer).
            keep = keep_optimizer or saved.format == "keras"
            write_model(saved, target, compression, transform, keep, progress)
    finally:
        discard(raw)
