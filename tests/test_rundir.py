"""The run directory: the one owner of its layout, its files read once per start, and the
scratch directory of a non-chief worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from charrnn import CharRNNError, Trainer, storage
from charrnn.run.rundir import RunDir
from charrnn.run.trained import load_model
from conftest import TINY_FLAGS, TRAINED_TEXT, Recorder, assert_one_line_error, copy_run, run_cli, snapshot, tiny_config


def test_every_file_of_a_run_is_one_the_run_directory_names(small_text, tmp_path):
    run = tmp_path / "run"
    rundir = RunDir(str(run))

    class SeesTheLock(Recorder):
        def on_chunk_end(self, step, logs):
            super().on_chunk_end(step, logs)
            assert os.path.exists(rundir.lock().path)  # held while the run trains

    Trainer(tiny_config(small_text, run, max_steps=4, eval_every=2)).fit(callbacks=[SeesTheLock()], verbose=0)
    named = {os.path.basename(path) for path in (rundir.vocab_path, rundir.metrics_path, rundir.log_dirs["train"],
                                                 rundir.log_dirs["validation"], rundir.checkpoint_dir("latest"),
                                                 rundir.checkpoint_dir("best"))}
    assert rundir.log_dirs["run"] == str(run)  # TensorBoard's run: its events beside config.json
    events = {name for name in os.listdir(run) if name.startswith("events.out.tfevents.")}
    assert len(events) == 1 and set(os.listdir(run)) == named | events | {"config.json"}  # the lock is gone
    files = rundir.read()
    assert files.config.max_steps == 4 and len(files.vocab) > 30 and files.origin is None


def test_config_json_is_read_once_per_start(small_text, tmp_path, monkeypatch):
    config = tiny_config(small_text, tmp_path / "run", max_steps=2)
    Trainer(config).fit(verbose=0)
    reads = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda path, *limit: reads.append(os.path.basename(path))
                        or real(path, *limit))
    resumed = Trainer(config.replace(max_steps=4))  # a resume: precision, checks and origin all need it
    resumed.fit(verbose=0)
    assert reads.count("config.json") == 1 and reads.count("vocab.json") == 1


def test_a_non_chief_worker_writes_to_a_scratch_directory_removed_after(tmp_path):
    with RunDir.scratch() as scratch:
        assert os.path.isdir(scratch.path) and os.path.basename(scratch.path).startswith("charrnn_worker_")
        scratch.create()
    assert not os.path.exists(scratch.path)


def test_a_path_that_is_a_file_is_no_run_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CharRNNError, match="is a file, not a directory"):
        RunDir(str(tmp_path / "file"))
    assert RunDir(str(tmp_path / "new")).read() is None and not (tmp_path / "new").exists()


def test_a_directory_with_files_a_run_would_write_is_refused_and_left_as_it_is(small_text, tmp_path):
    """A user's own metrics.jsonl and a draft in a directory that is not a run: a new run
    would append to the one and remove the other; it is refused, and nothing changes."""
    own = tmp_path / "notes"
    own.mkdir()
    (own / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    (own / ".draft.tmp").write_text("my draft")
    before = snapshot(own)
    with pytest.raises(CharRNNError, match=r"holds metrics.jsonl but no config.json: it is not a charrnn run .* "
                                           "changes nothing in it"):
        Trainer(tiny_config(small_text, own, max_steps=2)).fit(verbose=0)
    assert snapshot(own) == before
    proc = run_cli("train", f"--data={small_text}", f"--run_dir={own}", "--max_steps=2", *TINY_FLAGS)
    assert_one_line_error(proc, "holds metrics.jsonl but no config.json")
    assert snapshot(own) == before


def test_a_run_killed_before_its_config_was_written_starts_over_with_the_same_command(small_text, tmp_path):
    """vocab.json is written, then config.json: a run killed in between holds a vocabulary
    (and a lock file whose holder is gone) and nothing else; the same command trains."""
    run = tmp_path / "run"
    done = tmp_path / "done"
    Trainer(tiny_config(small_text, done, max_steps=2)).fit(verbose=0)
    run.mkdir()
    shutil.copy(done / "vocab.json", run / "vocab.json")
    (run / "train.lock").write_text('{"pid": 1234567, "host": "elsewhere"}\n')
    trainer = Trainer(tiny_config(small_text, run, max_steps=2))
    assert trainer.restored_from is None
    trainer.fit(verbose=0)
    assert RunDir(str(run)).read().config.max_steps == 2 and (run / "ckpt" / "ckpt-2.index").exists()


@pytest.mark.parametrize("name", ["config.json", "vocab.json", "train.lock"])
def test_a_pipe_in_place_of_a_run_file_is_refused_at_once(trained_run, tmp_path, name):
    """A FIFO where a run file should be: opening or reading it would wait forever for a
    writer; every tool refuses in one line before TensorFlow loads."""
    run = copy_run(trained_run, tmp_path / "run")
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    tools = [("train", f"--data={trained_run.parent / 'text.txt'}", f"--run_dir={run}", "--max_steps=6", *TINY_FLAGS)]
    if name != "train.lock":  # the lock is the trainer's only
        tools += [("sample", f"--run_dir={run}", "--num_chars=5"), ("eval", f"--run_dir={run}")]
    for tool, *args in tools:
        proc = run_cli(tool, *args)  # its timeout fails the test instead of hanging it
        assert_one_line_error(proc, "is not a plain file")


def test_a_run_file_larger_than_any_run_writes_is_refused_unread(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    with open(run / "config.json", "ab") as f:
        f.truncate(2 << 20)  # 2 MB: no config.json is as large
    with pytest.raises(CharRNNError, match=r"config.json is larger than the 1,048,576 bytes such a file can be"):
        RunDir(str(run)).read()


@pytest.mark.parametrize("damage", ["lines", "zeros"])
def test_a_huge_metrics_file_is_cut_back_in_constant_memory(tmp_path, damage):
    """Resuming at step 5 of a 200 MB metrics.jsonl, its last line torn (`lines`: 200 MB of
    later steps) or one line of 200 MB of zeros (`zeros`: damage, a file extended by a
    crash): the file is cut back to the lines of steps 1 to 5 without being read into
    memory (a process that reads it, or one line of it, whole peaks above 400 MB)."""
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:
        for step in range(1, 11):
            f.write(json.dumps({"step": step, "loss": 1.0 / step}).encode() + b"\n")
        if damage == "lines":
            line = json.dumps({"step": 11, "note": "x" * 1000}).encode() + b"\n"
            f.write(line * (200_000_000 // len(line)))
            f.write(b'{"step": 9999, "lo')  # torn by a crash
        else:
            f.truncate(200_000_000)
    code = ("import re, sys; from charrnn.training.metrics import MetricsLog; "
            "MetricsLog(sys.argv[1], 5); "  # the peak of
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")  # this process alone
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) < 150_000, proc.stdout  # kB: far below the file's 200 MB
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_a_fine_tuned_run_continues_after_its_source_moved(trained_run, tmp_path):
    """Its weights come from its own checkpoints once it saved one: the source is not read
    again, and the run goes on with --init_from unset (or still naming the old place)."""
    source = copy_run(trained_run, tmp_path / "source")
    text = tmp_path / "new.txt"
    text.write_text((trained_run.parent / "text.txt").read_text() + "Zebras, quietly.\n" * 50)
    config = tiny_config(text, tmp_path / "tuned", max_steps=2, init_from=str(source), rnn_units=16)
    Trainer(config).fit(verbose=0)
    shutil.move(source, tmp_path / "moved")
    for init_from in (None, str(source)):
        resumed = Trainer(config.replace(max_steps=config.max_steps + 2, init_from=init_from))
        assert resumed.restored_from is not None and resumed.origin["run"] == str(source)
        resumed.fit(verbose=0)
        config = resumed.config


def test_text_inside_the_run_directory_is_refused(small_text, tmp_path):
    """--data=DIR --run_dir=DIR: the run's own files would be read as text at the next launch."""
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(small_text, both / "text.txt")
    before = snapshot(both)
    proc = run_cli("train", f"--data={both}", f"--run_dir={both}", "--max_steps=2", *TINY_FLAGS)
    assert_one_line_error(proc, "is inside the run directory")
    with pytest.raises(CharRNNError, match="is inside the run directory"):
        Trainer(tiny_config(both / "text.txt", both, max_steps=2))
    assert snapshot(both) == before


def test_an_edited_config_json_is_named_in_one_line(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    settings = json.loads((run / "config.json").read_text())
    for value, message in [(settings["rnn_units"] * 2, "hold a model of other sizes than the run's config.json"),
                           (10**7, "config.json: a model of .* weights .* more than this machine's memory"),
                           ("many", "config.json is damaged .*rnn_units.* must be an integer")]:
        (run / "config.json").write_text(json.dumps({**settings, "rnn_units": value}))
        with pytest.raises(CharRNNError, match=message):
            load_model(str(run))
    proc = run_cli("sample", f"--run_dir={run}", "--num_chars=5")  # the tools: that one line, and nothing else
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and re.search(message, proc.stderr), proc.stderr


@pytest.mark.parametrize("planted", ["metrics.jsonl", "logs/events.out.tfevents.1.host", "train/notes.txt",
                                     "validation/notes.txt", "ckpt/checkpoint", "ckpt/ckpt-3.index",
                                     "best/ckpt-3.index", "best/"])
def test_every_file_a_run_writes_later_marks_a_directory_that_is_not_a_new_run(small_text, tmp_path, planted):
    """Each shape: a file or a directory a run writes after config.json, without config.json."""
    own = tmp_path / "own"
    if planted.endswith("/"):  # an empty directory
        (own / planted).mkdir(parents=True)
    else:
        (own / planted).parent.mkdir(parents=True, exist_ok=True)
        (own / planted).write_text("the user's")
    before = snapshot(own)
    name = planted.split("/")[0]
    with pytest.raises(CharRNNError, match=rf"holds {re.escape(name)} but no config.json: it is not a charrnn run"):
        Trainer(tiny_config(small_text, own, max_steps=2)).fit(verbose=0)
    assert snapshot(own) == before and (own / planted).exists()


@pytest.mark.parametrize("where", ["sub/text.txt", "a/b/c/text.txt", "link"])
def test_text_anywhere_under_the_run_directory_is_refused(small_text, tmp_path, where):
    """A file deep in it, a directory of it given as --data, or a link from outside into it."""
    run = tmp_path / "run"
    inside = run / ("sub/text.txt" if where == "link" else where)
    inside.parent.mkdir(parents=True)
    shutil.copy(small_text, inside)
    data = inside
    if where == "link":
        data = tmp_path / "elsewhere.txt"
        data.symlink_to(inside)
    before = snapshot(run)
    for given in (data, inside.parent):
        with pytest.raises(CharRNNError, match="is inside the run directory"):
            Trainer(tiny_config(given, run, max_steps=2))
    assert snapshot(run) == before


def test_a_run_directory_inside_the_text_directory_is_no_part_of_the_text(small_text, tmp_path):
    """--data=DIR --run_dir=DIR/run: a directory's text is its own files, not its
    subdirectories', so the run's files never join it and a second launch resumes."""
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(small_text, texts / "text.txt")
    Trainer(tiny_config(texts, texts / "run", max_steps=2)).fit(verbose=0)
    resumed = Trainer(tiny_config(texts, texts / "run", max_steps=3))
    assert resumed.restored_from is not None and resumed.data.num_files == 1
    assert resumed.data.num_chars == len(small_text.read_text())


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json", "vocab.json", "train.lock"])
@pytest.mark.parametrize("kind", ["link", "directory"])
def test_a_run_file_that_is_a_link_or_a_directory_is_refused_before_anything_is_written(trained_run, tmp_path,
                                                                                      name, kind):
    """A link to the user's notes in place of a run file: a resume would write through it
    (metrics appended to the notes). A directory in its place would fail once config.json
    was rewritten. Both refused in one line, first, with the run and the notes unchanged."""
    run = copy_run(trained_run, tmp_path / "run")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    original = run / name
    if original.exists():
        (tmp_path / "moved").write_bytes(original.read_bytes())
        original.unlink()
    if kind == "link":
        original.symlink_to(notes)
    else:
        original.mkdir()
    before = {**snapshot(run), "notes": notes.read_bytes()}
    text = tmp_path / "text.txt"
    text.write_text(TRAINED_TEXT)
    words = "is a symbolic link" if kind == "link" else "is not a plain file"
    with pytest.raises(CharRNNError, match=rf"{re.escape(str(original))} {words}"):
        Trainer(tiny_config(text, run, rnn_units=16, max_steps=4)).fit(verbose=0)
    proc = run_cli("train", f"--data={text}", f"--run_dir={run}", "--max_steps=4", *TINY_FLAGS)
    assert_one_line_error(proc, f"{original} {words}")
    assert {**snapshot(run), "notes": notes.read_bytes()} == before
    assert (original.is_symlink() if kind == "link" else original.is_dir())


def test_an_edited_vocab_json_is_named_with_the_characters_that_differ(trained_run, tmp_path):
    """One character of vocab.json changed ('z' to 'Z'): the two vocabularies have as many
    characters, so the counts alone say nothing; the refusal names the file and both.
    charrnn-eval, which takes texts with other characters, names vocab.json too."""
    run = copy_run(trained_run, tmp_path / "run")
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["chars"] = "".join(sorted("Z" if c == "z" else c for c in vocab["chars"]))
    (run / "vocab.json").write_text(json.dumps(vocab))
    text = tmp_path / "text.txt"
    text.write_text(TRAINED_TEXT)
    proc = run_cli("train", f"--data={text}", f"--run_dir={run}", "--max_steps=4", *TINY_FLAGS)
    assert_one_line_error(proc, f"{run / 'vocab.json'} has 'Z', which {text} lacks, and {text} has 'z', which "
                                f"{run / 'vocab.json'} lacks (was vocab.json edited?)")
    # Evaluating the run's own text: vocab.json is blamed (the checkpoint's fingerprint), not the text's 'z'.
    proc = run_cli("eval", f"--run_dir={run}", f"--data={text}")
    assert_one_line_error(proc, f"{run / 'vocab.json'} is not the vocabulary ")
