"""The layer table: everything prunectl knows about each Keras layer class (see :mod:`.spec`).

Public API: :class:`LayerSpec`, :class:`Inner`, :class:`WeightSpec`, :class:`WeightShape`, :class:`Rule`,
:func:`register_layer`, :func:`layer_spec`, :func:`op_key`, :func:`get_spec`, :func:`specs`,
:func:`load_entry_points`, and the ``prunectl.layers`` entry-point group.
"""

from prunectl.core.layers.builtin import BUILTIN as _BUILTIN
from prunectl.core.layers.hub import HUB as _HUB
from prunectl.core.layers.hub_structure import merged as _with_hub_structure
from prunectl.core.layers.spec import (
    ENTRY_POINT_GROUP,
    Inner,
    LayerSpec,
    Rule,
    WeightShape,
    WeightSpec,
    _register_builtin,
    get_spec,
    is_nested_model,
    layer_spec,
    load_entry_points,
    op_key,
    prunable_weight,
    register_layer,
    specs,
    variable_name,
)

_register_builtin(_BUILTIN)
# keras_hub's structural fields (rule, inner) join its weight-level entries.
_register_builtin(_with_hub_structure({**_BUILTIN, **_HUB}))

__all__ = [
    "ENTRY_POINT_GROUP",
    "Inner",
    "LayerSpec",
    "Rule",
    "WeightShape",
    "WeightSpec",
    "get_spec",
    "is_nested_model",
    "layer_spec",
    "load_entry_points",
    "op_key",
    "prunable_weight",
    "register_layer",
    "specs",
    "variable_name",
]
