"""Which axis of a tensor holds its channels: the last one, or axis 1 after a ``channels_first`` layer.

A layer whose config names a ``data_format`` reads and writes its channels on the
axis that format says; Dense, recurrent layers, Flatten and Reshape read the last
axis; every other layer with a rule (activations, BatchNormalization, merges) keeps
its input's channel axis. An output of lower rank than the input (global pooling,
Flatten, an RNN returning its last step) has its channels last. Keras kernels are
channels-last in both formats, so weights are sliced the same either way.
"""

from __future__ import annotations

from prunectl.core.layers import Rule

# Rule kinds whose layers read the last axis whatever their input's layout.
_LAST_AXIS_KINDS = ("producer", "flatten", "reshape")


def format_axis(config: dict, rank: int) -> int | None:
    """The channel axis ``config``'s ``data_format`` fixes on a tensor of ``rank``, or None when it names none."""
    data_format = config.get("data_format")
    if data_format == "channels_first" and rank > 1:
        return 1
    if data_format == "channels_last":
        return rank - 1
    return None


def input_axis(rule: Rule | None, config: dict, rank: int, given: int | None) -> int:
    """The axis a layer reads its input's channels on (non-negative).

    Args:
        rule: the layer's rule (None: a layer prunectl knows nothing about, taken to read the last axis).
        config: the layer's config.
        rank: its first input's rank.
        given: the channel axis of that input, or None where unknown.
    """
    fixed = format_axis(config, rank)
    if fixed is not None:
        return fixed
    if rule is None or rule.kind in _LAST_AXIS_KINDS or given is None:
        return rank - 1
    return given


def output_axis(axis: int, in_rank: int, out_rank: int) -> int:
    """The channel axis of an output of rank ``out_rank`` of a layer reading channels on ``axis``."""
    return axis if out_rank == in_rank else out_rank - 1


def axis_reason(rule: Rule, config: dict, axis: int, rank: int) -> str | None:
    """Why a layer working along ``config[rule.axis]`` does not work along the channel axis ``axis``, or None."""
    if rule.axis is None:
        return None
    value = config.get(rule.axis, -1)
    values = value if isinstance(value, (list, tuple)) else [value]
    if [int(v) % rank for v in values] != [axis]:
        return f"{rule.axis}={value} is not the channel axis ({axis})"
    return None
