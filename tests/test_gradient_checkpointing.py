"""``TrainConfig.gradient_checkpointing`` on a tiny random Qwen3: the same update as without it,
layers really recomputed in the backward pass, recorded in the manifest, no-grad passes as before."""

from __future__ import annotations

import pytest
import torch

from dasd.runlog import read_manifest
from dasd.trainer import TrainConfig, Trainer


def _config(model_dir, **overrides):
    values = {
        "model": str(model_dir), "steps": 1, "prompts_per_step": 2, "group_size": 4,
        "mini_batch_size": 8, "micro_batch_size": 2, "max_new_tokens": 12, "eval_every": 0,
        "eval_prompts": 2, "eval_k": 2, "lr": 1e-3, "beta": 1.0, "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig(**values)


class _Calls:
    """Counts runs of the first decoder layer's MLP ``forward`` (wrapped on the instance): a
    checkpointed layer runs it again in the backward pass."""

    def __init__(self, model):
        self.n = 0
        mlp = model.model.layers[0].mlp
        forward = mlp.forward

        def counted(*args, **kwargs):
            self.n += 1
            return forward(*args, **kwargs)

        mlp.forward = counted


def _update(model_dir, tmp_path, name, **overrides):
    trainer = Trainer.start(_config(model_dir, **overrides), tmp_path / name)
    calls = _Calls(trainer.model)
    metrics = trainer.update(1)
    grads = [p.grad.detach().clone() for p in trainer.model.parameters()]
    params = [p.detach().clone() for p in trainer.model.parameters()]
    return trainer, metrics, grads, params, calls.n


@pytest.mark.parametrize("method", ["grpo", "opsd"])
def test_checkpointed_update_equals_the_plain_one(model_dir, tmp_path, method):
    _, plain, plain_grads, plain_params, plain_calls = _update(
        model_dir, tmp_path, "plain", method=method)
    trainer, ckpt, ckpt_grads, ckpt_params, ckpt_calls = _update(
        model_dir, tmp_path, "ckpt", method=method, gradient_checkpointing=True)
    # one optimizer step over 8 responses in micro-batches of 2: 4 training forward passes,
    # each replayed once in backward; generation and (teacher) scoring passes are not replayed
    assert ckpt_calls - plain_calls == 4
    for key in ("loss/total", "loss/policy", "loss/kl", "optim/grad_norm", "train/entropy_mean",
                "train/reward"):
        assert ckpt[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key
    if method == "opsd":
        assert ckpt["loss/kl"] > 0
    for a, b in zip(ckpt_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(ckpt_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(layer.gradient_checkpointing for layer in trainer.model.model.layers)


def test_option_is_recorded_and_off_by_default(model_dir, tmp_path):
    assert TrainConfig().gradient_checkpointing is False
    trainer = Trainer.start(_config(model_dir, gradient_checkpointing=True), tmp_path / "run")
    assert read_manifest(tmp_path / "run")["config"]["gradient_checkpointing"] is True
    plain = Trainer.start(_config(model_dir), tmp_path / "plain")
    assert read_manifest(tmp_path / "plain")["config"]["gradient_checkpointing"] is False
    assert not any(layer.gradient_checkpointing for layer in plain.model.model.layers)
    # eval-mode and no-grad passes run unchanged (and are not replayed)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        a = trainer.model(input_ids=ids).logits
        b = plain.model(input_ids=ids).logits
    assert torch.equal(a, b)
