"""``--recipe``: fold a recipe file into the ``prune`` command's option values.

A recipe value goes through the same click parameter (type and check) as the
option on the command line, so both are checked by one piece of code. An option
given on the command line (or in the environment) wins over the recipe.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import click
from click.core import ParameterSource

from prunectl.core.run.recipe import (
    STRUCTURAL_KEYS,
    WEIGHT_KEYS,
    Recipe,
    Step,
    Value,
    load_recipe,
    parse_step_options,
)

# Options that describe the run itself, not a pipeline: never read from a recipe.
_NOT_IN_RECIPES = {"model", "recipe", "recipe_out", "as_json", "force", "quiet", "verbose", "dry_run", "steps"}


def recipe_options(command: click.Command) -> dict[str, click.Option]:
    """The options a recipe may set, by long name without dashes (``"report"`` for ``--report``)."""
    return {
        max(p.opts, key=len).lstrip("-"): p
        for p in command.params
        if isinstance(p, click.Option) and p.name not in _NOT_IN_RECIPES
    }


def recipe_vocabulary(options: dict[str, click.Option], finetune_names: AbstractSet[str]) -> tuple[set[str], set[str]]:
    """The keys a recipe may use in ``[finetune]`` and at its top level."""
    finetune = {key for key, p in options.items() if p.name in finetune_names}
    return finetune, set(options) - set(STRUCTURAL_KEYS + WEIGHT_KEYS) - finetune | {"data"}


def explicit(ctx: click.Context, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line or in the environment."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


# ``ctx.meta`` key: each parameter name whose value a recipe gave, and how to name it (``seed (r.toml:6)``).
RECIPE_SOURCES = "prunectl.recipe_sources"


def _toml_repr(value, limit: int = 80) -> str:
    """``value`` much as the recipe wrote it (``true``, not ``True``), shortened to stay one line."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _toml_type(param: click.Parameter) -> tuple[tuple[type, ...], str]:
    """The TOML value types a recipe may give for ``param``, and how to name them.

    Click converts leniently (``int(1.5)``, ``"yes"`` as true, any value as a path's
    string); a recipe value must already have the option's type.
    """
    kind = param.type
    if isinstance(kind, click.types.BoolParamType):
        return (bool,), "true or false"
    if isinstance(kind, click.types.IntParamType):
        return (int,), "an integer"
    if isinstance(kind, click.types.FloatParamType):
        return (int, float), "a number"
    if param.name == "label_col":  # a header name or a column index
        return (str, int), "a string or an integer"
    return (str,), "a string"


def _recipe_message(exc: click.BadParameter, key: str, value, keys: dict[str, str]) -> str:
    """Click's error for a recipe value, worded for the recipe: its keys, not flags, and what it received.

    Args:
        exc: the error the option's type or check raised.
        key: the recipe key the value was given as.
        value: the value as the recipe gave it.
        keys: each parameter name's recipe key (``report_path`` -> ``report``).
    """
    shown = _toml_repr(value)
    option_error = getattr(exc, "option_error", None)
    if option_error is not None:
        return option_error.render(lambda field: keys.get(field, field.replace("_", "-")))
    kind = exc.param.type if exc.param is not None else None
    if isinstance(kind, click.Choice):
        choices = ", ".join(str(choice) for choice in kind.choices)
        return f"{key} must be one of {choices}. Received: {key} = {shown}"
    message = exc.message.rstrip()
    return message if "Received:" in message else f"{message.rstrip('.')}. Received: {key} = {shown}"


def _classic(steps) -> bool:
    """Whether recipe steps are the flat pipeline's (a structural step, then a weight step, each at most once)."""
    kinds = [step.kind for step in steps]
    return all(step.iterations == 1 and not (step.kind == "neurons" and step.layers) for step in steps) and kinds in (
        [],
        ["neurons"],
        ["weights"],
        ["neurons", "weights"],
    )


def merge_recipe(
    ctx: click.Context, path, finetune_names: AbstractSet[str], step_texts: tuple[str, ...] = ()
) -> tuple[Recipe | None, dict, dict, dict, list | None]:
    """Load ``path`` (when given) and the ``--step`` options, and merge them with the command's values.

    Returns:
        The recipe (None without one), three dicts of parameter values: the structural step's,
        the weight step's (with ``layers`` overrides), and every other option (fine-tuning
        ones included), and the ordered steps as ``(kind, values, iterations)`` — None when
        the steps are the flat pipeline's (at most a structural step, then a weight step),
        which the first two dicts then hold. An option given on the command line replaces
        the recipe's value in every step that has it; ``--step`` replaces the recipe's steps.

    Raises:
        click.UsageError: a recipe problem, naming the file, line, step and key.
    """
    options = recipe_options(ctx.command)
    keys = {p.name: key for key, p in options.items()}
    finetune_keys, top_keys = recipe_vocabulary(options, finetune_names)
    recipe = load_recipe(path, finetune_keys, top_keys) if path is not None else None
    params = dict(ctx.params)
    steps = recipe.steps if recipe is not None else []
    if step_texts:
        steps = parse_step_options(step_texts, finetune_keys)

    def convert(where: str, key: str, value: Value):
        param = options[key]
        at = f"{recipe.path}:{value.line}" if value.line and recipe is not None else where
        # A later check (build_request's) names this value as the recipe's key where it was set, not as a flag.
        ctx.meta.setdefault(RECIPE_SOURCES, {})[param.name] = f"{key} ({at})"
        raw = value.value if not param.multiple or isinstance(value.value, list) else [value.value]
        kinds, kind = _toml_type(param)
        items = raw if param.multiple and isinstance(raw, list) else [raw]
        prefix = f"recipe {recipe.path} line {value.line}, {where}" if value.line and recipe is not None else where
        if not all(isinstance(item, kinds) and (bool in kinds or not isinstance(item, bool)) for item in items):
            shown = _toml_repr(value.value)
            kind = f"{kind} or a list of them" if param.multiple else kind
            raise click.UsageError(f"{prefix}: {key} must be {kind}. Received: {key} = {shown}")
        if key == "neuron-ratio" and raw == 0:
            # A structural step's "only the layers in [step.layers]"; the step refuses 0 without overrides.
            return 0.0
        try:
            return param.process_value(ctx, raw)
        except click.BadParameter as exc:
            message = _recipe_message(exc, key, value.value, keys)
            raise click.UsageError(f"{prefix}: {message}") from None

    def step_values(step: Step | None, kind: str, names) -> dict:
        values = {options[k].name: params[options[k].name] for k in names}
        if step is None:
            return values
        where = f"step {steps.index(step) + 1}" if not step_texts else f"--step {steps.index(step) + 1}"
        for key, value in step.values.items():
            if not explicit(ctx, options[key].name):
                values[options[key].name] = convert(where, key, value)
        if kind == "weights":
            if explicit(ctx, "threshold") or explicit(ctx, "sparsity"):
                values["threshold"], values["sparsity"] = params["threshold"], params["sparsity"]
        overrides = ("threshold", "sparsity") if kind == "weights" else ("neuron-ratio",)
        values["layers"] = tuple(
            (
                pattern,
                *(
                    convert(f"{where}, layers {pattern!r}", k, override[k]) if k in override else None
                    for k in overrides
                ),
            )
            for pattern, override, _ in step.layers
        )
        return values

    def finetune_values(step: Step) -> dict:
        where = f"step {steps.index(step) + 1}" if not step_texts else f"--step {steps.index(step) + 1}"
        return {
            options[key].name: convert(where, key, value)
            for key, value in step.values.items()
            if not explicit(ctx, options[key].name)
        }

    if recipe is not None:
        for table, where in ((recipe.options, "top level"), (recipe.finetune, "[finetune]")):
            for key, value in table.items():
                if not explicit(ctx, options[key].name):
                    params[options[key].name] = convert(where, key, value)
    if _classic(steps):
        structural = step_values(next((s for s in steps if s.kind == "neurons"), None), "neurons", STRUCTURAL_KEYS)
        weights = step_values(next((s for s in steps if s.kind == "weights"), None), "weights", WEIGHT_KEYS)
        structural.pop("layers", None)
        return recipe, structural, weights, params, None
    ordered = []
    for step in steps:
        if step.kind == "finetune":
            ordered.append(("finetune", finetune_values(step), 1))
        else:
            names = STRUCTURAL_KEYS if step.kind == "neurons" else WEIGHT_KEYS
            ordered.append((step.kind, step_values(step, step.kind, names), step.iterations))
    return recipe, {}, {}, params, ordered
