"""Quiet by default: the Lightning output no hf_lightning user can act on is filtered at its source, by exact
message, and nothing else is (``hf_lightning.console``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from hf_lightning import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what each noise looks like on the console, and where it comes from
NOISE = {
    "LeafSpec deprecation": "LeafSpec)` is deprecated",
    "no eval set": "Total length of `list` across ranks is zero",
    "GPU banner": "GPU available:",
    "TPU banner": "TPU available:",
    "litlogger/litmodels tip": "Tip:",
    "model summary": "Trainable params",
}


# --------------------------------------------------------------------------------- the filters


def _warn_from(module: str, message: str, category: type[Warning]) -> list[str]:
    """Warn as if from ``module`` under the installed filters; the messages that got through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for entry in console.WARNING_FILTERS:
            warnings.filterwarnings("ignore", message=entry.message, category=entry.category, module=entry.module)
        warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "module,message,category,shown",
    [
        ("lightning.pytorch.utilities._pytree", "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, False),
        ("lightning.pytorch.utilities.data", "Total length of `list` across ranks is zero. Please make sure ...", UserWarning, False),
        # the same messages from anywhere else, or other messages from the same places, still show
        ("my_code", "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, True),
        ("lightning.pytorch.utilities.data", "Total length of `DataLoader` across ranks is zero. Please make sure ...", UserWarning, True),
        ("lightning.pytorch.utilities.data", "Total length of `list` across ranks is zero.", DeprecationWarning, True),
        ("lightning.pytorch.utilities._pytree", "something else is deprecated", FutureWarning, True),
    ],
)
def test_warning_filters_are_exact(module, message, category, shown):
    assert bool(_warn_from(module, message, category)) == shown


@pytest.mark.parametrize(
    "message,banner",
    [
        ("GPU available: False, used: False", True),
        ("TPU available: False, using: 0 TPU cores", True),
        ("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]...", True),
        ("`Trainer.fit` stopped: `max_steps=8` reached.", True),
        ("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.", False),
        ("Restoring states from the checkpoint path at ...", False),
    ],
)
def test_banners(message, banner):
    assert console.is_banner(message) == banner


def test_banners_muted_only_inside_the_block_and_only_banners(caplog):
    logger = logging.getLogger(console.BANNER_LOGGERS[0])
    with caplog.at_level(logging.INFO, logger=logger.name):
        with console.lightning_banners_muted():
            logger.info("GPU available: False, used: False")
            logger.info("something a user wants to know")
            logger.warning("GPU available: this one is a warning")
        logger.info("TPU available: False, using: 0 TPU cores")
    assert [r.getMessage() for r in caplog.records] == [
        "something a user wants to know", "GPU available: this one is a warning", "TPU available: False, using: 0 TPU cores"
    ]
    assert logger.filters == []


# ------------------------------------------------------------------------------ on a real run

RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import hf_lightning
    from helpers import make_args
    from tiny import RegressionDataset, TinyReg

    args = make_args({out!r}, per_device_train_batch_size=4, max_steps=4, logging_steps=2, disable_tqdm=False)
    trainer = hf_lightning.build_trainer(args)
    data = hf_lightning.HFDataModule(args, train_dataset=RegressionDataset(16))  # no eval set
    trainer.fit(hf_lightning.HFModule(TinyReg(), args), datamodule=data)
    print("global_step", trainer.global_step)
    """
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_build_trainer_run_shows_none_of_the_noise(tmp_path):
    """A fresh process (no pytest filters): ``build_trainer`` + fit without an eval set, progress bar on."""
    code = RUN.format(tests=os.path.join(ROOT, "tests"), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    console_text = done.stdout + done.stderr
    assert "global_step 4" in done.stdout
    shown = [name for name, text in NOISE.items() if text in console_text]
    assert shown == [], f"{shown} on the console:\n{console_text[-3000:]}"
    assert "Training:" in console_text  # the bar itself is still there
