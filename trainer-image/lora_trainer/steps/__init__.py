"""One module per pipeline step (``lora_contract.api.PIPELINE_STEPS``).

Each module's ``run(ctx)`` does the step's work on the shared ``RunContext`` and returns the
one-line message of its Completed event; it raises ``StepError`` to fail the step.
"""
