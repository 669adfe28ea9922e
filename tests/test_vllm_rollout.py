"""The vLLM rollout engine without vLLM: configuration checks, the lazy import, the conversion of
vLLM-style outputs into ``Rollouts`` (against the HF engine's own layout), and the engine's call
sequence against a stand-in ``vllm`` module. No test here runs vLLM (it needs a CUDA GPU)."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest
import torch
from typer.testing import CliRunner

from cli import probe_app
from dasd.models import load_model
from dasd.rollout import build_rollout_engine, check_rollout_engine, generate
from dasd.rollout.hf import encode_prompts, stop_token_ids
from dasd.rollout.vllm import (
    VLLMEngine,
    import_vllm,
    request_runs,
    rollouts_from_outputs,
)
from dasd.trainer import TrainConfig
from probes.evaluate import EvalConfig

NEEDS = r"rollout_engine='vllm' needs a CUDA GPU and `pip install 'dasd\[vllm\]'`"


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


# ---------------------------------------------------------------------------------------------
# configuration: invalid on this machine, refused before any work


def test_train_config_refuses_vllm_without_cuda():
    with pytest.raises(ValueError, match=NEEDS + "; got device='cpu'"):
        TrainConfig(rollout_engine="vllm", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=NEEDS + "; no CUDA device is available here"):
            TrainConfig(rollout_engine="vllm")


def test_vllm_not_installed_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValueError, match=NEEDS + "; the vllm package is not installed"):
        TrainConfig(rollout_engine="vllm", device="cuda")
    with pytest.raises(ValueError, match=NEEDS):
        EvalConfig(rollout_engine="vllm")


def test_unknown_engine_and_bad_memory_share():
    with pytest.raises(ValueError, match="unknown rollout_engine 'sglang'; valid: hf, vllm"):
        TrainConfig(rollout_engine="sglang")
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization must be in"):
        TrainConfig(vllm_gpu_memory_utilization=1.0)
    with pytest.raises(ValueError, match="unknown rollout_engine 'x'"):
        EvalConfig(rollout_engine="x")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        EvalConfig(device="tpu")
    check_rollout_engine("hf", device="cpu")


def test_engine_builder_gives_the_hf_generator_and_refuses_vllm_on_cpu(loaded):
    model, _ = loaded
    assert build_rollout_engine("hf", model, max_new_tokens=8) is generate
    with pytest.raises(ValueError, match=NEEDS + "; got device='cpu'"):
        build_rollout_engine("vllm", model, max_new_tokens=8)


def test_cli_refuses_vllm_in_one_line_before_writing(model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(probe_app, ["train", "--model", str(model_dir), "--set",
                                       "rollout_engine=vllm", "--set", "device=cpu",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert ("error: rollout_engine='vllm' needs a CUDA GPU and `pip install 'dasd[vllm]'`; "
            "got device='cpu'") in result.output
    result = runner.invoke(probe_app, ["eval", "--model", str(model_dir), "--rollout-engine",
                                       "vllm", "--device", "cpu", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "rollout_engine='vllm' needs a CUDA GPU" in result.output
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


# ---------------------------------------------------------------------------------------------
# the lazy import


def test_missing_vllm_gives_one_line_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    with pytest.raises(ImportError, match=r"needs vllm: pip install 'dasd\[vllm\]'") as info:
        import_vllm()
    assert "\n" not in str(info.value)
    with pytest.raises(ImportError, match=r"pip install 'dasd\[vllm\]'"):
        VLLMEngine("unused", gpu_memory_utilization=0.3, seed=0, max_model_len=64)


# ---------------------------------------------------------------------------------------------
# pure conversion


def test_request_runs_group_consecutive_equal_prompts():
    assert request_runs(["a", "a", "b", "a"]) == [(0, 2), (2, 1), (3, 1)]
    assert request_runs(["x"] * 8 + ["y"] * 8) == [(0, 8), (8, 8)]
    assert request_runs([]) == []


def _fake_outputs(rollouts, runs, *, shuffle_index=False, as_floats=False):
    """vLLM-style request outputs carrying exactly ``rollouts``' tokens and log-probs."""
    requests = []
    for start, n in runs:
        samples = []
        for k in range(n):
            row = start + k
            length = int(rollouts.response_mask[row].sum())
            tokens = rollouts.response_ids[row, :length].tolist()
            lps = rollouts.logprobs[row, :length].tolist()
            steps = [{tok: lp if as_floats else SimpleNamespace(logprob=lp), tok + 1: -9.0}
                     for tok, lp in zip(tokens, lps)]
            samples.append(SimpleNamespace(index=k, token_ids=tokens, logprobs=steps))
        if shuffle_index:
            samples.reverse()
        requests.append(SimpleNamespace(outputs=samples))
    return requests


@pytest.mark.parametrize("shuffle_index", [False, True])
def test_conversion_reproduces_the_hf_engine_layout(loaded, shuffle_index):
    model, tok = loaded
    prompts = ["nums: 1 2 3\ntarget: 6\n"] * 3 + ["nums: 4 5\ntarget: 9\n"] * 3
    hf = generate(model, tok, prompts, max_new_tokens=10, generator=torch.Generator().manual_seed(3))
    assert hf.finished.any() and not hf.finished.all(), "the case needs EOS and padding rows"
    outputs = _fake_outputs(hf, request_runs(prompts), shuffle_index=shuffle_index)
    ours = rollouts_from_outputs(outputs, prompts, hf.prompt_ids, hf.prompt_mask, tokenizer=tok,
                                 eos=stop_token_ids(model, tok))
    assert ours.prompts == hf.prompts and ours.responses == hf.responses
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "logprobs",
                 "finished"):
        assert torch.equal(getattr(ours, name), getattr(hf, name)), name


def test_conversion_hand_case(loaded):
    _, tok = loaded
    eos = [tok.eos_token_id]
    a, b = tok.convert_tokens_to_ids(["a"]), tok.convert_tokens_to_ids(["b"])
    a, b = a[0], b[0]
    prompts = ["p", "p", "q"]
    ids, mask = encode_prompts(tok, prompts)
    outputs = [
        SimpleNamespace(outputs=[
            SimpleNamespace(index=1, token_ids=[b], logprobs=[{b: -0.5}]),
            SimpleNamespace(index=0, token_ids=[a, b, eos[0]],
                            logprobs=[{a: -1.0}, {b: -2.0}, {eos[0]: -3.0}]),
        ]),
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=[a, a], logprobs=[{a: -0.25}] * 2)]),
    ]
    r = rollouts_from_outputs(outputs, prompts, ids, mask, tokenizer=tok, eos=eos)
    pad = tok.pad_token_id
    assert r.response_ids.tolist() == [[a, b, eos[0]], [b, pad, pad], [a, a, pad]]
    assert r.response_mask.tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert r.logprobs.tolist() == [[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0], [-0.25, -0.25, 0.0]]
    assert r.finished.tolist() == [True, False, False]
    assert r.responses == ["ab", "b", "aa"]
    assert r.lengths.tolist() == [3, 1, 2]


class _FlatLogprobs:
    """vLLM's ``FlatLogprobs`` columns (one entry per position with ``logprobs=0``); indexing it
    like a list is an error here, so the conversion must read the columns."""

    def __init__(self, token_ids, logprobs):
        self.start_indices = list(range(len(token_ids)))
        self.end_indices = [i + 1 for i in self.start_indices]
        self.token_ids, self.logprobs = list(token_ids), list(logprobs)

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, index):
        raise AssertionError("per-position dicts must not be built")


def test_conversion_reads_flat_logprobs_and_marks_unrequested_ones_nan(loaded):
    _, tok = loaded
    prompts = ["p", "q"]
    ids, mask = encode_prompts(tok, prompts)
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5, 6, 1],
                                                 logprobs=_FlatLogprobs([5, 6, 1], [-1.0, -0.5, -0.25]))]),
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=[7], logprobs=_FlatLogprobs([7], [-2.0]))]),
    ]
    r = rollouts_from_outputs(outputs, prompts, ids, mask, tokenizer=tok, eos=[1])
    assert r.logprobs.tolist() == [[-1.0, -0.5, -0.25], [-2.0, 0.0, 0.0]]
    wrong = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5], logprobs=_FlatLogprobs([9], [-1.0]))]),
             outputs[1]]
    with pytest.raises(ValueError, match="no log-prob for token 5 of response 0 at position 0"):
        rollouts_from_outputs(wrong, prompts, ids, mask, tokenizer=tok, eos=[1])
    bare = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(c.outputs[0].token_ids),
                                                     logprobs=None)]) for c in outputs]
    r2 = rollouts_from_outputs(bare, prompts, ids, mask, tokenizer=tok, eos=[1],
                               sampler_logprobs=False)
    assert torch.equal(r2.response_ids, r.response_ids)
    assert r2.logprobs[r2.response_mask].isnan().all()
    assert (r2.logprobs[~r2.response_mask] == 0).all()


def test_conversion_rejects_mismatched_outputs(loaded):
    _, tok = loaded
    ids, mask = encode_prompts(tok, ["p", "p"])
    one = SimpleNamespace(token_ids=[5], logprobs=[{5: -1.0}])
    with pytest.raises(ValueError, match="got 2 vLLM request outputs for 1 requests"):
        rollouts_from_outputs([SimpleNamespace(outputs=[one])] * 2, ["p", "p"], ids, mask,
                              tokenizer=tok, eos=[1])
    with pytest.raises(ValueError, match="returned 1 samples, expected n=2"):
        rollouts_from_outputs([SimpleNamespace(outputs=[one])], ["p", "p"], ids, mask,
                              tokenizer=tok, eos=[1])
    no_lp = SimpleNamespace(token_ids=[5], logprobs=None)
    with pytest.raises(ValueError, match="no log-probs for response 1; request logprobs=0"):
        rollouts_from_outputs([SimpleNamespace(outputs=[one, no_lp])], ["p", "p"], ids, mask,
                              tokenizer=tok, eos=[1])
    wrong = SimpleNamespace(token_ids=[5], logprobs=[{6: -1.0}])
    with pytest.raises(ValueError, match="no log-prob for token 5 of response 0 at position 0"):
        rollouts_from_outputs([SimpleNamespace(outputs=[wrong, one])], ["p", "p"], ids, mask,
                              tokenizer=tok, eos=[1])


# ---------------------------------------------------------------------------------------------
# the engine's calls, against a stand-in vllm module


class _FakeLLM:
    """Records what ``VLLMEngine`` asks of ``vllm.LLM``; answers with fixed token ids."""

    instances: ClassVar[list[_FakeLLM]] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.events: list[str] = []
        self.requests = self.params = None
        _FakeLLM.instances.append(self)

    def collective_rpc(self, method, args=()):
        worker = SimpleNamespace(get_model=lambda: SimpleNamespace(load_weights=self.loaded.extend))
        method(worker, *args)
        self.events.append("load_weights")

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")

    def sleep(self, level):
        self.events.append(f"sleep{level}")

    def wake_up(self, tags):
        self.events.append("wake_" + "+".join(tags))

    def generate(self, requests, params, use_tqdm=True):
        self.events.append("generate")
        self.requests, self.params = requests, params
        outputs = []
        for p in params:
            samples = [SimpleNamespace(index=k, token_ids=[7 + k, p.stop_token_ids[0]],
                                       logprobs=[{7 + k: -0.5}, {p.stop_token_ids[0]: -0.1}]
                                       if hasattr(p, "logprobs") else None)
                       for k in range(p.n)]
            outputs.append(SimpleNamespace(outputs=samples))
        return outputs


def _fake_vllm(monkeypatch, *, flat=False):
    fake = ModuleType("vllm")
    params = type("SamplingParams", (SimpleNamespace,),
                  {"__struct_fields__": ("n", "logprobs") + (("flat_logprobs",) if flat else ())})
    fake.LLM, fake.SamplingParams = _FakeLLM, params
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)


def test_engine_sleeps_syncs_weights_then_samples_one_request_per_group(loaded, monkeypatch):
    model, tok = loaded
    _fake_vllm(monkeypatch, flat=True)
    engine = VLLMEngine(str(model.name_or_path), gpu_memory_utilization=0.25, seed=5,
                        max_model_len=64)
    llm = _FakeLLM.instances[-1]
    assert llm.kwargs == {"model": str(model.name_or_path), "gpu_memory_utilization": 0.25,
                          "seed": 5, "dtype": "bfloat16", "max_model_len": 64,
                          "enable_sleep_mode": True, "logprobs_mode": "processed_logprobs"}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert llm.events == ["sleep2"], "vLLM must free its memory right after start-up"

    prompts = ["nums: 1 2\ntarget: 3\n"] * 3 + ["nums: 4\ntarget: 4\n"] * 3
    calls = []
    r = engine(model, tok, prompts, max_new_tokens=9, temperature=0.7, top_p=0.9,
               generator=torch.Generator().manual_seed(0), progress=calls.append)
    assert llm.events == ["sleep2", "wake_weights", "load_weights", "reset_prefix_cache",
                          "wake_kv_cache", "generate", "sleep2"]
    state = model.state_dict()
    assert [name for name, _ in llm.loaded] == list(state)
    assert all(t.data_ptr() == state[name].data_ptr() for name, t in llm.loaded), \
        "weights must pass by reference"
    ids, mask = encode_prompts(tok, prompts)
    assert llm.requests == [{"prompt_token_ids": ids[i][mask[i]].tolist()} for i in (0, 3)]
    eos = stop_token_ids(model, tok)
    assert [p.n for p in llm.params] == [3, 3]
    for p in llm.params:
        assert not hasattr(p, "seed"), "a per-request seed forces vLLM's slow sampler path"
        assert (p.temperature, p.top_p, p.max_tokens, p.logprobs, p.flat_logprobs,
                p.stop_token_ids) == (0.7, 0.9, 9, 0, True, eos)
    assert calls == [6]
    assert r.response_ids[:, 0].tolist() == [7, 8, 9, 7, 8, 9]
    assert r.finished.all() and r.lengths.tolist() == [2] * 6
    assert r.logprobs[:, 0].tolist() == [-0.5] * 6
    assert torch.equal(r.prompt_ids, ids)


def test_engine_without_logprobs_or_sleep_and_the_length_limit(loaded, monkeypatch):
    model, tok = loaded
    _fake_vllm(monkeypatch)
    engine = VLLMEngine("m", gpu_memory_utilization=0.3, seed=0, max_model_len=24, sleep=False,
                        sampler_logprobs=False)
    llm = _FakeLLM.instances[-1]
    prompts = ["nums: 1 2\ntarget: 3\n"] * 2
    r = engine(model, tok, prompts, max_new_tokens=4)
    assert llm.events == ["load_weights", "reset_prefix_cache", "generate"]
    assert not hasattr(llm.params[0], "logprobs") and not hasattr(llm.params[0], "flat_logprobs")
    assert r.logprobs[r.response_mask].isnan().all()
    longest = int(encode_prompts(tok, prompts)[1].sum(1).max())
    with pytest.raises(ValueError, match=f"a prompt of {longest} tokens \\+ max_new_tokens=30 "
                                         "exceeds vLLM's max_model_len=24"):
        engine(model, tok, prompts, max_new_tokens=30)
    with pytest.raises(ValueError, match="max_model_len must be >= 2"):
        VLLMEngine("m", gpu_memory_utilization=0.3, seed=0, max_model_len=1)


def test_engine_builder_sizes_vllm_from_prompt_and_response_budget(loaded, monkeypatch):
    import dasd.rollout.vllm as vllm_module

    model, _ = loaded
    _fake_vllm(monkeypatch)
    monkeypatch.setattr(vllm_module, "check_vllm_available", lambda device="auto": None)
    engine = build_rollout_engine("vllm", model, max_new_tokens=8192, max_prompt_tokens=512,
                                  sampler_logprobs=False)
    kwargs = _FakeLLM.instances[-1].kwargs
    assert (kwargs["max_model_len"], kwargs["dtype"]) == (512 + 8192, "bfloat16")
    assert engine.sampler_logprobs is False
