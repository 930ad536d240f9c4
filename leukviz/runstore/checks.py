"""A run folder's files checked against their schemas (runfiles): every damaged file of a run, what is wrong
and the repair (check), the files a finished run needs (check_results, results_sound), and whether a run whose
status.json is lost finished by what its other files say (finished_by_its_files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leukviz.core import events, filenames
from leukviz.core.storage import read_json
from leukviz.runstore import runfiles
from leukviz.runstore.runfiles import Problem, RunFileError
from leukviz.runstore.states import STATES

if TYPE_CHECKING:
    from leukviz.runstore.runfolder import Run


def check(run: Run) -> list[Problem]:
    """Every damaged file of a run folder, checked against its schema (runfiles): what is wrong and the
    repair. The files a finished run's readers need (runfiles.REQUIRED) are checked once it says finished."""
    delete = f"delete the folder {run.dir}"
    odd = runfiles.not_regular_files(run.dir)
    if odd:  # a pipe, socket or device in place of a run file: named, and never opened (a FIFO would hang)
        return [Problem(name, f"is {kind}, not a regular file, so nothing reads it", f"remove it, or {delete}")
                for name, kind in odd.items()]
    out: list[Problem] = []
    try:
        runfiles.read_config(run.dir)
    except (RunFileError, OSError) as e:
        out.append(Problem(filenames.CONFIG, str(e), f"{delete}, or train its configuration again "
                                                  "(config.json is rewritten)"))
    st = read_json(run.dir / filenames.STATUS, None)
    if (run.dir / filenames.STATUS).exists() and not (isinstance(st, dict) and st.get("state") in STATES):
        if finished_by_its_files(run):  # never advised to resume: that would train a finished run again
            st = {"state": "finished"}
            out.append(Problem(filenames.STATUS, "not a run status", "it reads as finished, since its epochs, "
                               "model, weights and predictions are whole: nothing to resume or train"))
        else:
            out.append(Problem(filenames.STATUS, "not a run status", f"it reads as interrupted; `train --resume "
                                                                  f"{run.run_id}` rewrites it"))
    elif isinstance(st, dict) and runfiles.clean_status(st)[1]:
        out.append(Problem(filenames.STATUS, ", ".join(runfiles.clean_status(st)[1]) + " (ignored)",
                           "the next training rewrites it"))
    skipped = run.skipped_events()
    if skipped:
        out.append(Problem(filenames.METRICS, f"{len(skipped)} line(s) skipped ({'; '.join(skipped[:3])})",
                           "the curves leave them out"))
    finished = isinstance(st, dict) and st.get("state") == "finished"
    if finished:
        out += check_results(run, delete)
    if (run.dir / filenames.RESUME).exists():
        try:
            runfiles.check_resume_state(run.dir / filenames.RESUME)
        except RunFileError as e:
            out.append(Problem(filenames.RESUME, str(e), f"the model is intact, only resuming needs it: delete {filenames.RESUME}"
                               if finished else f"it cannot resume: delete {filenames.RESUME} and train it again"))
    return out


def check_results(run: Run, delete: str) -> list[Problem]:
    """The files of a finished run: the sidecar, the weights, the predictions."""
    retrain = f"train its configuration again with --force, or {delete}"
    try:
        sidecar = runfiles.check_sidecar(runfiles._load(run.dir / filenames.SIDECAR))
    except FileNotFoundError:
        return [Problem(filenames.SIDECAR, "missing", retrain)]
    except (RunFileError, OSError) as e:
        return [Problem(filenames.SIDECAR, str(e), retrain)]
    out = []
    try:
        runfiles.check_weights(run.dir / filenames.CHECKPOINT, sidecar)
    except FileNotFoundError:
        out.append(Problem(filenames.CHECKPOINT, "missing", retrain))
    except (RunFileError, OSError) as e:
        out.append(Problem(filenames.CHECKPOINT, str(e), retrain))
    for name, repair in ((filenames.PREDICTIONS, retrain),
                         (filenames.TEST_PREDICTIONS, f"delete {filenames.TEST_PREDICTIONS}: Compare scores the test set again")):
        path = run.dir / name
        if name == filenames.TEST_PREDICTIONS and not path.exists():
            continue
        try:
            counts = runfiles.check_predictions(path, sidecar["classes"])
            odd = runfiles.agrees_with_sidecar(counts, sidecar) if name == filenames.PREDICTIONS else None
            if odd:
                out.append(Problem(name, odd, repair))
        except FileNotFoundError:
            out.append(Problem(name, "missing", repair))
        except (RunFileError, OSError) as e:
            out.append(Problem(name, str(e), repair))
    return out


def results_sound(run: Run) -> bool:
    """status.json says finished and every file a finished run needs is sound."""
    st = read_json(run.dir / filenames.STATUS, None)
    return isinstance(st, dict) and st.get("state") == "finished" and \
        not [p for p in check(run) if p.file in runfiles.REQUIRED]


def finished_by_its_files(run: Run) -> bool:
    """Whether a run whose status.json is lost or damaged finished, by what its other files say: no resumable
    state left, its epochs reached the configured number (or it stopped early), and the files a finished
    run needs (model.json, the weights, the predictions) whole and agreeing."""
    if (run.dir / filenames.RESUME).exists():
        return False
    try:
        epochs = run.config.epochs
    except (RunFileError, OSError):
        return False
    evs = run.events()
    done = max((e["epoch"] for e in evs if e.get("type") == events.EPOCH), default=0)
    if done < epochs and not any(e.get("type") == events.EARLY_STOP for e in evs):
        return False
    return not check_results(run, "")
