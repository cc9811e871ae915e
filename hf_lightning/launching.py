"""Launching: Lightning's script launcher, with the ``RANK`` that transformers' ``TrainingArguments`` needs.

A child process re-runs the user's script, which builds ``TrainingArguments`` (and so accelerate's process
group) before Lightning starts; Lightning's own launcher does not set ``RANK``, so every child would take rank 0.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from typing_extensions import override

__all__ = ["prepare_launcher", "ranked_launcher"]


class _RankedScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, also giving each child its global ``RANK``.

    A child re-runs the user's script, which builds ``TrainingArguments`` before Lightning starts;
    accelerate (inside ``TrainingArguments``) then initialises the process group from the environment
    and, without ``RANK``, takes rank 0 in every child (CPU) or refuses to start (GPU). With ``RANK``
    set it joins as the right rank and Lightning reuses that process group. The body is Lightning's
    ``_call_children_scripts`` with the two extra variables.
    """

    @override
    def _call_children_scripts(self) -> None:
        from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        os.environ["LOCAL_WORLD_SIZE"] = str(self.num_processes)
        first = env.node_rank() * self.num_processes
        os.environ["RANK"] = str(first)
        for local_rank in range(1, self.num_processes):
            child = os.environ.copy()
            child["LOCAL_RANK"] = str(local_rank)
            child["RANK"] = str(first + local_rank)
            if os.environ.get("PL_GLOBAL_SEED") is None:
                child.pop("PL_GLOBAL_SEED", None)
            self.procs.append(subprocess.Popen(_basic_subprocess_cmd(), env=child))


def prepare_launcher(trainer: Any) -> None:
    """Swap the strategy's Lightning script launcher for ``_RankedScriptLauncher`` (same settings)."""
    strategy = trainer.strategy
    strategy._launcher = ranked_launcher(getattr(strategy, "_launcher", None))


def ranked_launcher(launcher: Any) -> Any:
    """``launcher`` as a ``_RankedScriptLauncher`` when it is Lightning's plain script launcher; otherwise unchanged."""
    if type(launcher) is _SubprocessScriptLauncher and not _hydra_in_use():  # hydra children need Lightning's own command
        return _RankedScriptLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
    return launcher


def _hydra_in_use() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return False
    return HydraConfig.initialized()
