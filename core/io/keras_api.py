"""What the installed Keras accepts, read from its source with ``ast``: no import of Keras or TensorFlow.

The file engine never imports TensorFlow (that is its point), yet it must refuse a
model Keras could not load. Keras's generated public API files
(``keras/layers/__init__.py``: ``from keras.src.layers.core.dense import Dense as Dense``)
name every public class and the module that defines it, and each class's
``__init__`` names the config keys its ``from_config`` accepts. This module reads
both from the installed package's source, once per process.

Keras resolves a ``.keras`` config's ``{"module": "keras.layers", "class_name": "Dense"}``
by importing ``module`` and taking the name from it, and a legacy ``.h5`` config's
plain ``"Dense"`` from ``keras.layers``; :func:`module_names` answers the same question
from the module's source. Every answer is ``None`` where the source cannot tell
(a star import, a base class outside Keras): the caller then accepts, never guesses.

``tests/test_agreement.py`` checks these answers against the imported Keras for
every class in ``keras.layers``, so they cannot drift from it silently.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path


@cache
def package_dir() -> Path | None:
    """The installed ``keras`` package's folder, found without importing it; None when Keras is not installed."""
    try:
        spec = importlib.util.find_spec("keras")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _source_file(module: str) -> Path | None:
    root = package_dir()
    parts = module.split(".")
    if root is None or parts[0] != "keras" or not all(p.isidentifier() for p in parts):
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@cache
def _source_text(module: str) -> str | None:
    path = _source_file(module)
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@cache
def _module_ast(module: str) -> ast.Module | None:
    text = _source_text(module)
    if text is None:
        return None
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


# Parsing a whole module costs tens of milliseconds (keras/src/layers/layer.py is
# thousands of lines), so a class defined, or a name imported, at column 0 is parsed
# alone; anything else (conditional imports, star imports) falls back to the whole module.
_NEXT_TOP_LEVEL = re.compile(r"^[^\s#)\]}]", re.MULTILINE)
_TOP_IMPORT = re.compile(r"^from [\w.]+ import (?:\([^)]*\)|[^\n]*)", re.MULTILINE)


_METHOD = re.compile(r"^    def (__init__|from_config)\(", re.MULTILINE)
_METHOD_END = re.compile(r"^ {0,4}[^\s#)\]}]", re.MULTILINE)


def _skeleton(segment: str) -> str | None:
    """A class's header with only its ``__init__`` and ``from_config``: what :func:`accepted_keys` reads."""
    lines = segment.split("\n")
    for end in range(1, min(len(lines), 20) + 1):
        header = "\n".join(lines[:end])
        if header.rstrip().endswith(":"):
            try:
                ast.parse(header + "\n    pass")
            except SyntaxError:
                continue
            break
    else:
        return None
    methods = []
    for found in _METHOD.finditer(segment):
        stop = _METHOD_END.search(segment, segment.index("\n", found.start()) + 1)
        methods.append(segment[found.start() : stop.start() if stop else len(segment)])
    return "\n".join([header, *methods, "    pass", ""])


@cache
def _own_class(module: str, name: str) -> ast.ClassDef | None:
    """The ``class name`` statement at column 0 of ``module``'s source, parsed on its own; None where there is none."""
    text = _source_text(module)
    found = re.search(rf"^class {re.escape(name)}\b", text or "", re.MULTILINE)
    if text is None or found is None:
        return None
    line_end = text.find("\n", found.start())
    end = _NEXT_TOP_LEVEL.search(text, line_end + 1) if line_end >= 0 else None
    segment = text[found.start() : end.start() if end else len(text)]
    for source in (_skeleton(segment), segment):
        if source is None:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:  # cut inside a string: try the whole class, then the whole module
            continue
        node = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


@cache
def _top_imports(module: str) -> dict[str, tuple[str, str]]:
    """``name -> (module, name there)`` for the ``from X import ...`` statements at column 0 of ``module``."""
    names: dict[str, tuple[str, str]] = {}
    for statement in _TOP_IMPORT.finditer(_source_text(module) or ""):
        try:
            node = ast.parse(statement.group(0)).body[0]
        except SyntaxError:
            continue
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            names.update({a.asname or a.name: (source, a.name) for a in node.names if a.name != "*"})
    return names


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rsplit(".", 1)[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _is_package(module: str) -> bool:
    path = _source_file(module)
    return path is not None and path.name == "__init__.py"


@cache
def _bindings(module: str) -> dict[str, tuple[str, str | None]] | None:
    """Top-level names of ``module``: ``name -> (module, name there)``.

    The name there is None for the module's own definitions and ``""`` for an imported module.

    None when the module's names cannot be listed from its source (a star import);
    an empty dict when Keras has no such module (importing it would fail).
    """
    tree = _module_ast(module)
    if tree is None:
        return {} if package_dir() is not None else None
    names: dict[str, tuple[str, str | None]] = {}

    def visit(body: list[ast.stmt]) -> bool:
        for node in body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(module, node)
                for alias in node.names:
                    if alias.name == "*":
                        return False
                    names[alias.asname or alias.name] = (source, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name if alias.asname else alias.name.split(".")[0]
                    names[alias.asname or top] = (top, "")  # a module, not a class
            elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names[node.name] = (module, None)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        names[target.id] = (module, None)
            elif isinstance(node, ast.If):  # backend-dependent imports: either branch may bind
                if not (visit(node.body) and visit(node.orelse)):
                    return False
            elif isinstance(node, ast.Try):
                if not (visit(node.body) and all(visit(h.body) for h in node.handlers)):
                    return False
        return True

    return names if visit(tree.body) else None


def has_name(module: str, name: str) -> bool | None:
    """Whether Keras would find ``name`` in ``module``; None when Keras is not installed or the source cannot tell."""
    if _own_class(module, name) is not None or name in _top_imports(module):
        return True
    names = _bindings(module)
    return None if names is None else name in names


def module_names(module: str) -> frozenset[str] | None:
    """The names Keras would find in ``module`` (``"keras.layers"``, ``"keras.src.models.functional"``).

    Returns:
        The module's top-level names; an empty set when Keras has no such module;
        None when Keras is not installed or the source cannot tell (a star import).
    """
    names = _bindings(module)
    return None if names is None else frozenset(names)


@cache
def _class_def(module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
    """Follow ``from X import Y as name`` chains to the ``ClassDef`` of ``module.name``."""
    own = _own_class(module, name)
    if own is not None:
        return module, own
    imported = _top_imports(module).get(name)
    if imported is not None and depth <= 20:
        return _class_def(*imported, depth + 1)
    bindings = _bindings(module)
    if depth > 20 or not bindings or name not in bindings:
        return None
    source, original = bindings[name]
    if original == "":
        return None
    if original is not None:
        return _class_def(source, original, depth + 1)
    tree = _module_ast(module)
    for node in tree.body if tree else ():
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    return None


def _base(module: str, expr: ast.expr) -> tuple[str, str] | None:
    """``(module, class name)`` of a base-class expression, where it names a Keras class."""
    if isinstance(expr, ast.Name):
        return module, expr.id
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        bound = (_bindings(module) or {}).get(expr.value.id)
        if bound is None:
            return None
        source, original = bound
        if original is None:
            return None
        target = f"{source}.{original}" if original else source
        return (target, expr.attr) if target.startswith("keras") else None
    return None


def _string_keys(node: ast.AST, owner: str) -> set[str]:
    """String constants ``owner.pop("k")``, ``owner.get("k")`` and ``owner["k"]`` read inside ``node``."""
    keys: set[str] = set()
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr in ("pop", "get")
            and isinstance(sub.func.value, ast.Name)
            and sub.func.value.id == owner
            and sub.args
            and isinstance(sub.args[0], ast.Constant)
            and isinstance(sub.args[0].value, str)
        ):
            keys.add(sub.args[0].value)
        elif (
            isinstance(sub, ast.Subscript)
            and isinstance(sub.value, ast.Name)
            and sub.value.id == owner
            and isinstance(sub.slice, ast.Constant)
            and isinstance(sub.slice.value, str)
        ):
            keys.add(sub.slice.value)
    return keys


def _rejects_rest(function: ast.FunctionDef, kwargs: str) -> bool:
    """Whether ``function`` raises when keyword arguments are left in ``kwargs`` (``if kwargs: raise ...``)."""
    return any(
        isinstance(sub, ast.If)
        and any(isinstance(n, ast.Name) and n.id == kwargs for n in ast.walk(sub.test))
        and any(isinstance(n, ast.Raise) for stmt in sub.body for n in ast.walk(stmt))
        for sub in ast.walk(function)
    )


def _forwards(function: ast.FunctionDef, kwargs: str) -> bool:
    return any(
        isinstance(sub, ast.Call)
        and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == kwargs for k in sub.keywords)
        for sub in ast.walk(function)
    )


@cache
def accepted_keys(module: str, class_name: str) -> frozenset[str] | None:
    """The config keys the Keras class ``module.class_name`` accepts, read from its source.

    The class's ``__init__`` parameters; where it takes ``**kwargs``, the keys it
    pops from them and, where it passes them on, its base classes' accepted keys,
    down to ``keras.layers.Layer`` (which pops ``input_shape``/``input_dim`` and
    raises on the rest). A constructor that neither passes ``**kwargs`` on nor
    raises on what is left in them accepts any key. Keys a ``from_config`` of the class reads from its config
    are added, since ``from_config`` may consume them before calling the constructor.

    Returns:
        The keys, or None when the source cannot tell (a base class outside
        Keras, an unresolvable name): the caller then accepts any key.
    """
    found = _class_def(module, class_name)
    if found is None:
        return None
    where, node = found
    keys: set[str] = set()
    init = None
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            init = item
        elif isinstance(item, ast.FunctionDef) and item.name == "from_config" and len(item.args.args) > 1:
            keys |= _string_keys(item, item.args.args[1].arg)
    walk_bases = init is None
    if init is not None:
        args = init.args
        keys |= {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        keys.discard("self")
        if args.kwarg is not None:
            keys |= _string_keys(init, args.kwarg.arg)
            walk_bases = _forwards(init, args.kwarg.arg)
            if not walk_bases and not _rejects_rest(init, args.kwarg.arg):
                return None  # it drops what it does not read: any key is accepted
    if walk_bases:
        for expr in node.bases:
            base = _base(where, expr)
            if base is None:
                if isinstance(expr, ast.Name) and expr.id == "object":
                    continue
                return None
            inherited = accepted_keys(*base)
            if inherited is None:
                return None
            keys |= inherited
    return frozenset(keys)


def layer_class_module(class_name: str) -> str | None:
    """The module a legacy ``.h5`` config's plain class name resolves in: ``keras.layers``, or ``keras.models``.

    Keras's legacy loader looks a layer's ``class_name`` up among ``keras.layers``'
    names plus ``Functional``, ``Model`` and ``Sequential``.

    Returns:
        The module naming it, or None when neither does (or the source cannot tell).
    """
    for module in ("keras.layers", "keras.src.models.functional", "keras.models"):
        if has_name(module, class_name):
            return module
    return None


@cache
def activation_names() -> frozenset[str] | None:
    """The names ``keras.activations.get`` accepts as a string: its ``ALL_OBJECTS_DICT`` keys.

    That dictionary maps each function in ``ALL_OBJECTS`` by its ``__name__`` (the
    name of the ``def`` it was imported from) and adds a few aliases by subscript.

    Returns:
        The names, or None when the source cannot tell.
    """
    module = "keras.src.activations"
    tree = _module_ast(module)
    bindings = _bindings(module)
    if tree is None or not bindings:
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ALL_OBJECTS" for t in node.targets
        ):
            if not isinstance(node.value, (ast.Set, ast.List, ast.Tuple)):
                return None
            for element in node.value.elts:
                source, original = bindings.get(element.id, ("", None)) if isinstance(element, ast.Name) else ("", None)
                if not original:
                    return None
                defined = _source_text(source) or ""
                if not re.search(rf"^def {re.escape(original)}\(", defined, re.MULTILINE):
                    return None  # not a plain function: its __name__ is not known from here
                names.add(original)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "ALL_OBJECTS_DICT"
                    and isinstance(target.slice, ast.Constant)
                    and isinstance(target.slice.value, str)
                ):
                    names.add(target.slice.value)
    return frozenset(names) if names else None


def resolve_class(obj: dict) -> tuple[str | None, bool]:
    """The Keras module a serialized object's class resolves in, and whether the class is Keras's own.

    Args:
        obj: a serialized object (``class_name``, maybe ``module`` and ``registered_name``).

    Returns:
        ``(module, keras)``: the module (None outside Keras, or where it cannot be told) and
        whether Keras's own class is meant.
    """
    class_name = obj["class_name"]
    registered = obj.get("registered_name")
    if registered not in (None, class_name) or ">" in class_name:
        return None, False  # registered custom objects take precedence over Keras's own
    module = obj.get("module")
    if isinstance(module, str):
        return (module, True) if module == "keras" or module.startswith("keras.") else (None, False)
    # No module: Keras's legacy loader looks the name up among keras.layers (a .h5 file, or an old .keras one).
    return layer_class_module(class_name), True
