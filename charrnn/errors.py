"""The one exception type charrnn raises for problems the user can fix.

Its message is a single line that says what is wrong and what to do about it; the
command-line tools print it without a traceback and exit with status 2.
"""


class CharRNNError(Exception):
    """Bad input, bad configuration or an unusable run directory."""
