"""EDA data augmentation: synonym replacement, random insertion, swap and deletion.

EDA (Wei & Zou 2019, https://arxiv.org/abs/1901.11196) makes label-preserving variants of a
sentence with four cheap operations: replace n non-stop words by a WordNet synonym (SR),
insert a synonym of a random word at a random position n times (RI), swap two words n times
(RS), delete each word with probability p (RD); n = max(1, ⌊α · words⌋). Each augmented
sentence applies one operation, as in the reference implementation
(github.com/jasonwei20/eda_nlp); all randomness comes from one ``numpy.random.Generator``,
so a seed fixes every variant.

Unlike the reference, sentences are not lower-cased or stripped of punctuation: the encoder's
WordPiece tokenizer sees punctuation, so stripping it would make every augmented row differ
from the originals in a way that has nothing to do with its meaning. Only purely alphabetic
words take part in SR and RI.

WordNet 3.0 comes from the Debian/Ubuntu package ``wordnet-base`` (``/usr/share/wordnet``);
`wordnet_reader` makes it readable by nltk without any download (see there).

Example (run by the tests; without ``synonyms=`` they come from WordNet):
    >>> rng = np.random.default_rng(0)
    >>> thesaurus = {"film": ("movie",), "good": ("fine", "beneficial")}
    >>> eda("the film is good", rng, n_aug=4, synonyms=lambda w: thesaurus.get(w, ()))
    ['the movie film is good', 'the film is beneficial good', 'the is film good', 'film is good']
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradlab.data import TaskExamples

__all__ = [
    "EDA_ARGS",
    "LEXICOGRAPHER_FILES",
    "STOP_WORDS",
    "WORDNET_APT_COMMAND",
    "WordNetMissingError",
    "augment_examples",
    "check_eda_args",
    "eda",
    "find_wordnet",
    "lexnames_text",
    "wordnet_reader",
    "wordnet_synonyms",
]

WORDNET_APT_COMMAND = "apt-get install wordnet-base"
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")

#: The 45 lexicographer files of WordNet 3.0, numbered 00..44 in this order: the table of
#: the lexnames(5WN) manual page (``man 5 lexnames``). nltk reads it as the ``lexnames``
#: file, which the wordnet-base package does not ship.
LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)  # fmt: skip
#: lexnames(5WN) "Syntactic Category": the third field of each line
SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

_DATABASE_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index")
                        for pos in ("noun", "verb", "adj", "adv")) + tuple(
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
_OPTIONAL_FILES = ("cntlist.rev", "index.sense")  # lemma counts, sense keys: copied if present

#: The reference implementation's stop words: never replaced by a synonym. They include the
#: negations "no", "nor", "not", which would flip a sentiment label.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom this
that these those am is are was were be been being have has had having do does did doing a an
the and but if or because as until while of at by for with about against between into through
during before after above below to from up down in out on off over under again further then
once here there when where why how all any both each few more most other some such no nor not
only own same so than too very s t can will just don should now
""".split())


class WordNetMissingError(FileNotFoundError):
    """The WordNet 3.0 database was not found; says where gradlab looked and what to install."""


# ---------------------------------------------------------------------------------------------
# EDA
# ---------------------------------------------------------------------------------------------


def eda(sentence: str, rng: np.random.Generator, alpha_sr: float = 0.1, alpha_ri: float = 0.1,
        alpha_rs: float = 0.1, p_rd: float = 0.1, n_aug: int = 1, *,
        synonyms: Callable[[str], Sequence[str]] | None = None) -> list[str]:
    """``n_aug`` augmented versions of ``sentence`` (the original is not included).

    alpha_sr, alpha_ri, alpha_rs: share of the words changed by synonym replacement, random
    insertion and random swap; p_rd: probability of deleting each word. An operation with
    0 is not used. As in the reference, ⌊n_aug / 4⌋ + 1 sentences are made per operation
    (at least ⌈n_aug / operations used⌉), shuffled, and the first ``n_aug`` kept.
    synonyms: word -> synonyms (default: WordNet's, `wordnet_synonyms`). A sentence
    without words comes back unchanged.
    """
    check_eda_args(alpha_sr, alpha_ri, alpha_rs, p_rd, n_aug)
    words = sentence.split()
    if not words:
        return [sentence] * n_aug
    synonyms = synonyms or _wordnet_synonyms()
    n_words = len(words)
    active = sum(a > 0 for a in (alpha_sr, alpha_ri, alpha_rs, p_rd))
    per_operation = max(n_aug // 4 + 1, -(-n_aug // active))  # enough with fewer operations
    made: list[list[str]] = []
    for alpha, operation in ((alpha_sr, _synonym_replacement), (alpha_ri, _random_insertion),
                             (alpha_rs, _random_swap)):
        if alpha > 0:
            n = max(1, int(alpha * n_words))
            made += [operation(words, n, rng, synonyms) for _ in range(per_operation)]
    if p_rd > 0:
        made += [_random_deletion(words, p_rd, rng) for _ in range(per_operation)]
    order = rng.permutation(len(made))[:n_aug]
    return [" ".join(made[i]) for i in order]


#: EDA's arguments (the config's ``eda_args`` keys) and their defaults
EDA_ARGS = {name: p.default for name, p in inspect.signature(eda).parameters.items()
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty}
_MAX_AUG = 1000  # copies per chosen row


def augment_examples(examples: TaskExamples, rng: np.random.Generator, fraction: float, *,
                     alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1,
                     p_rd: float = 0.1, n_aug: int = 1,
                     synonyms: Callable[[str], Sequence[str]] | None = None) -> TaskExamples:
    """``examples`` plus ``n_aug`` EDA copies of a random ``fraction`` of its rows.

    The copies keep their row's label, follow the originals (N + round(fraction N) n_aug
    rows) and get ids ``"<id>#eda<k>"`` and their source row's line number. Each sentence of a
    pair is augmented on its own. The result has no ``source_stat``, so the tokenization
    cache (keyed by the file) never mistakes it for the file's plain rows.
    """
    if not isinstance(examples, TaskExamples):
        raise TypeError(f"examples must be gradlab.data.TaskExamples, found "
                        f"{type(examples).__name__}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or \
            not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], found {fraction!r}")
    check_eda_args(alpha_sr, alpha_ri, alpha_rs, p_rd, n_aug)
    n = len(examples)
    chosen = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    kwargs = {"alpha_sr": alpha_sr, "alpha_ri": alpha_ri, "alpha_rs": alpha_rs, "p_rd": p_rd,
              "n_aug": n_aug, "synonyms": synonyms or _wordnet_synonyms()}
    ids, texts, rows = [], [], []
    for i in chosen:
        variants = [eda(text, rng, **kwargs) for text in examples.texts[i]]  # per column
        for k, new in enumerate(zip(*variants, strict=True)):
            ids.append(f"{examples.ids[i]}#eda{k}")
            texts.append(tuple(new))
            rows.append(i)
    rows_index = np.asarray(rows, dtype=np.int64)
    return dataclasses.replace(
        examples,
        ids=[*examples.ids, *ids],
        texts=[*examples.texts, *texts],
        labels=np.concatenate([examples.labels, examples.labels[rows_index]]),
        line_numbers=[*examples.line_numbers, *(examples.line_numbers[i] for i in rows)],
        skipped=list(examples.skipped),
        source_stat=None,
    )


def _synonym_replacement(words: list[str], n: int, rng: np.random.Generator,
                         synonyms: Callable[[str], Sequence[str]]) -> list[str]:
    """Replace every occurrence of up to n distinct non-stop words by one of its synonyms."""
    candidates = list(dict.fromkeys(w for w in words if _replaceable(w)))
    replaced, out = 0, list(words)
    for j in rng.permutation(len(candidates)):
        word = candidates[j]
        options = synonyms(word.lower())
        if not options:
            continue
        choice = options[rng.integers(len(options))]
        out = [choice if w == word else w for w in out]
        replaced += 1
        if replaced >= n:
            break
    return " ".join(out).split()  # multi-word synonyms become several words


def _random_insertion(words: list[str], n: int, rng: np.random.Generator,
                      synonyms: Callable[[str], Sequence[str]]) -> list[str]:
    """n times: a synonym of a random word, inserted at a random position (10 tries each)."""
    out = list(words)
    for _ in range(n):
        for _try in range(10):
            word = out[rng.integers(len(out))]
            options = synonyms(word.lower()) if _replaceable(word) else ()
            if options:
                out.insert(int(rng.integers(len(out) + 1)), options[rng.integers(len(options))])
                break
    return " ".join(out).split()


def _random_swap(words: list[str], n: int, rng: np.random.Generator,
                 _synonyms: Any = None) -> list[str]:
    """n times: swap two different positions (a one-word sentence stays as it is)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def _random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Delete each word with probability p; at least one word survives."""
    if len(words) == 1:
        return list(words)
    keep = rng.random(len(words)) > p
    if not keep.any():
        return [words[rng.integers(len(words))]]
    return [w for w, k in zip(words, keep, strict=True) if k]


def _replaceable(word: str) -> bool:
    return word.isalpha() and word.lower() not in STOP_WORDS


def check_eda_args(alpha_sr, alpha_ri, alpha_rs, p_rd, n_aug) -> None:
    """ValueError naming every EDA argument out of range (the config checks call it too)."""
    problems = []
    values = {"alpha_sr": alpha_sr, "alpha_ri": alpha_ri, "alpha_rs": alpha_rs, "p_rd": p_rd}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            problems.append(f"{name}={value!r} must be a number in [0, 1]")
    if not problems and not any(values.values()):
        problems.append("alpha_sr, alpha_ri, alpha_rs and p_rd are all 0: no operation left")
    if isinstance(n_aug, bool) or not isinstance(n_aug, int) or not 1 <= n_aug <= _MAX_AUG:
        problems.append(f"n_aug={n_aug!r} must be an integer in [1, {_MAX_AUG}]")
    if problems:
        raise ValueError("eda: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# WordNet without downloads
# ---------------------------------------------------------------------------------------------


def wordnet_synonyms(word: str, reader: Any = None) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (lower case, letters and spaces only, without the word),
    in WordNet's order: deterministic, unlike the reference's set. Cached per word.

    reader: an nltk WordNet reader (default: `wordnet_reader()`).
    """
    return _synonyms(reader if reader is not None else wordnet_reader(), word)


def _wordnet_synonyms() -> Callable[[str], tuple[str, ...]]:
    """word -> WordNet synonyms, with the reader looked up once."""
    return functools.partial(_synonyms, wordnet_reader())


@functools.lru_cache(maxsize=200_000)
def _synonyms(reader: Any, word: str) -> tuple[str, ...]:
    found = []
    for synset in reader.synsets(word):
        for lemma in synset.lemmas():
            name = lemma.name().replace("_", " ").replace("-", " ").lower()
            name = " ".join("".join(c for c in name if c == " " or "a" <= c <= "z").split())
            if name and name != word:
                found.append(name)
    return tuple(dict.fromkeys(found))


def wordnet_reader(path: str | os.PathLike[str] | None = None, *,
                   cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """An nltk WordNet 3.0 reader of the local database; never downloads anything.

    The database is the first of: ``path``, ``$GRADLAB_WORDNET``, ``/usr/share/wordnet``
    (Debian/Ubuntu package wordnet-base; a folder with a ``dict`` subfolder also works).
    nltk needs a ``lexnames`` file that package lacks, and recent nltk reads only files
    physically inside a folder on ``nltk.data.path`` (it refuses symlinks and hard links that
    lead elsewhere). So the database files are copied once (about 28 MB) into a private folder
    ``<cache_dir or $XDG_CACHE_HOME or ~/.cache>/gradlab/wordnet/wn30-<hash>`` with a
    ``lexnames`` generated from `LEXICOGRAPHER_FILES`; that folder is appended to
    ``nltk.data.path``. The copy is rebuilt when the database files change. Raises
    `WordNetMissingError` naming the places tried and the package to install.
    """
    source = find_wordnet(path)
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    return _reader(source, root.expanduser().resolve())


def find_wordnet(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the WordNet 3.0 database files (data.noun, index.noun, ...)."""
    if path is not None:
        candidates = [(Path(path), "path argument")]
    elif os.environ.get("GRADLAB_WORDNET"):
        candidates = [(Path(os.environ["GRADLAB_WORDNET"]), "$GRADLAB_WORDNET")]
    else:
        candidates = [(DEFAULT_WORDNET_DIR, "default of the wordnet-base package")]
    tried = []
    for folder, origin in candidates:
        for candidate in (folder, folder / "dict"):
            missing = [f for f in _DATABASE_FILES if not (candidate / f).is_file()]
            if not missing:
                return candidate.resolve()
            if candidate == folder:
                tried.append(f"{folder} ({origin}: " + (
                    "no such folder" if not folder.is_dir() else f"lacks {missing}") + ")")
    raise WordNetMissingError(
        "the WordNet 3.0 database was not found; looked in " + "; ".join(tried)
        + f". Install it with `{WORDNET_APT_COMMAND}` (Debian/Ubuntu, puts it in "
        f"{DEFAULT_WORDNET_DIR}) or set GRADLAB_WORDNET to a folder holding "
        f"{', '.join(_DATABASE_FILES[:2])}, ... gradlab never downloads it.")


def lexnames_text() -> str:
    """The ``lexnames`` file: per line, two-digit number, file name, syntactic category."""
    return "".join(f"{number:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
                   for number, name in enumerate(LEXICOGRAPHER_FILES))


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradlab" / "wordnet"


@functools.lru_cache(maxsize=4)
def _reader(source: Path, root: Path) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30Reader(WordNetCorpusReader):
        # nltk maps other WordNet versions onto its own download for the multilingual
        # data; this database is WordNet 3.0 and there is no download, so no mapping.
        def map_wn(self, version: str = "wordnet") -> None:
            return None

    folder = _nltk_folder(source, root)
    if str(folder) not in [str(p) for p in nltk.data.path]:
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multilingual functions are not available")
        return _WordNet30Reader(str(folder), None)


def _nltk_folder(source: Path, root: Path) -> Path:
    """The private copy of ``source`` with a generated lexnames; built or rebuilt as needed."""
    folder = root / f"wn30-{hashlib.sha256(str(source).encode()).hexdigest()[:12]}"
    manifest = _manifest(source)
    if _is_current(folder, manifest):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        for name in manifest["files"]:
            shutil.copyfile(source / name, build / name)
        (build / "lexnames").write_text(lexnames_text(), encoding="ascii")
        (build / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        for file in build.iterdir():
            file.chmod(0o644)  # nltk refuses files others can write
        build.chmod(0o755)
        if _is_current(folder, manifest):  # another process built it meanwhile: use that
            return folder
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=root))
            os.replace(folder, old / folder.name)
        try:
            os.replace(build, folder)
        except OSError:  # another process finished first
            if not _is_current(folder, manifest):
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)  # our own outdated copy
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return folder


def _manifest(source: Path) -> dict:
    names = [*_DATABASE_FILES, *(f for f in _OPTIONAL_FILES if (source / f).is_file())]
    files = {}
    for name in names:
        stat = (source / name).stat()
        files[name] = [stat.st_size, stat.st_mtime_ns]
    return {"source": str(source), "files": files, "lexnames": lexnames_text()}


def _is_current(folder: Path, manifest: dict) -> bool:
    try:
        saved = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved == manifest and all(
        (folder / name).is_file() and (folder / name).stat().st_size == size
        for name, (size, _mtime) in manifest["files"].items())
