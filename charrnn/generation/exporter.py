"""`export`: a trained run as a SavedModel that generates text without charrnn installed;
`export_tflite`: its one-step model for TFLite (phones), see that function.

The SavedModel holds the weights, the vocabulary (as TensorFlow tables and constants) and
two compiled functions:

    generate(prompt: string [batch], num_chars: int32, temperature: float32, seed: int64)
        -> {"text": string [batch]}: each prompt followed by its sample; the same loop as
        `Sampler.generate`, so the same seed gives the same text. Also `serving_default`.
    generate_with_options(the same, then top_k: int32, top_p: float32, greedy: bool)
        -> the same, with the Sampler's options: after generate's four inputs, each option
        charrnn.sampling declares with a dtype, in its order. Called from Python
        (`loaded.generate_with_options(...)`) those may be left out (their defaults: 0, 1.0,
        False); its signature takes them all (TF Serving fills no defaults).
    step(ids: int32 [batch], state: float32 [layers * state_size, batch, units])
        -> {"logits": float32 [batch, vocab], "state": same as the input state}: one
        character, for clients that stream; the zero state starts a sequence.

Every function computes in float32 whatever precision the run trained in
(charrnn.generation.sampler.GENERATION_PRECISION).
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from charrnn import storage
from charrnn.generation.exportfiles import SAVEDMODEL_FILES, check_export_dir, take_place, tflite_paths
from charrnn.generation.sampler import GENERATION_PRECISION, Sampler
from charrnn.nn.model import CharRNN
from charrnn.run.trained import load_model
from charrnn.sampling import MAX_NUM_CHARS, OPTIONS, TENSOR_OPTIONS, SampleOptions
from charrnn.text.vocab import Vocabulary

# generate's inputs, in order (the first exports' signature).
_GENERATE_INPUTS = {"prompt": tf.string, "num_chars": tf.int32, "temperature": tf.float32, "seed": tf.int64}
# The range of each option the compiled loop takes, and the note its refusal adds.
_RANGES = {field.name: (field.metadata["valid"], field.metadata["note"]) for field in OPTIONS
           if field.name in TENSOR_OPTIONS and field.metadata["valid"] is not None}


class _Generator(tf.Module):
    def __init__(self, model: CharRNN, vocab: Vocabulary):
        super().__init__(name="charrnn")
        self.model = model
        self._sampler = Sampler(model, vocab, "/CPU:0")
        chars = vocab.chars
        self.chars = tf.constant(chars)
        codepoints = tf.constant([ord(c) for c in chars], tf.int32)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(codepoints, tf.range(len(chars), dtype=tf.int32)), default_value=-1)

        # generate_with_options' inputs: generate's, then every other option the compiled
        # loop takes, in charrnn.sampling's order; from Python, those may be left out.
        extra = [name for name in TENSOR_OPTIONS if name != "temperature"]
        defaults = SampleOptions()

        def generate_with_options(prompt, num_chars, temperature, seed, *options):
            values = {"temperature": temperature, **dict(zip(extra, options))}
            prime_ids = self._prime_ids(prompt, num_chars, values)
            draw = {"seed": tf.stack([seed, 0]), **values}
            # The Sampler's loop, with filtering compiled in (the options' defaults keep every
            # character, as the Sampler's unfiltered loop does); it draws at least one character.
            sampled = self._sampler.sample_ids(prime_ids, tf.maximum(num_chars, 1), draw, filtering=True)
            # sampled is time-major [num_chars, batch]: join down the time axis.
            return {"text": prompt + tf.strings.reduce_join(tf.gather(self.chars, sampled[:num_chars]), axis=0)}

        parameter = inspect.Parameter
        generate_with_options.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [parameter(name, parameter.POSITIONAL_OR_KEYWORD) for name in _GENERATE_INPUTS] +
            [parameter(name, parameter.POSITIONAL_OR_KEYWORD, default=tf.constant(getattr(defaults, name)))
             for name in extra])
        inputs = [tf.TensorSpec([None] if name == "prompt" else [], dtype, name=name)
                  for name, dtype in _GENERATE_INPUTS.items()]
        generate_with_options = tf.function(generate_with_options, input_signature=[
            *inputs, *(tf.TensorSpec([], TENSOR_OPTIONS[name], name=name) for name in extra)])

        @tf.function(input_signature=inputs)
        def generate(prompt, num_chars, temperature, seed):  # the signature of the first exports
            return generate_with_options(prompt, num_chars, temperature, seed)

        self.generate_with_options = generate_with_options
        self.generate = generate
        self.step = _step_function(model, batch=None)


    def _prime_ids(self, prompt: tf.Tensor, num_chars: tf.Tensor, options: dict[str, tf.Tensor]) -> tf.Tensor:
        """The prompts as ids [batch, length], once every input is checked (an op error
        naming what is wrong, for a serving client)."""
        codepoints = tf.strings.unicode_decode(prompt, "UTF-8")
        ids = tf.ragged.map_flat_values(self.table.lookup, codepoints)
        unknown, _ = tf.unique(tf.boolean_mask(codepoints.flat_values, ids.flat_values < 0))
        lengths = ids.row_lengths()
        checks = [
            tf.debugging.Assert(tf.size(unknown) == 0, ["characters not in the vocabulary of the model:",
                                                        tf.strings.unicode_encode(unknown, "UTF-8")]),
            tf.debugging.Assert(tf.reduce_all(lengths > 0), ["every prompt needs at least one character"]),
            tf.debugging.Assert(tf.reduce_all(lengths == lengths[0]),
                                ["the prompts of one call must have the same length; lengths:", lengths]),
            tf.debugging.Assert((num_chars >= 0) & (num_chars <= MAX_NUM_CHARS),
                                [f"num_chars must be between 0 and {MAX_NUM_CHARS}, got", num_chars]),
            *(tf.debugging.Assert(valid.holds(options[name]), [
                f"{name} must be {valid.describe(options[name].dtype.max)}{note}, got", options[name]])
              for name, (valid, note) in _RANGES.items()),
        ]
        with tf.control_dependencies(checks):
            return ids.to_tensor()


def _step_function(model: CharRNN, batch: int | None) -> tf.types.experimental.GenericFunction:
    """step(ids [batch], state [layers * state_size, batch, units]) -> {logits, state}: one
    character through `model`, the state stacked into one tensor."""
    tensors = len(tf.nest.flatten(model.state_spec()))

    @tf.function(input_signature=[tf.TensorSpec([batch], tf.int32, name="ids"),
                                  tf.TensorSpec([tensors, batch, model.rnn_units], model.state_dtype, name="state")])
    def step(ids, state):
        logits, new_state = model.step(ids, model.nest_state(tf.unstack(state, num=tensors)))
        return {"logits": logits, "state": tf.stack(tf.nest.flatten(new_state))}

    return step


def export(run_dir: str, export_dir: str, which: str | None = None, overwrite: bool = False) -> str:
    """Writes run_dir's `which` checkpoint (best by default, else latest) as a SavedModel
    in `export_dir` (which must not exist yet, or be empty; with `overwrite`, it may hold a
    SavedModel, which is replaced); returns the checkpoint used.

    On a local disk the SavedModel is written beside `export_dir` under a name of this
    process and renamed into place once complete, so that a killed export leaves no half
    SavedModel there (what a dead export left is removed by the next one), and the export
    it replaces stays whole until then.
    """
    check_export_dir(export_dir, overwrite=SAVEDMODEL_FILES if overwrite else frozenset())
    created = not storage.exists(export_dir)
    local = storage.is_local(export_dir)
    if local:
        # Written beside the directory it becomes: through a link, beside the link's target
        # (a rename cannot cross to another filesystem).
        export_dir = os.path.realpath(export_dir)
        parent = os.path.dirname(export_dir)
        os.makedirs(parent, exist_ok=True)
        storage.remove_dead_parts(parent)
    target = storage.part_name(export_dir) if local else export_dir
    with tf.device("/CPU:0"):
        # Keras' LSTM (the same weights) instead of the fused one: inference needs no
        # hand-written gradient, and a SavedModel holding one warns at every load.
        model, _, vocab, path = load_model(run_dir, which, "/CPU:0", lstm_impl="keras",
                                           precision=GENERATION_PRECISION)
        module = _Generator(model, vocab)
        # Keras' ExportArchive names the variables so that TensorFlow 1-style loaders (TF
        # Serving, saved_model_cli) find them; a plain tf.saved_model.save of a Keras 3
        # model does not.
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(module)  # the lookup table and constants
        archive.add_endpoint("serving_default", module.generate)
        archive.add_endpoint("generate", module.generate)
        archive.add_endpoint("generate_with_options", module.generate_with_options)
        archive.add_endpoint("step", module.step)
        if overwrite and not local and not created:
            storage.remove(export_dir)  # an object store renames nothing: the export it replaces goes first
        try:
            archive.write_out(target, verbose=False)
            if local:
                take_place(target, export_dir)
        except BaseException as e:  # Ctrl-C included
            # Half a SavedModel is worse than none. The directory was new or empty (checked
            # above): leave it as it was.
            storage.remove(target)
            if not local:
                storage.remove(export_dir)
                if not created:
                    storage.makedirs(export_dir)
            if isinstance(e, storage.storage_errors()):
                raise storage.storage_error("write the SavedModel to", export_dir, e) from None
            raise
    return path




def export_tflite(run_dir: str, export_dir: str, which: str | None = None, quantize: str = "none",
                  overwrite: bool = False) -> str:
    """Writes run_dir's `which` checkpoint as `<export_dir>/model.tflite` and its vocabulary as
    `<export_dir>/vocab.json`; returns the checkpoint used. An `export_dir` ending in
    `.tflite` names the model file itself (the vocabulary goes beside it, as vocab.json).

    The model is one step at batch 1, signature `step`: ids int32 [1] and state float32
    [layers * state_size, 1, units] (zeros start a text) -> logits float32 [1, vocab] and
    the new state, in float32 whatever precision the run trained in; TFLite builtin
    operators only (no Flex delegate, no lookup tables), so the plain TFLite runtime of a
    phone runs it. `quantize="dynamic"` stores the weights as int8 (dynamic range
    quantization: about a quarter of the size). With `overwrite`, the files of an earlier
    TFLite export there are replaced (each written whole, then renamed over the old).
    """
    return write_tflite(run_dir, export_dir, which, quantize, overwrite)[0]


def write_tflite(run_dir: str, export_dir: str, which: str | None = None, quantize: str = "none",
                 overwrite: bool = False) -> tuple[str, CharRNN]:
    """`export_tflite`, returning the model it exported beside the checkpoint used (the web
    export reads its state's shape)."""
    model_path, vocab_path = tflite_paths(export_dir, overwrite)
    with tf.device("/CPU:0"):
        model, _, vocab, path = load_model(run_dir, which, "/CPU:0", lstm_impl="keras",
                                           precision=GENERATION_PRECISION)
        saved = tempfile.mkdtemp(prefix="charrnn_tflite_")
        try:
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("step", _step_function(model, batch=1))
            archive.write_out(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["step"])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if quantize == "dynamic":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            flatbuffer = converter.convert()
        finally:
            shutil.rmtree(saved, ignore_errors=True)
    try:
        storage.makedirs(os.path.dirname(model_path) or ".")
        storage.write_atomic(model_path, flatbuffer)
        storage.write_atomic(vocab_path, vocab.to_json())
    except storage.storage_errors() as e:
        raise storage.storage_error("write the TFLite model to", export_dir, e) from None
    return path, model
