"""``eaglefinch serve``: an OpenAI-compatible HTTP server for an Eagle or Finch checkpoint.

Example::

    eaglefinch serve --model RWKV-x060-World-1B6.pth --port 8000 --max-batch 32
    # then, with the official client:
    #   OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").completions.create(...)

Without ``--model`` it serves the model of ``eaglefinch demo`` (``eaglefinch-demo/run/model.pth``)
when that exists.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from eaglefinch.cli.generate import add_model_arguments, load_model, load_tokenizer
from eaglefinch.demo import DEMO_MODEL, resolve_model
from eaglefinch.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve /v1/completions and /v1/chat/completions (streaming or not) with "
        "continuous batching and a cache of conversation states.",
    )
    add_model_arguments(p)
    p.set_defaults(model=None)
    for action in p._actions:
        if action.dest == "model":
            action.required = False
            action.help = f"checkpoint: official .pth or .safetensors (default: the demo's {DEMO_MODEL})"
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the model id clients ask for (default: file stem)")
    p.add_argument("--max-batch", type=int, default=32, help="requests decoded together (default 32)")
    p.add_argument(
        "--state-cache-mb", type=float, default=512, help="memory for cached prompt states (0: none)"
    )
    p.add_argument("--max-prompt-tokens", type=int, default=16384, help="longer prompts get a 400")
    p.add_argument(
        "--default-chat-tokens", type=int, default=512, help="reply limit when a chat request sets none"
    )
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from eaglefinch.serve import build_app
    except ImportError as error:
        raise ConfigError(
            f"serving needs FastAPI and uvicorn ({error.name} is missing): pip install 'eaglefinch[serve]'"
        ) from None
    for name in ("max_batch", "max_prompt_tokens", "default_chat_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    args.model = str(resolve_model(args.model))
    # batches of rows: on CPUs that emulate bf16, fp32 copies of a bf16 model's matrices where they fit
    model, decoder = load_model(args, fp32_copies=None)
    tokenizer = load_tokenizer()
    if model.config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"{args.model} has a vocabulary of {model.config.vocab_size} tokens, smaller than the World "
            f"tokenizer's {tokenizer.vocab_size}: the server needs a World-vocabulary model"
        )
    name = args.model_name or Path(args.model).stem
    app = build_app(
        model,
        tokenizer,
        model_name=name,
        decoder=decoder,
        max_batch=args.max_batch,
        state_cache_mb=args.state_cache_mb,
        max_prompt_tokens=args.max_prompt_tokens,
        default_chat_tokens=args.default_chat_tokens,
        own_engine=False,
    )
    print(
        f"eaglefinch serve: {name} ({model.config.version}, L{model.config.n_layer}-D{model.config.n_embd}, "
        f"weights {args.weights}) on http://{args.host}:{args.port}/v1",
        file=sys.stderr,
        flush=True,
    )
    # The engine decodes on this thread, the one that loaded the model (see Engine.run); the HTTP
    # server runs on another. SIGTERM and Ctrl-C stop both cleanly.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    http = threading.Thread(target=server.run, name="eaglefinch-http", daemon=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    http.start()
    try:
        app.state.engine.run(should_stop=lambda: stop.is_set() or not http.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(10)
    return 0 if server.started or stop.is_set() else 1
