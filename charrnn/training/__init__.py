"""A training session: the `Trainer` (trainer) and its compiled step (step), the loop that
drives it (loop, with its schedule, cadence) and what fit() adds around it (fit, resume,
distribute, stopping, watchdog), validation (evaluator) and the observers a run reports
to (callbacks, console, metrics, tensorboard, keras_callbacks). Imports from every other
subpackage but charrnn.cli."""
