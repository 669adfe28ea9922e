"""Memory budgets (``dasd.memory``), throughput / MFU metrics and metric sinks (``dasd.perf``),
and how the trainer, eval and Probe 3 use them (issue 17, defects 1-4)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import Qwen3Config

from dasd.memory import (
    attention_bytes_per_row,
    generation_rows,
    kv_cache_bytes_per_token,
    logits_bytes_per_row,
    rows_within,
)
from dasd.models import resolve_device, resolve_dtype
from dasd.perf import (
    build_reporter,
    check_report_to,
    forward_flops,
    peak_flops,
    training_flops,
    update_metrics,
)
from dasd.trainer import TrainConfig, Trainer

QWEN3_1_7B = Qwen3Config(num_hidden_layers=28, hidden_size=2048, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936)


def test_kv_cache_of_the_paper_model_by_hand():
    # 2 (K, V) x 28 layers x 8 KV heads x 128 dims x 2 bytes (bf16)
    assert kv_cache_bytes_per_token(QWEN3_1_7B, torch.bfloat16) == 2 * 28 * 8 * 128 * 2 == 114688
    assert kv_cache_bytes_per_token(QWEN3_1_7B, torch.float32) == 2 * 114688
    # the old fixed batch: 128 prompts x (128 prompt + 8,192 new) tokens is ~122 GB
    assert 128 * 8320 * 114688 / 1e9 == pytest.approx(122.1, abs=0.1)
    # a 16 GiB budget takes 16 * 2^30 // (8,320 x 114,688) = 18 of them
    assert generation_rows(QWEN3_1_7B, torch.bfloat16, 8320, 16 * 2**30, 128) == 18
    assert generation_rows(QWEN3_1_7B, torch.bfloat16, 100, 16 * 2**30, 128) == 128


def test_config_without_kv_heads_or_head_dim():
    class Old:
        num_hidden_layers, num_attention_heads, hidden_size = 2, 4, 32

    assert kv_cache_bytes_per_token(Old(), torch.float32) == 2 * 2 * 4 * 8 * 4


def test_rows_within_is_at_least_one_and_at_most_the_cap():
    assert rows_within(100, 30, 8) == 3
    assert rows_within(100, 1000, 8) == 1
    assert rows_within(10**12, 1, 8) == 8
    assert rows_within(100, 0, 8) == 8
    with pytest.raises(ValueError, match="cap"):
        rows_within(100, 1, 0)


def test_logits_and_attention_bytes_by_hand():
    # one 8,193-token response of Qwen3's vocabulary in float32: ~5 GB
    assert logits_bytes_per_row(8193, 151936) == 8193 * 151936 * 4
    assert logits_bytes_per_row(10, 7, copies=3) == 3 * 10 * 7 * 4
    assert attention_bytes_per_row(QWEN3_1_7B, 100) == 2 * 16 * 100 * 100 * 4


def test_flops_and_mfu_by_hand():
    assert training_flops(10, 3) == 180.0
    assert forward_flops(10, 3) == 60.0
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 2.0) == 2e12
    cpu = update_metrics(device=torch.device("cpu"), peak=None, n_params=10, rollout_s=2.0,
                         update_s=4.0, teacher_s=0.5, generated_tokens=100,
                         trained_tokens=300, teacher_forward_tokens=0)
    assert cpu == {"perf/rollout_tokens_per_s": 50.0, "perf/update_tokens_per_s": 75.0,
                   "perf/teacher_s": 0.5}
    with_peak = update_metrics(device=torch.device("cpu"), peak=1e4, n_params=10, rollout_s=2.0,
                               update_s=4.0, teacher_s=0.5, generated_tokens=100,
                               trained_tokens=300, teacher_forward_tokens=50)
    # (6 x 10 x 300 + 2 x 10 x 50) / (4 s x 1e4 FLOP/s)
    assert with_peak["perf/mfu"] == pytest.approx((18000 + 1000) / 4e4)


def test_report_to_errors_are_one_line():
    with pytest.raises(ValueError, match="report_to must be one of none, tensorboard, wandb"):
        check_report_to("mlflow")
    for sink in ("tensorboard", "wandb"):
        if importlib.util.find_spec(sink) is None:
            with pytest.raises(ValueError, match=rf"pip install 'dasd\[{sink}\]'"):
                check_report_to(sink)
            with pytest.raises(ValueError, match="report_to"):
                TrainConfig(report_to=sink)
    assert build_reporter("none", None, {}) is None


def test_tensorboard_receives_the_logged_metrics(model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(model=str(model_dir), steps=1, prompts_per_step=1, group_size=2,
                      mini_batch_size=2, micro_batch_size=2, max_new_tokens=6, eval_prompts=1,
                      eval_k=1, device="cpu", report_to="tensorboard")
    Trainer.start(cfg, tmp_path / "run").run()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert "train/train/reward" in events.Tags()["scalars"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    reward = next(r["train/reward"] for r in logged if r["split"] == "train")
    assert events.Scalars("train/train/reward")[0].value == pytest.approx(reward)


def small(model_dir, **overrides):
    values = dict(model=str(model_dir), steps=1, prompts_per_step=2, group_size=2,
                  mini_batch_size=4, micro_batch_size=2, max_new_tokens=8, eval_prompts=1,
                  eval_k=1, device="cpu")
    return TrainConfig(**(values | overrides))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"mixed_precision": "fp8"}, "mixed_precision must be auto, bf16 or no"),
    ({"kv_cache_budget_gb": 0.0}, "kv_cache_budget_gb > 0"),
    ({"logits_budget_gb": -1.0}, "logits_budget_gb > 0"),
    ({"peak_tflops": -1.0}, "peak_tflops >= 0"),
    ({"device": "tpu"}, "device must be"),
])
def test_invalid_new_options(model_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        small(model_dir, **overrides)


def test_budgets_cut_generation_and_reverse_kl_passes(model_dir, tmp_path):
    trainer = Trainer.start(small(model_dir, method="opsd", kv_cache_budget_gb=1e-9,
                                  logits_budget_gb=1e-9), tmp_path / "run")
    assert trainer._generation_batch(["nums: 1\n"] * 4) == 1
    assert trainer._micro_rows(10) == 1
    loose = Trainer.start(small(model_dir, method="opsd"), tmp_path / "loose")
    assert loose._generation_batch(["nums: 1\n"] * 4) == loose.cfg.generation_batch_size
    assert loose._micro_rows(10) == loose.cfg.micro_batch_size
    grpo = Trainer.start(small(model_dir, method="grpo", logits_budget_gb=1e-9), tmp_path / "g")
    assert grpo._micro_rows(10) == grpo.cfg.micro_batch_size  # no logits held: no cut
    metrics = trainer.update(1)
    assert metrics["loss/kl"] > 0 and metrics["optim/grad_norm"] > 0
    assert {"perf/rollout_tokens_per_s", "perf/update_tokens_per_s",
            "perf/teacher_s"} <= metrics.keys()
    assert metrics["perf/teacher_s"] > 0
    assert "perf/mfu" not in metrics and "perf/peak_memory_gb" not in metrics  # CPU


def test_bf16_autocast_keeps_float32_master_weights_and_adamw_state(model_dir, tmp_path):
    trainer = Trainer.start(small(model_dir, mixed_precision="bf16"), tmp_path / "run")
    assert trainer.autocast
    seen = []
    trainer.model.get_decoder().layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    metrics = trainer.update(1)
    assert seen and set(seen) == {torch.bfloat16}, "every matmul ran under bf16 autocast"
    assert metrics["optim/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    states = trainer.optimizer.state.values()
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32
                          for s in states)
    off = Trainer.start(small(model_dir), tmp_path / "off")
    assert not off.autocast  # auto: no autocast on a CPU


def test_sdpa_attention_is_the_default(model_dir):
    from dasd.models import load_model

    model, _ = load_model(model_dir)
    assert model.config._attn_implementation == "sdpa"


def test_device_and_dtype_options():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, got 'gpu'"):
        resolve_device("gpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("checkpoint", "cuda") is None
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        resolve_dtype("float8", "cpu")


def test_eval_and_probe3_load_on_the_asked_device_and_dtype(model_dir, tmp_path, monkeypatch):
    import probes.evaluate as evaluate
    import probes.prefix_intervene as prefix

    with pytest.raises(ValueError, match="dtype"):
        evaluate.EvalConfig(dtype="half")
    with pytest.raises(ValueError, match="device"):
        prefix.PrefixInterveneConfig(device="tpu")
    calls = []

    class Stop(Exception):
        pass

    def fake_load(name, *, device="cpu", dtype=None):
        calls.append((device, dtype))
        raise Stop

    for module, cfg in ((evaluate, evaluate.EvalConfig(model=str(model_dir), dtype="bfloat16",
                                                       device="cpu")),
                        (prefix, prefix.PrefixInterveneConfig(model=str(model_dir),
                                                              device="cpu"))):
        monkeypatch.setattr(module, "load_model", fake_load)
        with pytest.raises(Stop):
            (evaluate.run_eval if module is evaluate else prefix.run_prefix_intervene)(
                cfg, tmp_path / module.__name__)
    assert calls == [("cpu", torch.bfloat16), ("cpu", None)]


@pytest.mark.parametrize("signal", ["grad_norm", "attention"])
def test_routing_passes_are_cut_to_the_memory_budget(signal):
    from dasd.models import make_char_tokenizer
    from dasd.rollout import generate
    from dasd.routing import RoutingBatch, build_routing_signal
    from tests.fixtures_models import random_qwen3

    tok = make_char_tokenizer()
    model = random_qwen3(tok, seed=5)
    rollouts = generate(model, tok, ["nums: 1 2\ntarget: 3\n", "nums: 4 5 6\n", "x\n"],
                        max_new_tokens=7, generator=torch.Generator().manual_seed(1))
    batch = RoutingBatch.from_rollouts(rollouts, torch.zeros(rollouts.response_mask.shape))
    fn = build_routing_signal(signal, task=None, tokenizer=tok)
    rows = []
    model.get_decoder().register_forward_hook(
        lambda module, args, out: rows.append(out.last_hidden_state.shape[0]))
    whole = fn(model, batch, temperature=1.0)
    assert rows == [3]
    rows.clear()
    cut = fn(model, batch, temperature=1.0, memory_budget=1)  # one response per pass
    assert rows == [1, 1, 1]
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-6)


def test_kv_budget_batch_size_by_hand():
    from dasd.models import make_char_tokenizer
    from dasd.rollout.hf import kv_budget_batch_size
    from tests.fixtures_models import random_qwen3

    tok = make_char_tokenizer()
    model = random_qwen3(tok)  # 2 layers, 2 KV heads of dim 16, float32: 512 B per token
    prompts = ["abc", "abcdefg"]  # 7 tokens at most
    per_row = 2 * 2 * 2 * 16 * 4 * (7 + 9)
    assert kv_budget_batch_size(model, tok, prompts, max_new_tokens=9,
                                budget_gb=3.5 * per_row / 2**30, cap=128) == 3
    assert kv_budget_batch_size(model, tok, prompts, max_new_tokens=9,
                                budget_gb=3.5 * per_row / 2**30, cap=2) == 2
    assert kv_budget_batch_size(model, tok, prompts, max_new_tokens=9, dtype=torch.bfloat16,
                                budget_gb=3.5 * per_row / 2**30, cap=128) == 7
    import probes.evaluate as evaluate

    with pytest.raises(ValueError, match="kv_cache_budget_gb"):
        evaluate.EvalConfig(kv_cache_budget_gb=0.0)
