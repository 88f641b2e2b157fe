"""A run directory: its files (rundir), its lock (lock), its checkpoints, how they are
found and what they record (checkpoint, which, records), the checks run before TensorFlow
loads (preflight) and a trained run read back (trained). Imports from charrnn's shared
modules, charrnn.text and charrnn.nn."""
