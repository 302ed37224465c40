"""A compress run's metrics for tests of what reads them (the leave-one-domain-out summary)."""


def fold_metrics(ours_cos, drop_cos, ours_in_domain, speedup, probes=None, difference=None, beats=False,
                 lead=None, seconds=600.0, retrieval=None, retrieval_difference=None):
    """The parts of a run's metrics.json that the summary reads (see `recipes.report.metrics`)."""
    probe = probes or [None] * 5  # original fp32, original int8, ours int8, layer drop int8, L3 int8
    rows = [
        {"key": "original_fp32", "heldout_cosine": 1.0, "in_domain_cosine": 1.0, "probe": probe[0],
         "speedup": 0.8},
        {"key": "original_int8", "heldout_cosine": 0.998, "in_domain_cosine": 0.998, "probe": probe[1],
         "speedup": 1.0},
        {"key": "compressed_int8", "heldout_cosine": ours_cos, "in_domain_cosine": ours_in_domain,
         "probe": probe[2], "speedup": speedup},
        {"key": "layer_drop_int8", "heldout_cosine": drop_cos, "in_domain_cosine": 0.8, "probe": probe[3],
         "speedup": speedup},
        {"key": "minilm_l3_int8", "heldout_cosine": None, "in_domain_cosine": None, "probe": probe[4],
         "speedup": 2.5},
    ]
    for row, top1 in zip(rows, retrieval or []):  # the same five models' top-1 retrieval
        row["retrieval"] = top1
    return {"models": rows, "retrieval": {"a_pair_set": {}} if retrieval else {},
            "retrieval_differences": {"ours_int8_minus_layer_drop_int8": retrieval_difference,
                                      "ours_int8_minus_original": retrieval_difference} if retrieval_difference else {}, "probes": {"a_set": {}} if probes else {},
            "in_domain_cosine": 0.0, "in_domain_minus_heldout_cosine": 0.0,  # the Keras model's: not read
            "probe_differences": {"ours_int8_minus_layer_drop_int8": difference,
                                  "ours_int8_minus_original": difference} if difference else {},
            "onnxruntime": {"compressed_int8_speedup": 1.4, "minilm_l3_int8_speedup": 2.1},
            "verdict": {"beats_layer_drop": beats, "probe_lead": lead},
            "stage_seconds": {"distill": seconds - 100.0, "evaluate": 100.0, "layer drop": None}}
