"""Serving a model over HTTP: an OpenAI-compatible API over a continuously batched decoder.

``eaglefinch serve --model M`` runs it; ``build_app`` gives the same app for embedding in other
ASGI servers. Needs the ``serve`` extra (``pip install 'eaglefinch[serve]'``: FastAPI, uvicorn).
"""

from eaglefinch.serve.engine import Engine, Event, Request

__all__ = ["Engine", "Event", "Request", "build_app"]


def build_app(
    model,
    tokenizer,
    *,
    model_name: str,
    decoder=None,
    max_batch: int = 32,
    state_cache_mb: float = 512,
    max_prompt_tokens: int = 16384,
    default_chat_tokens: int = 512,
    own_engine: bool = True,
):
    """A FastAPI app serving ``model``. With ``own_engine`` the engine runs on a thread started with
    the app; otherwise ``app.state.engine.run()`` must run it (on the thread that loaded the model)."""
    from eaglefinch.generation.prefix_cache import PrefixCache
    from eaglefinch.serve.app import ServerConfig, create_app

    cache = PrefixCache(max_bytes=int(state_cache_mb * 2**20)) if state_cache_mb > 0 else None
    engine = Engine(model, tokenizer, decoder, max_batch=max_batch, cache=cache)
    config = ServerConfig(
        model_name, max_prompt_tokens=max_prompt_tokens, default_chat_tokens=default_chat_tokens
    )
    app = create_app(engine, tokenizer, config, own_engine=own_engine)
    app.state.engine = engine
    return app
