"""A study's artefacts in Optuna's artifact store, so that Optuna Dashboard lists and serves them.

Each study gets a :class:`optuna.artifacts.FileSystemArtifactStore` in its own
artefact folder, ``mpsearch-studies/<study>/optuna-artifacts/``. A trial's
``assignment.json`` and ``model.mpq`` are registered with the trial as it is told
(an Optuna trial takes no attributes once finished); a model written later by
``mpsearch export`` is registered with the study, named ``trial-NNNNN-<file>``.
Optuna Dashboard shows them when started with that folder::

    optuna-dashboard sqlite:///mpsearch.db --artifact-dir mpsearch-studies/quickstart/optuna-artifacts
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

STORE = "optuna-artifacts"
TRIAL_FILES = ("assignment.json", "model.mpq")


def store_folder(study_folder: Path) -> Path:
    """The artifact store's folder inside a study's artefact folder."""
    return Path(study_folder) / STORE


def _store(folder: Path):
    from optuna.artifacts import FileSystemArtifactStore

    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def register_trial_artefacts(study: Any, trial: Any, attrs: dict[str, Any]) -> list[str]:
    """Upload a running trial's artefacts (named in ``attrs``) to its study's store; returns their ids.

    Call it before the trial is told: Optuna refuses attributes on a finished trial.
    A trial without artefacts registers nothing.
    """
    from optuna.artifacts import upload_artifact

    from mpsearch.optuna_private import study_storage
    from mpsearch.record import ATTR_ARTEFACTS

    folder = attrs.get(ATTR_ARTEFACTS)
    if not folder:
        return []
    folder = Path(folder)
    store = _store(store_folder(folder.parent))
    return [upload_artifact(artifact_store=store, file_path=str(folder / name), study_or_trial=trial,
                            storage=study_storage(study))
            for name in TRIAL_FILES if (folder / name).is_file()]


def register_export(study: Any, storage_url: str | None, number: int, path: Path) -> str:
    """Upload an exported model to the study's store as ``trial-NNNNN-<name>``; returns its id."""
    from optuna.artifacts import upload_artifact

    from mpsearch.storage import STUDY_ID_ATTR, study_dir

    folder = study_dir(storage_url, study.study_name, study.user_attrs.get(STUDY_ID_ATTR))
    store = _store(store_folder(folder))
    with tempfile.TemporaryDirectory() as scratch:
        named = Path(scratch) / f"trial-{number:05d}-{Path(path).name}"
        shutil.copyfile(path, named)
        return upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study)


__all__ = ["STORE", "register_export", "register_trial_artefacts", "store_folder"]
