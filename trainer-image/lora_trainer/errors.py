"""Failures the pipeline reports as a step message instead of a traceback, and their exit codes
(``lora_contract.wire``, which the operator's Job reads too)."""

from lora_contract.wire import EXIT_FAILED, EXIT_INVALID_INPUT


class StepError(Exception):
    """An expected failure with a message meant for the user; a retry may help (exit code 1)."""


class InvalidInput(StepError):
    """The spec or its data cannot work as given: retrying cannot help (exit code 2).

    The operator's Job fails fast on that exit code instead of spending its pod retries.
    """


def exit_code(err: StepError) -> int:
    return EXIT_INVALID_INPUT if isinstance(err, InvalidInput) else EXIT_FAILED
