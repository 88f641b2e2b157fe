"""charrnn-sample: generate text from a training run's best (or latest) checkpoint."""

from __future__ import annotations

import sys
from typing import Iterator

from absl import flags

from charrnn.cli import tool
from charrnn.errors import CharRNNError

tool.define_checkpoint_flags()
flags.DEFINE_string("prime", None, "Text to start from (default: a newline if the vocabulary has one, "
                    "else its first character).")
flags.DEFINE_integer("num_chars", 500, "Characters to generate after the prime.")
flags.DEFINE_float("temperature", 0.5, "Sampling temperature, in [1e-6, 1e6]: lower is more conservative.")
flags.DEFINE_integer("num_samples", 1, "Samples to generate in parallel.")
flags.DEFINE_integer("top_k", 0, "Sample only from the k most likely characters (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sample only from the smallest set of characters whose probability reaches p (1: all).")
flags.DEFINE_boolean("greedy", False, "Always take the most likely character (no sampling).")
flags.DEFINE_string("stop_at", None, "End a sample just before this text first appears in what it generated.")
flags.DEFINE_integer("seed", None, "Seed; the same seed and settings reproduce the same text (default: random).")
flags.DEFINE_boolean("stream", False, "Print characters as they are produced (compiled chunks of 32 steps); "
                     "the same text as without it.")
flags.DEFINE_boolean("interactive", False, "Read a prime per line from standard input and answer each with a "
                     "streamed sample, until end of input.")
tool.define_preset_flag()


def main() -> None:
    from charrnn.sampler import Sampler  # TensorFlow: after the flags are parsed

    sampler = Sampler.from_checkpoint(tool.flag_value("run_dir"), device=tool.flag_value("device"),
                                      which=tool.flag_value("which"))
    options = dict(num_chars=tool.flag_value("num_chars"), temperature=tool.flag_value("temperature"),
                   seed=tool.flag_value("seed"), top_k=tool.flag_value("top_k"), top_p=tool.flag_value("top_p"),
                   greedy=tool.flag_value("greedy"), stop_at=tool.flag_value("stop_at"))
    num_samples = tool.flag_value("num_samples")
    if (tool.flag_value("stream") or tool.flag_value("interactive")) and num_samples != 1:
        raise CharRNNError("--stream and --interactive print one sample at a time; leave --num_samples at 1")
    if tool.flag_value("interactive"):
        for line in sys.stdin:
            prime = line.rstrip("\n")
            if not prime:
                continue
            try:
                _print_stream(prime, sampler.stream(prime, **options))
            except CharRNNError as e:  # a bad prime does not end the session
                print(f"error: {e}", file=sys.stderr, flush=True)
        return
    prime = tool.flag_value("prime")
    if prime is None:
        prime = sampler.vocab.default_prime
    if tool.flag_value("stream"):
        _print_stream(prime, sampler.stream(prime, **options))
        return
    texts = sampler.generate(prime, num_samples=num_samples, **options)
    if isinstance(texts, str):
        print(texts)
    else:
        for i, text in enumerate(texts):
            print(f"--- sample {i + 1} ---\n{text}")


def _print_stream(prime: str, pieces: Iterator[str]) -> None:
    first = next(pieces, "")  # checks the prime and options before anything is printed
    sys.stdout.write(prime + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def run() -> None:
    tool.run(main, __doc__)


if __name__ == "__main__":
    run()
