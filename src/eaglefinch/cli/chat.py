"""``eaglefinch chat``: a conversation that keeps the model's state between turns.

Each turn appends ``"User: <message>\\n\\nAssistant:"`` to the state and streams the reply until a
blank line (the format the World models were tuned on). Only the new text is processed each turn:
the state already holds the conversation. Lines starting with ``/`` are commands (``/help``).
Reads standard input, so it also works on a pipe::

    printf 'Hello!\\n/save chat.safetensors\\n' | eaglefinch chat --model model.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eaglefinch.cli import generate as generate_cli
from eaglefinch.cli.generate import (
    add_model_arguments,
    add_sampling_arguments,
    load_model,
    sampling_from_args,
)
from eaglefinch.errors import ConfigError, EaglefinchError
from eaglefinch.generation import Context, Generation, SamplingConfig, load_state, prefill, save_state

# ChatRWKV's chat settings: a low top-p and a frequency penalty keep replies on topic.
CHAT_SAMPLING = SamplingConfig(
    temperature=1.0, top_p=0.3, alpha_presence=0.0, alpha_frequency=1.0, alpha_decay=0.996
)

HELP = """commands:
  /reset        forget the conversation (keeps the system prompt)
  /save PATH    save the conversation state to a file
  /load PATH    continue a conversation saved with /save
  /quit         leave (so does end of input)"""


class Chat:
    """The conversation: a context that grows by one user turn and one reply at a time."""

    def __init__(
        self,
        model,
        decoder,
        tokenizer,
        sampling: SamplingConfig,
        *,
        system: str = "",
        user: str = "User",
        assistant: str = "Assistant",
        max_new_tokens: int = 500,
    ):
        self.model, self.decoder, self.tokenizer, self.sampling = model, decoder, tokenizer, sampling
        self.user, self.assistant, self.max_new_tokens = user, assistant, max_new_tokens
        system = system.strip()
        self.start = Context.empty(model)
        if system:
            self.start = prefill(model, tokenizer.encode(system + "\n\n"), self.start, decoder=decoder)
        self.context = self.start.clone()

    def reset(self) -> None:
        self.context = self.start.clone()

    def reply(self, message: str, out) -> str:
        """Add the user's message, stream the reply to ``out``, and keep the state after it."""
        message = message.strip().replace("\r\n", "\n").replace("\n\n", "\n")
        turn = f"{self.user}: {message}\n\n{self.assistant}:"
        before = prefill(self.model, self.tokenizer.encode(turn), self.context, decoder=self.decoder)
        generation = Generation(
            self.model,
            self.tokenizer,
            before,
            self.max_new_tokens,
            self.sampling,
            stop=["\n\n", f"\n{self.user}:"],
            decoder=self.decoder,
        )
        out.write(f"{self.assistant}:")
        for _, piece in generation.stream():
            out.write(piece)
            out.flush()
        out.write("\n\n")
        out.flush()
        reply = generation.texts[0]
        after = generation.context()
        seen = self.tokenizer.decode_bytes(generation.new_tokens[0]).decode("utf-8", errors="replace")
        if seen == reply + "\n\n":
            self.context = after
        else:
            # the reply ended otherwise (length, a stop token, a stop string inside a token): the
            # state continues from the reply as shown, followed by the turn separator
            self.context = prefill(
                self.model, self.tokenizer.encode(reply + "\n\n"), before, decoder=self.decoder
            )
        return reply

    def command(self, line: str, out) -> bool:
        """Run a /command; return False to leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.reset()
            out.write("(conversation reset)\n")
        elif name in ("/save", "/load"):
            if not arg:
                raise ConfigError(f"{name} needs a file name: {name} PATH")
            if name == "/save":
                save_state(arg, self.model, self.context)
                out.write(f"(saved {len(self.context.tokens[0])} tokens of state to {arg})\n")
            else:
                context = load_state(arg, self.model)
                if context.batch_size != 1:
                    raise ConfigError(f"{arg} holds {context.batch_size} conversations; chat continues one")
                self.context = context
                out.write(f"(loaded {len(context.tokens[0])} tokens of state from {arg})\n")
        elif name == "/help":
            out.write(HELP + "\n")
        else:
            out.write(f"unknown command {name}; /help lists them\n")
        out.flush()
        return True


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="talk with a model (keeps the state between turns)",
        description="An interactive chat on standard input. " + HELP,
    )
    add_model_arguments(p)
    system = p.add_mutually_exclusive_group()
    system.add_argument("--system", default="", metavar="TEXT", help="text placed before the conversation")
    system.add_argument(
        "--system-file", default=None, metavar="FILE", help="read the system text from a file"
    )
    p.add_argument("--user", default="User", help="the user's name in the transcript")
    p.add_argument("--assistant", default="Assistant", help="the model's name in the transcript")
    p.add_argument("--max-new-tokens", type=int, default=500, help="per reply")
    p.add_argument("--load-state", metavar="FILE", help="continue a conversation saved with /save")
    add_sampling_arguments(p, CHAT_SAMPLING)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    if args.max_new_tokens <= 0:
        raise ConfigError(f"--max-new-tokens must be > 0, got {args.max_new_tokens}")
    system = args.system
    if args.system_file is not None:
        path = Path(args.system_file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such system prompt file")
        system = path.read_text(encoding="utf-8")
    model, decoder = load_model(args)
    chat = Chat(
        model,
        decoder,
        generate_cli.load_tokenizer(),
        sampling,
        system=system,
        user=args.user,
        assistant=args.assistant,
        max_new_tokens=args.max_new_tokens,
    )
    if args.load_state:
        chat.command(f"/load {args.load_state}", sys.stderr)
    interactive = sys.stdin.isatty()
    out = sys.stdout
    while True:
        if interactive:
            out.write(f"{args.user}: ")
            out.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            try:
                if not chat.command(line, out):
                    return 0
            except EaglefinchError as error:  # a bad command is reported, the chat goes on
                print(f"error: {error}", file=sys.stderr)
            continue
        chat.reply(line, out)
