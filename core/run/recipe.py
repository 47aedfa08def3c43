"""Recipe files: a pruning pipeline kept in a TOML file, and written back from a run.

A recipe is an ordered list of ``[[step]]`` tables — a structural step (its keys
start with ``neuron-`` or are ``round-to``/``min-keep``/``norms``/``prune-residual``) or a weight step (``threshold`` or
``sparsity``), each with its own ``scope``/``include``/``exclude`` — optional
per-layer overrides of a weight step (``[step.layers."<regex>"]``), an optional
``[finetune]`` table, and other ``prune`` options at the top level. Keys are the
command-line option names. Relative paths resolve against the recipe's folder.

This module parses and checks the structure, the keys and the step values' types,
with line numbers, and builds the typed steps (:meth:`Recipe.weight_step`,
:meth:`Recipe.structural_step`). The CLI folds the values with its own, the
command line winning, into one request that core checks.
"""

from __future__ import annotations

import math
import os
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from prunectl.core.errors import OptionError

STRUCTURAL_KEYS = (
    "neuron-criterion",
    "neuron-threshold",
    "neuron-ratio",
    "round-to",
    "min-keep",
    "norms",
    "prune-residual",
    "scope",
    "include",
    "exclude",
)
WEIGHT_KEYS = (
    "threshold",
    "sparsity",
    "scope",
    "include",
    "exclude",
    "weight-criterion",
    "pattern",
    "block",
    "calibration-samples",
)
LAYER_KEYS = ("threshold", "sparsity")
NEURON_LAYER_KEYS = ("neuron-ratio",)
KINDS = ("neurons", "weights", "finetune")
# Fine-tuning options that hold for the whole run (its data, strategy, seed): set in [finetune], not in a step.
RUN_WIDE_FINETUNE = (
    "data",
    "val-data",
    "val-split",
    "x-key",
    "y-key",
    "label-col",
    "batch-size",
    "loss",
    "metrics",
    "seed",
    "strategy",
    "worker-timeout",
    "plots",
)
PATH_KEYS = ("data", "val-data", "plots", "output", "report", "markdown")
_STRUCTURAL_ONLY = set(STRUCTURAL_KEYS) - set(WEIGHT_KEYS)
_NUMBER, _TEXT, _TEXTS = "a number", "a string", "a list of strings"
# The TOML type each step and layer key takes (other keys are checked by the option they set).
KEY_TYPES = {
    "threshold": _NUMBER,
    "sparsity": _NUMBER,
    "neuron-threshold": _NUMBER,
    "neuron-ratio": _NUMBER,
    "round-to": "an integer",
    "min-keep": _NUMBER,
    "neuron-criterion": _TEXT,
    "norms": _TEXT,
    "prune-residual": "true or false",
    "scope": _TEXT,
    "weight-criterion": _TEXT,
    "calibration-samples": "an integer",
    "pattern": _TEXT,
    "block": _TEXT,
    "include": _TEXTS,
    "exclude": _TEXTS,
    "iterations": "an integer",
    "kind": _TEXT,
}


def _typed(key: str, value):
    """``value`` as the type ``key`` takes (an int is a number), or None when it has the wrong type."""
    kind = KEY_TYPES.get(key)
    if kind == _NUMBER:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "an integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == _TEXT:
        return value if isinstance(value, str) else None
    if kind == "true or false":
        return value if isinstance(value, bool) else None
    if kind == _TEXTS:
        items = [value] if isinstance(value, str) else value
        return list(items) if isinstance(items, list) and all(isinstance(v, str) for v in items) else None
    return value


@dataclass(frozen=True)
class Value:
    """A recipe value and the line it came from."""

    value: object
    line: int


@dataclass
class Step:
    """One ``[[step]]``: its kind (``"neurons"``, ``"weights"`` or ``"finetune"``), values, overrides, stages."""

    kind: str
    line: int
    values: dict[str, Value] = field(default_factory=dict)
    layers: list[tuple[str, dict[str, Value], int]] = field(default_factory=list)
    iterations: int = 1


@dataclass
class Recipe:
    """A parsed recipe."""

    path: Path
    steps: list[Step]
    finetune: dict[str, Value]
    options: dict[str, Value]

    def step(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)

    def weight_step(self):
        """The weight step as a :class:`~prunectl.core.weights.prune.WeightPruning`, or None.

        Raises:
            OptionError: a bad value, naming the file, line, step and key.
        """
        from prunectl.core.weights.prune import WeightPruning

        step = self.step("weights")
        if step is None:
            return None
        config = {k: v.value for k, v in step.values.items()}
        config["layers"] = {p: {k: v.value for k, v in o.items()} for p, o, _ in step.layers}
        return self._build(step, WeightPruning.from_config, config)

    def structural_step(self):
        """The structural step as a :class:`~prunectl.core.structure.plan.NeuronPruning`, or None.

        Raises:
            OptionError: a bad value, naming the file, line, step and key.
        """
        from prunectl.core.structure.plan import NeuronPruning

        step = self.step("neurons")
        if step is None:
            return None
        return self._build(step, NeuronPruning.from_config, {k: v.value for k, v in step.values.items()})

    def _build(self, step: Step, from_config, config: dict):
        try:
            return from_config({k.replace("-", "_"): v for k, v in config.items()})
        except OptionError as exc:
            keys = [f.replace("_", "-") for f in exc.fields]
            line = next((step.values[k].line for k in keys if k in step.values), step.line)
            raise _error(self.path, line, f"step {self.steps.index(step) + 1}", str(exc)) from None


# Far more than any recipe needs (one with a per-layer override for each of 1,000 layers is about 50 KB).
MAX_RECIPE_BYTES = 1 << 20
# Deeper than any recipe needs ([step.layers."<regex>"] is 3 levels), far below Python's recursion limit.
MAX_DEPTH = 16


def _depth(value) -> int:
    """How deeply ``value`` nests lists and dicts (a plain value: 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _shown(value, limit: int = 80) -> str:
    """``repr(value)``, shortened so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(path: Path, line: int | None, where: str, message: str) -> OptionError:
    at = f" line {line}" if line else ""
    return OptionError(f"recipe {path}{at}{', ' + where if where else ''}: {message}")


def _key_lines(text: str) -> dict[tuple, int]:
    """Map (context, key) to the line a key is set on; context is the table the key is in."""
    lines: dict[tuple, int] = {}
    context: tuple = ("top",)
    steps = 0
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    assignment = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+)\s*=')
    for number, raw in enumerate(text.splitlines(), start=1):
        match = header.match(raw)
        if match:
            name = match.group(1)
            if raw.lstrip().startswith("[[") and name == "step":
                steps += 1
                context = ("step", steps)
            elif name.startswith("step.layers."):
                pattern = (
                    tomllib.loads(f"k = {name[len('step.layers.') :]}")["k"]
                    if name[12:13] in "\"'"
                    else name[len("step.layers.") :]
                )
                context = ("layer", steps, pattern)
            else:
                context = (name,)
            lines.setdefault(context + ("",), number)
            continue
        match = assignment.match(raw)
        if match:
            key = match.group(1).strip('"')
            lines.setdefault(context + (key,), number)
    return lines


def _resolve_paths(values: dict[str, Value], folder: Path) -> dict[str, Value]:
    return {
        k: Value(
            str(folder / v.value)
            if k in PATH_KEYS and isinstance(v.value, str) and v.value != "-" and not os.path.isabs(v.value)
            else v.value,
            v.line,
        )
        for k, v in values.items()
    }


def load_recipe(path: str | os.PathLike, finetune_keys: set[str], option_keys: set[str]) -> Recipe:
    """Parse and check a recipe file.

    Args:
        path: the TOML file.
        finetune_keys: option names allowed in ``[finetune]`` (``finetune-`` prefix optional).
        option_keys: option names allowed at the top level.

    Returns:
        The :class:`Recipe`, with relative paths resolved against its folder.

    Raises:
        OptionError: unreadable TOML, an unknown key, a misplaced table, or a
            step that is neither structural nor a weight step; the message names
            the line, the step and the key.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            # A device or FIFO (/dev/zero) would be read without end.
            raise OptionError(f"recipe is not a regular file. Received: {str(path)!r}")
        if path.exists() and path.stat().st_size > MAX_RECIPE_BYTES:
            raise OptionError(
                f"recipe is {path.stat().st_size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}. "
                f"Received: {str(path)!r}"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError(f"recipe file not found. Received: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read recipe ({exc}). Received: {str(path)!r}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"recipe {path} is not valid TOML ({exc}). Received: {str(path)!r}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise OptionError(f"recipe {path} nests arrays or tables too deeply to read. Received: {str(path)!r}") from None
    depth = _depth(data)
    if depth > MAX_DEPTH:
        raise OptionError(
            f"recipe {path} nests arrays or tables {depth} levels deep; a recipe needs at most {MAX_DEPTH}. "
            f"Received: {str(path)!r}"
        )
    lines = _key_lines(text)
    folder = path.parent

    def values_of(table: dict, context: tuple, allowed, where: str) -> dict[str, Value]:
        out = {}
        for key, value in table.items():
            line = lines.get(context + (key,))
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise _error(
                    path, line, where, f"unknown key {key!r} (known: {known}). Received: {key} = {_shown(value)}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise _error(path, line, where, f"{key} must be a finite number. Received: {key} = {value}")
            typed = _typed(key, value)
            if typed is None:
                raise _error(path, line, where, f"{key} must be {KEY_TYPES[key]}. Received: {key} = {_shown(value)}")
            out[key] = Value(typed, line or 0)
        return out

    raw_steps = data.pop("step", [])
    if not isinstance(raw_steps, list):
        raise _error(path, lines.get(("step", "")), "", "use [[step]] (an array of tables) for steps. Received: [step]")
    steps = []
    for index, table in enumerate(raw_steps, start=1):
        line = lines.get(("step", index, ""), 0)

        def key_line(key: str, context: tuple = ("step", index)) -> int | None:
            return lines.get(context + (key,))

        def fail(at: int | None, where: str, message: str) -> OptionError:
            return _error(path, at, where, message)

        steps.append(
            parse_step(table, f"step {index}", line, finetune_keys, values_of, fail, key_line, ("step", index))
        )
    finetune_table = data.pop("finetune", {})
    allowed_finetune = finetune_keys | {k[len("finetune-") :] for k in finetune_keys if k.startswith("finetune-")}
    finetune = values_of(finetune_table, ("finetune",), allowed_finetune, "[finetune]")
    finetune = {("finetune-" + k if "finetune-" + k in finetune_keys else k): v for k, v in finetune.items()}
    for table in [k for k, v in data.items() if isinstance(v, dict)]:
        raise _error(
            path,
            lines.get((table, "")),
            "",
            f'unknown table [{table}] (known: [[step]], [step.layers."<regex>"], [finetune]). Received: [{table}]',
        )
    options = values_of(data, ("top",), option_keys, "top level")
    return Recipe(path, steps, _resolve_paths(finetune, folder), _resolve_paths(options, folder))


def step_keys(kind: str, finetune_keys: set[str]) -> set[str]:
    """The keys a step of ``kind`` may hold (a fine-tune step: the per-step fine-tuning options)."""
    if kind == "neurons":
        return set(STRUCTURAL_KEYS) | {"kind", "iterations"}
    if kind == "weights":
        return set(WEIGHT_KEYS) | {"kind", "iterations"}
    tuning = {k for k in finetune_keys if k not in RUN_WIDE_FINETUNE}
    # iterations is accepted here only so that parse_step can say why a fine-tune step has none.
    return tuning | {k[len("finetune-") :] for k in tuning if k.startswith("finetune-")} | {"kind", "iterations"}


def _kind(table: dict, finetune_keys: set[str]) -> str:
    """The kind a step's keys imply: neuron-* keys a structural step, fine-tuning keys alone a fine-tune step."""
    keys = set(table) - {"kind", "iterations", "layers"}
    if _STRUCTURAL_ONLY & keys:
        return "neurons"
    if keys and not (keys & set(WEIGHT_KEYS)) and keys <= step_keys("finetune", finetune_keys):
        return "finetune"
    return "weights"


def parse_step(table: dict, where: str, line: int, finetune_keys: set[str], values_of, fail, key_line, context: tuple):
    """Check one step's table and return its :class:`Step` (see :func:`load_recipe` for the rules).

    Args:
        table: the step's keys and values (``layers`` holding per-layer overrides).
        where: how errors name the step (``"step 2"``).
        line: the step's line, or 0.
        finetune_keys: the fine-tuning option names.
        values_of: ``(table, context, allowed, where) -> {key: Value}``, checking keys and types.
        fail: ``(line, where, message) -> OptionError``.
        key_line: ``(key[, context]) -> line or None``.
        context: the step's context in the recipe's line map (``("step", 2)``).
    """
    table = dict(table)
    layers = table.pop("layers", {})
    kind = table.get("kind")
    if kind is not None and kind not in KINDS:
        raise fail(
            key_line("kind") or line, where, f"kind must be one of {', '.join(KINDS)}. Received: kind = {_shown(kind)}"
        )
    inferred = _kind(table, finetune_keys)
    kind = kind or inferred
    if kind == "neurons" and ({"threshold", "sparsity"} & set(table)):
        raise fail(
            line,
            where,
            "a step is structural (neuron-*) or a weight step "
            "(threshold/sparsity), not both; split it in two. Received: "
            f"{', '.join(sorted(table))}",
        )
    values = values_of(table, context, step_keys(kind, finetune_keys), where)
    values.pop("kind", None)
    iterations = values.pop("iterations", None)
    if iterations is not None and iterations.value < 1:
        raise fail(iterations.line, where, f"iterations must be at least 1. Received: iterations = {iterations.value}")
    if iterations is not None and iterations.value > 1 and kind == "finetune":
        raise fail(
            iterations.line,
            where,
            "iterations split a pruning step into stages; a fine-tune step has none (give it more epochs). "
            f"Received: iterations = {iterations.value} in a fine-tune step",
        )
    if kind == "finetune":
        values = {("finetune-" + k if "finetune-" + k in finetune_keys else k): v for k, v in values.items()}
    step = Step(kind, line, values, iterations=iterations.value if iterations else 1)
    if kind == "weights" and not ({"threshold", "sparsity", "pattern"} & set(table)):
        raise fail(
            line,
            where,
            "a step needs neuron-threshold/neuron-ratio, threshold/sparsity or pattern"
            + (', or kind = "finetune" with fine-tuning options' if not table else "")
            + f". Received: {', '.join(sorted(table)) or 'an empty step'}",
        )
    if layers:
        if kind == "finetune":
            raise fail(
                line, where, "per-layer overrides apply to pruning steps. Received: [step.layers] in a fine-tune step"
            )
        if not isinstance(layers, dict):
            raise fail(
                line, where, f"layers must be a table of per-layer overrides. Received: layers = {_shown(layers)}"
            )
        allowed = LAYER_KEYS if kind == "weights" else NEURON_LAYER_KEYS
        for pattern, override in layers.items():
            layer_context = ("layer", context[1], pattern)
            layer_line = key_line("", layer_context) or line
            try:
                re.compile(pattern)
            except re.error as exc:
                raise fail(
                    layer_line, where, f"layer pattern is not a valid regular expression ({exc}). Received: {pattern!r}"
                ) from None
            if not isinstance(override, dict):
                raise fail(
                    layer_line, where, f"a layer override is a table. Received: {pattern!r} = {_shown(override)}"
                )
            step.layers.append(
                (pattern, values_of(override, layer_context, allowed, f"{where}, layers {pattern!r}"), layer_line)
            )
    return step


def _step_table(text: str, index: int) -> dict:
    """``--step 'key=value,key=value'`` as a table; a value is read as TOML (a number, true) or else as text."""
    table: dict = {}
    for item in _split_items(text):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise OptionError(
                f"--step {index}: give key=value pairs separated by commas (e.g. neuron-ratio=0.25,round-to=8). "
                f"Received: {text!r}"
            )
        if key in table:
            raise OptionError(f"--step {index}: {key} is given twice. Received: {text!r}")
        try:
            table[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = raw
    return table


def _split_items(text: str) -> list[str]:
    """Split at commas outside quotes, brackets and braces (a regex may hold ``{2,3}``)."""
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def parse_step_options(texts, finetune_keys: set[str]) -> list[Step]:
    """The ``--step`` options as steps, checked as a recipe's steps are.

    Raises:
        OptionError: a malformed pair, an unknown key, a wrong type; naming the ``--step`` and what it received.
    """
    steps = []
    for index, text in enumerate(texts, start=1):
        table = _step_table(text, index)
        where = f"--step {index}"

        def fail(at, place, message, text=text):
            return OptionError(
                f"{place}: {message}" if "Received:" in message else f"{place}: {message} Received: {text!r}"
            )

        def values_of(values: dict, context: tuple, allowed, place: str) -> dict[str, Value]:
            out = {}
            for key, value in values.items():
                if key not in allowed:
                    known = ", ".join(sorted(allowed))
                    raise fail(0, place, f"unknown key {key!r} (known: {known}). Received: {key}={_shown(value)}")
                typed = _typed(key, value)
                if typed is None:
                    raise fail(0, place, f"{key} must be {KEY_TYPES[key]}. Received: {key}={_shown(value)}")
                out[key] = Value(typed, 0)
            return out

        steps.append(parse_step(table, where, 0, finetune_keys, values_of, fail, lambda *a: None, ("--step", index)))
    return steps


def recipe_toml(pipeline: dict, header: str = "", relative_to: Path | None = None) -> str:
    """Write a resolved pipeline (as in a report's ``pipeline``) as recipe TOML.

    Args:
        pipeline: ``{"options": {...}, "steps": [{..., "layers": {regex: {...}}}], "finetune": {...}}``
            with option names as keys; None values and empty lists are left out.
        header: comment lines for the top of the file.
        relative_to: write paths relative to this folder (the recipe's own), as
            :func:`load_recipe` resolves them.
    """

    def table(values: dict) -> dict:
        out = {}
        for key, value in values.items():
            if value is None or value == () or value == [] or value == {} or key == "recipe":
                continue
            if key in PATH_KEYS and relative_to is not None and value != "-":
                value = os.path.relpath(Path(value).resolve(), Path(relative_to).resolve())
            out[key] = value
        return out

    document = table(pipeline.get("options", {}))
    steps = [
        {
            **table({k: v for k, v in step.items() if k != "layers"}),
            **({"layers": {p: table(v) for p, v in step["layers"].items()}} if step.get("layers") else {}),
        }
        for step in pipeline.get("steps", [])
    ]
    if steps:
        document["step"] = steps
    if pipeline.get("finetune"):
        document["finetune"] = table(pipeline["finetune"])
    return toml_text(document, tuple(header.splitlines()))


def _table_array(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, dict) for item in value)


def toml_text(document: dict, comments: tuple[str, ...] = ()) -> str:
    """Write ``document`` as TOML (with tomli-w), after ``comments`` as ``#`` lines.

    tomli-w writes a short array of tables inline (``step = [{ sparsity = 0.8 }]``);
    here each item of a top-level array of tables is its own ``[[name]]`` table, as
    people write recipes and as :func:`load_recipe` numbers their lines. Tables
    follow the plain values, in the document's order.

    Args:
        document: a dict of TOML values, tables (dicts) and arrays of tables (lists of dicts).
        comments: lines written first, each as a comment.

    Returns:
        The TOML text, ending with a newline.

    Raises:
        TypeError: a value TOML cannot hold (None, an object).

    Example:
        >>> print(toml_text({"step": [{"sparsity": 0.0, "layers": {"^fc1$": {"sparsity": 0.9}}}]}), end="")
        [[step]]
        sparsity = 0.0
        <BLANKLINE>
        [step.layers."^fc1$"]
        sparsity = 0.9
    """
    values = {k: v for k, v in document.items() if not isinstance(v, dict) and not _table_array(v)}
    chunks = [tomli_w.dumps(values)] if values else []
    for key, value in document.items():
        if isinstance(value, dict):
            chunks.append(tomli_w.dumps({key: value}))
        elif _table_array(value):
            name = tomli_w.dumps({key: 0}).rsplit(" = ", 1)[0]  # the key, quoted where TOML needs it
            for item in value:
                tables = {k: v for k, v in item.items() if isinstance(v, dict)}
                chunk = f"[[{name}]]\n" + tomli_w.dumps({k: v for k, v in item.items() if k not in tables})
                # {name: tables} holds no plain value, so tomli-w writes only the [name.sub] headers,
                # which TOML applies to the [[name]] table just above.
                chunks.append(chunk + ("\n" + tomli_w.dumps({key: tables}) if tables else ""))
    lines = [f"# {line}".rstrip() for comment in comments for line in comment.splitlines()]
    return "\n".join(lines + ([""] if lines and chunks else []) + ["\n".join(chunks)]).rstrip("\n") + "\n"
