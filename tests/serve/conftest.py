"""A real ``eaglefinch serve`` process on 127.0.0.1, driven by the official ``openai`` client."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import eaglefinch
from eaglefinch import RWKVConfig
from eaglefinch.checkpoint import model_from_state_dict
from eaglefinch.testing import random_state_dict

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client")
httpx = pytest.importorskip("httpx")

# A tiny Finch with the World vocabulary, so the server's tokenizer applies to it.
CONFIG = RWKVConfig("6.0", n_layer=2, n_embd=64, vocab_size=65536)
MAX_PROMPT_TOKENS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_path: Path, log_path: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            sys.executable,
            "-c",
            "from eaglefinch.cli import main; raise SystemExit(main())",
            "serve",
            "--model",
            str(model_path),
            "--port",
            str(self.port),
            "--model-name",
            "tiny-finch",
            "--max-prompt-tokens",
            str(MAX_PROMPT_TOKENS),
            *extra,
        ]
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start in 60 s:\n{log_path.read_text()}")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def client(self, **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=60, max_retries=0, **kwargs)

    def wait_idle(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if (health["active"] == 0 and health["waiting"] == 0) or time.monotonic() > deadline:
                return health
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def served_model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "tiny-finch.pth"
    eaglefinch.save(model_from_state_dict(random_state_dict(CONFIG, seed=11)), path)
    return path


@pytest.fixture(scope="session")
def reference(served_model_path):
    """The same checkpoint loaded in the test process, for ``eaglefinch.generate``."""
    with torch.inference_mode(False):
        return eaglefinch.load(served_model_path)


@pytest.fixture(scope="session")
def tokenizer():
    return eaglefinch.WorldTokenizer()


@pytest.fixture(scope="module")
def server(served_model_path, tmp_path_factory):
    server = Server(served_model_path, tmp_path_factory.mktemp("serve-log") / "server.log")
    yield server
    server.stop()
