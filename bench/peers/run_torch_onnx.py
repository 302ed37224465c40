"""The export benchmark's peer: the PyTorch MiniLM exported with `torch.onnx`, run in onnxruntime.

Runs in bench/peers/.venvs/torch. Loads the Hugging Face checkpoint directory
given by --model_dir (the bundled all-MiniLM-L6-v2; nothing is downloaded),
exports `BertModel` to ONNX with dynamic batch and sequence axes, then times
onnxruntime (CPU, --threads intra-op threads) at each --batches size, seq
--seq, and prints one `BENCH_RESULT` line.

Run: bench/peers/.venvs/torch/bin/python bench/peers/run_torch_onnx.py --model_dir DIR --out /tmp/minilm.onnx
"""

from __future__ import annotations

import argparse
import json
import os

import runner


def export(model, path, seq, torch):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((1, seq), dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # torch's default (torch.export-based) exporter; weights inside the one .onnx file.
    torch.onnx.export(model, example, path, input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes=axes, opset_version=17, external_data=False)
    return "torch.onnx.export (dynamo)"


def file_bytes(path) -> int:
    """Size of the model, with its external-data file if the exporter wrote one."""
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", required=True, help="where the .onnx file goes")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max_foreign_load", type=float, default=0.1)
    parser.add_argument("--max_attempts", type=int, default=3)
    parser.add_argument("--idle_timeout_s", type=float, default=60.0)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        parser.error(f"--model_dir {args.model_dir} has no config.json (expected a Hugging Face BERT directory)")
    runner.limit_threads(args.threads)

    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.BertModel.from_pretrained(args.model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        exporter = export(model, args.out, args.seq, torch)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.out, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    timings = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        feeds = {
            "input_ids": rng.integers(1, model.config.vocab_size, (batch, args.seq)).astype(np.int64),
            "attention_mask": np.ones((batch, args.seq), np.int64),
            "token_type_ids": np.zeros((batch, args.seq), np.int64),
        }
        run = lambda: session.run(None, feeds)  # noqa: E731
        run()
        timing = runner.common.quiet_timing(run, repeats=args.repeats, warmup=args.warmup,
                                            max_foreign_load=args.max_foreign_load,
                                            max_attempts=args.max_attempts, idle_timeout_s=args.idle_timeout_s)
        timings[str(batch)] = {"median_ms": 1e3 * timing.median, "seq_per_s": batch / timing.median,
                               "foreign_load": timing.foreign_load,
                               "disturbed": timing.foreign_load > args.max_foreign_load}
    record = {
        "format": "onnx (torch.onnx)", "runtime": f"onnxruntime {ort.__version__}", "exporter": exporter,
        "framework": f"torch {torch.__version__} + transformers {transformers.__version__}",
        "file_bytes": file_bytes(args.out), "timings": timings,
        "peak_rss_mb": runner.common.peak_rss_mb(),
    }
    print(runner.RESULT_PREFIX + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
