"""The LoRA trainer: runs the 10-step pipeline of a ``LoraTrainingJobSpec`` and reports events.

``lora-trainer run SPEC.yaml --output DIR`` (see ``cli``) is what the Kubernetes Job runs
and what a user runs on a laptop; ``pipeline.run_pipeline`` is the same thing as a function
with pluggable event sinks (``events.Sink``).
"""

import logging

# bitsandbytes warns on import about optional CPU kernels that training on CPU never uses.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
