r"""Print the per-layer compression report of a saved Keras model.

    python -m tools.inspect_model MODEL_PATH [--markdown] [--original=ORIGINAL_PATH]

MODEL_PATH is a `.keras` file, an `.h5` model or a SavedModel directory saved
from tf_keras; with --original, errors are measured against that model.
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool("markdown", False, "Print a markdown table instead of plain text.")
flags.DEFINE_string("original", None, "The uncompressed model, to measure weight errors against.")


def load(path: str):
    """Loads a tf_keras model with tfreparam's layers registered."""
    import tf_keras as keras

    import tfreparam  # noqa: F401  (registers the custom layers)

    if not os.path.exists(path):
        raise app.UsageError(f"No model at {path!r}.")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"{path!r} is not a loadable tf_keras model: {error}") from error


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python -m tools.inspect_model MODEL_PATH [--markdown] [--original=PATH]")
    import tfreparam

    model = load(argv[1])
    subject = (load(FLAGS.original), model) if FLAGS.original else model
    result = tfreparam.report(subject)
    print(result.to_markdown() if FLAGS.markdown else result)


if __name__ == "__main__":
    app.run(main)
