"""The names of the files in a run folder, in the runs root and in the cache: one owner for each.

Torch-free and importing nothing of leukviz, so the dashboard, the run bookkeeping and the engine name the
same files without one importing another. docs/ARCHITECTURE.md says what each file holds.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- a run folder

CONFIG = "config.json"  # the resolved RunConfig, run id and dataset fingerprint; written once
STATUS = "status.json"  # state, error, pid, epoch; replaced atomically
METRICS = "metrics.jsonl"  # the events (leukviz.events), one per line, append-only
CHECKPOINT = "model.safetensors"  # the best model's weights
SIDECAR = "model.json"  # everything needed to rebuild the checkpoint's model
RESUME = "last.pt"  # resumable state: model, optimizer, scheduler, epoch, step
PREDICTIONS = "val_predictions.csv"  # the best epoch's validation predictions
TEST_PREDICTIONS = "test_predictions.csv"  # the kept model's predictions on the held-out test set, scored once
CALIBRATION = "calibration.json"  # the temperature fitted on the validation predictions, and its effect
LOG = "train.log"  # the training process's output (and a failure's traceback)
LAUNCH = "launch.json"  # pid and time of a launched training process, so a second click attaches
RUN_LOCK = "run.lock"  # held by the one process that trains the run
LAUNCH_LOCK = "launch.lock"  # held while a launch starts, so two clicks start one process
STOP = "stop"  # present = stop requested
SUMMARY = "summary.json"  # the run summarised once (runstore.summary), with the size, mtime and inode of its sources
TENSORBOARD = "tensorboard"  # TensorBoard event files (training/tblog.py), when the tensorboard extra is installed

# The files a training process replaces atomically (storage writes a temporary ".<name>.*" beside each
# first): leftovers with these prefixes are the writes a crash cut short.
TRAINER_FILES = (RESUME, CHECKPOINT, SIDECAR, PREDICTIONS, TEST_PREDICTIONS, METRICS)
# The files of a run folder that readers open: each must be a regular file (runs.check names any that is not).
RUN_FILES = (CONFIG, STATUS, METRICS, CHECKPOINT, SIDECAR, RESUME, PREDICTIONS, TEST_PREDICTIONS, CALIBRATION, LOG,
             LAUNCH, RUN_LOCK)

# ---------------------------------------------------------------------------------------------- the runs root

ARCHIVE = ".archive"  # results moved aside by a retrain, and deleted runs (runs.delete): <run id>-<time>


def device_lock(kind: str) -> str:
    """The lock that queues the runs of one device kind (one training at a time per device)."""
    return f".device-{kind}.lock"


# ---------------------------------------------------------------------------------------------- the cache

IMAGE_CACHE = "images"  # decoded images: <fingerprint>-<size>-<window750|full|cell>.npy, .ok.npy, .skipped.json
FEATURE_CACHE = "features"  # head-only backbone features: <key>.safetensors
DEMO_CACHE = "demo"  # the generated demo dataset
ZIP_CACHE = "zips"  # extracted dataset zips
PREDICT_ZIP_CACHE = "predict-zips"  # extracted zips of images to predict
