"""The one base class of every error the kit expects a user to meet.

Bad files, bad config values, a run directory that cannot be used, a model that cannot be loaded:
each raises a subclass of :class:`ReclorLabError` whose message says what is wrong, where, and
how to fix it. ``reclor-lab`` (``cli.main``) catches this one class and prints the message as one
line; anything else is a bug in the kit and keeps its traceback.
"""

from __future__ import annotations


class ReclorLabError(Exception):
    """An expected problem, with the fix in the message (printed by the CLI as one line)."""


class RunDirError(ReclorLabError):
    """A run directory that cannot be used as asked (exists already, nothing to resume, damaged)."""


class ConfigError(ReclorLabError, ValueError):
    """A run configuration with one or more invalid values (all listed in the message)."""


class PlanError(ReclorLabError, ValueError):
    """A memory budget or model shape the planner cannot use (the fix in the message)."""


class BaselineError(ReclorLabError, ValueError):
    """A baseline (or the letter head) that cannot be computed as asked; the message says why and
    what to change."""


class DataError(ReclorLabError, ValueError):
    """A ReClor file or record that cannot be used; the message says where and why."""


class ModelError(ReclorLabError):
    """A model or tokenizer that cannot be loaded from the path or id given."""


class TrainingInterrupted(ReclorLabError):
    """SIGTERM or SIGINT stopped a run after it wrote a checkpoint; ``exit_code`` is 143 or 130."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
