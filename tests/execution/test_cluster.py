"""A study on a multi-node Ray cluster, and a worker node removed while its trial runs.

The cluster is Ray's own test cluster on this machine: a head node with no CPUs
(so every trial runs on a worker node) and two one-CPU worker nodes. The driver
is ``mpsearch study create … --address`` in a subprocess, as a user runs it.
Authentication is left at Ray's default for every process alike (the driver
inherits this process's environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a three-node cluster; test_study's Ray study is the fast path

SPEC = """
[study]
name = "cluster"
objectives = ["accuracy", "bitops"]
sampler = "random"
n_trials = 3
seed = 0

[model]
name = "lenet5"

[data]
name = "mnist-mini"
train_subset = 3000

[training]
epochs = 4
batch_size = 128
lr = 0.05

[[strategy]]
name = "uniform"
space.bits = [2, 4, 8]

[resources]
cpus_per_trial = 1
max_concurrent = 2
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return kids


def _runs_a_trial(node) -> bool:
    """Whether a worker process under ``node``'s raylet is running a trial."""
    kids, todo = _children(), [node.all_processes["raylet"][0].process.pid]
    while todo:
        for pid in kids.get(todo.pop(), []):
            todo.append(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"_trainable" in cmd or b"ImplicitFunc" in cmd:
                return True
    return False


def test_trials_spread_over_nodes_and_a_lost_node_s_trial_resumes_elsewhere(tmp_path):
    import optuna
    from optuna.trial import TrialState
    from ray.cluster_utils import Cluster

    (tmp_path / "cluster.toml").write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        driver = subprocess.Popen(
            [sys.executable, "-m", "mpsearch.cli", "study", "create", "cluster.toml", "--storage", url,
             "--address", cluster.address, "--quiet"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        artefacts = tmp_path / "mpsearch-studies"  # cluster-<the study's id>/
        victim, deadline = None, time.monotonic() + 300
        while victim is None and driver.poll() is None and time.monotonic() < deadline:
            # both nodes run a trial, and both trials are past their first epoch
            busy = [n for n in workers if _runs_a_trial(n)]
            if len(busy) == 2 and len(list(artefacts.glob("cluster-*/trial-*/checkpoint/last.pt"))) == 2:
                victim = busy[0]
            time.sleep(0.3)
        assert victim is not None, "no trial was seen running on a worker node"
        cluster.remove_node(victim, allow_graceful=False)  # its trial's worker dies with it
        cluster.add_node(num_cpus=1)
        out, err = driver.communicate(timeout=600)
        assert driver.returncode == 0, err[-2000:]
        trials = optuna.load_study(study_name="cluster", storage=url).trials
    finally:
        cluster.shutdown()

    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials), \
        [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials]
    nodes = {t.user_attrs["ray_node"] for t in trials}
    assert len(nodes) >= 2  # trials landed on more than one node
    resumed = [t for t in trials if t.user_attrs["checkpoints"]["resumed_at"] is not None]
    assert len(resumed) == 1, [t.user_attrs["checkpoints"] for t in trials]
    assert resumed[0].user_attrs["ray_node"] != victim.node_id  # it finished on another node
    assert resumed[0].user_attrs["checkpoints"]["resumed_at"]["epochs_trained"] >= 1
    epochs = [row["epoch"] for row in resumed[0].user_attrs["history"]]
    assert epochs == list(range(4))  # each epoch recorded once, none lost or repeated
