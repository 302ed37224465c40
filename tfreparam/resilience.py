"""Fault-tolerant training: resume `model.fit` after a crash, and checkpoints that are verified.

`resumable_fit` = `model.fit` + `keras.callbacks.BackupAndRestore` with the one
piece BackupAndRestore leaves to the caller: after a restart it resumes at
the saved (epoch, batch), but the input pipeline starts from its first
batch again. Here the input is an endless, deterministic stream of batches
(`make_dataset()`), and the batches that were already trained on are skipped,
so a run that is killed and restarted sees exactly the same data, in the same
order, as an uninterrupted one. (Random ops inside the model, e.g. dropout,
are not part of the backup; use a model without them, or stateless seeds, for
bit-exact resumption.)

`VerifiedCheckpoints` wraps `tf.train.CheckpointManager`: every save also
writes a manifest with the SHA-256 of each checkpoint file; `restore` checks
the newest checkpoint against its manifest and, if it is corrupted or
partial, reports why and restores the newest good one instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras

from tfreparam import tracing

_MANIFEST_SUFFIX = ".manifest.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint's files are missing, truncated or altered."""


# -- BackupAndRestore ---------------------------------------------------------


def backup_and_restore(backup_dir: str, save_freq="epoch", delete_checkpoint: bool = True):
    """A `keras.callbacks.BackupAndRestore` (save_freq: "epoch" or every N batches)."""
    if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
        raise ValueError(f"save_freq must be 'epoch' or a positive number of batches, got {save_freq!r}.")
    return keras.callbacks.BackupAndRestore(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)


def completed_steps(backup_dir: str, steps_per_epoch: int) -> int:
    """How many batches the run backed up in `backup_dir` had trained on (0 if no backup)."""
    latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if latest is None:
        return 0
    reader = tf.train.load_checkpoint(latest)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if epoch < 0:
        return 0
    # save_freq="epoch" records batch -1: the whole epoch is done.
    return epoch * steps_per_epoch + (batch + 1 if batch >= 0 else steps_per_epoch)


def resumable_fit(
    model: keras.Model,
    make_dataset: Callable[[], tf.data.Dataset],
    epochs: int,
    steps_per_epoch: int,
    backup_dir: str,
    save_freq=1,
    callbacks=(),
    **fit_kwargs,
):
    """`model.fit` that survives being killed: rerun the same call to continue.

    `make_dataset()` must return the same endless (`.repeat()`ed) stream of
    batches on every call; batch `i` of the stream is global step `i`.
    `save_freq` is in batches (or "epoch"). Returns the `History` of this
    (possibly resumed) call.
    """
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} must be built before resumable_fit (BackupAndRestore restores "
            "variables that must already exist); call it on a batch first."
        )
    dataset = make_dataset()
    if dataset.cardinality() != tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "resumable_fit needs an endless dataset (call .repeat()) so that batches can be skipped "
            "on resumption and every epoch has `steps_per_epoch` batches."
        )
    done = completed_steps(backup_dir, steps_per_epoch)
    if getattr(model, "optimizer", None) is not None:
        tracing.build_for_fit(model)  # the step traced once, not twice
    return model.fit(
        dataset.skip(done),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[backup_and_restore(backup_dir, save_freq), *callbacks],
        **fit_kwargs,
    )


# -- verified checkpoints -------------------------------------------------------


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(prefix: str):
    directory = os.path.dirname(prefix) or "."
    base = os.path.basename(prefix)
    return sorted(
        name for name in os.listdir(directory)
        if name.startswith(base + ".") and not name.endswith(_MANIFEST_SUFFIX)
    )


def write_manifest(prefix: str) -> str:
    """Records the size and SHA-256 of each file of the checkpoint `prefix`."""
    directory = os.path.dirname(prefix) or "."
    files = {
        name: {"bytes": os.path.getsize(os.path.join(directory, name)), "sha256": _sha256(os.path.join(directory, name))}
        for name in _checkpoint_files(prefix)
    }
    path = prefix + _MANIFEST_SUFFIX
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump({"files": files}, f, indent=1)
    os.replace(temporary, path)  # atomic: a manifest is either complete or absent
    return path


def verify_checkpoint(prefix: str) -> None:
    """Raises `CorruptCheckpointError` naming the problem if `prefix` is not intact."""
    manifest_path = prefix + _MANIFEST_SUFFIX
    if not os.path.exists(manifest_path):
        raise CorruptCheckpointError(
            f"Checkpoint {prefix!r} has no manifest ({os.path.basename(manifest_path)}): it is partial "
            "(the save was interrupted) or was not written by VerifiedCheckpoints."
        )
    try:
        with open(manifest_path) as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as error:
        raise CorruptCheckpointError(f"Checkpoint manifest {manifest_path!r} is unreadable: {error}.") from None
    directory = os.path.dirname(prefix) or "."
    for name, record in expected.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise CorruptCheckpointError(f"Checkpoint {prefix!r} is partial: file {name!r} is missing.")
        size = os.path.getsize(path)
        if size != record["bytes"]:
            raise CorruptCheckpointError(
                f"Checkpoint {prefix!r} is corrupted: {name!r} has {size} bytes, expected {record['bytes']}."
            )
        if _sha256(path) != record["sha256"]:
            raise CorruptCheckpointError(
                f"Checkpoint {prefix!r} is corrupted: the SHA-256 of {name!r} does not match its manifest."
            )


@dataclasses.dataclass
class RestoreResult:
    """What `VerifiedCheckpoints.restore` did.

    A fresh start (`path` None, nothing `rejected`) and a run whose every
    checkpoint was rejected (`all_rejected`: the model holds initial values
    although training had progressed) are told apart.
    """

    path: Optional[str]  # the checkpoint restored, None if nothing usable was found
    skipped: dict  # corrupted checkpoint prefix -> the reason it was skipped

    @property
    def rejected(self) -> list:
        """The checkpoint prefixes that were found but not restored, newest first."""
        return list(self.skipped)

    @property
    def all_rejected(self) -> bool:
        """True if there were checkpoints and none of them could be restored."""
        return self.path is None and bool(self.skipped)


class VerifiedCheckpoints:
    """`tf.train.CheckpointManager` with integrity manifests and fallback on restore.

    ```
    checkpoints = VerifiedCheckpoints(tf.train.Checkpoint(model=model, optimizer=opt), directory)
    checkpoints.save()                       # after each epoch, say
    result = checkpoints.restore()           # newest intact checkpoint; result.skipped says why others were not
    ```
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int = 3):
        if max_to_keep is not None and max_to_keep < 2:
            raise ValueError("max_to_keep must be >= 2 so that a good checkpoint survives a corrupted newer one.")
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def checkpoints(self):
        """Checkpoint prefixes, oldest first."""
        return list(self.manager.checkpoints)

    def save(self, checkpoint_number: Optional[int] = None) -> str:
        prefix = self.manager.save(checkpoint_number=checkpoint_number)
        write_manifest(prefix)
        self._remove_stale_manifests()
        return prefix

    def _remove_stale_manifests(self):
        live = {os.path.basename(p) + _MANIFEST_SUFFIX for p in self.manager.checkpoints}
        directory = self.manager.directory
        for name in os.listdir(directory):
            if name.endswith(_MANIFEST_SUFFIX) and name not in live:
                os.remove(os.path.join(directory, name))

    def restore(self) -> RestoreResult:
        """Restores the newest intact checkpoint; corrupted ones are logged and skipped.

        If checkpoints exist but every one is corrupt, nothing is restored:
        the result says so (`all_rejected`) and a warning names them.
        """
        skipped = {}
        for prefix in reversed(self.manager.checkpoints):
            try:
                verify_checkpoint(prefix)
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
            except (CorruptCheckpointError, tf.errors.OpError, AssertionError) as error:
                reason = str(error).strip().splitlines()[0]
                logging.warning("Skipping checkpoint %s: %s", prefix, reason)
                skipped[prefix] = reason
                continue
            return RestoreResult(prefix, skipped)
        if skipped:
            warnings.warn(
                f"All {len(skipped)} checkpoints in {self.manager.directory!r} were rejected "
                f"({', '.join(os.path.basename(p) for p in skipped)}); nothing was restored and the model keeps "
                "its initial values. See result.skipped for why; delete them to start afresh on purpose.",
                RuntimeWarning, stacklevel=2,
            )
        return RestoreResult(None, skipped)
