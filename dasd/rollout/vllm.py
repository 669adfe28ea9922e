"""vLLM rollout engine (optional extra ``dasd[vllm]``): the HF engine's ``Rollouts`` from vLLM.

Implements the same rollout step as ``dasd.rollout.hf`` (paper section 2, GRPO: sample G
trajectories from π_θold(·|x); appendix C, Algorithm 1 line 3; appendix F: evaluation at
temperature 1.0, top-p 0.9, 8,192 tokens) with vLLM's offline ``LLM.generate``, colocated with
the training policy on one GPU. Entropies and teacher log-probs still come from the HF scorer
(``dasd.scoring``), as with the HF engine.

How it works:

1. ``VLLMEngine`` builds one ``vllm.LLM`` in this process: it sets
   ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless already set), so vLLM's engine core and its
   single worker live in the training process and the policy's weights pass by reference.
   The engine runs in bf16 (``dtype``) whatever the policy's master-weight dtype, with
   ``max_model_len`` = the longest prompt it accepts + ``max_new_tokens`` (vLLM otherwise
   reserves KV room for the model's full context, Qwen3's 40,960 tokens, or refuses to start),
   and ``logprobs_mode="processed_logprobs"`` (the sampled token's log-prob after temperature
   and top-p: the distribution it was drawn from, as TRL's importance-sampling correction
   needs).
2. Sleep mode (``enable_sleep_mode``, as TRL's colocate mode): after start-up and after every
   call vLLM sleeps at level 2 (weights and KV cache freed), so the PPO update between two
   calls has the GPU's memory; each call wakes the weights, syncs them, wakes the KV cache,
   samples and sleeps again.
3. Weight sync, before every call: the policy's ``state_dict()`` goes to the vLLM model's own
   ``load_weights`` (which takes Hugging Face parameter names, fuses q/k/v and gate/up and casts
   to vLLM's dtype) on the worker, through the public ``LLM.collective_rpc`` of vLLM >= 0.8.
   The prefix cache is then reset, so no KV computed with the old weights is reused.
4. Prompts are sent as token ids from ``encode_prompts``, so both engines and the scorer see
   the same prompt tokens. Each run of consecutive equal prompts (the G rollouts of a group) is
   one request with ``n`` = the run's length; ``SamplingParams(n, temperature, top_p,
   max_tokens, logprobs, stop_token_ids)`` with the HF engine's EOS ids and no per-request
   seed (a seeded request takes vLLM's slower per-request sampler path). ``logprobs=0`` (the
   sampled token only, stored flat where vLLM has ``flat_logprobs``) only when the caller reads
   them (``sampler_logprobs``: the trainer's importance-sampling correction); otherwise none.
5. The conversion of vLLM's outputs into ``Rollouts`` is the pure ``rollouts_from_outputs``.

Departures from the HF engine:

1. ``Rollouts.logprobs`` are vLLM's processed log-probs: log of the temperature-scaled,
   top-p-truncated and renormalised distribution the token was drawn from (the HF engine's
   are without top-p truncation). With ``sampler_logprobs=False`` they are NaN on every
   response token (not requested). The trainer rescores π_old (``dasd.trainer`` departure 3)
   and uses these only for the truncated importance weights (``dasd.importance``).
2. Samples come from vLLM's kernels and its engine-seeded random streams (``generator`` is
   not used): they differ from the HF engine's and repeat across runs only as far as vLLM's
   batching is deterministic.
3. ``batch_size`` is ignored (vLLM schedules requests by its KV-cache space); ``progress`` is
   called once, when all responses are done.

Not run by us: no GPU was available, so ``VLLMEngine`` has never run; only the configuration
check, the lazy import, the call sequence against a stand-in ``vllm`` module and
``rollouts_from_outputs`` are tested (on CPU).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from dasd.rollout.batching import check_decoding
from dasd.rollout.engines import ROLLOUT_ENGINES, RolloutEngine
from dasd.rollout.hf import Rollouts, assemble_rollouts, encode_prompts, stop_token_ids

__all__ = [
    "VLLM_NEEDS",
    "VLLMEngine",
    "check_vllm_available",
    "import_vllm",
    "request_runs",
    "rollouts_from_outputs",
]

#: The one-line requirement of the vLLM engine, the start of every error it raises.
VLLM_NEEDS = "rollout_engine='vllm' needs a CUDA GPU and `pip install 'dasd[vllm]'`"


def check_vllm_available(device: str = "auto") -> None:
    """Raise a one-line ``ValueError`` unless the vLLM engine can run: ``device`` is not
    ``cpu``, CUDA is available and the ``vllm`` package is installed (found, not imported)."""
    if device == "cpu":
        raise ValueError(f"{VLLM_NEEDS}; got device='cpu'")
    if not torch.cuda.is_available():
        raise ValueError(f"{VLLM_NEEDS}; no CUDA device is available here")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(f"{VLLM_NEEDS}; the vllm package is not installed")


def import_vllm() -> ModuleType:
    """The ``vllm`` module, imported on first use; a one-line ``ImportError`` naming the extra
    when it is missing."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"the vLLM rollout engine needs vllm: pip install 'dasd[vllm]' ({err})"
        ) from None
    return vllm


def request_runs(prompts: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, n)`` of each run of consecutive equal prompts, in order: one vLLM request
    each. ``["a", "a", "b", "a"]`` gives ``[(0, 2), (2, 1), (3, 1)]``."""
    runs: list[tuple[int, int]] = []
    for i, prompt in enumerate(prompts):
        if runs and prompts[runs[-1][0]] == prompt:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _sampled_logprobs(logprobs: Any, tokens: list[int], row: int) -> list[float]:
    """The sampled tokens' log-probs of one completion: from vLLM's ``FlatLogprobs`` columns
    (``start_indices``, ``token_ids``, ``logprobs``; the sampled token is each position's first
    entry) without building a dict per position, else from its per-position
    ``{token_id: Logprob}`` mappings (``Logprob.logprob`` or a float)."""
    if hasattr(logprobs, "start_indices"):
        starts, ids, values = logprobs.start_indices, logprobs.token_ids, logprobs.logprobs
        for t, (start, token) in enumerate(zip(starts, tokens)):
            if ids[start] != token:
                raise ValueError(f"vLLM returned no log-prob for token {token} of response {row} "
                                 f"at position {t}; request logprobs=0")
        return [float(values[start]) for start in starts[: len(tokens)]]
    out = []
    for t, (step, token) in enumerate(zip(logprobs, tokens)):
        if step is None or token not in step:
            raise ValueError(f"vLLM returned no log-prob for token {token} of response {row} at "
                             f"position {t}; request logprobs=0")
        entry = step[token]
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def rollouts_from_outputs(
    outputs: Sequence[Any],
    prompts: Sequence[str],
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    tokenizer: PreTrainedTokenizerBase,
    eos: Sequence[int],
    sampler_logprobs: bool = True,
) -> Rollouts:
    """``Rollouts`` from vLLM's request outputs, exactly as ``dasd.rollout.hf.generate`` lays
    them out.

    Args:
        outputs: one request output per run of ``request_runs(prompts)``, in order; each has
            ``.outputs``, its n samples, each with ``.token_ids`` (the emitted tokens, EOS
            included) and ``.logprobs`` (vLLM's ``FlatLogprobs``, or per position a mapping
            from token id to an object with ``.logprob`` or to a float), and optionally
            ``.index`` (the sample's rank in the request; list order otherwise).
        prompts: the N prompt strings (G consecutive copies per group).
        prompt_ids, prompt_mask: ``(N, P)`` left-padded prompt tokens (``encode_prompts``).
        tokenizer: decodes the responses (pad id for the padding).
        eos: the ids that end a response.
        sampler_logprobs: whether log-probs were requested; False: ``logprobs`` is NaN on the
            response tokens and ``.logprobs`` is not read.

    Returns:
        ``Rollouts`` on CPU: ``response_ids (N, T)`` right-padded with the pad id,
        ``response_mask (N, T)``, ``logprobs (N, T)`` float32 (0 on padding), ``finished (N,)``
        (last token in ``eos``) and the decoded responses without EOS, as the HF engine
        decodes them.
    """
    runs = request_runs(prompts)
    if len(outputs) != len(runs):
        raise ValueError(
            f"got {len(outputs)} vLLM request outputs for {len(runs)} requests "
            f"({len(prompts)} prompts); pass one output per run of equal prompts, in order"
        )
    samples: list[Any] = []
    for (start, n), request in zip(runs, outputs):
        completions = list(request.outputs)
        if len(completions) != n:
            raise ValueError(
                f"the request for prompts {start}..{start + n - 1} returned {len(completions)} "
                f"samples, expected n={n}"
            )
        order = [getattr(c, "index", k) for k, c in enumerate(completions)]
        samples.extend(c for _, c in sorted(zip(order, completions), key=lambda pair: pair[0]))
    pad_id = tokenizer.pad_token_id
    lengths = [len(c.token_ids) for c in samples]
    width = max([*lengths, 1])
    n_rows = len(samples)
    response_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    logprobs = torch.zeros(n_rows, width, dtype=torch.float32)
    for row, completion in enumerate(samples):
        tokens = [int(t) for t in completion.token_ids]
        if not tokens:
            continue
        response_ids[row, : len(tokens)] = torch.tensor(tokens)
        if not sampler_logprobs:
            logprobs[row, : len(tokens)] = float("nan")
            continue
        if completion.logprobs is None or len(completion.logprobs) < len(tokens):
            raise ValueError(f"vLLM returned no log-probs for response {row}; request logprobs=0")
        logprobs[row, : len(tokens)] = torch.tensor(
            _sampled_logprobs(completion.logprobs, tokens, row))
    response_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return assemble_rollouts(tokenizer, prompts, prompt_ids, prompt_mask, response_ids,
                             response_mask, logprobs, eos)


def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Run on vLLM's worker by ``collective_rpc``: copy Hugging Face-named weights into its
    model."""
    worker.get_model().load_weights(weights)


class VLLMEngine:
    """A vLLM engine colocated with the training policy; called like
    ``dasd.rollout.hf.generate`` (the policy is its first argument, its weights are synced
    into vLLM before sampling).

    Args:
        model_source: the checkpoint directory or hub id vLLM loads the architecture and
            tokenizer from (the policy's ``name_or_path``); its weights are overwritten by the
            policy's at every call.
        gpu_memory_utilization: share of the GPU's memory vLLM may take (weights and KV cache)
            while it is awake.
        seed: vLLM's engine seed (the only seed: requests carry none).
        max_model_len: prompt + response tokens vLLM reserves KV room for; a call whose longest
            prompt + ``max_new_tokens`` exceeds it is refused.
        dtype: vLLM's weight and activation dtype (bf16 by default, whatever the policy's).
        sleep: use vLLM's sleep mode around each call (module docstring, 2).
        sampler_logprobs: request the sampled tokens' processed log-probs (the trainer's
            importance-sampling correction reads them); False: none are requested.
    """

    def __init__(self, model_source: str, *, gpu_memory_utilization: float, seed: int,
                 max_model_len: int, dtype: str = "bfloat16", sleep: bool = True,
                 sampler_logprobs: bool = True) -> None:
        if max_model_len < 2:
            raise ValueError(f"vLLM max_model_len must be >= 2, got {max_model_len}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = import_vllm()
        self._sampling_params = vllm.SamplingParams
        self._flat = "flat_logprobs" in getattr(vllm.SamplingParams, "__struct_fields__", ())
        self.max_model_len = max_model_len
        self.sleep = sleep
        self.sampler_logprobs = sampler_logprobs
        self.llm = vllm.LLM(model=model_source, gpu_memory_utilization=gpu_memory_utilization,
                            seed=seed, dtype=dtype, max_model_len=max_model_len,
                            enable_sleep_mode=sleep, logprobs_mode="processed_logprobs")
        if sleep:
            self.llm.sleep(level=2)

    def sync_weights(self, model: nn.Module) -> None:
        """Copy ``model``'s weights into vLLM and drop the prefix cache computed with the old
        ones."""
        weights = list(model.state_dict().items())
        self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()

    def _params(self, n: int, *, temperature: float, top_p: float, max_tokens: int,
                eos: list[int]) -> Any:
        options: dict[str, Any] = {}
        if self.sampler_logprobs:
            options["logprobs"] = 0
            if self._flat:
                options["flat_logprobs"] = True
        return self._sampling_params(n=n, temperature=temperature, top_p=top_p,
                                     max_tokens=max_tokens, stop_token_ids=eos, **options)

    def __call__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                 *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, generator: torch.Generator | None = None,
                 progress: Callable[[int], None] | None = None) -> Rollouts:
        """Sample one response per prompt with vLLM from ``model``'s current weights; the
        arguments and the result are those of ``dasd.rollout.hf.generate`` (``batch_size`` and
        ``generator`` are not used, departures 2 and 3)."""
        check_decoding(max_new_tokens, batch_size, temperature, top_p)
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
        longest = int(prompt_mask.sum(1).max())
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(
                f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds vLLM's "
                f"max_model_len={self.max_model_len}; raise the engine's max_prompt_tokens "
                "(TrainConfig.vllm_max_prompt_tokens)"
            )
        eos = stop_token_ids(model, tokenizer)
        requests, params = [], []
        for start, n in request_runs(prompts):
            requests.append({"prompt_token_ids": prompt_ids[start][prompt_mask[start]].tolist()})
            params.append(self._params(n, temperature=temperature, top_p=top_p,
                                       max_tokens=max_new_tokens, eos=eos))
        if self.sleep:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        try:
            self.sync_weights(model)
            if self.sleep:
                self.llm.wake_up(tags=["kv_cache"])
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if self.sleep:
                self.llm.sleep(level=2)
        if progress is not None:
            progress(len(prompts))
        return rollouts_from_outputs(outputs, prompts, prompt_ids, prompt_mask,
                                     tokenizer=tokenizer, eos=eos,
                                     sampler_logprobs=self.sampler_logprobs)


def _build(model: nn.Module, *, max_new_tokens: int, max_prompt_tokens: int,
           gpu_memory_utilization: float, seed: int, sampler_logprobs: bool) -> VLLMEngine:
    """A :class:`VLLMEngine` for ``model``'s checkpoint reserving ``max_prompt_tokens +
    max_new_tokens`` tokens per sequence."""
    return VLLMEngine(model.name_or_path, gpu_memory_utilization=gpu_memory_utilization,
                      seed=seed, max_model_len=max_prompt_tokens + max_new_tokens,
                      sampler_logprobs=sampler_logprobs)


ROLLOUT_ENGINES.register("vllm")(RolloutEngine(
    check=lambda device: check_vllm_available(device), build=_build, corrects_sampler_gap=True))
