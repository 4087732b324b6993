"""EDA augmentation and the download-free WordNet reader."""

from __future__ import annotations

import doctest
import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from gradlab import augment
from gradlab.augment import (
    LEXICOGRAPHER_FILES,
    WordNetMissingError,
    augment_examples,
    eda,
    find_wordnet,
    lexnames_text,
    wordnet_reader,
    wordnet_synonyms,
)
from gradlab.data import DEFAULT_READERS, TaskExamples

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(),
    reason=f"WordNet 3.0 is not installed in {WORDNET} (apt-get install wordnet-base)")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")

THESAURUS = {"film": ("movie", "picture show"), "good": ("fine",), "funny": ("comic",),
             "friendship": ("friendly relationship",)}


def synonyms(word: str) -> tuple[str, ...]:
    return THESAURUS.get(word, ())


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    if not (WORDNET / "data.noun").is_file():
        pytest.skip(f"WordNet 3.0 is not installed in {WORDNET} (apt-get install wordnet-base)")
    return wordnet_reader(WORDNET, cache_dir=tmp_path_factory.mktemp("cache"))


def test_docstring_example():
    assert doctest.testmod(augment).failed == 0


def test_eda_is_deterministic_for_a_seed_and_returns_n_aug_sentences():
    sentence = "a funny and good film about an unlikely friendship ."
    first = eda(sentence, np.random.default_rng(7), n_aug=9, synonyms=synonyms)
    again = eda(sentence, np.random.default_rng(7), n_aug=9, synonyms=synonyms)
    assert first == again and len(first) == 9
    assert first != eda(sentence, np.random.default_rng(8), n_aug=9, synonyms=synonyms)
    assert all(isinstance(s, str) and s for s in first)


def test_each_operation_alone():
    words = "the film was good and funny to watch".split()

    def only(**alphas):
        args = {"alpha_sr": 0.0, "alpha_ri": 0.0, "alpha_rs": 0.0, "p_rd": 0.0, **alphas}
        return [s.split() for s in eda(" ".join(words), np.random.default_rng(0), n_aug=8,
                                      synonyms=synonyms, **args)]

    for out in only(alpha_sr=0.3):  # n = 2 of the 3 replaceable words (film, good, funny)
        changed = [w for w in words if w in THESAURUS and w not in out]
        assert len(changed) == 2 and "the" in out and "to" in out
    for out in only(alpha_ri=0.3):  # two synonyms inserted, every original word kept
        assert len(out) >= len(words) + 2 and all(w in out for w in words)
    for out in only(alpha_rs=0.3):
        assert sorted(out) == sorted(words)
    for out in only(p_rd=0.5):
        assert 1 <= len(out) <= len(words)
        assert [w for w in words if w in out] == out  # order kept


def test_stop_words_and_non_words_are_never_replaced():
    out = eda("not good !", np.random.default_rng(0), alpha_sr=1.0, alpha_ri=0, alpha_rs=0,
              p_rd=0, n_aug=3, synonyms=lambda w: ("X" + w,))
    assert out == ["not Xgood !"] * 3


def test_eda_edge_cases_and_errors():
    rng = np.random.default_rng(0)
    assert eda("", rng, n_aug=2, synonyms=synonyms) == ["", ""]
    assert eda("film", rng, alpha_sr=0, alpha_ri=0, p_rd=0.9, n_aug=2,
               synonyms=synonyms) == ["film", "film"]
    with pytest.raises(ValueError, match="alpha_sr"):
        eda("x", rng, alpha_sr=1.5)
    with pytest.raises(ValueError, match="n_aug"):
        eda("x", rng, n_aug=0)
    with pytest.raises(ValueError, match="no operation"):
        eda("x", rng, alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0)


def _examples(pair: bool) -> TaskExamples:
    task = "sts" if pair else "sst"
    texts = [("a good film .", "a fine movie .") if pair else ("a good film .",),
             ("funny , not good .", "comic yet bad .") if pair else ("funny , not good .",),
             ("an unlikely friendship", "an odd pair") if pair else ("an unlikely friendship",),
             ("the end", "finis") if pair else ("the end",)]
    labels = np.array([4.0, 2.5, 3.0, 1.0], np.float32) if pair else np.array([3, 1, 2, 0])
    return TaskExamples(task, Path("x.csv"), ["a", "b", "c", "d"], texts, labels, [2, 3, 4, 5],
                        [], DEFAULT_READERS[task], None, (1, 2))


@pytest.mark.parametrize("pair", [False, True])
def test_augment_examples_adds_labelled_copies(pair):
    examples = _examples(pair)
    out = augment_examples(examples, np.random.default_rng(0), 0.5, n_aug=2, synonyms=synonyms)
    assert len(out) == 4 + 2 * 2 and out.source_stat is None
    assert out.ids[:4] == examples.ids and out.texts[:4] == examples.texts
    np.testing.assert_array_equal(out.labels[:4], examples.labels)
    for k in range(4, 8):
        source = examples.ids.index(out.ids[k].split("#eda")[0])
        assert out.labels[k] == examples.labels[source]
        assert out.line_numbers[k] == examples.line_numbers[source]
        assert len(out.texts[k]) == (2 if pair else 1)
    assert out.labels.dtype == examples.labels.dtype
    assert len(examples) == 4  # the input is not modified
    again = augment_examples(examples, np.random.default_rng(0), 0.5, n_aug=2, synonyms=synonyms)
    assert again.texts == out.texts and again.ids == out.ids
    assert len(augment_examples(examples, np.random.default_rng(0), 0.0, synonyms=synonyms)) == 4
    assert len(augment_examples(examples, np.random.default_rng(0), 1.0, synonyms=synonyms)) == 8
    with pytest.raises(ValueError, match="fraction"):
        augment_examples(examples, np.random.default_rng(0), 1.5, synonyms=synonyms)
    with pytest.raises(TypeError, match="TaskExamples"):
        augment_examples(examples.texts, np.random.default_rng(0), 0.5)


def test_augmented_examples_tokenize_without_the_file_cache():
    from gradlab.data import tokenize_texts
    from gradlab.model import load_tokenizer

    examples = _examples(False)
    out = augment_examples(examples, np.random.default_rng(0), 1.0, synonyms=synonyms)
    tokenized = tokenize_texts(out, load_tokenizer("minilm"))
    assert len(tokenized) == 8


def test_lexnames_is_the_documented_table():
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXICOGRAPHER_FILES) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[5] == "05\tnoun.animal\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    assert lines[2] == "02\tadv.all\t4"
    if LEXNAMES_MAN.is_file():  # the manual page wordnet-base installs
        text = gzip.open(LEXNAMES_MAN, "rt").read()
        table = re.findall(r"^(\d\d)\t(\S+)\s*\t", text, flags=re.MULTILINE)
        assert [(int(n), name) for n, name in table] == list(enumerate(LEXICOGRAPHER_FILES))


def test_missing_database_says_what_to_install(tmp_path, monkeypatch):
    with pytest.raises(WordNetMissingError, match="apt-get install wordnet-base") as err:
        find_wordnet(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "no such folder" in str(err.value)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "data.noun").write_text("")
    with pytest.raises(WordNetMissingError, match="lacks"):
        find_wordnet(tmp_path / "partial")
    monkeypatch.setenv("GRADLAB_WORDNET", str(tmp_path / "env"))
    with pytest.raises(WordNetMissingError, match=r"\$GRADLAB_WORDNET"):
        wordnet_reader(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@needs_wordnet
def test_find_wordnet_order(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADLAB_WORDNET", raising=False)
    assert find_wordnet() == WORDNET.resolve()
    monkeypatch.setenv("GRADLAB_WORDNET", str(WORDNET))
    assert find_wordnet() == WORDNET.resolve()
    nested = tmp_path / "WordNet-3.0"
    nested.mkdir()
    (nested / "dict").symlink_to(WORDNET)
    assert find_wordnet(nested) == WORDNET.resolve()


@needs_wordnet
def test_reader_reads_wordnet_offline(reader, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download called"))
    assert reader.synset("dog.n.01").lexname() == "noun.animal"  # the generated lexnames
    assert reader.get_version() == "3.0"
    assert str(Path(reader.root.path)) in [str(p) for p in nltk.data.path]
    movie = wordnet_synonyms("movie", reader)
    assert movie[:2] == ("film", "picture") and "movie" not in movie
    assert "motion picture" in movie  # underscores and hyphens become spaces
    assert wordnet_synonyms("qwzx", reader) == ()
    out = eda("a funny film about friendship", np.random.default_rng(0), alpha_sr=0.5,
              alpha_ri=0, alpha_rs=0, p_rd=0, n_aug=2,
              synonyms=lambda w: wordnet_synonyms(w, reader))
    assert out == eda("a funny film about friendship", np.random.default_rng(0), alpha_sr=0.5,
                      alpha_ri=0, alpha_rs=0, p_rd=0, n_aug=2,
                      synonyms=lambda w: wordnet_synonyms(w, reader))
    assert all(o != "a funny film about friendship" for o in out)


@needs_wordnet
def test_private_folder_is_reused_and_rebuilt_when_stale(reader, tmp_path):
    folder = Path(reader.root.path)
    assert (folder / "lexnames").read_text() == lexnames_text()
    assert not any(p.is_symlink() for p in folder.iterdir())
    stamp = (folder / "data.noun").stat().st_mtime_ns
    assert augment._nltk_folder(WORDNET.resolve(), folder.parent) == folder
    assert (folder / "data.noun").stat().st_mtime_ns == stamp  # reused, not copied again
    (folder / "lexnames").write_text("broken")
    (folder / "manifest.json").write_text("{}")
    assert augment._nltk_folder(WORDNET.resolve(), folder.parent) == folder
    assert (folder / "lexnames").read_text() == lexnames_text()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no leftovers
