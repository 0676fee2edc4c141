"""scores.npz: every per-model, per-example score a run's metrics were computed from.

One uncompressed .npz (np.load reads it; margins hardly compress), written atomically next to
results.json. Members (arrays of shape (models, examples) unless said otherwise):

    format                 () int: SCORES_FORMAT; a file of another format is refused, not misread
    kind                   () str: "classifier" or "lm"
    run_id                 () str: the run's id, as results.json's: a file copied from another run is refused
    split/<split>          (k,) int: positions of the forget, retain and val examples along the example axis
    classifier runs:
      labels, example_ids  (E,): the class and the dataset id of each example (training set, then validation)
      arm/originals/<f>, arm/oracles/<f>      the reference arms
      row/<label>/<f>      each method row that finished (the retrain row is the noise-floor arm)
      reference/<label>/<f>  the arm a row was judged against when it is not the oracles (e.g. SISA's)
      with <f> in margin (float32), correct (bool), entropy, m_entropy (float32): see `scoring.ArmScores`
      with --trajectories K: trajectory/positions (k,) the followed points (forget, then samples of retain
      and val); trajectory/<label>/steps (T,), /klom (T, k) float32, /margins (T, N, k) float32
    language-model runs:
      arm/oracles/<set>/<field>, arm/originals/<set>/<field>, row/<label>/<set>/<field>
      with <set> in forget, retain, world, val and <field> the `lm.evaluate.ItemScores` fields (seq: the
      mean token log-probability of each item's answer; mia/<attack>: the attacks' per-item scores), and
      the generation-only sets probe_<type> and neighbour (rouge: RWKU-style probes) and fluency (fluency)

`unlearnkit rescore RUN_DIR` recomputes results.json (and klom.npz) from this file alone.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UnlearnkitError, option
from ..files import atomic_write, savez

SCORES_FORMAT = 1
NAME = "scores.npz"


def write_scores(out, arrays: dict[str, np.ndarray], splits: dict[str, np.ndarray], results: dict) -> None:
    kind = "lm" if "lm_task" in results["config"] else "classifier"
    full = {"format": np.array(SCORES_FORMAT), "kind": np.array(kind), "run_id": np.array(results["run_id"]),
            **{f"split/{k}": np.asarray(v) for k, v in splits.items()}, **arrays}
    atomic_write(Path(out) / NAME, lambda p: savez(p, full, compress=False))


def read_scores(run_dir, run_id: str) -> dict[str, np.ndarray]:
    """Every member of RUN_DIR/scores.npz, loaded; a clear UnlearnkitError for a missing, truncated or
    foreign file (another format, or another run's: `run_id` is results.json's)."""
    path = Path(run_dir) / NAME
    if not path.is_file():
        raise UnlearnkitError(f"{run_dir} has no {NAME}: rescoring needs a run written by unlearnkit with saved "
                              f"scores; run it again with {option('out')} to get one")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise UnlearnkitError(f"{path} is truncated or corrupted ({type(e).__name__}); run the job again to "
                              "rewrite it") from None
    if "format" not in arrays or arrays["format"].shape != () or int(arrays["format"]) != SCORES_FORMAT:
        found = arrays.get("format", "none")
        raise UnlearnkitError(f"{path} has scores format {found}, this unlearnkit reads format {SCORES_FORMAT}; "
                              "rescore it with the version that wrote it, or run the job again")
    check_run_id(path, arrays, run_id)
    return arrays


def check_run_id(path: Path, arrays, run_id: str) -> None:
    """Refuse an array file written by another run than results.json's (copied over, or left by one)."""
    if "run_id" in arrays and str(arrays["run_id"]) != run_id:
        raise UnlearnkitError(f"{path} belongs to run {arrays['run_id']}, but results.json beside it to run {run_id}; "
                              "run the job again to rewrite both")


#: The file each command's output folder is known by (a run's, a study's, ...): one command does not write
#: into another's folder, nor read it as its own.
OUTPUTS = {"results.json": "a run's results", "study.json": "a study", "datamodels.json": "saved datamodels",
           "id_vs_ood.json": "an ID-vs-OOD curve", "corrective.json": "a corrective study",
           "generalisation.json": "a generalisation study"}


def read_results(run_dir) -> dict:
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        other = next((f for f in OUTPUTS if (Path(run_dir) / f).is_file()), None)
        if other:
            raise UnlearnkitError(f"{run_dir} holds {OUTPUTS[other]} ({other}), not a run's results: its "
                                  "report.html shows it") from None
        raise UnlearnkitError(f"{run_dir} has no results.json: is it a run's {option('out')} folder?") from None
    except (OSError, ValueError) as e:
        raise UnlearnkitError(f"{path} cannot be read ({type(e).__name__}); run the job again") from None
    if not isinstance(results, dict) or not {"config", "rows", "noise_floor"} <= set(results):
        raise UnlearnkitError(f"{path} is not an unlearnkit run's results")
    return results


def with_seconds(results: dict, run_dir) -> dict:
    """`results` as a run returns them: each row with its wall-clock seconds, read from timings.json (kept
    apart from results.json, which holds only what the config determines)."""
    try:
        timings = json.loads((Path(run_dir) / "timings.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        timings = {}

    def timed(r: dict) -> dict:
        return {**r, "seconds": (timings.get(r.get("label", r["method"])) or {}).get("seconds")}
    return {**results, "rows": [timed(r) for r in results["rows"]], "noise_floor": timed(results["noise_floor"])}
