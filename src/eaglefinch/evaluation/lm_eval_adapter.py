"""EleutherAI lm-eval model ``eaglefinch``: any Eagle/Finch checkpoint in the evaluation harness.

Importing this module registers the model::

    import lm_eval, eaglefinch.evaluation.lm_eval_adapter
    lm_eval.simple_evaluate(model="eaglefinch", model_args="pretrained=finch.pth,dtype=bfloat16,batch_size=8",
                            tasks=["lambada_openai"])

or run ``eaglefinch eval harness CKPT --tasks ...``. lm-eval is an optional extra
(``pip install 'eaglefinch[eval]'``); without it, importing this module raises ``ConfigError`` with
that instruction. The work is done by ``eaglefinch.evaluation.harness.HarnessModel``.
"""

from __future__ import annotations

from eaglefinch.errors import ConfigError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as error:  # pragma: no cover - exercised only where lm-eval is missing
    raise ConfigError(
        "the lm-eval harness is not installed: pip install 'eaglefinch[eval]' (or 'lm-eval>=0.4')"
    ) from error

from tqdm.auto import tqdm

from eaglefinch.evaluation.harness import HarnessModel

NAME = "eaglefinch"
DEFAULT_MAX_GEN_TOKS = 256


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


@register_model(NAME)
class EaglefinchLM(LM):
    """lm-eval's ``LM`` over an RWKV model.

    Args (``model_args``): ``pretrained`` a checkpoint path (.pth or .safetensors) or an ``RWKV``
    instance; ``dtype`` (float32, bfloat16, float16; default: the file's); ``batch_size``
    continuations scored together; ``device``; ``share_prefix`` (default true) fork the state of a
    context shared by several requests; ``prefix_eot`` (default true) start contexts after token 0.
    """

    def __init__(
        self,
        pretrained,
        dtype: str | None = None,
        batch_size: int | str = 8,
        device: str | None = None,
        share_prefix: bool | str = True,
        prefix_eot: bool | str = True,
        tokenizer=None,
        max_batch_size: int | None = None,
        **unused,
    ) -> None:
        super().__init__()
        from eaglefinch.checkpoint import load
        from eaglefinch.model.rwkv import RWKV
        from eaglefinch.tokenizer import WorldTokenizer

        if isinstance(pretrained, RWKV):
            model = pretrained.to(device=device) if device else pretrained
        else:
            model = load(pretrained, dtype=dtype, device=device)
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 8
        self.harness = HarnessModel(
            model.eval(),
            tokenizer or WorldTokenizer(),
            batch_size=int(batch_size),
            share_prefix=_flag(share_prefix),
            prefix_eot=_flag(prefix_eot),
        )

    @property
    def eot_token_id(self) -> int:
        return 0

    @property
    def tokenizer_name(self) -> str:
        return "rwkv_vocab_v20230424"

    def _record(self, kind: str, request, result) -> None:
        self.cache_hook.add_partial(kind, request.args, result)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args[:2]) for r in requests]
        results = self.harness.loglikelihood(pairs)
        for request, result in zip(requests, results, strict=True):
            self._record("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="rolling loglikelihood"):
            (result,) = self.harness.loglikelihood_rolling([request.args[0]])
            self._record("loglikelihood_rolling", request, result)
            out.append(result)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args[0], dict(request.args[1] or {})
            until = kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ConfigError(
                    "the eaglefinch lm-eval model decodes greedily: set do_sample=False, temperature=0"
                )
            text = self.harness.generate_until(
                context, until, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            )
            self._record("generate_until", request, text)
            out.append(text)
        return out
