"""``model_init`` and ``hyperparameter_search`` (optuna, Ray Tune) against transformers.Trainer."""

from __future__ import annotations

import shutil

import pytest
import transformers

import hf_lightning
from helpers import LIGHTNING_QUIET, assert_same_history, assert_same_weights, make_args
from tiny import RegressionDataset, TinyReg

ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, logging_steps=2, eval_strategy="steps", eval_steps=2, learning_rate=0.05)


def _model_init(trial=None):
    return TinyReg(dropout=0.1)  # seeded by the trainer before each call, as transformers does


def _trainer(cls, out, **extra):
    shutil.rmtree(out, ignore_errors=True)
    kwargs = dict(LIGHTNING_QUIET) if issubclass(cls, hf_lightning.Trainer) else {}
    return cls(
        model_init=_model_init,
        args=make_args(out, **{**ARGS, **extra}),
        train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(8, seed=1),
        **kwargs,
    )


def test_model_init_builds_a_fresh_seeded_model_for_each_train(tmp_path):
    runs = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        trainer = _trainer(cls, tmp_path / name)
        first_model = trainer.model
        trainer.train()
        trainer.train()  # a second train() starts again from a new model
        assert trainer.model is not first_model
        runs[name] = trainer
    assert_same_history(runs["hf"].state.log_history, runs["hl"].state.log_history)
    assert_same_weights(runs["hf"].model, runs["hl"].model)


def test_model_init_and_model_are_exclusive_like_transformers(tmp_path):
    with pytest.raises(ValueError, match="but not both"):
        hf_lightning.Trainer(model=TinyReg(), model_init=_model_init, args=make_args(tmp_path))


def _search(cls, out, backend: str, **kwargs):
    objectives = []

    def objective(metrics):
        objectives.append(metrics["eval_loss"])
        return metrics["eval_loss"]

    trainer = _trainer(cls, out)
    best = trainer.hyperparameter_search(direction="minimize", backend=backend, compute_objective=objective, **kwargs)
    return best, objectives


def test_optuna_search_equals_transformers(tmp_path):
    optuna = pytest.importorskip("optuna")

    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True), "seed": trial.suggest_int("seed", 1, 4)}

    results = {}
    for name, cls in (("hf", transformers.Trainer), ("hl", hf_lightning.Trainer)):
        results[name] = _search(cls, tmp_path / name, "optuna", hp_space=space, n_trials=3,
                                sampler=optuna.samplers.TPESampler(seed=0))
    (hf_best, hf_objectives), (hl_best, hl_objectives) = results["hf"], results["hl"]
    assert len(hl_objectives) == len(hf_objectives) == 6  # 3 trials, 2 evaluations each
    assert hl_objectives == pytest.approx(hf_objectives, rel=1e-5)
    assert (hl_best.run_id, hl_best.hyperparameters) == (hf_best.run_id, hf_best.hyperparameters)
    assert hl_best.objective == pytest.approx(hf_best.objective, rel=1e-5)


@pytest.mark.slow
def test_ray_search_equals_transformers_trials(tmp_path):
    """Ray Tune on a local runtime; the reference is transformers.Trainer trained with each grid point (its own ray
    backend cannot ship the trainer to the workers: accelerate's Accelerator does not pickle)."""
    ray = pytest.importorskip("ray")
    from ray import tune

    grid = [0.01, 0.05]
    expected = {}
    for lr in grid:
        trainer = _trainer(transformers.Trainer, tmp_path / f"hf-{lr}", learning_rate=lr)
        trainer.train()
        expected[lr] = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e][-1]
    import os

    here = os.path.dirname(os.path.abspath(__file__))  # the workers import this module's model_init
    path = os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}})
    try:
        best, _ = _search(
            hf_lightning.Trainer, tmp_path / "hl", "ray", hp_space=lambda _: {"learning_rate": tune.grid_search(grid)},
            n_trials=1, storage_path=str(tmp_path / "ray"), resources_per_trial={"cpu": 1},
        )
    finally:
        ray.shutdown()
    best_lr = min(expected, key=expected.get)
    assert best.hyperparameters == {"learning_rate": best_lr}
    assert best.objective == pytest.approx(expected[best_lr], rel=1e-5)
