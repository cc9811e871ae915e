"""Run tiny cases in several processes with transformers.Trainer (``hf``) or hf_lightning (``hl``).

Launched by the tests, never imported by them:

    torchrun --standalone --nproc_per_node 2 tests/scripts/dist_run.py --framework hf --out DIR --case reg
    python tests/scripts/dist_run.py --framework hl --devices 2 --out DIR --case reg --case reg:resume=4

(the second form uses Lightning's own subprocess launcher). Each ``--case CASE[:resume=N][:strategy=S]``
trains in ``DIR/<name>/out`` and writes, from rank 0, ``DIR/<name>/result.json`` (log_history, the
files of every checkpoint) and the final weights through ``save_model`` in ``DIR/<name>/final``;
every rank writes the micro-batches it trained on to ``DIR/<name>/batches_rank{r}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # repository root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if os.environ.get("HLTRACE"):
    exec(open(os.environ["HLTRACE"]).read())

from dist_cases import get_case  # noqa: E402


def parse_run(spec: str) -> dict:
    case, *options = spec.split(":")
    run = {"case": case, "resume": None, "strategy": "ddp", "name": case, "args": {}, "source": None, "subclass": None,
           "fsdp_args": None, "perturb": 0.0}
    for option in options:
        key, _, value = option.partition("=")
        if key == "resume":
            run["resume"] = int(value)
        elif key == "strategy":
            run["strategy"] = value
        elif key == "name":
            run["name"] = value
        elif key == "source":  # folder holding the checkpoint-N to resume from
            run["source"] = value
        elif key == "subclass":  # a subclass body of tests/overrides.py applied to the Trainer class
            run["subclass"] = value
        elif key == "fsdp_args":  # a preset of FSDP_ARG_PRESETS: the same fsdp/fsdp_config for both frameworks
            run["fsdp_args"] = value
        elif key == "perturb":  # ranks > 0 start from other weights (what cpu_ram_efficient_loading must undo)
            run["perturb"] = float(value)
        else:  # any other key=value is a TrainingArguments override (int/float/str)
            run["args"][key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    if run["resume"] is not None and run["name"] == case:
        run["name"] = f"{case}-resume{run['resume']}"
    return run


def make_strategy(name: str):
    """hf_lightning's strategy for ``ddp``, ``fsdp2_{full,sharded}[_consolidated]``, ``fsdp_{full,sharded}`` (FSDP1, GPU)."""
    if name == "ddp":
        return None
    from hf_lightning.distributed import FSDP2Strategy, FSDPStrategy

    family, kind, *rest = name.split("_")
    cls = {"fsdp2": FSDP2Strategy, "fsdp": FSDPStrategy}[family]
    return cls(state_dict_type=kind, save_consolidated=rest == ["consolidated"])


def transformers_fsdp_args(name: str, layer: str | None) -> dict:
    """The same FSDP setting for transformers.Trainer (accelerate's plugin; GPU only)."""
    if name == "ddp":
        return {}
    family, kind, *_ = name.split("_")
    config = {"version": 2 if family == "fsdp2" else 1, "state_dict_type": f"{kind.upper()}_STATE_DICT"}
    if layer:
        config["transformer_layer_cls_to_wrap"] = [layer]
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": config}


# TrainingArguments' own fsdp/fsdp_config, given to both frameworks (``--case llama:fsdp_args=NAME``): transformers
# maps them onto accelerate's plugin (on CPU it falls back to DDP), hf_lightning onto its FSDP strategies.
FSDP_ARG_PRESETS: dict[str, dict] = {
    "full": {"fsdp": "full_shard auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}},
    "sharded": {"fsdp": True, "fsdp_config": {"fsdp_version": 2, "state_dict_type": "SHARDED_STATE_DICT"}},
    "grad_op_size": {"fsdp": "shard_grad_op", "fsdp_config": {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 3000,
                                                              "state_dict_type": "SHARDED_STATE_DICT"}},
    "no_wrap": {"fsdp": True, "fsdp_config": {"auto_wrap_policy": "NO_WRAP"}},
    "checkpointing_rank0": {"fsdp": True, "fsdp_config": {"activation_checkpointing": True, "cpu_ram_efficient_loading": True,
                                                          "state_dict_type": "SHARDED_STATE_DICT"}},
    "offload": {"fsdp": "full_shard offload", "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT"}},
    # FSDP1 (CUDA only)
    "v1_full": {"fsdp": "full_shard auto_wrap", "fsdp_config": {"version": 1}},
    "v1_sharded": {"fsdp": "shard_grad_op", "fsdp_config": {"version": 1, "state_dict_type": "SHARDED_STATE_DICT",
                                                            "activation_checkpointing": True, "backward_prefetch": "BACKWARD_PRE"}},
}


def fsdp_preset(name: str) -> dict:
    import copy

    return copy.deepcopy(FSDP_ARG_PRESETS[name])


def describe_sharding(model) -> dict:
    """The FSDP2 units of ``model`` (module name -> reshard after forward, offload, parameter dtype) and its checkpointed modules."""
    from torch.distributed.fsdp import FSDPModule

    units = {}
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            units[name or "<root>"] = None if group is None else {
                "reshard_after_forward": group.post_forward_mesh_info is not None,
                "offload": type(group.offload_policy).__name__,
                "param_dtype": str(group.mp_policy.param_dtype),
                "params": len(group.fsdp_params),
            }
    checkpointed = [name for name, module in model.named_modules() if hasattr(module, "_checkpoint_wrapped_module")]
    return {"units": units, "checkpointed": checkpointed}


def _DispatchRecorder(seen: list):
    """A Lightning callback noting which hook dispatch (``step_dispatch``) each training step ran with."""
    from lightning.pytorch.callbacks import Callback

    class Recorder(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            plan = pl_module._dispatch
            seen.append(f"backward={'direct' if plan.direct_backward else 'lightning'},"
                        f"optimizer_step={'direct' if plan.direct_optimizer_step else 'lightning'}")

    return Recorder()


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))


def run_one(framework: str, spec: dict, out: str, devices: int, source: str | None, device: str = "cpu") -> None:
    from transformers import TrainingArguments

    case = get_case(spec["case"], os.path.join(out, "_data"))
    folder = os.path.join(out, spec["name"])
    args = dict(output_dir=os.path.join(folder, "out"), report_to="none", disable_tqdm=True, use_cpu=device == "cpu", seed=42)
    args.update(case.args)
    args.update(spec["args"])
    torch.manual_seed(0)
    model = case.model_fn()
    if framework == "hf":
        layer = next(iter(getattr(model, "_no_split_modules", None) or []), None)
        args.update(transformers_fsdp_args(spec["strategy"], layer))
    if spec["fsdp_args"]:
        args.update(fsdp_preset(spec["fsdp_args"]))
    if spec["perturb"] and rank() > 0:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(spec["perturb"])
    seen: list = []

    def record(module, a, kwargs):
        if module.training:
            value = kwargs.get(case.record_key, a[0] if a else None)
            seen.append([[round(float(x), 4) for x in row] for row in value.reshape(value.shape[0], -1).tolist()])

    model.register_forward_pre_hook(record, with_kwargs=True)
    import overrides

    overrides.CALLS.clear()
    dispatch: list = []
    if framework == "hf":
        from transformers import Trainer

        if spec["subclass"]:
            Trainer = overrides.subclass(overrides.BODIES[spec["subclass"]], Trainer)
        trainer = Trainer(model=model, args=TrainingArguments(**args), **case.trainer_kwargs)
    else:
        import hf_lightning

        lightning = dict(enable_progress_bar=False, enable_model_summary=False, accelerator=device, devices=devices,
                         callbacks=[_DispatchRecorder(dispatch)])
        strategy = make_strategy(spec["strategy"])
        if strategy is not None:
            lightning["strategy"] = strategy
        cls = hf_lightning.Trainer
        if spec["subclass"]:
            cls = overrides.subclass(overrides.BODIES[spec["subclass"]], cls)
        trainer = cls(model=model, args=TrainingArguments(**args), **case.trainer_kwargs, **lightning)
    resume = None
    if spec["resume"] is not None:
        base = spec["source"] or source or os.path.join(out, spec["case"], "out")
        resume = os.path.join(base, f"checkpoint-{spec['resume']}")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(os.path.join(folder, "final"))
    evaluated = trainer.evaluate()
    eval_dataset = case.trainer_kwargs.get("eval_dataset")
    predicted = trainer.predict(eval_dataset) if eval_dataset is not None else None
    r = rank()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"batches_rank{r}.json"), "w") as f:
        json.dump(seen, f)
    with open(os.path.join(folder, f"calls_rank{r}.json"), "w") as f:
        json.dump(overrides.CALLS, f)
    if r == 0:
        out_dir = args["output_dir"]
        checkpoints = {
            d: sorted(os.listdir(os.path.join(out_dir, d)))
            for d in os.listdir(out_dir)
            if d.startswith("checkpoint-")
        }
        with open(os.path.join(folder, "result.json"), "w") as f:
            result = {"log_history": trainer.state.log_history, "checkpoints": checkpoints, "evaluate": evaluated}
            if dispatch:
                result["dispatch"] = sorted(set(dispatch))
            if spec["fsdp_args"]:
                result["fsdp_enabled"] = bool(getattr(trainer, "is_fsdp_enabled", False))
                result["wrapper"] = type(trainer.model_wrapped).__name__
                result["sharding"] = describe_sharding(trainer.model)
                if framework == "hl":
                    result["strategy"] = type(trainer.lightning_trainer.strategy).__name__
            if predicted is not None:
                predictions = torch.as_tensor(predicted.predictions).double()
                result["predict"] = {
                    "metrics": predicted.metrics,
                    "shape": list(predictions.shape),
                    "sum": float(predictions.nan_to_num().sum()),
                    "label_ids_shape": list(torch.as_tensor(predicted.label_ids).shape),
                }
            json.dump(result, f, indent=1)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["hf", "hl"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", dest="run", action="append", required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--source", default=None, help="folder holding the checkpoints to resume from")
    parser.add_argument("--compat", default=None, help="NAME_SHARDED,NAME_FULL: then check accelerate's FSDP loaders on their checkpoint-3")
    options = parser.parse_args()
    torch.set_num_threads(1)
    for spec in options.run:
        run_one(options.framework, parse_run(spec), options.out, options.devices, options.source, options.device)
    if options.compat:
        from accelerate_compat import run

        sharded, full = (os.path.join(options.out, name, "out", "checkpoint-3") for name in options.compat.split(","))
        run(sharded, full, os.path.join(options.out, "compat"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Join the process group's threads before the interpreter exits: left to static destruction they
        # occasionally abort the process ("terminate called without an active exception") after a good run.
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
