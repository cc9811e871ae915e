"""2-process DDP (Lightning's own launcher, CPU/gloo) runs for the hardening tests (issue 13).

    python tests/scripts/hardening_ddp.py --out DIR --mode hold     # trains; rank 1 waits at step 3 for DIR/go
    python tests/scripts/hardening_ddp.py --out DIR --mode second   # the same output_dir while "hold" runs

Every rank writes ``DIR/<mode>_rank{r}.json``: how its ``train()`` ended (exception type, message,
exit code, step, checkpoint). ``hold`` writes ``DIR/ready.json`` (rank 1's pid) when rank 1 starts
waiting, so the test can signal rank 1 alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # repository root
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class WaitOnRankOne(TrainerCallback):
    """Rank 1 stops at the end of step 3 until ``go`` exists (rank 0 then waits in the next gradient all-reduce)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 3 or torch.distributed.get_rank() != 1:
            return
        with open(os.path.join(self.out, "ready.json.tmp"), "w") as f:
            json.dump({"pid1": os.getpid()}, f)
        os.replace(os.path.join(self.out, "ready.json.tmp"), os.path.join(self.out, "ready.json"))
        deadline = time.time() + 180
        while not os.path.exists(os.path.join(self.out, "go")) and time.time() < deadline:
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["hold", "second"], required=True)
    options = parser.parse_args()
    torch.set_num_threads(1)
    from hardening_helpers import tiny_trainer

    from pathlib import Path

    callbacks = [WaitOnRankOne(options.out)] if options.mode == "hold" else []
    trainer = tiny_trainer(Path(options.out) / "run", callbacks=callbacks, max_steps=40, lightning=dict(devices=2, accelerator="cpu"))
    outcome: dict = {"pid": os.getpid()}
    try:
        trainer.train()
        outcome.update(type=None, code=0)
    except BaseException as error:
        outcome.update(type=type(error).__name__, message=str(error), code=getattr(error, "code", None),
                       step=getattr(error, "step", None), checkpoint=getattr(error, "checkpoint", None))
        raise
    finally:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", "0"))
        with open(os.path.join(options.out, f"{options.mode}_rank{rank}.json"), "w") as f:
            json.dump(outcome, f)


if __name__ == "__main__":
    main()
