"""User-facing errors.

Every problem caused by the user's input (a config, a CLI argument, a file) is raised as a
:class:`GenalignError`. The CLI prints it as a single line ``genalign: error: ...`` and exits with
status 2, without a traceback. Internal bugs stay ordinary exceptions with tracebacks.
"""


class GenalignError(Exception):
    """An error in the user's input, reported as one line naming the problem and the valid choices."""


class ConfigError(GenalignError):
    """A malformed config: unknown key, wrong type, unknown registry name, bad value."""


class CheckpointError(GenalignError):
    """A missing or corrupt checkpoint or weights file."""


class RewardError(GenalignError):
    """A user reward raised, or returned something other than one finite-or-NaN number per sample."""


def choices(valid) -> str:
    """Format the valid choices for an error message."""
    return ", ".join(sorted(str(v) for v in valid))
