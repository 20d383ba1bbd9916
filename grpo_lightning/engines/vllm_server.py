"""The vLLM engine's process: a vLLM ``LLM`` serving one trainer process over a local socket.

Runs under the engine environment's python (``model.vllm.python``, made by ``scripts/vllm_env.sh``), started by
:class:`grpo_lightning.engines.vllm.VLLMEngine` from a copy of this file, ``grpo_vllm_server.py``, in the engine's own
folder (a script, not a module of the package: this environment has vLLM's torch and transformers, not the trainer's,
and imports nothing of grpo_lightning; from the package folder, ``import vllm`` would find the sibling module). The
trainer's address and key come in the environment (``GRPO_VLLM_ADDRESS``, ``GRPO_VLLM_AUTHKEY``), the engine's
settings as JSON in ``GRPO_VLLM_SETTINGS``.

Protocol: the trainer sends dicts ``{"op": ..., ...}``, the server answers each with a dict, ``{"error": text}`` when
the request failed (the server lives on; the text is the exception's type and message, its traceback goes to the
engine's log), and plain Python values only (lists, ints, floats, bytes), so the two
environments' pickles never carry a tensor:

* ``generate``: ``requests`` (each: ``prompt`` text, ``image`` as ``(mode, width, height, raw bytes)``, ``n``,
  ``seed``) and ``params`` (vLLM ``SamplingParams`` keywords); answers ``outputs``, per request its
  ``prompt_token_ids``, and per sample ``token_ids`` and ``logprobs`` (the sampled tokens' log-probs).
* ``load_weights``: ``path`` of a safetensors file of checkpoint-named tensors (a subset of the model's: the
  weights that changed; with LoRA adapters loaded, vLLM's reload drops them); answers ``seconds``.
* ``load_lora``: ``path`` of a folder of LoRA adapters in PEFT's format and a new ``id``: added as that vLLM LoRA,
  which every later ``generate`` applies (the previous one removed; its prefix-cache entries, keyed by the LoRA, are
  not reused); answers ``seconds``.
* ``shutdown``: answers, then the process exits.

Every answer also holds ``idle_s``, how long the server waited for the request after its previous answer, and
``busy_s``, how long it worked on it. Requests are answered in the order they came: the trainer may send several
(asynchronous rollouts: a weight update and the next sampling while one is sampled) and read the answers later;
a thread reads them as they come, so that the trainer never waits to send. A weights file is removed once loaded.

The server exits when the trainer's connection closes, and (Linux) when the trainer process dies; ended by SIGTERM
(the trainer stopping it, or the trainer's death), it first removes its own folder, which the trainer would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client, Connection
from typing import Any

#: The name the server's copy has in the engine's folder, the first entry of its sys.path.
SCRIPT_MODULE = "grpo_vllm_server"
#: vLLM resolves the worker extension by this qualified name.
WORKER_EXTENSION = f"{SCRIPT_MODULE}.WeightSyncExtension"


class WeightSyncExtension:
    """Methods vLLM adds to its worker (``worker_extension_cls``), called through ``collective_rpc``."""

    def load_weights_file(self, path: str) -> int:
        """Load the tensors of a safetensors file into the running model, in place; returns how many.

        ``reload_weights`` reprocesses every layer whose weights all came in (the CPU backend packs its linear layers'
        weights) and clears the worker's encoder and multimodal caches. A language-model head tied to the input
        embeddings gets none of its own (the checkpoint has no ``lm_head.weight``), so its packed copy would keep the
        old embeddings: it is packed again from the shared, now updated, weight.
        """
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        model = self.model_runner.get_model()
        if _ties_word_embeddings(self.model_runner.model_config.hf_config):
            for name, module in model.named_modules():
                method = getattr(module, "quant_method", None)
                if name.rsplit(".", 1)[-1] == "lm_head" and method is not None:
                    method.process_weights_after_loading(module)
        return len(tensors)


def _ties_word_embeddings(config: Any) -> bool:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))


def _die_with_parent() -> None:
    """Ask Linux to end this process when the trainer that started it dies (no orphaned engine)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(os.environ.get("GRPO_VLLM_PARENT_PID", os.getppid())):
        _remove_own_folder()
        sys.exit(1)  # the trainer died before the request above was in place


def _remove_own_folder() -> None:
    """Remove the engine's folder (this script's: its socket, model and weight files), when it is one."""
    folder = os.path.dirname(os.path.abspath(__file__))
    if os.path.basename(folder).startswith("grpo-vllm-") and os.path.basename(__file__) == f"{SCRIPT_MODULE}.py":
        shutil.rmtree(folder, ignore_errors=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Remove the engine's folder, then end as SIGTERM ends a process."""
    _remove_own_folder()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _error(exception: BaseException) -> dict[str, str]:
    """The reply of a failed request: the exception in a line; its traceback goes to the log."""
    traceback.print_exc()
    sys.stderr.flush()
    return {"error": f"{type(exception).__name__}: {exception}"}


def _image(encoded: tuple[str, int, int, bytes]):
    from PIL import Image

    mode, width, height, data = encoded
    return Image.frombytes(mode, (width, height), data)


class Server:
    def __init__(self, settings: dict[str, Any]):
        from vllm import LLM

        self.llm = LLM(
            model=settings["model"],
            dtype=settings["dtype"],
            seed=settings["seed"],
            max_model_len=settings["max_model_len"],
            max_num_seqs=settings["max_num_seqs"],
            gpu_memory_utilization=settings["gpu_memory_utilization"],
            enforce_eager=settings["enforce_eager"],
            load_format=settings["load_format"],
            limit_mm_per_prompt={"image": 1},
            # the sampled distribution's: temperature, the allowed-token mask, and top-p / top-k truncation (the
            # trainer's log-probs, which apply the temperature only, when top-p is 1 and top-k off)
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # only the sampling settings sent, not the checkpoint's defaults
            worker_extension_cls=WORKER_EXTENSION,
            **settings.get("engine_kwargs", {}),
        )
        self.lora = None  # the policy's LoRA adapters (vllm.lora_sync adapter), applied to every request

    def load_lora(self, path: str, lora_id: int) -> dict[str, Any]:
        """Load the adapters at ``path`` as LoRA ``lora_id``, which later requests use; the previous one goes."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        request = LoRARequest(f"policy-{lora_id}", lora_id, path)
        self.llm.llm_engine.add_lora(request)  # read now: the trainer removes the folder after this reply
        if self.lora is not None:
            self.llm.llm_engine.remove_lora(self.lora.lora_int_id)
        self.lora = request
        return {"seconds": time.perf_counter() - start}

    def generate(self, requests: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        from vllm import SamplingParams

        prompts = [{"prompt": r["prompt"], "multi_modal_data": {"image": _image(r["image"])}} for r in requests]
        sampling = [SamplingParams(n=r["n"], seed=r["seed"], logprobs=0, detokenize=False, **params) for r in requests]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False, lora_request=self.lora)
        return {
            "outputs": [
                {
                    "prompt_token_ids": list(output.prompt_token_ids),
                    "samples": [
                        {
                            "token_ids": list(sample.token_ids),
                            "logprobs": [
                                step[token].logprob
                                for token, step in zip(sample.token_ids, sample.logprobs, strict=True)
                            ],
                        }
                        for sample in output.outputs
                    ],
                }
                for output in outputs
            ]
        }

    def load_weights(self, path: str) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            counts = self.llm.collective_rpc("load_weights_file", args=(path,))
        finally:  # read: its room in shared memory goes now, not when the trainer reads this answer
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        # Whatever was computed with the old weights goes: cached prompt prefixes, image encodings, processed inputs.
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        return {"seconds": time.perf_counter() - start, "tensors": counts[0]}


def _read_requests(connection: Connection) -> queue.Queue:
    """The trainer's requests, read as they come by a thread of their own (None once the connection closes): the
    trainer may send a request while the server sends an answer, and with both waiting to write, each larger than
    the socket's buffer, neither would ever read."""
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            try:
                requests.put(connection.recv())
            except (EOFError, OSError):
                requests.put(None)
                return

    threading.Thread(target=read, name="grpo-requests", daemon=True).start()
    return requests


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    _die_with_parent()
    address = os.environ["GRPO_VLLM_ADDRESS"]
    connection = Client(address, family="AF_UNIX", authkey=bytes.fromhex(os.environ["GRPO_VLLM_AUTHKEY"]))
    try:
        server = Server(json.loads(os.environ["GRPO_VLLM_SETTINGS"]))
    except Exception as exception:
        connection.send(_error(exception))
        sys.exit(1)
    connection.send({"ready": True, "pid": os.getpid()})
    requests = _read_requests(connection)
    while True:
        waiting = time.perf_counter()
        message = requests.get()
        if message is None:  # the trainer closed the connection or died
            _remove_own_folder()
            return
        started = time.perf_counter()
        op = message.get("op")
        if op == "shutdown":
            connection.send({"stopped": True})
            return
        try:
            if op == "generate":
                reply = server.generate(message["requests"], message["params"])
            elif op == "load_weights":
                reply = server.load_weights(message["path"])
            elif op == "load_lora":
                reply = server.load_lora(message["path"], message["id"])
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as exception:
            reply = _error(exception)
        reply.update(idle_s=started - waiting, busy_s=time.perf_counter() - started)
        connection.send(reply)


if __name__ == "__main__":
    main()
