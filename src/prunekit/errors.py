"""User-facing errors.

Any :class:`PrunekitError` raised anywhere is printed by the CLI as one line (no traceback) and the process
exits with code 2. Its message must name the problem and the fix, e.g.
``unknown model 'resnet21': choose one of resnet20, resnet32, ... or give path/to/file.py:factory``.
"""


class PrunekitError(Exception):
    """A problem with the user's input (config, model spec, data, checkpoint), reported in one line."""

    exit_code = 2
