"""charrnn-sample: generate text from a training run's best (or latest) checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

from absl import flags

from charrnn import storage
from charrnn.cli import tool
from charrnn.errors import CharRNNError
from charrnn.sampling import MAX_PRIME_CHARS, SETTINGS, SampleOptions, check_settings
from charrnn.text.vocab import Vocabulary

FLAGS = flags.FLAGS

tool.define_checkpoint_flags()
flags.DEFINE_string("prime", None, "Text to start from (default: a newline if the vocabulary has one, "
                    "else its first character).")
flags.DEFINE_string("prime_file", None, "Read the text to start from from this UTF-8 file, as it is (nanoGPT's "
                    "--start=FILE:...); instead of --prime.")
flags.DEFINE_integer("num_chars", 500, "Characters to generate after the prime.")
flags.DEFINE_integer("num_samples", 1, "Samples to generate in parallel.")
tool.define_dataclass_flags(SampleOptions)
flags.DEFINE_integer("seed", None, "Seed; the same seed and settings reproduce the same text (default: random).")
flags.DEFINE_boolean("stream", False, "Print characters as they are produced (compiled chunks of 32 steps); "
                     "the same text as without it.")
flags.DEFINE_boolean("interactive", False, "A prompt: each line typed is a prime, answered with a streamed "
                     "sample; :help lists commands that change the settings (see docs/sampling.md). From a pipe: a "
                     "prime per line until end of input.")
tool.define_preset_flag()


def _settings() -> dict:
    """The sampling settings the flags give (with --preset)."""
    return {name: FLAGS[name].value for name in SETTINGS}


# A prime file larger than this holds more characters than a prime may (UTF-8: at most 4 bytes
# a character); refused before it is read.
_PRIME_FILE_LIMIT = 4 * MAX_PRIME_CHARS


def _prime() -> str | None:
    """--prime, or the text of --prime_file (None when neither is given)."""
    path = FLAGS.prime_file
    if path is None:
        return FLAGS.prime
    if FLAGS.prime is not None:
        raise CharRNNError("--prime and --prime_file both give a prime; pass one of them")
    if storage.is_local(path) and os.path.exists(path):
        if not os.path.isfile(path):
            raise CharRNNError(f"--prime_file: {path} is not a regular file; pass a text file")
        if os.path.getsize(path) > _PRIME_FILE_LIMIT:
            raise CharRNNError(f"--prime_file: {path} is larger than {_PRIME_FILE_LIMIT:,} bytes, more than the "
                               f"{MAX_PRIME_CHARS:,} characters a prime may have; pass the end of the text instead")
    try:
        raw = storage.read_bytes(path, _PRIME_FILE_LIMIT)
    except CharRNNError as e:
        raise CharRNNError(f"--prime_file: {e}") from None
    if raw is None:
        raise CharRNNError(f"--prime_file: {path} does not exist")
    try:
        prime = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharRNNError(f"--prime_file: {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not prime:
        raise CharRNNError(f"--prime_file: {path} is empty; write the text to start from in it")
    return prime


def check() -> None:
    num_samples, prime = FLAGS.num_samples, _prime()
    check_settings(_settings(), "x" if prime is None else prime, num_samples)
    if (FLAGS.stream or FLAGS.interactive) and num_samples != 1:
        raise CharRNNError("--stream and --interactive print one sample at a time; leave --num_samples at 1")
    if FLAGS.interactive and sys.stdin is None:
        raise CharRNNError("--interactive reads primes from standard input, which is closed; give it input, or "
                           "pass --prime instead")
    files = tool.local_run()
    if files is not None:
        if prime:
            files.vocab.encode(prime)
        _check_shown(files.vocab)
    if FLAGS.interactive and sys.stdin.isatty():
        print(f"charrnn-sample: loading {FLAGS.run_dir} ...", file=sys.stderr, flush=True)


def main() -> None:
    from charrnn.cli import repl
    from charrnn.generation.sampler import Sampler  # TensorFlow: after the flags are parsed

    run_dir = FLAGS.run_dir
    sampler = Sampler.from_checkpoint(run_dir, device=FLAGS.device, which=FLAGS.which)
    _check_shown(sampler.vocab)  # again: a run on another filesystem was not read before
    settings = _settings()
    if FLAGS.interactive:
        repl.run(sampler, settings, run_dir)
        return
    prime = _prime()
    if prime is None:
        prime = sampler.vocab.default_prime
    if FLAGS.stream:
        _print_stream(prime, sampler.stream(prime, **settings))
        return
    texts = sampler.generate(prime, num_samples=FLAGS.num_samples, **settings)
    if isinstance(texts, str):
        print(texts)
    else:
        for i, text in enumerate(texts):
            print(f"--- sample {i + 1} ---\n{text}")


def _check_shown(vocab: Vocabulary) -> None:
    """Refuses, before sampling, a standard output whose encoding cannot show every character
    the run may write (PYTHONIOENCODING=ascii on a run of Japanese text, say)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    hidden = [c for c in vocab.chars if not c.encode(encoding, "ignore")]
    if hidden:
        shown = ", ".join(repr(c) for c in hidden[:5]) + (" ..." if len(hidden) > 5 else "")
        raise CharRNNError(f"standard output's encoding, {encoding}, cannot show {len(hidden)} of the run's "
                           f"characters ({shown}); set PYTHONIOENCODING=utf-8 (or a UTF-8 locale)")


def _print_stream(prime: str, pieces: Iterator[str]) -> None:
    """Prints the prime and the pieces as they come. Ctrl-C is noted and acted on between
    pieces: a KeyboardInterrupt raised inside TensorFlow's eager code could crash the process
    (seen as a segmentation fault under load) instead of ending it quietly."""
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        first = next(pieces, "")  # checks the prime and options before anything is printed
        sys.stdout.write(prime + first)
        sys.stdout.flush()
        for piece in pieces:
            if interrupted:
                break
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    sys.stdout.write("\n")
    sys.stdout.flush()


def run() -> None:
    tool.run(main, __doc__, check)


if __name__ == "__main__":
    run()
