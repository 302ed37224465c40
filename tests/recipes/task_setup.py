"""A tiny task for the task-path tests: WordNet glosses of three lexicographer files and a random tiny classifier.

`write_task(directory)` writes train.csv (60 rows) and eval.csv (30 rows) of the
wordnet_lexname labelled set (real text, three classes) and a task-model
directory `teacher/` (`recipes.task_model.save`): a 2-block BERT classifier
(hidden 32, 4 heads) whose vocabulary is the words of those rows, trained a
few epochs on the training rows so that its predictions differ from row to
row. Its sequence length is 32; with `positions=64` the task path exports and
times two lengths (64 and the teacher's 32), with 32 only one (faster).
"""

import csv
import os
import re

CLASSES = ("noun.animal", "noun.food", "verb.motion")
TRAIN, EVAL = 60, 30
SEQ_LENGTH = 32
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Sub-millisecond timings of a tiny model are noise: `fixed_latency` keeps the latency-model stage (it still exports
# and times its probe structures) but replaces its line t/t(teacher) = a + b · FLOPs ratio with (a, b) below, so
# the pruned structure is the same on every machine.
FIXED_LATENCY = (0.2, 0.8)


def fixed_latency(patch):
    """Patches `recipes.task_student.fit_latency` (a pytest MonkeyPatch) to report the FIXED_LATENCY line."""
    from recipes import task_student

    real = task_student.fit_latency

    def fit(*args, **kwargs):
        model = real(*args, **kwargs)
        model.intercept, model.slope = FIXED_LATENCY
        return model

    patch.setattr(task_student, "fit_latency", fit)


def rows():
    """(train rows, eval rows): (text, label) of the first glosses of CLASSES in the training split."""
    from recipes import corpus

    texts, labels = corpus.labelled("wordnet_lexname", "train")
    picked = [(t, l) for t, l in zip(texts, labels) if l in CLASSES][:TRAIN + EVAL]
    return picked[:TRAIN], picked[TRAIN:]


def write_csv(path, header, data):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(data)
    return str(path)


def vocabulary(texts):
    """The special tokens and every lower-cased word and punctuation mark of `texts` (no word pieces)."""
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return SPECIALS + words


def write_task(directory, positions=64):
    """{"train", "eval", "teacher"} paths of the tiny task under `directory`."""
    import numpy as np
    import tf_keras as keras

    import bert
    from recipes import task_model

    train, evaluation = rows()
    assert {l for _, l in evaluation} <= {l for _, l in train} == set(CLASSES)
    paths = {"train": write_csv(os.path.join(directory, "train.csv"), ["text", "label"], train),
             "eval": write_csv(os.path.join(directory, "eval.csv"), ["text", "label"], evaluation)}
    vocab = vocabulary([t for t, _ in train + evaluation])
    keras.utils.set_random_seed(0)
    config = bert.BertConfig(vocab_size=len(vocab), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                             max_position_embeddings=positions)
    classifier = bert.build_classifier(bert.build_encoder(config), len(CLASSES))
    preprocessor = bert.Preprocessor(vocab, seq_length=SEQ_LENGTH)
    features = task_model.encode(preprocessor, [t for t, _ in train])
    labels = np.array([CLASSES.index(l) for _, l in train])
    classifier.compile(keras.optimizers.Adam(3e-3),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(features, labels, batch_size=20, epochs=8, verbose=0)
    paths["teacher"] = task_model.save(os.path.join(directory, "teacher"), classifier, list(CLASSES), preprocessor)
    return paths
