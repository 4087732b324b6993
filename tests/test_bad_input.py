"""Bad input: every case fails (or warns) with a message naming what is wrong and where.

Data files are small copies of the shared task files, broken one way per test; runs use the
tiny random BERT. Property-based tests (hypothesis) throw random bytes and rows at the reader.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, TINY_ENCODER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import gradlab
from gradlab.checkpoint import CheckpointError
from gradlab.cli import main
from gradlab.config import ConfigError, load_config
from gradlab.data import DEFAULT_FILES, DEFAULT_READERS, DataError, DataWarning, read_task_file
from gradlab.inference import evaluate_checkpoint, predict_file
from gradlab.model import EncoderError, load_encoder
from gradlab.store import RunWriter, StoreError, resolve_run_dir

ROWS = 24  # data rows per small task file


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The first ROWS rows of every shared task file."""
    folder = tmp_path_factory.mktemp("data")
    for train, dev in DEFAULT_FILES.values():
        for name in (train, dev):
            with open(DATA_DIR / name, "rb") as source:
                lines = [next(source) for _ in range(ROWS + 1)]
            (folder / name).write_bytes(b"".join(lines))
    return folder


@pytest.fixture
def broken(data_dir, tmp_path):
    """A copy of the data folder with one file rewritten: broken(name, edit) -> folder."""

    def make(name: str, edit) -> Path:
        folder = tmp_path / "data"
        shutil.copytree(data_dir, folder, dirs_exist_ok=True)
        file = folder / name
        file.write_bytes(edit(file.read_bytes()))
        return folder
    return make


def replace_line(number: int, text: bytes):
    """An edit that replaces line ``number`` (1-based; the header is line 1)."""
    def edit(content: bytes) -> bytes:
        lines = content.split(b"\n")
        lines[number - 1] = text
        return b"\n".join(lines)
    return edit


def config(tmp_path, **changes) -> dict:
    values = {
        "name": "bad", "runs_dir": str(tmp_path / "runs"), "encoder": "minilm",
        "tiny_encoder": dict(TINY_ENCODER), "batch_size": 4, "max_length": 24, "steps": 1,
        "probe_every": 0, "eval_batch_size": 32, "save_checkpoints": False,
        "progress": False, "threads": 1,
    }
    values.update(changes)
    return values


def train(tmp_path, **changes):
    return gradlab.train(None, **config(tmp_path, **changes))


# --- task files ---------------------------------------------------------------------------------


def test_malformed_row_is_skipped_with_a_warning_naming_file_and_line(tmp_path, broken):
    folder = broken("ids-sst-train.csv", replace_line(5, b"3\tabc\tone\textra field\t2"))
    with pytest.warns(DataWarning, match=r"ids-sst-train.csv: 1 malformed row\(s\): line 5: "
                                         r"5 fields, expected 4 -- skipped"):
        handle = train(tmp_path, data_dir=str(folder))
    assert handle.load().status == "finished"


def test_malformed_row_refused_with_strict_data(tmp_path, broken):
    folder = broken("quora-dev.csv", replace_line(3, b"only\ttwo"))
    with pytest.raises(DataError, match=r"quora-dev.csv: 1 malformed row\(s\): line 3: 2 fields, "
                                        r"expected 5 \(strict=True\)"):
        train(tmp_path, data_dir=str(folder), strict_data=True)


def test_missing_column(tmp_path, broken):
    folder = broken("sts-train.csv", replace_line(1, b"\tid\tsentence1\tsentence2\tscore"))
    with pytest.raises(DataError, match=r"sts-train.csv: missing column\(s\) \['similarity'\]; "
                                        r"columns found: \['', 'id', 'sentence1', 'sentence2', "
                                        r"'score'\]"):
        train(tmp_path, data_dir=str(folder))


def test_missing_column_error_shows_a_bounded_excerpt_of_a_huge_header(tmp_path, broken):
    folder = broken("sts-train.csv", lambda _: b"x" * 2_000_000)  # 2 MB, no newline
    with pytest.raises(DataError) as err:
        train(tmp_path, data_dir=str(folder))
    message = str(err.value)
    assert len(message) < 500, len(message)
    assert "missing column(s) ['sentence1', 'sentence2', 'similarity', 'id']" in message
    assert f"columns found: ['{'x' * 40}... (2000000 characters)']" in message


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file"), (b"\tid\tsentence\tsentiment\n", "no data rows after the header"),
])
def test_empty_and_header_only_file(tmp_path, broken, content, message):
    folder = broken("ids-sst-dev.csv", lambda _: content)
    with pytest.raises(DataError, match=rf"ids-sst-dev.csv: {message}"):
        train(tmp_path, data_dir=str(folder))


def test_non_utf8_file_names_line_and_byte(tmp_path, broken):
    folder = broken("ids-sst-train.csv", replace_line(4, "2\tx\tcaf\xe9\t1".encode("latin-1")))
    with pytest.raises(DataError, match=r"ids-sst-train.csv: line 4 is not valid UTF-8 \(byte "
                                        r"0xe9 at column 8\)"):
        train(tmp_path, data_dir=str(folder))


@pytest.mark.parametrize(("name", "row", "message"), [
    ("ids-sst-train.csv", b"1\ta\tfine text\t7",
     r"1 invalid 'sentiment' label\(s\), expected an integer in 0..4: line 6: '7'"),
    ("quora-train.csv", b"1\ta\tone?\ttwo?\tyes",
     r"1 invalid 'is_duplicate' label\(s\), expected 0 or 1: line 6: 'yes'"),
    ("sts-dev.csv", b"1\ta\tone\ttwo\t5.5",
     r"1 invalid 'similarity' label\(s\), expected a number in \[0, 5\]: line 6: '5.5'"),
])
def test_label_out_of_range(tmp_path, broken, name, row, message):
    folder = broken(name, replace_line(6, row))
    with pytest.raises(DataError, match=rf"{name}: {message}"):
        train(tmp_path, data_dir=str(folder))


def test_empty_sentence_is_skipped_with_a_warning(tmp_path, broken):
    folder = broken("sts-train.csv", replace_line(2, b"1\ta\t \tsecond sentence\t2.0"))
    with pytest.warns(DataWarning, match=r"sts-train.csv: 1 malformed row\(s\): line 2: empty "
                                         r"sentence1 -- skipped"):
        train(tmp_path, data_dir=str(folder))


def test_very_long_sentences_are_truncated_with_a_count(tmp_path, broken):
    long = " ".join(["word"] * 500).encode()
    folder = broken("ids-sst-train.csv", replace_line(3, b"1\ta\t" + long + b"\t3"))
    with pytest.warns(UserWarning, match=r"task 'sst': (\d+) of 24 training examples are longer "
                                         r"than max_length=24 tokens and are truncated") as record:
        train(tmp_path, data_dir=str(folder))
    counts = [w for w in record if "task 'sst'" in str(w.message)]
    assert len(counts) == 1


def test_missing_task_file_and_data_folder(tmp_path, data_dir):
    folder = tmp_path / "partial"
    shutil.copytree(data_dir, folder)
    (folder / "sts-dev.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"task 'sts': dev file .*sts-dev.csv does not "
                                                r"exist"):
        train(tmp_path, data_dir=str(folder))
    with pytest.raises(FileNotFoundError, match=r"no task data folder found; tried: .*nowhere "
                                                r"\(explicit argument: no such directory\)"):
        train(tmp_path, data_dir=str(tmp_path / "nowhere"))


def test_unknown_task_files_key(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"task_files\['sst'\]: unknown key\(s\) \['colums'\]; "
                                         r"allowed: \['train', 'dev', 'text_columns'"):
        train(tmp_path, data_dir=str(data_dir), task_files={"sst": {"colums": ["x"]}})


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("tasks", ["sst", "nli"], r"tasks: unknown task 'nli'; known tasks: \['para', 'sst', 'sts'\]"),
    ("method", "pcgrd", r"method='pcgrd' is not one of \[.*'pcgrad'"),
    ("schedule", "roundrobin", r"schedule='roundrobin' is not one of \['joint', 'round_robin', "
                               r"'sequential'\]"),
    ("stepz", 3, r"(?s)unknown key 'stepz' \(did you mean 'steps'\?\).*valid keys: name"),
])
def test_unknown_task_method_schedule_or_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        gradlab.train(None, **{**config(tmp_path), key: value})


def test_config_file_errors_name_the_file(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml:\n  - unknown key 'learning_rate'"):
        load_config(unknown)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("steps: [3\n")
    with pytest.raises(ConfigError, match=r"invalid.yaml is not valid YAML"):
        load_config(invalid)


def test_cli_refuses_an_override_without_value(capsys):
    assert main(["train", "--config", "x.yaml", "steps"]) == 2
    assert "override 'steps' is not of the form key=value" in capsys.readouterr().err


def test_bad_method_argument_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"method_args: method 'pcgrad' takes no argument\(s\) "
                                          r"reductoin='mean'; it takes \['reduction', 'seed'\]"):
        train(tmp_path, method="pcgrad", method_args={"reductoin": "mean"},
              data_dir=str(tmp_path / "no-data-needed"))
    assert not (tmp_path / "runs").exists()


# --- encoders -----------------------------------------------------------------------------------


def test_encoder_path_that_does_not_exist(tmp_path):
    # refused with the config, before any folder is made
    with pytest.raises(ConfigError, match=r"encoder='\./no/such/encoder': no such folder"):
        train(tmp_path, encoder="./no/such/encoder", tiny_encoder=None)
    empty = tmp_path / "empty-encoder"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty-encoder': the folder has no config.json"):
        train(tmp_path, encoder=str(empty), tiny_encoder=None)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(EncoderError, match=rf"encoder folder {empty} has no config.json"):
        load_encoder(str(empty))


def test_hub_id_while_offline_says_it_cannot_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match=r"could not load the tokenizer 'nobody/no-such-bert'"
                                           r".*cannot be downloaded \(HF_HUB_OFFLINE is set\)"):
        train(tmp_path, encoder="nobody/no-such-bert", tiny_encoder=None)


# --- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> Path:
    """Two finished runs with checkpoints: 'full' (3 tasks) and 'sst' (SST only)."""
    folder = tmp_path_factory.mktemp("runs")
    common = {**config(folder, save_checkpoints=True, checkpoint_every=1, steps=2),
              "runs_dir": str(folder), "data_dir": str(data_dir), "dev_limit": 8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gradlab.train(None, **{**common, "name": "full"})
        gradlab.train(None, **{**common, "name": "sst", "tasks": ["sst"]})
    return folder


@pytest.fixture
def run_copy(runs, tmp_path):
    def make(name: str = "full") -> Path:
        return Path(shutil.copytree(runs / name, tmp_path / "runs" / name))
    return make


def test_evaluate_refuses_a_checkpoint_of_another_task_set(run_copy, runs):
    run = run_copy()
    shutil.copy(runs / "sst" / "checkpoints" / "last" / "model.safetensors",
                run / "checkpoints" / "last" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit the model its config describes \(a "
                                              r"different model or task set\?\): missing "
                                              r"\['heads.para"):
        evaluate_checkpoint(run / "checkpoints" / "last")


def test_evaluate_refuses_a_checkpoint_of_another_model_size(run_copy):
    run = run_copy()
    file = run / "checkpoints" / "last" / "model.safetensors"
    tensors = load_file(str(file))
    tensors["heads.sst.1.weight"] = torch.zeros(5, 64)
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match=r"does not fit the model: .*heads.sst.1.weight.*"
                                              r"size mismatch|size mismatch.*heads.sst.1.weight"):
        evaluate_checkpoint(run / "checkpoints" / "last")


def test_resume_refuses_a_model_of_another_task_set(run_copy, runs):
    run = run_copy()
    for folder in (run / "checkpoints").iterdir():
        (folder / "model.safetensors").unlink()
        shutil.copy(runs / "sst" / "checkpoints" / "last" / "model.safetensors", folder)
    with pytest.raises(CheckpointError, match=r"cannot restore the model: ValueError: missing "
                                              r"\['heads.para"):
        gradlab.train(load_config(run / "config.yaml"), resume=True,
                      runs_dir=str(run.parent), progress=False)


def test_truncated_safetensors(run_copy):
    run = run_copy()
    file = run / "checkpoints" / "last" / "model.safetensors"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last: model.safetensors is corrupt"):
        evaluate_checkpoint(run / "checkpoints" / "last")
    for folder in (run / "checkpoints").iterdir():  # every checkpoint truncated: no resume
        data = (folder / "train_state.safetensors").read_bytes()
        (folder / "train_state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"no readable checkpoint to resume from: .*"
                                              r"train_state.safetensors is corrupt"):
        gradlab.train(load_config(run / "config.yaml"), resume=True,
                      runs_dir=str(run.parent))


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\xff garbage", r"state.json is corrupt \(not UTF-8 JSON"),
    (b"{not json", r"state.json is corrupt \(not UTF-8 JSON"),
    (b"[1, 2]", r"state.json is corrupt: expected a JSON object, found list"),
    (b'{"format_version": 99}', r"unknown checkpoint format version 99"),
])
def test_garbage_state_json(run_copy, content, message):
    run = run_copy()
    (run / "checkpoints" / "last" / "state.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        evaluate_checkpoint(run / "checkpoints" / "last")


def test_state_json_of_the_wrong_structure_names_the_part(run_copy):
    run = run_copy()
    for folder in (run / "checkpoints").iterdir():
        state = json.loads((folder / "state.json").read_text())
        state["batchers"] = {"sst": {"epoch": -3, "position": 0}}
        (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"last: cannot restore the data positions: "
                                              r"ValueError: state_dict needs epoch >= 0 .*found "
                                              r"epoch=-3"):
        gradlab.train(load_config(run / "config.yaml"), resume=True,
                      runs_dir=str(run.parent), progress=False)


def test_checkpoint_missing_a_file(run_copy):
    run = run_copy()
    (run / "checkpoints" / "last" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"last lacks \['model.safetensors'\]"):
        evaluate_checkpoint(run / "checkpoints" / "last")
    for folder in (run / "checkpoints").iterdir():
        (folder / "train_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no readable checkpoint to resume from: .*step-2 "
                                              r"lacks \['train_state.safetensors'\]"):
        gradlab.train(load_config(run / "config.yaml"), resume=True, runs_dir=str(run.parent))


def test_evaluate_refuses_overrides_that_change_the_model(runs):
    with pytest.raises(ValueError, match=r"overrides \['tasks'\] would change the model"):
        evaluate_checkpoint(runs / "full", ["tasks=[sst]"])


def test_predict_refuses_a_task_the_checkpoint_lacks(runs, data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"task 'sts' is not one of the checkpoint's tasks "
                                         r"\['sst'\]"):
        predict_file(runs / "sst", "sts", data_dir / "sts-dev.csv", tmp_path / "p.tsv")


def test_predict_refuses_to_overwrite_its_input(runs, data_dir, tmp_path):
    source = tmp_path / "in.csv"
    shutil.copy(data_dir / "ids-sst-dev.csv", source)
    before = source.read_bytes()
    for out in (source, tmp_path / "." / "in.csv"):
        with pytest.raises(ValueError, match=r"the output file .*in.csv is the input file "
                                             r".*in.csv: the predictions would overwrite it"):
            predict_file(runs / "full", "sst", source, out)
    link = tmp_path / "link.csv"
    link.symlink_to(source)
    with pytest.raises(ValueError, match="the predictions would overwrite it"):
        predict_file(runs / "full", "sst", source, link)
    assert source.read_bytes() == before


def test_predict_refuses_duplicate_ids_naming_them_and_their_lines(runs, data_dir, tmp_path):
    lines = (data_dir / "ids-sst-dev.csv").read_bytes().split(b"\n")
    source = tmp_path / "dup.csv"
    source.write_bytes(b"\n".join([*lines[:6], lines[2], lines[4], *lines[6:]]))
    first, second = (lines[n].split(b"\t")[1].decode() for n in (2, 4))
    with pytest.raises(DataError, match=rf"dup.csv: 2 id\(s\) occur more than once, so the "
                                        rf"predictions could not be told apart: '{first}' on "
                                        rf"lines 3, 7; '{second}' on lines 5, 8"):
        predict_file(runs / "full", "sst", source, tmp_path / "p.tsv")
    assert not (tmp_path / "p.tsv").exists()


def test_encoder_folder_with_only_pickled_weights_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, vocab_size=100))
    # transformers 5 writes safetensors even with safe_serialization=False: pickle by hand
    bert.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    (tmp_path / "pickled" / "model.safetensors").unlink(missing_ok=True)
    torch.save(bert.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(EncoderError, match=r"pickled holds no safetensors weights "
                                           r"\(model.safetensors\); found \['pytorch_model.bin'\]"
                                           r": gradlab loads safetensors only"):
        load_encoder(str(tmp_path / "pickled"))
    bert.save_pretrained(tmp_path / "safe")  # safetensors: loads
    assert load_encoder(str(tmp_path / "safe")).config.hidden_size == 32


def test_evaluate_refuses_a_checkpoint_with_nan_parameters(run_copy):
    run = run_copy()
    file = run / "checkpoints" / "last" / "model.safetensors"
    tensors = load_file(str(file))
    tensors["heads.sst.1.weight"][0, 0] = float("nan")
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match=r"last: 1 parameter tensor\(s\) hold NaN or "
                                              r"infinite values \(heads.sst.1.weight\)"):
        evaluate_checkpoint(run / "checkpoints" / "last")


def test_undefined_metrics_are_null_in_strict_json(run_copy, tmp_path, capsys):
    run = run_copy()
    file = run / "checkpoints" / "last" / "model.safetensors"
    tensors = load_file(str(file))
    for name in [n for n in tensors if n.startswith("heads.sts.")]:
        tensors[name] = torch.zeros_like(tensors[name])  # constant STS predictions
    save_file(tensors, str(file))
    out = tmp_path / "metrics.json"
    with pytest.warns(UserWarning, match=r"undefined metric\(s\) sts.pearson, sts.spearman, "
                                         r"overall.mean, overall.score .*reported as null"):
        assert main(["evaluate", str(run / "checkpoints" / "last"), "--json", str(out)]) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in strict JSON")
    metrics = json.loads(out.read_text(), parse_constant=refuse)
    assert metrics["sts"] == {"pearson": None, "spearman": None}
    assert metrics["overall"]["mean"] is None
    assert json.loads(capsys.readouterr().out, parse_constant=refuse) == metrics


# --- run stores ---------------------------------------------------------------------------------


def test_corrupt_run_store_names_the_file(run_copy):
    run = run_copy()
    store = run / "run.sqlite"
    for extra in run.glob("run.sqlite-*"):
        extra.unlink()
    store.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=rf"{store} is corrupt or not a SQLite database"):
        gradlab.load_run(run)
    store.write_bytes(b"")
    with pytest.raises(StoreError, match=rf"{store} is not a gradlab run store"):
        gradlab.load_run(run)


def test_resume_with_a_corrupt_store_names_it(run_copy, capsys):
    run = run_copy()
    for extra in run.glob("run.sqlite-*"):
        extra.unlink()
    (run / "run.sqlite").write_bytes(b"\x00garbage" * 512)
    assert main(["train", "--resume", str(run), "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "gradlab train: error:" in err and str(run / "run.sqlite") in err


def test_full_disk_while_writing_the_store(tmp_path):
    writer = RunWriter(tmp_path / "full", name="full", config={}, tasks=["sst", "para"],
                       blocks=[("layer.0", 4)], method="sum", seed=0, schedule="joint",
                       commit_every=10_000, commit_seconds=3600)
    writer.log_scalars(0, {"loss": 0.5}, task="sst")
    writer.flush()
    pages = writer._conn.execute("PRAGMA page_count").fetchone()[0]
    writer._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    for step in range(1, 400):
        writer.log_scalars(step, {"loss": 0.5, "a_long_scalar_name" * 4: 1.0}, task="sst")
    with pytest.raises(StoreError, match=rf"could not write \d+ rows to {tmp_path}/full/"
                                         r"run.sqlite: database or disk is full"):
        writer.flush()
    with pytest.raises(StoreError, match="database or disk is full"):
        writer.close("failed")  # still reports it, and releases the file
    assert writer.closed
    assert gradlab.load_run(tmp_path / "full").losses()["step"].tolist() == [0]  # kept


# --- run folders --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ""])
def test_run_name_that_would_escape_the_runs_folder(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"name={name!r} must be a plain folder name"):
        train(tmp_path, name=name)
    with pytest.raises(ValueError, match=r"invalid run name"):
        resolve_run_dir(tmp_path / "runs", name)
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, monkeypatch):
    import gradlab.build as build

    monkeypatch.setattr(build, "build_model", lambda *a, **k: pytest.fail("loaded the model"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match=rf"cannot create the runs folder {blocker}/runs: "
                                      rf"{blocker} is a file, not a folder"):
        train(tmp_path, runs_dir=str(blocker / "runs"))


def test_cli_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "cannot resume: the run folder" in capsys.readouterr().err
    (tmp_path / "not-a-run").mkdir()
    assert main(["train", "--resume", str(tmp_path / "not-a-run")]) == 2
    assert "is not a run folder (it has no config.yaml)" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--config", "x.yaml"]) == 2
    assert "do not pass --config as well" in capsys.readouterr().err


# --- property-based tests of the reader -------------------------------------------------------

_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(task=st.sampled_from(sorted(DEFAULT_READERS)), content=st.binary(max_size=400))
def test_reader_on_arbitrary_bytes_fails_only_with_a_data_error(tmp_path, task, content):
    header = "\t".join(["", "id", *DEFAULT_READERS[task].text_columns,
                        DEFAULT_READERS[task].label_column]).encode()
    for data in (content, header + b"\n" + content):
        file = tmp_path / "random.csv"
        file.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            try:
                examples = read_task_file(file, DEFAULT_READERS[task], task=task)
            except DataError as err:
                assert str(file) in str(err)
                continue
        assert len(examples) == len(examples.labels) == len(examples.texts) >= 1


_WORD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
                min_size=1, max_size=8)
_BAD_ROWS = st.sampled_from(["", "only one field", "a\tb", "1\tid\t \t3", "1\tid\ttext\t",
                             "1\tid\ttext\t2\textra"])


@_SETTINGS
@given(rows=st.lists(st.one_of(st.tuples(_WORD, st.integers(0, 4)), _BAD_ROWS), min_size=1,
                     max_size=20))
def test_reader_skips_exactly_the_malformed_rows(tmp_path, rows):
    lines = ["\tid\tsentence\tsentiment"]
    expected = []
    for row in rows:
        if isinstance(row, tuple):
            expected.append((len(lines) + 1, row))
            lines.append(f"{len(lines)}\tid{len(lines)}\t{row[0]}\t{row[1]}")
        else:
            lines.append(row)
    file = tmp_path / "sst.csv"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad_lines = [n for n in range(2, len(lines) + 1) if n not in {e[0] for e in expected}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            examples = read_task_file(file, DEFAULT_READERS["sst"], task="sst")
        except DataError as err:
            assert not expected and "no valid rows" in str(err)
            return
    assert examples.line_numbers == [n for n, _ in expected]
    assert [t[0] for t in examples.texts] == [r[0] for _, r in expected]
    np.testing.assert_array_equal(examples.labels, [r[1] for _, r in expected])
    assert [n for n, _ in examples.skipped] == bad_lines
    if bad_lines:
        (warning,) = [w for w in caught if issubclass(w.category, DataWarning)]
        assert f"line {bad_lines[0]}:" in str(warning.message)


@_SETTINGS
@given(task=st.sampled_from(sorted(DEFAULT_READERS)), line=st.integers(0, 5),
       label=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-99, 99),
                       st.text(max_size=5)))
def test_reader_refuses_every_out_of_range_label_naming_its_line(tmp_path, task, line, label):
    spec = DEFAULT_READERS[task]
    text = str(label).replace("\t", " ").replace("\n", " ").replace("\r", " ")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    lo, hi = spec.label_range
    valid = {"class": value == value and value.is_integer() and lo <= value <= hi,
             "binary": value in (lo, hi), "regression": lo <= value <= hi}[spec.label_kind]
    if not text.strip():
        return  # an empty label is a malformed row, not a bad label
    rows = [["r", "t", "t2"][: 1 + len(spec.text_columns)] + ["1"] for _ in range(6)]
    rows[line][-1] = text
    lines = ["\t".join(["", "id", *spec.text_columns, spec.label_column])]
    lines += ["\t".join([str(i), f"id{i}", *[f"text {i}"] * len(spec.text_columns), r[-1]])
              for i, r in enumerate(rows)]
    file = tmp_path / "labels.csv"
    file.write_text("\n".join(lines), encoding="utf-8")
    if valid:
        read_task_file(file, spec, task=task)
        return
    with pytest.raises(DataError, match=rf"line {line + 2}: "):
        read_task_file(file, spec, task=task)


def test_a_run_that_fails_before_its_store_leaves_no_folder(tmp_path):
    """So the same command, fixed, can run again without --resume."""
    with pytest.raises(FileNotFoundError):
        train(tmp_path, data_dir=str(tmp_path / "nowhere"))
    assert not (tmp_path / "runs" / "bad").exists()
