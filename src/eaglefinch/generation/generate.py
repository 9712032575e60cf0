"""Generation: prefill the prompts (chunked kernel), then decode all rows together one token a step.

``generate`` returns the text, ``stream`` yields it piece by piece; both are thin wrappers over
``Generation``, which also gives the context after the generated text (to continue a chat).
Each row keeps its own state from the start, so a row's text is what its prompt gives alone:
prompts of different lengths are never padded.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence

import torch

from eaglefinch.errors import ConfigError
from eaglefinch.generation.context import Context, prefill, prefill_batch
from eaglefinch.generation.prefix_cache import PrefixCache
from eaglefinch.generation.sampling import (
    Penalties,
    SamplingConfig,
    ban,
    make_generators,
    penalty_weight,
    sample,
)
from eaglefinch.generation.text import TextStream, Tokenizer, undefined_ids
from eaglefinch.model.decode import DecodeModel
from eaglefinch.model.rwkv import RWKV

END_OF_TEXT = 0  # the World vocabulary's end-of-document token

_decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_decoder(model: RWKV, weights: str = "exact") -> DecodeModel:
    """The model's packed decoder, built once per model, dtype, device and set of weight tensors."""
    key = (
        weights,
        model.dtype,
        model.device,
        model.head.weight.data_ptr(),
        model.emb.weight.data_ptr(),
        model.blocks[0].att.key.weight.data_ptr(),
    )
    per_model = _decoders.setdefault(model, {})
    if key not in per_model:
        per_model.clear()
        per_model[key] = DecodeModel(model, weights=weights)
    return per_model[key]


class Generation:
    """Decode up to ``max_new_tokens`` for every row of ``context``; iterate for ``(row, text piece)``.

    A row ends at ``max_new_tokens``, at a stop token (not part of the text) or at a stop string
    (cut from the text). After iterating, ``texts``, ``new_tokens`` and ``finish_reasons`` hold
    the results and ``context()`` the state after each row's generated tokens.

    Args:
        model: the model (prefill and identity); ``decoder`` runs the steps.
        tokenizer: ``encode`` / ``decode_bytes`` (``eaglefinch.WorldTokenizer``).
        context: B rows with next-token logits (from ``prefill``); it is not modified.
        max_new_tokens: per row.
        sampling: a ``SamplingConfig``.
        stop: strings that end a row.
        stop_tokens: token ids that end a row (default: end of text, 0).
        decoder: a ``DecodeModel`` (default: the model's exact one).
    """

    def __init__(
        self,
        model: RWKV,
        tokenizer: Tokenizer,
        context: Context,
        max_new_tokens: int,
        sampling: SamplingConfig,
        *,
        stop: Sequence[str] = (),
        stop_tokens: Sequence[int] = (END_OF_TEXT,),
        decoder: DecodeModel | None = None,
    ):
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if context.logits is None:
            raise ConfigError("nothing to continue: give a prompt (the context has seen no tokens)")
        if isinstance(stop, str):
            stop = [stop]
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.decoder = decoder if decoder is not None else get_decoder(model)
        if self.decoder.config != model.config:
            raise ConfigError("the decoder was built for another model configuration")
        B = context.batch_size
        self.max_new_tokens = max_new_tokens
        self.stop_tokens = {int(t) for t in stop_tokens}
        self.streams = [TextStream(stop) for _ in range(B)]
        self.new_tokens: list[list[int]] = [[] for _ in range(B)]
        self.finish_reasons: list[str | None] = [None] * B
        self._start = context
        self._final_states: list = [None] * B  # per row: (state, logits) after its fed tokens
        self._unfed: list[int | None] = [None] * B  # a last sampled token not yet fed to the model
        self._tail_pieces: list[tuple[int, str]] = []  # text a row releases when it ends
        self._started = False

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.streams]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return self.stream()

    def _steps(self) -> Iterator[tuple[int, str]]:
        if self._started:
            raise ConfigError("this generation has already run; start a new one")
        self._started = True
        ctx, cfg = self._start, self.sampling
        V = self.model.config.vocab_size
        state = ctx.state.clone()  # the decoder updates it in place
        logits = ctx.logits.to(self.decoder.device).clone()
        active = list(range(ctx.batch_size))
        generators = make_generators(cfg, len(active), self.decoder.device)
        banned = (*cfg.banned_tokens, *undefined_ids(self.tokenizer, V))  # and ids no text holds
        penalties = None
        if cfg.has_penalties:
            penalties = Penalties(
                len(active), V, cfg, penalty_weight(self.tokenizer.decode_bytes), device=self.decoder.device
            )
        for step in range(self.max_new_tokens + 1):
            if step == self.max_new_tokens:
                for j, row in enumerate(active):
                    self._finish(row, "length", state.select(j), logits[j : j + 1])
                return
            scores = penalties.apply(logits) if penalties is not None else logits.clone()
            tokens = sample(ban(scores, banned), cfg, generators).tolist()
            keep = []
            for j, (row, token) in enumerate(zip(active, tokens, strict=True)):
                if token in self.stop_tokens:
                    self._finish(row, "stop", state.select(j), logits[j : j + 1])
                    continue
                self.new_tokens[row].append(token)
                piece = self.streams[row].push(self.tokenizer.decode_bytes([token]))
                if piece:
                    yield row, piece
                if self.streams[row].stopped:
                    self._finish(row, "stop", state.select(j), logits[j : j + 1], unfed=token)
                elif step + 1 == self.max_new_tokens:
                    self._finish(row, "length", state.select(j), logits[j : j + 1], unfed=token)
                else:
                    keep.append(j)
            if penalties is not None:
                penalties.update(tokens)
            if len(keep) < len(active):
                if not keep:
                    return
                state = state.select(keep)
                generators = [generators[j] for j in keep]
                if penalties is not None:
                    penalties.select(keep)
                tokens = [tokens[j] for j in keep]
                active = [active[j] for j in keep]
            logits = self.decoder.step(
                torch.tensor(tokens, dtype=torch.long, device=self.decoder.device), state
            )

    def _finish(self, row: int, reason: str, state, logits, unfed: int | None = None) -> None:
        self.finish_reasons[row] = reason
        self._final_states[row] = (state, logits)
        self._unfed[row] = unfed
        piece = self.streams[row].flush()
        if piece:
            self._tail_pieces.append((row, piece))

    def run(self) -> list[str]:
        """Generate to the end; return the texts."""
        for _ in self.stream():
            pass
        return self.texts

    def stream(self) -> Iterator[tuple[int, str]]:
        """``(row, piece)`` pairs as tokens are decoded, including the text released when a row ends."""
        for item in self._steps():
            yield item
            yield from self._drain()
        yield from self._drain()

    def _drain(self) -> Iterator[tuple[int, str]]:
        while self._tail_pieces:
            yield self._tail_pieces.pop(0)

    @torch.no_grad()
    def context(self) -> Context:
        """The context after each row's prompt and generated tokens (stop tokens excluded).

        A row's last sampled token is fed here, lazily, so a plain ``generate`` never pays for it.
        """
        if None in self.finish_reasons:
            raise ConfigError("the generation has not finished: iterate it (or call run()) first")
        rows = []
        for row, (state, logits) in enumerate(self._final_states):
            state = state.clone()
            if self._unfed[row] is not None:
                token = torch.tensor([self._unfed[row]], dtype=torch.long, device=self.decoder.device)
                logits = self.decoder.step(token, state)
                self._unfed[row] = None
                self._final_states[row] = (state.clone(), logits)
            rows.append(Context(state, logits.clone(), [self._start.tokens[row] + self.new_tokens[row]]))
        return Context.cat(rows)


def _prepare(
    model: RWKV,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str],
    *,
    context: Context | None,
    cache: PrefixCache | None,
    decoder: DecodeModel | None = None,
) -> tuple[Context, bool]:
    """Prefill the prompt(s); return the context and whether a single prompt (not a list) was given."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise ConfigError("no prompts given")
    if not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompt must be a string or a list of strings")
    token_lists = [tokenizer.encode(p) for p in prompts]
    if context is not None:
        if context.batch_size == 1 and len(prompts) > 1:
            context = context.fork(len(prompts))
        if context.batch_size != len(prompts):
            raise ConfigError(
                f"the context has {context.batch_size} rows but {len(prompts)} prompts were given"
            )
        rows = [
            prefill(model, tokens, context.select(i), cache=cache, decoder=decoder)
            for i, tokens in enumerate(token_lists)
        ]
        return Context.cat(rows), single
    return prefill_batch(model, token_lists, cache=cache, decoder=decoder), single


def _sampling(kwargs: dict) -> SamplingConfig:
    config = kwargs.pop("sampling", None)
    if config is not None and kwargs:
        raise ConfigError("give either sampling=SamplingConfig(...) or sampling keywords, not both")
    return config if config is not None else SamplingConfig.from_kwargs(kwargs)


def start(
    model: RWKV,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str] = "",
    max_new_tokens: int = 256,
    *,
    context: Context | None = None,
    cache: PrefixCache | None = None,
    stop: Sequence[str] = (),
    stop_tokens: Sequence[int] = (END_OF_TEXT,),
    decoder: DecodeModel | None = None,
    **sampling,
) -> Generation:
    """Prefill and return the ``Generation`` (not yet run); arguments as for ``generate``."""
    if decoder is None:
        decoder = get_decoder(model)
    ctx, _ = _prepare(model, tokenizer, prompt, context=context, cache=cache, decoder=decoder)
    return Generation(
        model,
        tokenizer,
        ctx,
        max_new_tokens,
        _sampling(sampling),
        stop=stop,
        stop_tokens=stop_tokens,
        decoder=decoder,
    )


def generate(
    model: RWKV,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 256,
    **options,
) -> str | list[str]:
    """Continue ``prompt`` (a string, or a list of strings run as one batch) and return the new text.

    Args:
        model, tokenizer: e.g. ``eaglefinch.load(path)`` and ``eaglefinch.WorldTokenizer()``.
        prompt: text to continue; with ``context``, text appended after the context's tokens.
        max_new_tokens: at most this many tokens per prompt.
        **options: keywords of ``start``:
            context: continue from a processed prompt or a loaded state (one row, or one per prompt).
            cache: a ``PrefixCache`` to reuse states of prompts seen before.
            stop: strings that end the text (not included in it).
            stop_tokens: token ids that end the text (default: end of text, 0).
            decoder: a ``DecodeModel``, e.g. ``DecodeModel(model, weights="int8")``.
            and the ``SamplingConfig`` fields: temperature (0 = greedy), top_p, top_k, min_p,
            alpha_presence, alpha_frequency, alpha_decay, banned_tokens, seed; or ``sampling=``.

    Returns:
        The generated text (a list for a list of prompts).
    """
    texts = start(model, tokenizer, prompt, max_new_tokens, **options).run()
    return texts[0] if isinstance(prompt, str) else texts


def stream(
    model: RWKV,
    tokenizer: Tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 256,
    **options,
) -> Iterator[str] | Iterator[tuple[int, str]]:
    """Like ``generate`` (same arguments), but yield the text as it is decoded, whole characters only.

    For one prompt, yields ``str`` pieces; for a list of prompts, ``(prompt index, piece)`` pairs.
    """
    generation = start(model, tokenizer, prompt, max_new_tokens, **options)
    if isinstance(prompt, str):
        return (piece for _, piece in generation.stream())
    return generation.stream()
