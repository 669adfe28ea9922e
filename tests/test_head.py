"""The output layer fused with entropy / log-prob (``dasd.entropy.head_entropy_and_logprob``)
and the float32 output layer of every path (``dasd.head``, ``dasd.scoring``): agreement with
the naive full-logits reference (values and gradients, random shapes, seeds, chunk sizes,
temperatures, padding), memory that scales with the chunk and not with the sequence, and a
bf16 model's scores against the float32-upcast reference and the naive bf16 log-softmax."""

from __future__ import annotations

import pytest
import torch

from dasd.entropy import head_entropy_and_logprob
from dasd.head import head_logits, output_layer
from dasd.scoring import response_hidden, response_logits, response_token_stats
from tests.test_memory_scale import _FullSize


def _naive(hidden, weight, bias, ids, temperature):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    logp = torch.log_softmax(z / temperature, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    return ent, logp.gather(-1, ids[..., None].long()).squeeze(-1)


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 9, (4,), generator=g) * torch.tensor([1, 2, 3, 5])
    b, t, d, v = (int(x) for x in sizes)
    hidden = torch.randn(b, t, d, generator=g, dtype=torch.float64) * 2
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) / d**0.5
    bias = torch.randn(v, generator=g, dtype=torch.float64) if seed % 2 else None
    ids = torch.randint(0, v, (b, t), generator=g)
    chunk = int(torch.randint(1, b * t + 2, (1,), generator=g))
    temperature = [1.0, 0.6, 1.7][seed % 3]
    return hidden, weight, bias, ids, chunk, temperature


def test_hand_computed_two_tokens():
    # logits z = h W^T: [0, log 3] -> p = [1/4, 3/4]; H = -(1/4 log 1/4 + 3/4 log 3/4)
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    weight = torch.tensor([[0.0], [torch.log(torch.tensor(3.0))]], dtype=torch.float64)
    ent, lp = head_entropy_and_logprob(hidden, weight, torch.tensor([1]))
    h = -(0.25 * torch.log(torch.tensor(0.25)) + 0.75 * torch.log(torch.tensor(0.75)))
    assert ent.item() == pytest.approx(h.item(), abs=1e-7)
    assert lp.item() == pytest.approx(torch.log(torch.tensor(0.75)).item(), abs=1e-7)


@pytest.mark.parametrize("seed", range(8))
def test_forward_and_gradients_match_the_full_logits_reference(seed):
    hidden, weight, bias, ids, chunk, temperature = _case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    g_ent = torch.randn(ids.shape, generator=g, dtype=torch.float64)
    g_lp = torch.randn(ids.shape, generator=g, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (hidden, weight)]
    if bias is not None:
        leaves.append(bias.clone().requires_grad_())
    b = leaves[2] if bias is not None else None
    ent, lp = head_entropy_and_logprob(leaves[0], leaves[1], ids, bias=b, chunk_size=chunk,
                                       temperature=temperature)
    ref_ent, ref_lp = _naive(*leaves[:2], b, ids, temperature)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    ours = torch.autograd.grad((ent.double() * g_ent + lp.double() * g_lp).sum(), leaves)
    ref = torch.autograd.grad((ref_ent * g_ent + ref_lp * g_lp).sum(), leaves)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_only_one_output_needs_a_gradient():
    hidden, weight, bias, ids, chunk, temperature = _case(3)
    for pick in (0, 1):
        h = hidden.clone().requires_grad_()
        out = head_entropy_and_logprob(h, weight, ids, bias=bias, chunk_size=chunk,
                                       temperature=temperature)[pick]
        ref = _naive(h, weight, bias, ids, temperature)[pick]
        (ours,) = torch.autograd.grad(out.double().sum(), h)
        (want,) = torch.autograd.grad(ref.sum(), h)
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)


def test_padding_rows_change_nothing_and_get_no_gradient():
    hidden, weight, bias, ids, _, _ = _case(5)
    padded = torch.cat([hidden, torch.randn(2, *hidden.shape[1:], dtype=hidden.dtype)])
    padded_ids = torch.cat([ids, torch.zeros(2, ids.shape[1], dtype=ids.dtype)])
    mask = torch.arange(padded.shape[0])[:, None] < hidden.shape[0]
    h = padded.clone().requires_grad_()
    ent, lp = head_entropy_and_logprob(h, weight, padded_ids, bias=bias, chunk_size=3)
    ref_ent, ref_lp = head_entropy_and_logprob(hidden, weight, ids, bias=bias, chunk_size=7)
    torch.testing.assert_close(ent[: hidden.shape[0]], ref_ent, rtol=0, atol=1e-12)
    torch.testing.assert_close(lp[: hidden.shape[0]], ref_lp, rtol=0, atol=1e-12)
    (torch.where(mask, lp, 0).sum()).backward()
    assert h.grad[hidden.shape[0]:].abs().max() == 0


def test_bad_inputs_fail_with_one_line_errors():
    h, w = torch.randn(2, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="weight"):
        head_entropy_and_logprob(h, torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="token_ids must lie in"):
        head_entropy_and_logprob(h, w, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="temperature"):
        head_entropy_and_logprob(h, w, torch.tensor([0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="NaN/inf"):
        head_entropy_and_logprob(h * float("nan"), w, torch.tensor([0, 1]))


@pytest.mark.parametrize("t", [64, 512])
def test_memory_scales_with_the_chunk_not_the_sequence(t):
    """No tensor of forward or backward has N x V elements, and the largest float32 one is
    bounded by the chunk (or by the weight and hidden-state gradients), whatever T is; the
    naive path (full logits, then a log-softmax) makes several."""
    b, d, v, chunk = 2, 16, 4000, 32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, d, generator=g).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / 4).requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=g)
    n = b * t
    with _FullSize(n * v) as fused:
        ent, lp = head_entropy_and_logprob(hidden, weight, ids, chunk_size=chunk)
        (ent.sum() + lp.sum()).backward()
    assert fused.count == 0
    assert fused.largest_f32 <= max(chunk * v, v * d, n * d)
    with _FullSize(n * v) as naive:
        logp = torch.log_softmax(hidden @ weight.T, -1)
        (-(logp.exp() * logp).sum(-1).sum() + logp.gather(-1, ids[..., None]).sum()).backward()
    assert naive.count >= 3


# --------------------------------------------------------------------------- the model paths


@pytest.fixture(scope="module")
def model_and_batch():
    from dasd.models import make_char_tokenizer
    from dasd.rollout import generate
    from tests.fixtures_models import random_qwen3

    tok = make_char_tokenizer()
    model = random_qwen3(tok, seed=4)
    rollouts = generate(model, tok, ["nums: 3 5 7\ntarget: 15\n", "nums: 2\ntarget: 2\n"] * 2,
                        max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    return model, (rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids)


def test_fused_path_equals_the_full_logits_path(model_and_batch):
    model, (p_ids, p_mask, r_ids) = model_and_batch
    ent, lp = response_token_stats(model, p_ids, p_mask, r_ids, chunk_size=3)
    logits = model(input_ids=torch.cat([p_ids, r_ids], 1),
                   attention_mask=torch.cat([p_mask, torch.ones_like(r_ids, dtype=torch.bool)],
                                            1).long()).logits
    assert output_layer(model) is not None
    ref = torch.log_softmax(logits[:, p_ids.shape[1] - 1:-1].double(), -1)
    torch.testing.assert_close(lp.double(), ref.gather(-1, r_ids[..., None]).squeeze(-1),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent.double(), -(ref.exp() * ref).sum(-1), rtol=1e-4, atol=1e-4)
    assert response_logits(model, p_ids, p_mask, r_ids).dtype == torch.float32


def test_bf16_model_scores_are_the_float32_upcast_ones(model_and_batch):
    """A bf16 model: our entropy and log-probs equal those of its output layer upcast to
    float64, to float32 accuracy; bf16 logits with a bf16 log-softmax (the naive path) differ
    by far more, also under bf16 autocast."""
    model, (p_ids, p_mask, r_ids) = model_and_batch
    bf16 = type(model)(model.config).to(torch.bfloat16).eval()
    bf16.load_state_dict(model.state_dict())
    with torch.no_grad():
        hidden = response_hidden(bf16, p_ids, p_mask, r_ids)
        assert hidden.dtype == torch.bfloat16
        ref = torch.log_softmax(hidden.double() @ bf16.lm_head.weight.double().T, -1)
        ref_lp = ref.gather(-1, r_ids[..., None]).squeeze(-1)
        ref_ent = -(ref.exp() * ref).sum(-1)
        ent, lp = response_token_stats(bf16, p_ids, p_mask, r_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ent_amp, lp_amp = response_token_stats(bf16, p_ids, p_mask, r_ids)
        naive = torch.log_softmax(bf16.lm_head(hidden), -1)
    assert lp.dtype == ent.dtype == torch.float32
    ours = max((lp.double() - ref_lp).abs().max(), (ent.double() - ref_ent).abs().max())
    assert ours < 1e-5
    torch.testing.assert_close(lp_amp, lp, rtol=0, atol=0)
    torch.testing.assert_close(ent_amp, ent, rtol=0, atol=0)
    naive_err = (naive.gather(-1, r_ids[..., None]).squeeze(-1).double() - ref_lp).abs().mean()
    assert naive_err > 100 * ours
    assert head_logits(bf16, hidden).dtype == torch.float32
