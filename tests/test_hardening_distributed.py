"""The output_dir lock and the signals under DDP: 2 CPU processes over gloo (issue 13).

One job (Lightning's own launcher, ``devices=2``) trains while its rank 1 waits at step 3. A second
job on the same output_dir must stop on both of its ranks, naming the first job's rank 0 (which
holds the lock for the job). Then SIGTERM goes to the first job's rank 1 only: both ranks stop
after the same step with one checkpoint written by both, rank 0 prints one line, and both exit 143.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import dist_helpers as dh
from hf_lightning import run_lock

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]

SCRIPT = str(dh.SCRIPTS / "hardening_ddp.py")


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_lock_and_sigterm_under_ddp(tmp_path):
    first = subprocess.Popen([dh.PYTHON, SCRIPT, "--out", str(tmp_path), "--mode", "hold"], cwd=dh.ROOT, env=dh._env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "ready.json").exists():
            assert first.poll() is None and time.time() < deadline, f"the first job did not reach step 3: {first.communicate()[1][-4000:]}"
            time.sleep(0.1)
        holder = _read(tmp_path / "run" / run_lock.LOCK_FILE)
        assert holder["pid"] == first.pid  # rank 0 holds the lock for the job

        second = subprocess.run([dh.PYTHON, SCRIPT, "--out", str(tmp_path), "--mode", "second"], cwd=dh.ROOT, env=dh._env(),
                                capture_output=True, text=True, timeout=240)
        assert second.returncode != 0
        for rank in (0, 1):
            outcome = _read(tmp_path / f"second_rank{rank}.json")
            assert outcome["type"] == "OutputDirLockedError", outcome
            assert f"pid {first.pid} on host " in outcome["message"], outcome

        os.kill(_read(tmp_path / "ready.json")["pid1"], signal.SIGTERM)  # rank 1 only
        (tmp_path / "go").write_text("")
        _, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 143, err[-4000:]
    outcomes = [_read(tmp_path / f"hold_rank{rank}.json") for rank in (0, 1)]
    assert [o["type"] for o in outcomes] == ["TrainingInterrupted"] * 2 and [o["code"] for o in outcomes] == [143, 143], outcomes
    step = outcomes[0]["step"]
    # every rank stopped after the same step: rank 1 had the signal at step 3, all ranks read it one step later
    assert outcomes[1]["step"] == step == 4, outcomes
    checkpoint = tmp_path / "run" / f"checkpoint-{step}"
    assert outcomes[0]["checkpoint"] == outcomes[1]["checkpoint"] == str(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "optimizer.pt"} <= set(os.listdir(checkpoint))
    lines = [line for line in err.splitlines() if line.startswith("hf_lightning:")]
    assert lines == [f"hf_lightning: SIGTERM received, training stopped after step {step}; newest complete checkpoint: {checkpoint}."], err[-4000:]
    assert not (tmp_path / "run" / run_lock.LOCK_FILE).exists()
