"""The Python API (slimkit.verbs): every verb on a tiny model in memory, configs that round-trip to
dicts and fail naming the field, recipe stages that are config dicts, and the README's example."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import slimkit
from compress.errors import SlimkitError
from conftest import TRAIN_TEXT, tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("api") / "train.txt"
    path.write_text(TRAIN_TEXT * 3)
    return str(path)


def _small(**kw) -> slimkit.DistillConfig:
    return slimkit.DistillConfig(**{"tokens": 256, "seq_len": 64, "batch_size": 4, **kw})


# ---- configs --------------------------------------------------------------------------------------

CONFIGS = [
    slimkit.PruneConfig(target_params=0.5, method="magnitude"),
    slimkit.PruneConfig(shape={"layers": 1}, method="block-influence", calib="a.txt", recover="none"),
    slimkit.DistillConfig(tokens=1000, lr=3e-4, logit_cache="cache", sampled_logits=8),
    slimkit.QATPlan("q4_0", (("model.layers.*.mlp.down_proj", "Q8_0"),), init="gptq", calib=("a.txt", "b.txt")),
    slimkit.QATConfig(slimkit.DistillConfig(tokens=64), slimkit.QATPlan("q5_0", learn_scales=True)),
    slimkit.GGUFConfig(type="Q4_K_M", calib=("a.txt",), method="gptq+imatrix", calib_tokens=4096),
    slimkit.GGUFConfig(type="Q4_0", imatrix="m.gguf", validate=False),
    slimkit.OnnxConfig("int4"),
    slimkit.OnnxConfig("int8", 64, validate=False),
    slimkit.ProfileConfig(runtime="llama.cpp", threads=4, env=("OMP_WAIT_POLICY=PASSIVE",)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_configs_round_trip_through_dicts_and_json(cfg):
    import json

    d = cfg.to_dict()
    assert d["version"] == type(cfg).VERSION
    assert type(cfg).from_dict(d) == cfg
    assert type(cfg).from_dict(json.loads(json.dumps(d))) == cfg   # YAML/JSON lists become tuples again
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.anything = 1


@pytest.mark.parametrize("cls, d, field", [
    (slimkit.PruneConfig, {"target_params": 0.5, "method": "magnitude", "align": 0}, "align"),
    (slimkit.PruneConfig, {"target_params": 0.5, "method": "wanda"}, "wanda"),
    (slimkit.PruneConfig, {"target_params": "half"}, "target_params"),
    (slimkit.DistillConfig, {"tokens": 100, "lr": -1.0}, "lr"),
    (slimkit.DistillConfig, {"tokens": "many"}, "tokens"),
    (slimkit.DistillConfig, {"tokens": 100, "precision": "fp8"}, "precision"),
    (slimkit.QATPlan, {"preset": "q9_9"}, "q9_9"),
    (slimkit.QATConfig, {"training": {"tokens": 0}}, "tokens"),
    (slimkit.GGUFConfig, {"type": "Q9_9"}, "Q9_9"),
    (slimkit.GGUFConfig, {"method": "gptq", "type": "Q4_0"}, "--calib"),
    (slimkit.OnnxConfig, {"precision": "int4", "block_size": 48}, "block size"),
    (slimkit.ProfileConfig, {"threads": 0}, "threads"),
])
def test_an_invalid_value_is_a_one_line_error_naming_the_field(cls, d, field):
    with pytest.raises(SlimkitError, match=re.escape(field)) as info:
        cls.from_dict(d)
    assert "\n" not in str(info.value)


def test_unknown_fields_and_versions_are_named():
    with pytest.raises(SlimkitError, match="PruneConfig has no field 'target'"):
        slimkit.PruneConfig.from_dict({"target": 0.5})
    with pytest.raises(SlimkitError, match="DistillConfig version 7"):
        slimkit.DistillConfig.from_dict({"version": 7, "tokens": 5})
    with pytest.raises(SlimkitError, match="slimkit.prune takes a PruneConfig"):
        slimkit.prune(tiny_llama(), {"target_params": 0.5})


# ---- verbs on tiny models in memory ---------------------------------------------------------------

def test_prune_distill_qat_export_in_memory(text, tmp_path, one_thread):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("llama_cpp")
    teacher = tiny_llama(seed=0)
    model, tokenizer = tiny_llama(seed=0)   # a bare torch model + tokenizer work too
    dense = sum(p.numel() for p in model.parameters())
    student = slimkit.prune((model, tokenizer), slimkit.PruneConfig(target_params=0.75, method="magnitude", align=8))
    assert student.model is model and sum(p.numel() for p in model.parameters()) < dense   # pruned in place
    before = {k: v.clone() for k, v in model.state_dict().items()}
    student = slimkit.distill(student, teacher, _small(), data=[text], progress=False)
    assert [s["stage"] for s in student.history["stages"]] == ["prune", "distill"] and student.path is None
    assert any((before[k] != v).any() for k, v in student.model.state_dict().items())   # trained in place
    assert student.history["stages"][-1]["metrics"]["step"] == 1
    quantized = slimkit.qat(student, slimkit.QATConfig(_small(), slimkit.QATPlan("q4_0")), data=[text],
                            out=tmp_path / "qat", progress=False)
    assert quantized.quant is not None and (tmp_path / "qat" / "slimkit.json").is_file()
    res = slimkit.export_gguf(quantized, slimkit.GGUFConfig(validate=False), tmp_path / "qat.gguf")
    assert res.trained and res.type == "Q4_0" and res.path.is_file()


def test_export_onnx_and_profile(tmp_path):
    pytest.importorskip("onnxruntime")
    res = slimkit.export_onnx(tiny_llama(), slimkit.OnnxConfig("fp32", validate=False), tmp_path / "onnx")
    assert (res.path / "model.onnx").is_file()
    gguf = slimkit.export_gguf(tiny_llama(), slimkit.GGUFConfig(type="F16", validate=False), tmp_path / "t.gguf")
    record = slimkit.profile(gguf.path, "raspberry-pi-5")
    assert record["kind"] == "prediction"
    with pytest.raises(SlimkitError, match="unknown device profile|no-such-device"):
        slimkit.profile(gguf.path, "no-such-device")


def test_profile_runtimes_are_the_devices_packages():
    from devices.profile import RUNTIMES
    from slimkit.configs import PROFILE_RUNTIMES

    assert tuple(RUNTIMES) == PROFILE_RUNTIMES


# ---- recipes are config dicts ---------------------------------------------------------------------

def test_a_recipe_stage_maps_onto_its_config(tmp_path):
    from slimkit.recipe import load_recipe, stage_config

    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - load: {source: smollm2-135m-instruct}\n"
                    "  - prune: {target-params: 0.5, method: magnitude, layers: 20}\n"
                    "  - distill: {tokens: 1000, seq-len: 128, lr: 3.0e-4, loss: rkl, data: [a.txt]}\n"
                    "  - qat: {plan: q5_0, tokens: 64, init: gptq, calib: [a.txt]}\n"
                    "  - export-gguf: {type: Q4_K_M, calib: [a.txt], calib-tokens: 4096}\n"
                    "  - export-onnx: {precision: int4, block-size: 64}\n"
                    "  - profile: {devices: [local], threads: 4, repetitions: 3}\n")
    stages = {s.kind: s for s in load_recipe(path).stages}
    with pytest.raises(SlimkitError, match="not both and not neither"):   # PruneConfig's own check
        stage_config(stages["prune"], str(path))
    del stages["prune"].options["layers"]
    assert stage_config(stages["prune"], str(path)) == slimkit.PruneConfig(target_params=0.5, method="magnitude")
    assert stage_config(stages["distill"], str(path)) == slimkit.DistillConfig(tokens=1000, seq_len=128, lr=3e-4)
    qat = stage_config(stages["qat"], str(path))
    assert qat.plan == slimkit.QATPlan("q5_0", init="gptq", calib=("a.txt",)) and qat.training.tokens == 64
    assert stage_config(stages["export-gguf"], str(path)) == slimkit.GGUFConfig(
        type="Q4_K_M", calib=("a.txt",), calib_tokens=4096)
    assert stage_config(stages["export-onnx"], str(path)) == slimkit.OnnxConfig("int4", 64)
    assert stage_config(stages["profile"], str(path)) == slimkit.ProfileConfig(threads=4, repetitions=3)


# ---- the README's example -------------------------------------------------------------------------

def test_the_readme_python_example_runs_on_a_tiny_model(text, tmp_path, monkeypatch, one_thread):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("llama_cpp")
    from compress.checkpoint import save

    readme = (REPO / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "slimkit.prune(" in b)
    save(tiny_llama(seed=0), tmp_path / "teacher")
    code = example.replace('"smollm2-135m-instruct"', repr(str(tmp_path / "teacher")))
    code = code.replace('"train.txt"', repr(text))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the repository's own README
    assert (tmp_path / "student.gguf").is_file() and scope["result"].validation["top1_agreement"] > 0.5
