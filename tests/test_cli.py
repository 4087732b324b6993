"""The gradlab command's errors: a user error is one line on stderr naming what is wrong, exit
code 2, no traceback; an internal failure exits 1 (traceback with --debug or GRADLAB_DEBUG=1)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from conftest import ROOT, TINY_ENCODER

from gradlab.cli import is_user_error, main
from gradlab.rundir import RunLockedError


def _tiny(tmp_path) -> list[str]:
    return [f"runs_dir={tmp_path / 'runs'}", "tiny_encoder=" + str(TINY_ENCODER),
            "steps=1", "progress=false", "threads=1"]


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_a_config_with_several_problems_is_one_line(tmp_path, capsys):
    assert main(["train", "lr=true", "threads=-3", f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert _one_error_line(capsys) == (
        "gradlab train: error: 2 problem(s) in config: lr=True must be of type float; "
        "threads=-3 must be an integer >= 1 (or null)")
    assert not (tmp_path / "runs").exists()


def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: \xff\n")
    assert main(["train", "--config", str(path)]) == 2
    assert _one_error_line(capsys) == (
        f"gradlab train: error: 1 problem(s) in {path}: {path} is not UTF-8 text (byte 0xff at "
        "offset 6)")


def test_a_lone_surrogate_in_a_bad_value_is_printed_escaped(tmp_path, capsys):
    # a YAML escape makes a string no encoding can write; printing it raised UnicodeEncodeError
    assert main(["train", 'eda_args={"\\ud800": 1}', 'name="\\udc00/x"']) == 2
    line = _one_error_line(capsys)
    assert "eda_args: unknown argument(s) '\\ud800'=1" in line
    assert "name='\\udc00/x' must be a plain folder name" in line


def test_a_locked_run_is_one_line_naming_it(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "busy"
    holder = subprocess.Popen(  # another process holds the run's lock (it is re-entrant in one)
        [sys.executable, "-c", "import sys, time; from gradlab.rundir import RunLock\n"
         f"with RunLock({str(run_dir)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "name=busy", *_tiny(tmp_path)]) == 2
    finally:
        holder.kill()
        holder.wait()
    line = _one_error_line(capsys)
    assert line == f"gradlab train: error: the run {run_dir} is being trained by another process"


def test_run_locked_error_is_a_user_error():
    assert is_user_error(RunLockedError("the run x is locked"))
    assert not is_user_error(RuntimeError("something broke"))
    assert not is_user_error(TypeError("a bug"))


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert str(tmp_path / "nothing") in _one_error_line(capsys)


def _internal_bug(args):
    raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")


def test_an_internal_failure_exits_1_with_the_traceback_only_in_debug(tmp_path, capsys,
                                                                      monkeypatch):
    from gradlab.cli import export

    monkeypatch.setattr(export, "run", _internal_bug)  # a bug in a subcommand
    monkeypatch.delenv("GRADLAB_DEBUG", raising=False)
    assert main(["export", str(tmp_path)]) == 1
    assert _one_error_line(capsys) == (
        "gradlab export: internal error (TypeError): unsupported operand type(s) for +: 'int' "
        "and 'str' (rerun with --debug or GRADLAB_DEBUG=1 for the traceback)")
    assert main(["--debug", "export", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "_internal_bug" in err
    monkeypatch.setenv("GRADLAB_DEBUG", "1")
    assert main(["export", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_the_console_command_prints_no_traceback():
    argv = ["train", "method_args={bogus: 1}", "device=cudaX"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("GRADLAB_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "gradlab.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("gradlab train: error: ")


def test_an_error_is_printed_whatever_the_terminal_encoding(tmp_path, monkeypatch):
    # a key the error stream cannot encode must not turn a user error into a
    # UnicodeEncodeError (the config fuzzer found one)
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stderr", stream)
    code = main(["train", "smart_args={'\U00010000': None}", f"runs_dir={tmp_path / 'runs'}"])
    stream.flush()
    assert code == 2
    assert "smart_args: unknown argument '\\U00010000'" in raw.getvalue().decode("ascii")
