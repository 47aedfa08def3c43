"""Inspect an untrusted model file before anything else reads it.

A saved model comes from anywhere, and HDF5 and zip can both point outside the
file or promise far more than they hold. Before prunectl reads a weight, this
module walks every object and link of the weights HDF5 file, every attribute
value, every dataset's storage and chunk index, and every member of a ``.keras``
archive, and refuses with :class:`~prunectl.core.errors.InvalidModelError`:

* data that lives outside the file: external links, soft links (Keras never
  writes links, so any link, dangling or not, is refused rather than resolved),
  external dataset storage, virtual datasets (VDS);
* filters other than the ones h5py decodes itself (a user-defined filter would
  load a plugin from ``HDF5_PLUGIN_PATH``, and the writer could not reproduce it);
* object, reference and variable-length dtypes in datasets;
* declared sizes the stored bytes cannot hold, oversized or too deeply nested
  configs, zip bombs, duplicate or too many members, and any member whose
  CRC-32 does not match.

The limits are the named constants below; the README's "Safety" section lists
them. :func:`inspect_model` is the whole inspection; ``open_model_file`` runs it
in a child process (see :mod:`~prunectl.core.io.watchdog`) so that a read which
loops inside libhdf5 cannot hold the process.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from prunectl.core.errors import InvalidModelError, first_line
from prunectl.core.io.zipmember import StoredZipMember, member_data_offset

# --- limits ------------------------------------------------------------------------------------
#: Largest model config (``model_config`` attribute, ``config.json``) read, in bytes.
#: The config of ResNet152 is about 0.3 MB; a config 200 times larger is not a model.
MAX_CONFIG_BYTES = 64 << 20
#: Deepest nesting of ``[``/``{`` in a config, checked before it is parsed: Python's JSON parser
#: and every walk over a config recurse, and a nested model adds about five levels.
MAX_CONFIG_DEPTH = 200
#: Largest ``metadata.json`` (Keras writes about 100 bytes) or ``training_config`` attribute.
MAX_METADATA_BYTES = 1 << 20
#: Most members a ``.keras`` archive may hold (Keras writes three, plus its assets).
MAX_ZIP_MEMBERS = 10_000
#: A zip member may expand up to this many times its compressed size ...
ZIP_MAX_RATIO = 100
#: ... once it declares more than this many bytes. These are Keras's own limits for extracting
#: a ``.keras`` archive (``saving_lib._reject_zip_extract_bomb``): a member Keras refuses to
#: extract is refused before any work, whichever engine is chosen.
ZIP_RATIO_FLOOR = 256 << 20
#: Deflate cannot expand data more than about 1032 times: a chunked HDF5 dataset may declare at
#: most this many times the bytes it stores (unallocated chunks read as fill values, so a file of
#: a few KB can declare terabytes) ...
DATASET_MAX_RATIO = 1100
#: ... or this many bytes, whichever is larger (small tensors of zeros are legitimately unstored).
DATASET_FLOOR = 1 << 20
#: Filters h5py decodes without a plugin (szip is added where this libhdf5 has it).
NATIVE_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    h5py.h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5py.h5z.FILTER_NBIT: "nbit",
    h5py.h5z.FILTER_LZF: "lzf",
}
if h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP):
    NATIVE_FILTERS[h5py.h5z.FILTER_SZIP] = "szip"

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
_READ_BYTES = 4 << 20

Note = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- configs -----------------------------------------------------------------------------------
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, without recursion.

    Strings are removed first, so brackets inside them do not count.
    """
    brackets = np.frombuffer(_STRING.sub(b"", data), dtype=np.uint8)
    step = np.isin(brackets, (ord("["), ord("{"))).astype(np.int64) - np.isin(brackets, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def parse_config(path, data: bytes | str, what: str, limit: int = MAX_CONFIG_BYTES):
    """Parse a JSON config read from a model file, refusing oversized or too deeply nested text.

    Args:
        path: the model file, for the error message.
        data: the JSON text.
        what: where it was found, e.g. ``"config.json"`` or ``"attribute model_config"``.
        limit: the most bytes allowed.

    Returns:
        The parsed value.

    Raises:
        InvalidModelError: the text is too large, too deep, or not JSON.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > limit:
        raise InvalidModelError(path, f"{what} holds {len(raw):,} bytes, more than the limit of {limit:,}")
    depth = json_depth(raw)
    if depth > MAX_CONFIG_DEPTH:
        raise InvalidModelError(path, f"{what} nests {depth} levels deep, more than the limit of {MAX_CONFIG_DEPTH}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelError(path, f"{what} is not valid JSON ({exc})") from None


# --- zip archives ------------------------------------------------------------------------------


def check_member_count(path: Path) -> None:
    """Refuse an archive whose end record declares too many members, before zipfile parses its directory.

    zipfile builds an object per member as it opens an archive: a crafted
    directory of millions of entries would cost gigabytes before any check ran.

    Raises:
        InvalidModelError: more than :data:`MAX_ZIP_MEMBERS` members.
    """
    try:
        with open(path, "rb") as raw:
            end = zipfile._EndRecData(raw)  # type: ignore[attr-defined]  # no public API reads the end record
        count = int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else 0  # type: ignore[attr-defined]
    except (OSError, AttributeError, IndexError, TypeError, struct.error):
        return  # zipfile itself reports an unreadable end record; check_archive counts what it parsed
    if count > MAX_ZIP_MEMBERS:
        raise InvalidModelError(path, f"archive holds {count:,} members, more than the limit of {MAX_ZIP_MEMBERS:,}")


def _member_name_problem(name: str, names: set[str]) -> str | None:
    """Why a member name cannot be extracted beside the others (Keras extracts assets), or None."""
    if "\\" in name:
        return "has a backslash in its name"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "has a path that leaves the archive ('..')"
    for end in range(1, len(parts)):
        if "/".join(parts[:end]) in names:
            return f"would make member {'/'.join(parts[:end])!r} a folder"
    return None


def check_archive(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse a ``.keras`` archive whose directory is inconsistent or promises more than it holds.

    Checks the member count, duplicate names, the required members, compression
    methods, that each member's stored bytes lie inside the file, stored members'
    declared sizes, the expansion ratio of compressed members, and the sizes of
    ``config.json`` and ``metadata.json``. Reads no member data.

    Raises:
        InvalidModelError: naming the member at fault.
    """
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InvalidModelError(
            path, f"archive holds {len(infos):,} members, more than the limit of {MAX_ZIP_MEMBERS:,}"
        )
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            raise InvalidModelError(path, f"zip member {info.filename} appears more than once")
        seen.add(info.filename)
    for name in seen:
        problem = _member_name_problem(name, seen)
        if problem:
            raise InvalidModelError(path, f"zip member {name!r} {problem}")
    missing = [m for m in (CONFIG_MEMBER, WEIGHTS_MEMBER) if m not in seen]
    if missing:
        raise InvalidModelError(path, f"archive lacks {', '.join(missing)}")
    file_size = path.stat().st_size
    caps = {CONFIG_MEMBER: MAX_CONFIG_BYTES, METADATA_MEMBER: MAX_METADATA_BYTES}
    with open(path, "rb") as archive_file:  # one descriptor for every member's local header
        for info in infos:
            _check_member(path, info, file_size, archive_file.fileno(), caps)


def _check_member(path: Path, info: zipfile.ZipInfo, file_size: int, fd: int, caps: dict[str, int]) -> None:
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidModelError(path, f"zip member {name} uses compression method {info.compress_type}")
    member_data_offset(path, info, file_size, fd)
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise InvalidModelError(
            path, f"stored zip member {name} declares {info.file_size:,} bytes but holds {info.compress_size:,}"
        )
    if info.file_size > ZIP_RATIO_FLOOR and info.file_size > ZIP_MAX_RATIO * info.compress_size:
        raise InvalidModelError(
            path,
            f"zip member {name} declares {info.file_size:,} bytes from {info.compress_size:,} compressed "
            f"(more than {ZIP_MAX_RATIO}x, a zip bomb)",
        )
    if name in caps and info.file_size > caps[name]:
        raise InvalidModelError(
            path, f"zip member {name} declares {info.file_size:,} bytes, more than the limit of {caps[name]:,}"
        )


def read_member(
    path: Path, archive: zipfile.ZipFile, name: str, sink: Callable[[bytes], object] | None = None
) -> bytes:
    """Read one member to its end in bounded pieces, so zipfile checks its CRC-32 and size.

    Args:
        path: the archive, for error messages.
        archive: the open archive.
        name: the member.
        sink: called with each piece; when given, nothing is kept and ``b""`` is returned.

    Raises:
        InvalidModelError: the member's CRC-32 or size does not match, or its data is damaged.
    """
    info = archive.getinfo(name)
    pieces: list[bytes] = []
    got = 0
    try:
        member = archive.open(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise InvalidModelError(path, f"zip member {name} is damaged ({first_line(exc)})") from None
    with member:
        while piece := _read_piece(path, name, member):
            got += len(piece)
            if got > info.file_size:  # zipfile stops at the declared size; never rely on that alone
                raise InvalidModelError(
                    path, f"zip member {name} holds more than its declared {info.file_size:,} bytes"
                )
            if sink is None:
                pieces.append(piece)
            else:
                sink(piece)
    if got != info.file_size:
        raise InvalidModelError(path, f"zip member {name} holds {got:,} bytes, not its declared {info.file_size:,}")
    return b"".join(pieces)


def _read_piece(path: Path, name: str, member) -> bytes:
    try:
        return member.read(_READ_BYTES)
    except zipfile.BadZipFile as exc:
        what = "fails its CRC-32 check" if "CRC" in str(exc) else f"is damaged ({exc})"
        raise InvalidModelError(path, f"zip member {name} {what}") from None
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InvalidModelError(path, f"zip member {name} is damaged ({first_line(exc)})") from None


def check_crcs(path: Path, archive: zipfile.ZipFile, skip: frozenset[str] = frozenset(), note: Note = _quiet) -> None:
    """Read every member (but ``skip``) to its end in bounded pieces, checking its CRC-32 and size.

    Raises:
        InvalidModelError: naming the first member that fails.
    """
    for info in archive.infolist():
        if info.filename not in skip and not info.is_dir():
            note(f"zip member {info.filename}")
            read_member(path, archive, info.filename, sink=_discard)


def _discard(_: bytes) -> None:
    pass


# --- HDF5 --------------------------------------------------------------------------------------


def _dataset_problem(dataset: h5py.Dataset, size: int) -> str | None:
    """What is wrong with one dataset's dtype, layout, filters or declared size, or None."""
    dtype = dataset.dtype
    if dtype.hasobject or h5py.check_dtype(vlen=dtype) is not None or h5py.check_dtype(ref=dtype) is not None:
        return f"has a variable-length or reference dtype ({dtype})"
    dcpl = dataset.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        return f"is stored in an external file ({dcpl.get_external(0)[0].decode(errors='replace')!r})"
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return "is a virtual dataset (its data lives in other files)"
    for i in range(dcpl.get_nfilters()):
        code, _, _, name = dcpl.get_filter(i)
        if code not in NATIVE_FILTERS:
            return f"uses filter {code} ({name.decode(errors='replace') or 'unnamed'}), which needs a plugin"
    shape = dataset.shape or ()
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if layout == h5py.h5d.CONTIGUOUS:
        offset = dataset.id.get_offset()
        if offset is None:
            if declared > DATASET_FLOOR:
                return f"declares {declared:,} bytes but stores none"
        elif offset + declared > size:
            return f"declares {declared:,} bytes at offset {offset:,}, past the end of the {size:,}-byte file"
    elif layout == h5py.h5d.CHUNKED:
        stored = dataset.id.get_storage_size()
        if declared > max(DATASET_FLOOR, DATASET_MAX_RATIO * stored):
            return f"declares {declared:,} bytes but stores only {stored:,} (more than {DATASET_MAX_RATIO}x)"
        chunks: list[str] = []

        def check_chunk(info) -> None:
            if not chunks and (info.byte_offset is None or info.byte_offset + info.size > size):
                chunks.append(f"has a chunk at offset {info.byte_offset} of {info.size:,} bytes, outside the file")

        dataset.id.chunk_iter(check_chunk)
        if chunks:
            return chunks[0]
    return None


def inspect_h5(path, h5: h5py.File, size: int, where: str = "", note: Note = _quiet) -> None:
    """Walk every link, group, dataset and attribute of an open HDF5 file; refuse what leaves it.

    Every attribute value is read (that is where a crafted file makes libhdf5
    loop) and every dataset's layout, filters and chunk index are examined.

    Args:
        path: the model file, for error messages.
        h5: the open weights file.
        size: the size of that HDF5 file in bytes (of the member, for a ``.keras``).
        where: prefix naming the HDF5 file inside the model file (``"model.weights.h5 "``).
        note: called with what is about to be read, so a hang can be reported.

    Raises:
        InvalidModelError: naming the object at fault.
    """
    seen: set[tuple[int, int]] = set()
    pending: list[h5py.HLObject] = [h5]
    while pending:
        obj = pending.pop()
        for name in obj.attrs:
            note(f"attribute {name} of {where}{obj.name}")
            obj.attrs[name]
        if isinstance(obj, h5py.Dataset):
            note(f"dataset {where}{obj.name}")
            problem = _dataset_problem(obj, size)
            if problem:
                raise InvalidModelError(path, f"dataset {where}{obj.name} {problem}")
            continue
        if not isinstance(obj, h5py.Group):  # a committed datatype: its attributes are all it holds
            continue
        for name in obj:
            child = f"{obj.name.rstrip('/')}/{name}"
            note(f"link {where}{child}")
            link = obj.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise InvalidModelError(
                    path, f"{where}{child} is an external link to {link.filename!r}:{link.path} (outside the file)"
                )
            if isinstance(link, h5py.SoftLink):
                raise InvalidModelError(path, f"{where}{child} is a soft link to {link.path} (Keras writes no links)")
            target = obj[name]
            key = target.id.fileno, h5py.h5o.get_info(target.id).addr
            if key not in seen:  # hard links may form cycles
                seen.add(key)
                pending.append(target)


# --- the whole inspection ----------------------------------------------------------------------


def inspect_model(path: str | Path, fmt: str, extracted: str | None = None, note: Note = _quiet) -> None:
    """Inspect a model file completely; return only if every check passes.

    Args:
        path: the model file.
        fmt: ``"h5"`` or ``"keras"``.
        extracted: for a ``.keras`` whose weights member is compressed, the
            already extracted (and CRC-checked) weights file.
        note: called with what is about to be read.

    Raises:
        InvalidModelError: the file is damaged or crafted; the message names the object.
    """
    path = Path(path)
    if fmt == "h5":
        note("the HDF5 superblock")
        try:
            h5 = h5py.File(path, "r")
        except OSError as exc:
            raise InvalidModelError(path, f"not a readable HDF5 file ({first_line(exc)})") from None
        with h5:
            for name, limit in (("model_config", MAX_CONFIG_BYTES), ("training_config", MAX_METADATA_BYTES)):
                note(f"attribute {name} of /")
                value = h5.attrs.get(name)
                if isinstance(value, (bytes, str)):
                    parse_config(path, value, f"attribute {name}", limit)
            inspect_h5(path, h5, path.stat().st_size, "", note)
        return
    with zipfile.ZipFile(path) as archive:
        check_archive(path, archive)
        check_crcs(path, archive, frozenset({WEIGHTS_MEMBER}) if extracted else frozenset(), note)
        note(CONFIG_MEMBER)
        parse_config(path, read_member(path, archive, CONFIG_MEMBER), CONFIG_MEMBER)
        info = archive.getinfo(WEIGHTS_MEMBER)
        note(f"{WEIGHTS_MEMBER} superblock")
        if extracted:
            with h5py.File(extracted, "r") as h5:
                inspect_h5(path, h5, Path(extracted).stat().st_size, f"{WEIGHTS_MEMBER} ", note)
        else:
            with StoredZipMember(path, info) as source, h5py.File(source, "r") as h5:
                inspect_h5(path, h5, info.file_size, f"{WEIGHTS_MEMBER} ", note)
