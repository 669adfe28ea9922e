"""Routing signals (dasd.routing, Table 12) on hand-made batches: hand-computed values, the
model-based signals against naive autograd / output_attentions references on a tiny random
Qwen3, the registry, the router's invariance the module relies on, and the trainer's hook."""

import math

import numpy as np
import pytest
import torch

from dasd.advantages import METHOD_GAP_SCALE, dasd_advantages
from dasd.models import load_model
from dasd.routing import (FREQUENCY_CORPUS_SIZE, ROUTING_SIGNALS, RoutingBatch, attention_entropy,
                          build_routing_signal, corpus_counts, output_grad_norm, relative_position,
                          token_rarity)
from dasd.runlog import read_rollouts
from dasd.tasks.base import Problem
from dasd.trainer import TrainConfig, Trainer

S1, S3 = math.sin(math.pi / 8), math.sin(3 * math.pi / 8)


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    return load_model(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def batch(model_and_tokenizer):
    """Two responses (3 and 2 tokens) after prompts of 4 and 2 tokens (left-padded)."""
    _, tok = model_and_tokenizer
    prompts = [tok("3 7 8:", add_special_tokens=False)["input_ids"][:4],
               tok("29", add_special_tokens=False)["input_ids"]]
    responses = [tok("a+b", add_special_tokens=False)["input_ids"],
                 tok("wa", add_special_tokens=False)["input_ids"]]
    pad = tok.pad_token_id
    prompt_ids = torch.tensor([prompts[0], [pad, pad, *prompts[1]]])
    prompt_mask = torch.tensor([[True] * 4, [False, False, True, True]])
    response_ids = torch.tensor([responses[0], [*responses[1], pad]])
    response_mask = torch.tensor([[True, True, True], [True, True, False]])
    entropy = torch.tensor([[0.5, 1.0, 2.0], [0.25, 3.0, 0.0]])
    return RoutingBatch(prompt_ids, prompt_mask, response_ids, response_mask, entropy), (
        prompts, responses)


# ---------------------------------------------------------------- pure math, by hand


def test_relative_position_by_hand():
    mask = torch.tensor([[True] * 4, [True, False, False, False], [False] * 4])
    expected = torch.tensor([[S1, S3, S3, S1], [1.0, 0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(relative_position(mask), expected)


def test_corpus_counts_and_token_rarity_by_hand():
    counts = corpus_counts([[0, 0, 1], [0, 5, -1]], 4)  # 5 and -1 are outside [0, 4)
    assert counts.tolist() == [3, 1, 0, 0]
    ids = torch.tensor([[0, 1, 2, 7], [1, 0, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, False, False, False]])
    # N + V = 4 + 4 = 8: -log(4/8), -log(2/8), -log(1/8); id 7 is unseen (c = 0).
    expected = torch.tensor([[math.log(2), math.log(4), math.log(8), math.log(8)],
                             [math.log(4), 0, 0, 0]])
    torch.testing.assert_close(token_rarity(ids, mask, counts), expected)


def test_output_grad_norm_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2 * math.log(3), 0.0]])
    hidden = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    # p = [.5, .5], o = 0: ||(.5, -.5)|| * 5 = 3.5355. T = 2: p = [.75, .25], o = 1:
    # ||(-.75, .75)|| * 5 / 2 = 2.6517.
    plain = output_grad_norm(logits[:1], hidden[:1], torch.tensor([0]))
    hot = output_grad_norm(logits[1:], hidden[1:], torch.tensor([1]), temperature=2.0)
    torch.testing.assert_close(plain, torch.tensor([5 * math.sqrt(0.5)]))
    torch.testing.assert_close(hot, torch.tensor([2.5 * math.sqrt(2 * 0.75**2)]))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_output_grad_norm_is_the_unembedding_gradient_norm(temperature, chunk_size):
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    hidden = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 3), generator=gen)
    expected = torch.empty(2, 3, dtype=torch.float64)
    for i in range(2):
        for t in range(3):
            w = head.clone().requires_grad_()
            logp = torch.log_softmax(w @ hidden[i, t] / temperature, -1)[targets[i, t]]
            (grad,) = torch.autograd.grad(logp, w)
            expected[i, t] = grad.norm()
    got = output_grad_norm(hidden @ head.T, hidden, targets, temperature=temperature,
                           chunk_size=chunk_size)
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


def test_attention_entropy_by_hand():
    uniform, onehot, half = [0.25] * 4, [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]
    weights = torch.tensor([[[uniform, half], [onehot, half]]])  # (b=1, heads=2, q=2, k=4)
    expected = torch.tensor([[math.log(4) / 2, math.log(2)]])
    torch.testing.assert_close(attention_entropy(weights), expected)


def test_the_router_sees_only_the_signals_shape_within_a_trajectory():
    gen = torch.Generator().manual_seed(3)
    signal, slp, tlp = (torch.randn(4, 7, generator=gen) for _ in range(3))
    mask = torch.arange(7) < torch.tensor([[7], [5], [1], [0]])
    common = {"beta": 0.5, "rho": 0.2}
    base = dasd_advantages(torch.zeros(4), signal, slp, tlp, mask, **common)
    moved = dasd_advantages(torch.zeros(4), 3 * signal + 5, slp, tlp, mask, **common)
    torch.testing.assert_close(moved.omega, base.omega, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- signals on a model


def test_registry_names_and_unknown_name():
    assert ROUTING_SIGNALS.names() == ["attention", "entropy", "frequency", "grad_norm",
                                       "position"]
    with pytest.raises(ValueError, match="unknown routing signal 'bogus'; valid: attention, "
                                         "entropy, frequency, grad_norm, position"):
        build_routing_signal("bogus", task=None, tokenizer=None)


def test_entropy_and_position_signals(model_and_tokenizer, batch):
    model, tok = model_and_tokenizer
    routing, _ = batch
    entropy = build_routing_signal("entropy", task=None, tokenizer=tok)
    assert entropy(model, routing, temperature=1.0) is routing.entropy
    position = build_routing_signal("position", task=None, tokenizer=tok)
    half = math.sqrt(0.5)  # sin(pi / 4) = sin(3 pi / 4)
    expected = torch.tensor([[0.5, 1.0, 0.5], [half, half, 0.0]])
    torch.testing.assert_close(position(model, routing, temperature=1.0), expected)


class ReferenceTask:
    """A task whose training problems' references are "ab" and "a"."""

    def __init__(self):
        self.calls = []

    def sample(self, n, *, split="train", seed=0):
        self.calls.append((n, split, seed))
        return [Problem(id=str(i), question="q", answer="", reference=ref)
                for i, ref in enumerate(["ab", "a"])]


def test_frequency_signal_counts_the_training_references(model_and_tokenizer, batch):
    model, tok = model_and_tokenizer
    routing, _ = batch
    task = ReferenceTask()
    signal = build_routing_signal("frequency", task=task, tokenizer=tok)
    assert task.calls == [(FREQUENCY_CORPUS_SIZE, "train", 0)]
    got = signal(model, routing, temperature=1.0)
    # Corpus "ab" + "a": N = 3 tokens, c(a) = 2, c(b) = 1; N + V = 3 + len(tok).
    total = 3 + len(tok)
    a, b, unseen = math.log(total / 3), math.log(total / 2), math.log(total)
    expected = torch.tensor([[a, unseen, b], [unseen, a, 0.0]])  # "a+b", "wa"
    torch.testing.assert_close(got, expected)


def test_grad_norm_signal_is_the_per_token_lm_head_gradient(model_and_tokenizer, batch):
    model, tok = model_and_tokenizer
    routing, (prompts, responses) = batch
    temperature = 0.8
    got = build_routing_signal("grad_norm", task=None, tokenizer=tok)(
        model, routing, temperature=temperature)
    head = model.get_output_embeddings().weight
    expected = torch.zeros(2, 3)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([prompt + response])
        for j, token in enumerate(response):
            logits = model(input_ids=ids).logits[0, len(prompt) + j - 1]
            logp = torch.log_softmax(logits / temperature, -1)[token]
            (grad,) = torch.autograd.grad(logp, head)
            expected[i, j] = grad.norm()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_attention_signal_is_the_mean_head_entropy(model_and_tokenizer, batch):
    model, tok = model_and_tokenizer
    routing, (prompts, responses) = batch
    before = model.config._attn_implementation
    got = build_routing_signal("attention", task=None, tokenizer=tok)(
        model, routing, temperature=1.0)
    assert model.config._attn_implementation == before, "eager attention must be undone"
    expected = torch.zeros(2, 3)
    model.set_attn_implementation("eager")
    try:
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            with torch.no_grad():
                out = model(input_ids=torch.tensor([prompt + response]), output_attentions=True)
            for j in range(len(response)):
                q = len(prompt) + j - 1
                per_layer = []
                for layer in out.attentions:
                    a = layer[0, :, q, : q + 1].double()
                    per_layer.append(-(a * a.log()).sum(-1).mean())
                expected[i, j] = torch.stack(per_layer).mean().float()
    finally:
        model.set_attn_implementation(before)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert bool((got[:, :2] > 0).all()) and got[1, 2] == 0


# ---------------------------------------------------------------- the trainer's hook


def small_config(model_dir, **overrides):
    values = {
        "model": str(model_dir), "steps": 1, "prompts_per_step": 2, "group_size": 4,
        "mini_batch_size": 8, "micro_batch_size": 8, "max_new_tokens": 10, "eval_every": 0,
        "eval_prompts": 2, "eval_k": 2, "log_rollouts_every": 1, "lr": 1e-3, "beta": 1.0,
        "device": "cpu",
    }
    return TrainConfig(**{**values, **overrides})


def test_unknown_routing_is_refused(model_dir):
    with pytest.raises(ValueError, match="unknown routing signal 'rarity'"):
        small_config(model_dir, routing="rarity")


def _padded(column):
    width = max(len(v) for v in column)
    return torch.tensor(np.stack([np.pad(np.asarray(v, dtype=np.float32), (0, width - len(v)))
                                  for v in column]))


@pytest.mark.parametrize("routing", ["entropy", "position", "frequency", "grad_norm",
                                     "attention"])
def test_the_trainer_routes_by_the_configured_signal(routing, model_dir, tmp_path):
    trainer = Trainer.start(small_config(model_dir, routing=routing), tmp_path / "run")
    metrics = trainer.update(1)
    assert all(math.isfinite(v) for v in metrics.values())
    frame = read_rollouts(tmp_path / "run", split="train", step=1)
    mask = _padded([[1.0] * n for n in frame["n_tokens"]]).bool()
    slp, tlp, omega = (_padded(frame[c]) for c in ("student_logp", "teacher_logp", "omega"))
    entropy = _padded(frame["entropy"])
    signals = {"entropy": entropy, "position": relative_position(mask)}
    if routing in signals:
        routed = dasd_advantages(torch.zeros(len(frame)), signals[routing], slp, tlp, mask,
                                 beta=1.0, rho=0.2, gap_scale=METHOD_GAP_SCALE)
        torch.testing.assert_close(omega, routed.omega, rtol=1e-4, atol=1e-5)
    by_entropy = dasd_advantages(torch.zeros(len(frame)), entropy, slp, tlp, mask, beta=1.0,
                                 rho=0.2, gap_scale=METHOD_GAP_SCALE)
    assert torch.equal(omega, by_entropy.omega) == (routing == "entropy")
