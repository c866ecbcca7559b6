"""What a layer is for, as far as gradient scale goes: some layers have small gradients
relative to their weights by construction, and judging them against a plain weight
matrix is a false alarm (issue 10).

- ``attention_qk``: query/key projections. At initialisation the attention scores are
  near-uniform, so the softmax passes almost no gradient to the scores and hence to
  the projections that make them.
- ``embedding``: only the rows of the tokens in the batch get a gradient.
- ``norm``: normalisation gains and shifts (LayerNorm, BatchNorm, ...): initialised to 1
  and 0, so their weight norm is large for the few numbers they hold.
- ``bias``: layers whose parameters are all vectors.
- ``weight``: everything else.
"""

from __future__ import annotations

import numpy as np

ROLES = ("weight", "attention_qk", "embedding", "norm", "bias")
_QK_NAMES = {"query", "key", "q_proj", "k_proj", "q", "k", "q_lin", "k_lin", "wq", "wk", "to_q", "to_k",
             "query_key", "qk"}
_EMBEDDING_TYPES = {"Embedding", "EmbeddingBag"}
_FUSED_ATTENTION = {"MultiheadAttention"}  # in_proj_weight holds q, k and v


def layer_roles(layers: tuple[str, ...], types: tuple[str, ...], param_layer: np.ndarray | None,
                param_names: tuple[str, ...]) -> np.ndarray:
    """One role (index into :data:`ROLES`) per layer, from its type, its name and the
    names of its own parameters (records carry names, not shapes)."""
    out = np.zeros(len(layers), dtype=np.int64)
    vector_only = np.zeros(len(layers), dtype=bool)
    if param_layer is not None and len(param_layer):
        has = np.zeros(len(layers), dtype=bool)
        other = np.zeros(len(layers), dtype=bool)
        has[param_layer] = True
        is_bias = np.array(["bias" in n.rpartition(".")[2].lower() for n in param_names], dtype=bool)
        np.logical_or.at(other, param_layer, ~is_bias)
        vector_only = has & ~other
    for i, (name, kind) in enumerate(zip(layers, types, strict=False)):
        leaf = name.rpartition(".")[2].lower()
        if kind in _EMBEDDING_TYPES:
            out[i] = ROLES.index("embedding")
        elif "Norm" in kind:
            out[i] = ROLES.index("norm")
        elif leaf in _QK_NAMES or kind in _FUSED_ATTENTION:
            out[i] = ROLES.index("attention_qk")
        elif vector_only[i]:
            out[i] = ROLES.index("bias")
    return out
