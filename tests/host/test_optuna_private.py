"""One test per private access of Optuna and Ray that mpsearch makes (mpsearch/optuna_private.py):
an upgrade that moves one fails here, by name."""

from __future__ import annotations

import pickle

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from mpsearch import optuna_private as private


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'p.db'}")


def test_study_storage_is_the_storage_the_study_writes(study):
    trial = study.ask()
    storage = private.study_storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_study_id_names_the_study_in_its_storage(study):
    storage = private.study_storage(study)
    assert private.study_id(study) == storage.get_study_id_from_name("s")


def test_trial_id_is_the_storage_id_of_live_and_frozen_trials(study):
    live = study.ask()
    study.tell(live, 1.0)
    frozen = study.trials[0]
    assert private.trial_id(live) == private.trial_id(frozen)
    assert private.study_storage(study).get_trial(private.trial_id(live)).number == 0


def test_rdb_storage_is_found_behind_the_study_cache(study):
    rdb = private.rdb_storage(private.study_storage(study))
    assert isinstance(rdb, optuna.storages.RDBStorage)
    assert rdb.engine.dialect.name == "sqlite"
    assert private.rdb_storage(rdb) is rdb  # an RDBStorage given directly is itself


def test_heartbeat_table_holds_the_heartbeats_optuna_records(study):
    trial = study.ask()
    rdb = private.rdb_storage(private.study_storage(study))
    rdb.record_heartbeat(private.trial_id(trial))
    table = private.heartbeat_table()
    with rdb.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat)).all()
    assert [r[0] for r in rows] == [private.trial_id(trial)] and rows[0][1] is not None


@pytest.fixture
def searcher(tmp_path):
    pytest.importorskip("ray.tune.search.optuna")
    from ray.tune.search.optuna import OptunaSearch

    url = f"sqlite:///{tmp_path / 'ray.db'}"
    storage = optuna.storages.RDBStorage(url)

    def space(trial):
        trial.suggest_int("x", 0, 9)

    return OptunaSearch(space=space, metric="y", mode="max", study_name="tuned", storage=storage)


def test_searcher_study_is_the_named_study_in_the_given_storage(searcher):
    study = private.searcher_study(searcher)
    assert isinstance(study, optuna.Study) and study.study_name == "tuned"
    assert private.searcher_study_name(searcher) == "tuned"


def test_searcher_trials_map_tune_ids_to_optuna_trials_until_completed(searcher):
    config = searcher.suggest("tune-1")
    trial = private.searcher_trials(searcher)["tune-1"]
    assert isinstance(trial, optuna.Trial) and trial.params == config
    assert "tune-1" not in private.searcher_completed(searcher)
    searcher.on_trial_complete("tune-1", {"y": 1.0})
    assert "tune-1" in private.searcher_completed(searcher)
    assert private.searcher_study(searcher).trials[0].values == [1.0]


def test_the_storage_attributes_are_all_that_lead_to_the_storage(searcher):
    """Without SEARCHER_STORAGE_ATTRS, a pickled searcher holds no storage (and no URL)."""
    searcher.suggest("tune-1")
    url = private.rdb_storage(private.study_storage(private.searcher_study(searcher))).url
    state = {k: v for k, v in searcher.__dict__.items()
             if k not in private.SEARCHER_STORAGE_ATTRS and k != "_space"}
    assert url.encode() not in pickle.dumps(state)
    assert url.encode() in pickle.dumps({k: searcher.__dict__[k] for k in ("_storage",)})
