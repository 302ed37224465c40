"""`drop_blocks`: a shallower copy of a flat BERT encoder that keeps only some of its transformer blocks.

The flat encoder (`bert.build_encoder`) names every layer of block i
`layer_{i}/...` and chains the blocks: block i reads one tensor from outside
itself (the previous block's output, or the embeddings' for block 0) besides
the model inputs. `drop_blocks` edits the functional graph's config: the
layers of dropped blocks go, each kept block reads the output of the kept
block before it, the kept blocks are renumbered `layer_0 ...` in order, and
list outputs (`hidden_states`, `attention_probs`) keep only the kept blocks'
entries. Weights are copied, so the result is independent of the original.
Any projection classes (Dense, low-rank, pruned widths) are kept as they are.
"""

from __future__ import annotations

import copy
import re
from typing import Sequence

import tf_keras as keras

_BLOCK = re.compile(r"layer_(\d+)/(.*)")


def _block_of(name: str):
    match = _BLOCK.fullmatch(name)
    return int(match.group(1)) if match else None


def _inbound_refs(layer_config):
    """Every [name, node, tensor, kwargs] reference of a layer config's inbound nodes."""
    for node in layer_config.get("inbound_nodes", []):
        for ref in node:
            yield ref


def drop_blocks(encoder: keras.Model, keep: Sequence[int], name: str | None = None) -> keras.Model:
    """A copy of `encoder` with only the blocks `keep` (indices of the original, in increasing order).

    `keep=[0, 1, 2]` of a 6-block encoder is its first three blocks; the
    result computes exactly what running those blocks in turn on the
    embeddings' output computes. Raises ValueError for an empty, unsorted or
    out-of-range `keep`, or a model whose blocks are not a chain of
    `layer_<i>/...` layers.
    """
    config = encoder.get_config()
    layers = config["layers"]
    inputs = {layer["name"] for layer in layers if layer["class_name"] == "InputLayer"}
    blocks = sorted({b for b in (_block_of(layer["name"]) for layer in layers) if b is not None})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"'{encoder.name}' has no chain of blocks named layer_0/..., layer_1/...; got {blocks}.")
    keep = [int(k) for k in keep]
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= len(blocks):
        raise ValueError(f"`keep` must be increasing block indices in 0..{len(blocks) - 1}; got {list(keep)}.")

    # The one tensor each block reads from outside itself (besides model inputs).
    entry = {}
    for layer in layers:
        block = _block_of(layer["name"])
        if block is None:
            continue
        for ref in _inbound_refs(layer):
            source = ref[0]
            if source in inputs or _block_of(source) == block:
                continue
            entry.setdefault(block, set()).add(tuple(ref[:3]))
    for block in blocks:
        if len(entry.get(block, ())) != 1:
            raise ValueError(f"Block {block} of '{encoder.name}' does not read exactly one tensor from outside "
                             f"itself (found {sorted(entry.get(block, ()))}); drop_blocks needs chained blocks.")
    entry = {block: next(iter(refs)) for block, refs in entry.items()}
    # Block b's output is what block b + 1 reads; the last block's is what the layers after the blocks read.
    exit_ = {block: entry[block + 1] for block in blocks[:-1]}
    last = blocks[-1]
    after = {tuple(ref[:3]) for layer in layers if _block_of(layer["name"]) is None
             for ref in _inbound_refs(layer) if _block_of(ref[0]) == last}
    if len(after) > 1:
        raise ValueError(f"Layers after the last block of '{encoder.name}' read {sorted(after)}; expected one tensor.")
    if after:
        exit_[last] = next(iter(after))
    else:  # no head after the blocks: the output the model returns from the last block
        outputs = config["output_layers"]
        singles = [v for v in (outputs.values() if isinstance(outputs, dict) else [outputs])
                   if isinstance(v, list) and v and isinstance(v[0], str) and _block_of(v[0]) == last]
        if not singles:
            raise ValueError(f"Cannot tell which tensor of block {last} is the output of '{encoder.name}'.")
        exit_[last] = tuple(singles[0][:3])

    new_index = {old: new for new, old in enumerate(keep)}

    def rename(layer_name):
        block = _block_of(layer_name)
        if block is None:
            return layer_name
        return f"layer_{new_index[block]}/{_BLOCK.fullmatch(layer_name).group(2)}"

    def redirect(ref, reader_block):
        """A reference read by a layer of `reader_block` (None: outside the blocks), in the new graph."""
        source = tuple(ref[:3])
        if reader_block is not None and source == entry[reader_block]:
            position = keep.index(reader_block)
            source = entry[blocks[0]] if position == 0 else exit_[keep[position - 1]]
        elif reader_block is None and source == exit_[last]:
            source = exit_[keep[-1]]
        return [rename(source[0]), source[1], source[2], *ref[3:]]

    new_layers = []
    for layer in layers:
        block = _block_of(layer["name"])
        if block is not None and block not in new_index:
            continue
        layer = copy.deepcopy(layer)
        layer["inbound_nodes"] = [[redirect(ref, block) for ref in node] for node in layer.get("inbound_nodes", [])]
        layer["name"] = rename(layer["name"])
        layer["config"]["name"] = layer["name"]
        new_layers.append(layer)

    def outputs_of(structure, in_list=False):
        if isinstance(structure, dict):
            return {k: outputs_of(v) for k, v in structure.items()}
        if isinstance(structure, list) and structure and isinstance(structure[0], str):  # one [name, node, tensor]
            source = tuple(structure[:3])
            block = _block_of(source[0])
            if in_list:  # a list entry of a dropped block disappears (hidden_states, attention_probs)
                if block is not None and block not in new_index:
                    return None
                return [rename(source[0]), source[1], source[2]]
            if source == exit_[last]:
                source = exit_[keep[-1]]
            elif block is not None and block not in new_index:
                raise ValueError(f"Output {list(source)} of '{encoder.name}' belongs to a dropped block.")
            return [rename(source[0]), source[1], source[2]]
        if isinstance(structure, list):
            kept = [outputs_of(item, in_list=True) for item in structure]
            return [item for item in kept if item is not None]
        return structure

    new_config = dict(config, layers=new_layers, output_layers=outputs_of(config["output_layers"]),
                      name=name or f"{encoder.name}_{len(keep)}_blocks")
    model = keras.Model.from_config(new_config)
    for layer in model.layers:
        match = _BLOCK.fullmatch(layer.name)
        source = f"layer_{keep[int(match.group(1))]}/{match.group(2)}" if match else layer.name
        weights = encoder.get_layer(source).get_weights()
        if weights:
            layer.set_weights(weights)
    return model
