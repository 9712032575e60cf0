"""Running a model: prefill, sampling, decoding, saved states and a prefix cache."""

from eaglefinch.generation.context import Context, prefill, prefill_batch
from eaglefinch.generation.generate import Generation, generate, get_decoder, start, stream
from eaglefinch.generation.prefix_cache import PrefixCache
from eaglefinch.generation.sampling import SamplingConfig
from eaglefinch.generation.states import load_state, save_state

__all__ = [
    "Context",
    "Generation",
    "PrefixCache",
    "SamplingConfig",
    "generate",
    "get_decoder",
    "load_state",
    "prefill",
    "prefill_batch",
    "save_state",
    "start",
    "stream",
]
