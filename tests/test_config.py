"""Config: defaults -> YAML -> key=value overrides merged, then validated once; unknown keys
and bad values listed at once; renamed keys read with a warning; safe YAML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA_DIR, ROOT
from safetensors.torch import load_file

from gradlab.cli import main
from gradlab.config import (
    ConfigError,
    TrainConfig,
    config_keys,
    load_config,
    parse_overrides,
    replace,
    save_config,
    to_dict,
)
from gradlab.data import DEFAULT_FILES
from gradlab.inference import evaluate_checkpoint
from gradlab.methods import METHODS
from gradlab.run import load_run
from gradlab.training import train


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["steps=10", "method=pcgrad", "lr=1e-4", "tasks=[sst, sts]",
                             "max_grad_norm=null", 'method_args={reduction: mean}'])
    assert cfg.steps == 10 and cfg.method == "pcgrad" and cfg.lr == 1e-4
    assert cfg.tasks == ["sst", "sts"] and cfg.max_grad_norm is None
    assert cfg.method_args == {"reduction": "mean"}


def test_unknown_keys_are_listed_together_with_valid_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("stepz: 3\nmethod: sum\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["bogus=1"])
    text = str(err.value)
    for key in ("stepz", "learning_rate", "bogus"):
        assert repr(key) in text
    assert "did you mean 'steps'" in text and "valid keys:" in text and str(path) in text


def test_bad_values_are_listed_together():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=nope", "schedule=sometimes", "steps=0", "tasks=[sst, xyz]",
                           "name=../escape"])
    text = str(err.value)
    assert "5 problem(s)" in text
    for fragment in ("method='nope'", "schedule='sometimes'", "steps=0", "'xyz'", "name="):
        assert fragment in text


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(None, ["steps=7", "tiny_encoder={hidden_size: 32}"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_every_field_has_a_default():
    assert TrainConfig() is not None
    assert "method" in config_keys() and "probe_every" in config_keys()


# --- one parse: file + overrides merged, then validated ------------------------------------------

AUX_CONFIG = ROOT / "configs" / "aux_task.yaml"


def aux_data_dir(folder: Path) -> Path:
    """A data folder for configs/aux_task.yaml: the shared task files (linked, not copied)
    and a small CoLA-like binary task."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (n for pair in DEFAULT_FILES.values() for n in pair):
        (folder / name).symlink_to(DATA_DIR / name)
    rows = ["sentence\tlabel"] + [f"the sentence number {i} is {'fine' if i % 2 else 'odd'}"
                                  f"\t{i % 2}" for i in range(40)]
    for split in ("train", "dev"):
        (folder / f"cola-{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_overrides_are_validated_with_the_file_not_the_defaults():
    cfg = load_config(AUX_CONFIG, ["tasks=[sst,cola]"])
    assert cfg.tasks == ["sst", "cola"] and "cola" in cfg.aux_tasks
    with pytest.raises(ConfigError, match="unknown task 'cola'"):
        load_config(None, ["tasks=[sst,cola]"])  # without the file there is no cola


def test_file_and_override_problems_are_listed_together(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("steps: 0\nsingle_head: deep\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["method=nope", "oops", "pair_head=3"])
    assert err.value.problems == [
        "override 'oops' is not of the form key=value",
        "pair_head=3 must be of type str",
        "single_head='deep' is not one of ['linear', 'mlp']",
        f"method='nope' is not one of {sorted(METHODS)}",
        "steps=0 must be an integer >= 1",
    ]


def test_one_override_parser():
    assert parse_overrides(["steps=10", "tasks=[sst, sts]", "lr=1e-4", "data_dir=",
                            "name=a=b"]) == {"steps": 10, "tasks": ["sst", "sts"], "lr": 1e-4,
                                             "data_dir": None, "name": "a=b"}
    assert parse_overrides({"steps": 3}) == {"steps": 3} and parse_overrides(None) == {}
    with pytest.raises(ConfigError) as err:
        parse_overrides(["steps", "=3", "ok=1"])
    assert len(err.value.problems) == 2
    with pytest.raises(TypeError, match="list of 'key=value' items"):
        parse_overrides("steps=3")


def test_replace_validates_the_result():
    cfg = replace(TrainConfig(), steps=5, sts_head="cross")
    assert (cfg.steps, cfg.sts_head) == (5, "cross")
    with pytest.raises(ConfigError, match="steps=0"):
        replace(cfg, steps=0)


def test_renamed_keys_are_read_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("sst_head: mlp\nsts_loss: pearson\n")
    with pytest.warns(FutureWarning) as record:
        cfg = load_config(path)
    assert [str(w.message).split(": ", 1)[1] for w in record] == [
        "config key 'sst_head' is deprecated; it is read as 'single_head'",
        "config key 'sts_loss' is deprecated; it is read as 'regression_loss'"]
    assert (cfg.single_head, cfg.regression_loss) == ("mlp", "pearson")
    assert "sst_head" not in to_dict(cfg) and "sts_loss" not in to_dict(cfg)
    with pytest.warns(FutureWarning):
        assert load_config(None, ["sst_head=mlp"]).single_head == "mlp"
        assert replace(cfg, sts_loss="mse").regression_loss == "mse"
        assert load_config(None, {"sst_head": "mlp", "single_head": "mlp"}).single_head == "mlp"
    with pytest.raises(ConfigError, match=r"sst_head='mlp' \(the deprecated name of "
                                          r"'single_head'\) contradicts single_head='linear'"):
        load_config(None, {"sst_head": "mlp", "single_head": "linear"})


def test_cli_trains_the_aux_recipe_with_a_task_override(tmp_path, tiny_overrides, capsys):
    """`gradlab train --config configs/aux_task.yaml tasks=[sst,cola]`: the override names a
    task the file defines."""
    data = aux_data_dir(tmp_path / "data")
    args = [f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in {**tiny_overrides, "steps": 3, "eval_every": 0}.items()]
    assert main(["train", "--config", str(AUX_CONFIG), "tasks=[sst,cola]",
                 f"data_dir={data}", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["metrics"]) == {"sst", "cola", "overall"}
    run = load_run(out["run"])
    assert run.tasks == ["sst", "cola"] and run.status == "finished"


def old_config(cfg: TrainConfig | dict) -> dict:
    """A config as gradlab wrote it before single_head, regression_loss, drop_last and
    tokenization_cache."""
    values = to_dict(cfg) if isinstance(cfg, TrainConfig) else dict(cfg)
    renames = {"single_head": "sst_head", "regression_loss": "sts_loss"}
    values = {renames.get(k, k): v for k, v in values.items()}
    return {k: v for k, v in values.items() if k not in ("drop_last", "tokenization_cache")}


def test_run_folders_of_earlier_versions_resume_and_evaluate(tmp_path, tiny_overrides):
    """A run saved with the old keys sst_head / sts_loss resumes (ending as the
    uninterrupted run) and evaluates."""
    values = {**tiny_overrides, "name": "old", "steps": 4, "checkpoint_every": 2,
              "eval_every": 0, "single_head": "mlp", "regression_loss": "pearson"}
    handle = train(None, **values)
    run = handle.path
    final = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    # write the folder as an earlier version did: old key names, no newer keys
    (run / "config.yaml").write_text(yaml.safe_dump(old_config(load_config(
        run / "config.yaml")), sort_keys=False))
    for file in (run / "checkpoints").glob("*/state.json"):
        state = json.loads(file.read_text())
        state["config"] = old_config(state["config"])
        file.write_text(json.dumps(state))
    assert "single_head" not in (run / "checkpoints" / "step-2" / "state.json").read_text()
    with pytest.warns(FutureWarning, match="is deprecated"):
        metrics = evaluate_checkpoint(run / "checkpoints" / "last")
    assert metrics["sst"] == pytest.approx(handle.metrics["sst"])
    for kind in ("last", "best", "step-4"):
        shutil.rmtree(run / "checkpoints" / kind, ignore_errors=True)
    with pytest.warns(FutureWarning, match="is deprecated"):
        cfg = load_config(run / "config.yaml")
    resumed = train(cfg, resume=True)  # from step 2
    assert resumed.load().status == "finished"
    again = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(again[k], final[k]) for k in final)


def test_module_examples_run():
    import doctest

    from gradlab import config, safe_yaml

    result = doctest.testmod(config)
    assert result.failed == 0 and result.attempted >= 4
    result = doctest.testmod(safe_yaml)
    assert result.failed == 0 and result.attempted == 1


# --- every key's type and range (issue 14, item 6) ---------------------------------------------

# (override, the one problem it gives); each of these raised a TypeError or ValueError deep in
# the run, or trained with a wrong value, before the config checked it
BAD_VALUES = [
    ("method_args={bogus: 1}", "method_args: method 'sum' takes no argument(s) bogus=1; "
                               "it takes []"),
    ("eda_args={bogus: 3}", "eda_args: unknown argument(s) bogus=3; EDA takes ['alpha_sr', "
                            "'alpha_ri', 'alpha_rs', 'p_rd', 'n_aug']"),
    ("eda_args={n_aug: 0}", "eda_args={'n_aug': 0}: eda: n_aug=0 must be an integer in [1, 1000]"),
    ("threads=-3", "threads=-3 must be an integer >= 1 (or null)"),
    ("tiny_encoder={hidden_size: -5}",
     "tiny_encoder['hidden_size']=-5 must be an integer in [1, 2147483647]"),
    ("tiny_encoder={hidden_size: 33}",
     "tiny_encoder: hidden_size=33 must be a multiple of num_attention_heads=2"),
    ("tiny_encoder={is_decoder: true}", "tiny_encoder: unknown field(s) 'is_decoder'"),
    ("tiny_encoder={vocab_size: 100}", "tiny_encoder['vocab_size']=100 is smaller than the "
                                       "packaged tokenizer's vocabulary (30522 tokens)"),
    ("device=cudaX", "device='cudaX' must be 'cpu', 'cuda' or 'cuda:N'"),
    ("device=cuda:99", "device='cuda:99' but "),
    ("weight_decay=abc", "weight_decay='abc' must be of type float"),
    ("lr=true", "lr=True must be of type float"),
    ("max_grad_norm=.nan", "max_grad_norm=nan must be a finite number"),
    ("encoder_lr=.nan", "encoder_lr=nan must be a finite number"),
    ("lr=.inf", "lr=inf must be a finite number"),
    ("smart_weight={sst: .nan}", "smart_weight['sst']=nan must be a finite number >= 0"),
    ("smart_args={x: 1}", "smart_args: unknown argument x=1; SMART takes ['epsilon', "
                          "'step_size', 'noise_var', 'steps']"),
    ("counterfactual_methods=nonlist", "counterfactual_methods='nonlist' must be of type list"),
    ("counterfactual_methods=[sum, 3]", "counterfactual_methods: unknown method 3"),
    ("seed=-1", "seed=-1 must be an integer in [0, 4294967295]"),
    ("steps=99999999999", "steps=99999999999 must be an integer >= 1 and <= 2147483647"),
    ("head_dropout=1.5", "head_dropout=1.5 must be a number in [0, 1)"),
    ("max_length=600", "max_length=600 is larger than the encoder's position limit 512 "
                       "(max_position_embeddings of 'minilm'); use max_length <= 512"),
    ("encoder=./no/such/folder", "encoder='./no/such/folder': no such folder"),
]


@pytest.mark.parametrize(("override", "problem"), BAD_VALUES,
                         ids=[o for o, _ in BAD_VALUES])
def test_each_bad_value_is_one_problem_naming_key_and_value(override, problem):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert len(err.value.problems) == 1, err.value.problems
    assert err.value.problems[0].startswith(problem)


def test_method_arguments_are_checked_by_building_the_method():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method=pcgrad", "method_args={reduction: median}"])
    assert err.value.problems[0].startswith("method_args={'reduction': 'median'}: ")
    assert "median" in err.value.problems[0]
    assert load_config(None, ["method=pcgrad", "method_args={reduction: mean}"]).method_args \
        == {"reduction": "mean"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without a GPU")
def test_cuda_on_a_cpu_only_torch_is_refused():
    with pytest.raises(ConfigError, match=r"device='cuda' but (this torch is built without CUDA|"
                                          r"no CUDA device is visible); use device=cpu"):
        load_config(None, ["device=cuda"])


def test_tiny_encoder_position_limit_bounds_max_length():
    with pytest.raises(ConfigError, match=r"max_length=128 is larger than the encoder's position "
                                          r"limit 64 .*with tiny_encoder"):
        load_config(None, ["tiny_encoder={max_position_embeddings: 64}", "max_length=128"])
    assert load_config(None, ["tiny_encoder={max_position_embeddings: 64}", "max_length=64"])


def test_bad_values_in_a_yaml_file_are_refused_like_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: true\nmax_grad_norm: .nan\nthreads: -3\nweight_decay: abc\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [p.split("=")[0] for p in err.value.problems] == \
        ["lr", "weight_decay", "max_grad_norm", "threads"]


def test_a_refused_config_reads_no_data_and_creates_no_folder(tmp_path):
    import gradlab

    with pytest.raises(ConfigError, match="weight_decay='abc'"):
        gradlab.train(None, runs_dir=str(tmp_path / "runs"), data_dir=str(tmp_path / "none"),
                      weight_decay="abc", tiny_encoder={"hidden_size": 32})
    assert not (tmp_path / "runs").exists()


def _billion_laughs(indent: str = "") -> str:
    lines = [f'{indent}a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, key in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{indent}{key}: &{key} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("key", ["method_args", "task_files", "eda_args", "tiny_encoder"])
def test_billion_laughs_yaml_is_refused_fast(tmp_path, key):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(f"{key}:\n" + _billion_laughs("  "))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml is not valid YAML: its aliases expand to "
                                          r"more than 100000 values"):
        load_config(path)
    flow = "{" + _billion_laughs().strip().replace("\n", ", ") + "}"
    with pytest.raises(ConfigError, match=rf"{key}: the value is refused: its aliases expand"):
        load_config(None, [f"{key}={flow}"])
    assert time.perf_counter() - t0 < 2.0


def test_small_anchors_are_still_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: &t [sst, sts]\neda_tasks: *t\n")
    assert load_config(path).eda_tasks == ["sst", "sts"]


@pytest.mark.parametrize(("text", "message"), [
    ("tasks: &a [sst, *a]\n", "an alias refers to the value that contains it"),
    ("tasks: " + "[" * 5000 + "]" * 5000 + "\n", "the YAML is nested too deeply"),
])
def test_recursive_and_deeply_nested_yaml_is_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_non_utf8_config_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at "
                                          r"offset 9\)"):
        load_config(path)


def test_non_string_keys_are_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("1: 2\nnull: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems[:2] == ["unknown key 1", "unknown key None"]
