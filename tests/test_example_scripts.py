"""scripts/example_scripts.py: transformers' example scripts, stock and switched to hf_lightning, compared bitwise.

The quick tests cover the pieces: the import switch, the compatibility rewrite, finding the scripts, preparing
the two copies, the folder comparison, and the offline ``evaluate``/``nltk`` stand-ins. The slow test runs the
whole check on the scripts of a transformers checkout named by ``HF_LIGHTNING_EXAMPLES`` (they are not part of
this project), e.g. ``HF_LIGHTNING_EXAMPLES=~/transformers pytest -m slow tests/test_example_scripts.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


harness = _load("example_scripts", SCRIPTS / "example_scripts.py")
compare = sys.modules["example_compare"]  # imported by the harness from its own folder
fixtures = sys.modules["example_fixtures"]
evaluate_shim = _load("evaluate_shim", SCRIPTS / "example_shims" / "evaluate.py")
nltk_shim = _load("nltk_shim", SCRIPTS / "example_shims" / "nltk.py")

GLUE_LIKE = """import numpy as np
from transformers import (
    AutoConfig,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)
from transformers.utils import check_min_version


def main():
    return Trainer
"""

TRAINER_QA_LIKE = """from transformers import Trainer, is_torch_xla_available


class QuestionAnsweringTrainer(Trainer):
    def evaluate(self):
        eval_loop = self.prediction_loop if self.args.use_legacy_prediction_loop else self.evaluation_loop
        if self.args.tpu_metrics_debug or self.args.debug:
            pass
"""


# ------------------------------------------------------------------------------------------- the switch

def test_switch_imports_the_same_names_from_hf_lightning_after_the_transformers_import():
    switched = harness.switch_trainer_import(GLUE_LIKE)
    lines = switched.splitlines()
    position = lines.index(f"from hf_lightning import Trainer  {harness.SWITCH_MARK}")
    assert lines[position - 1] == ")"  # right after the multi-line `from transformers import (...)`
    assert [line for line in lines if line != lines[position]] == GLUE_LIKE.splitlines()  # nothing else changed
    namespace: dict = {}
    exec(compile(switched, "run_glue.py", "exec"), namespace)
    import hf_lightning

    assert namespace["main"]() is hf_lightning.Trainer


@pytest.mark.parametrize("source,expected", [
    ("from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments\n", "from hf_lightning import Seq2SeqTrainer"),
    ("from transformers import Trainer as T, set_seed\n", "from hf_lightning import Trainer as T"),
    ("if True:\n    from transformers import Trainer\n", "    from hf_lightning import Trainer"),
])
def test_switch_keeps_aliases_and_indentation(source, expected):
    switched = harness.switch_trainer_import(source).splitlines()
    assert switched[-1] == f"{expected}  {harness.SWITCH_MARK}"
    assert switched[:-1] == source.splitlines()


@pytest.mark.parametrize("source", ["import transformers\n", "from transformers import TrainingArguments\n",
                                    "from transformers.trainer import Trainer\n"])
def test_switch_refuses_a_file_without_the_import(source):
    with pytest.raises(ValueError, match="no `from transformers import Trainer / Seq2SeqTrainer`"):
        harness.switch_trainer_import(source)


def test_compatibility_rewrites_only_touch_the_file_they_name():
    fixed = harness.make_compatible("trainer_qa.py", TRAINER_QA_LIKE)
    assert "eval_loop = self.evaluation_loop\n" in fixed
    assert "if self.args.debug:" in fixed
    assert "prediction_loop" not in fixed and "tpu_metrics_debug" not in fixed
    assert harness.make_compatible("run_qa.py", TRAINER_QA_LIKE) == TRAINER_QA_LIKE


def _task_folder(root: Path, folder: str, files: dict[str, str]) -> Path:
    path = root / "examples" / "pytorch" / folder
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_locate_accepts_a_checkout_or_its_examples_folders(tmp_path):
    spec = next(s for s in harness.SPECS if s.name == "run_glue")
    folder = _task_folder(tmp_path, "text-classification", {"run_glue.py": GLUE_LIKE})
    for given in (tmp_path, tmp_path / "examples", tmp_path / "examples" / "pytorch"):
        assert harness.locate(given, spec) == folder
    assert harness.locate(tmp_path / "elsewhere", spec) is None
    assert harness.main(["--scripts", str(tmp_path), "--only", "run_qa"]) == 2  # missing: reported, nothing run


def test_run_qa_is_switched_in_trainer_qa_and_both_copies_are_made_compatible(tmp_path):
    spec = next(s for s in harness.SPECS if s.name == "run_qa")
    run_qa = "from trainer_qa import QuestionAnsweringTrainer\nfrom transformers import TrainingArguments\n"
    folder = _task_folder(tmp_path, "question-answering", {"run_qa.py": run_qa, "trainer_qa.py": TRAINER_QA_LIKE})
    for switched in (False, True):
        script = harness.prepare_copy(folder, tmp_path / "copy", spec, switched=switched)
        trainer_qa = (script.parent / "trainer_qa.py").read_text()
        assert script.read_text() == run_qa
        assert (harness.SWITCH_MARK in trainer_qa) is switched
        assert "use_legacy_prediction_loop" not in trainer_qa


def test_the_eight_scripts_and_their_arguments(tmp_path):
    assert [s.name for s in harness.SPECS] == ["run_glue", "run_clm", "run_mlm", "run_ner", "run_swag", "run_qa",
                                             "run_summarization", "run_translation"]
    places = fixtures.Fixtures(bert=tmp_path / "b", gpt2=tmp_path / "g", t5=tmp_path / "t", data=tmp_path / "d")
    for spec in harness.SPECS:
        arguments = spec.arguments(places)
        model = Path(arguments[arguments.index("--model_name_or_path") + 1])
        assert model in (places.bert, places.gpt2, places.t5)
        data = [Path(a) for a in arguments if a.startswith(str(places.data))]
        assert data and all(path.parent == places.data for path in data)
        assert ("--predict_with_generate" in arguments) == (model == places.t5)


def test_fixture_data_is_the_same_bytes_every_time(tmp_path):
    fixtures.write_data(tmp_path / "a")
    fixtures.write_data(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 21
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    squad = json.loads((tmp_path / "a" / "squad_train.json").read_text())["data"]
    for example in squad:  # every answer is where the data says it is
        start = example["answers"]["answer_start"][0]
        answer = example["answers"]["text"][0]
        assert example["context"][start : start + len(answer)] == answer


# ------------------------------------------------------------------------------------------- comparison

def _output(folder: Path, loss: float = 0.5, runtime: float = 1.0, weight: float = 1.0, extra: str | None = None) -> Path:
    from safetensors.torch import save_file

    (folder / "checkpoint-3").mkdir(parents=True)
    state = {"global_step": 3, "logging_steps": 1.0, "log_history": [{"loss": loss, "step": 3}, {"train_runtime": runtime}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    save_file({"w": torch.full((2,), weight)}, str(folder / "checkpoint-3" / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}}, folder / "checkpoint-3" / "optimizer.pt")
    (folder / "predictions.txt").write_text("O B-PER\n")
    if extra:
        (folder / extra).write_text("")
    return folder


def test_identical_runs_compare_equal_whatever_their_wall_clock(tmp_path):
    stock, ours = _output(tmp_path / "a", runtime=1.0), _output(tmp_path / "b", runtime=7.5)
    assert compare.compare_folders(stock, ours) == []
    assert compare.count_files(stock) == 4


@pytest.mark.parametrize("change,expected", [
    (dict(loss=0.5000001), "trainer_state.json: log_history[0].loss: 0.5 != 0.5000001"),
    (dict(weight=-1.0), "checkpoint-3/model.safetensors: w: tensors differ (largest gap 2)"),
    (dict(extra="README.md"), "only in hf_lightning: README.md"),
])
def test_a_difference_is_named_with_its_file_and_place(tmp_path, change, expected):
    assert compare.compare_folders(_output(tmp_path / "a"), _output(tmp_path / "b", **change)) == [expected]


def test_values_are_compared_bitwise_and_with_their_types():
    assert compare.compare_values({"a": 1.0}, {"a": 1}) == "a: float != int"
    assert compare.compare_values(torch.tensor([0.0]), torch.tensor([-0.0])) is not None  # equal as numbers, not as bits
    assert compare.compare_values(torch.tensor(float("nan")), torch.tensor(float("nan"))) is None
    assert compare.compare_values({"a": 1, "b": 2}, {"b": 2, "a": 1}) == "value: keys ['a', 'b'] != ['b', 'a']"
    assert compare.without_wall_clock({"eval_runtime": 1, "eval_loss": 2, "x": [{"train_samples_per_second": 3}]}) == {
        "eval_loss": 2, "x": [{}]}


# ------------------------------------------------------------------------------ the resumed runs (--resume)

FAKE_SCRIPT = """import json, os, sys
from pathlib import Path
if False:
    from transformers import Trainer
args = sys.argv[1:]
out = Path(args[args.index("--output_dir") + 1])
resume = args[args.index("--resume_from_checkpoint") + 1] if "--resume_from_checkpoint" in args else None
switched = "switched to " + "hf_lightning by" in Path(__file__).read_text()  # split: the text itself is not the mark
(out / "checkpoint-3").mkdir(parents=True, exist_ok=True)
(out / "checkpoint-3" / "state.json").write_text(json.dumps({"step": 3}))
result = {"resumed_from": json.loads((Path(resume) / "state.json").read_text()) if resume else None}
if resume and switched and os.environ.get("FAKE_DIFFERS_AFTER_RESUME"):
    result["resumed_by"] = "hf_lightning"
(out / "result.json").write_text(json.dumps(result))
"""


@pytest.mark.parametrize("differs", [False, True])
def test_resume_restarts_both_from_the_stock_checkpoint_and_compares_them(tmp_path, monkeypatch, differs):
    folder = _task_folder(tmp_path / "scripts", "fake-task", {"run_fake.py": FAKE_SCRIPT})
    if differs:
        monkeypatch.setenv("FAKE_DIFFERS_AFTER_RESUME", "1")
    spec = harness.ScriptSpec("run_fake", "fake-task", lambda f: [])
    outcome = harness.check_script(spec, folder, None, tmp_path / "work", sys.executable, 60, [], resume=True)
    assert not outcome.failed and outcome.differences == [] and outcome.resumed
    for name in ("resumed_stock", "resumed_hf_lightning"):  # each got the stock run's checkpoint-3 as its --resume_from_checkpoint
        assert json.loads((tmp_path / "work" / name / "result.json").read_text())["resumed_from"] == {"step": 3}
    if differs:
        assert outcome.resume_differences == ["result.json: value: keys ['resumed_from'] != ['resumed_from', 'resumed_by']"]
        assert not outcome.equal
        assert "resumed from checkpoint-3: DIFFERS result.json" in harness.table([outcome])
    else:
        assert outcome.resume_differences == [] and outcome.equal
        assert "bitwise equal (2 files); resumed from checkpoint-3: bitwise equal (2 files)" in harness.table([outcome])


# --------------------------------------------------------------------------------------- the stand-ins

def test_evaluate_stand_in_scores():
    load = evaluate_shim.load
    assert load("accuracy").compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0]) == {"accuracy": 0.5}
    assert load("mse").compute(predictions=[1.0, 3.0], references=[0.0, 1.0]) == {"mse": 2.5}
    tags = load("seqeval").compute(predictions=[["B-PER", "I-PER", "O", "B-LOC"]], references=[["B-PER", "I-PER", "O", "O"]])
    assert (tags["overall_precision"], tags["overall_recall"], tags["overall_accuracy"]) == (0.5, 1.0, 0.75)
    assert tags["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    rouge = load("rouge").compute(predictions=["the cat sat"], references=["the cat sat"], use_stemmer=True)
    assert rouge == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0}
    assert load("rouge").compute(predictions=["a b"], references=["c d"])["rouge1"] == 0.0
    assert load("sacrebleu").compute(predictions=["a b c d e"], references=[["a b c d e"]])["score"] == 100.0
    assert load("sacrebleu").compute(predictions=["a b"], references=[["c d"]])["score"] == 0.0
    squad = load("squad").compute(predictions=[{"id": "1", "prediction_text": "The Cat"}, {"id": "2", "prediction_text": "big dog"}],
                                  references=[{"id": "1", "answers": {"text": ["cat"]}}, {"id": "2", "answers": {"text": ["dog"]}}])
    assert squad == {"exact_match": 50.0, "f1": pytest.approx(100 * (1 + 2 / 3) / 2)}
    with pytest.raises(ValueError, match="has no metric 'glue'"):
        load("glue")


def test_nltk_stand_in_splits_sentences_and_has_punkt():
    assert nltk_shim.sent_tokenize("the cat sat. the dog ran! ok") == ["the cat sat.", "the dog ran!", "ok"]
    assert nltk_shim.data.find("tokenizers/punkt") == "tokenizers/punkt"
    with pytest.raises(LookupError):
        nltk_shim.data.find("corpora/wordnet")


# ------------------------------------------------------------------------------------------ the real thing

@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_example_scripts_give_bitwise_equal_results_on_hf_lightning(tmp_path, capsys):
    scripts = os.environ.get("HF_LIGHTNING_EXAMPLES")
    if not scripts:
        pytest.skip("set HF_LIGHTNING_EXAMPLES to a transformers checkout (its examples/pytorch scripts are not part of this project)")
    status = harness.main(["--scripts", scripts, "--keep", str(tmp_path), "--resume"])
    report = capsys.readouterr().out
    assert status == 0, report
    assert f"{len(harness.SPECS)}/{len(harness.SPECS)} bitwise equal" in report
    assert report.count("resumed from checkpoint-3: bitwise equal") == len(harness.SPECS), report
