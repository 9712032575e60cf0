"""Fine-tuning a released model: LoRA (peft), state tuning and full, on text or chat data.

``eaglefinch finetune`` runs it on the training loop (``eaglefinch.train``): the same checkpoints,
exact resume, processes and plots; see ``methods`` for what each method trains and writes.
"""

from eaglefinch.finetune.data import ExampleBatches, read_examples
from eaglefinch.finetune.state_tuning import InitialState

__all__ = ["ExampleBatches", "InitialState", "read_examples"]
