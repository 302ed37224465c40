"""BERT pretraining with model.fit on real text: the MLM loss falls."""

import pathlib

import tf_keras as keras

import bert
from bert.data import pretraining_dataset

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretraining_sample.txt"


def test_pretrainer_fit_lowers_mlm_loss():
    keras.utils.set_random_seed(0)
    config = bert.BertConfig.named("tiny", max_position_embeddings=64)  # MiniLM's 30522-word vocab
    pretrainer = bert.build_pretrainer(config, max_predictions_per_seq=10)
    pretrainer.compile(optimizer=keras.optimizers.Adam(2e-3))
    dataset = pretraining_dataset(
        [str(CORPUS)], "minilm", seq_length=64, max_predictions_per_seq=10, batch_size=16, seed=1
    )
    batches = dataset.take(4).cache()
    before = pretrainer.evaluate(batches, verbose=0, return_dict=True)
    # 30 steps take the MLM loss on these batches from 10.3 to 3.2 (measured 2026-12-05); the bar is 7.3.
    history = pretrainer.fit(batches.repeat(), steps_per_epoch=15, epochs=2, verbose=0).history
    after = pretrainer.evaluate(batches, verbose=0, return_dict=True)
    assert set(history) >= {"loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
    # Untrained MLM loss is about ln(30522) = 10.3; training must cut it clearly.
    assert before["mlm_loss"] > 9.0
    assert after["mlm_loss"] < before["mlm_loss"] - 3.0, (before, after)
    assert history["mlm_loss"][-1] < history["mlm_loss"][0]
