"""Tests of ``dasd.models`` and ``dasd._tiny_recipe``: tokenizer, cache, loading, tiny build."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import platformdirs
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import dasd.models as dm
from dasd._tiny_recipe import IGNORE_INDEX, batch_order, collate, encode_pairs, lr_at
from dasd.models import (
    RECIPE_FILE,
    TinyRecipe,
    build_tiny_model,
    cache_dir,
    ensure_tiny_model,
    load_model,
    make_char_tokenizer,
    tiny_model_path,
)

TRACE = "nums: 3 7 8\ntarget: 29\n8*3=24\n24+7=31\nwait, 31 is not 29\n7*3=21\n21+8=29\nanswer: (7*3)+8"


def test_char_tokenizer_round_trip_and_autotokenizer_reload(tmp_path: Path) -> None:
    tok = make_char_tokenizer()
    ids = tok(TRACE, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TRACE)
    assert tok.decode(ids) == TRACE
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("é", add_special_tokens=False)["input_ids"] == [2]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(TRACE, add_special_tokens=False)["input_ids"] == ids
    assert again.padding_side == "left"
    batch = again(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [0, 0]
    assert batch["attention_mask"][0] == [0, 0, 1, 1]


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASD_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DASD_CACHE_DIR")
    assert cache_dir() == Path(platformdirs.user_cache_dir("dasd"))


def _save_random_qwen3(path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8, max_position_embeddings=64)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_load_model_local_dir_left_pads_with_pad_token(tmp_path: Path) -> None:
    _save_random_qwen3(tmp_path, make_char_tokenizer())
    model, tok = load_model(str(tmp_path), dtype=torch.float64)
    assert isinstance(model, Qwen3ForCausalLM)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float64
    assert tok.padding_side == "left"
    assert tok.pad_token == "<pad>"
    assert model.generation_config.pad_token_id == 0


def test_load_model_falls_back_to_eos_for_padding(tmp_path: Path) -> None:
    inner = Tokenizer(models.WordLevel(vocab={"<eos>": 0, "a": 1, "<unk>": 2}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<eos>", unk_token="<unk>",
                                  padding_side="right")
    _save_random_qwen3(tmp_path, tok)
    model, loaded = load_model(tmp_path)
    assert loaded.padding_side == "left"
    assert loaded.pad_token == "<eos>"
    assert loaded.pad_token_id == 0
    assert model.generation_config.pad_token_id == 0


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "a/b/c", "~/no-such-model"])
def test_missing_local_path_is_a_one_line_error(name: str) -> None:
    with pytest.raises(FileNotFoundError, match="no model directory at") as err:
        load_model(name)
    assert "\n" not in str(err.value)


def test_a_file_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))


def test_hub_ids_pass_through_unchanged() -> None:
    assert dm._resolve("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    assert dm._resolve("gpt2") == "gpt2"


def test_encode_and_collate_mask_the_prompt_and_padding() -> None:
    tok = make_char_tokenizer()
    encoded = encode_pairs([("ab\n", "1"), ("a\n", "12")], tok, max_positions=8)
    assert encoded == [(tok("ab\n1")["input_ids"] + [1], 3), (tok("a\n12")["input_ids"] + [1], 2)]
    ids, labels = collate(encoded, pad_id=0)
    assert ids.shape == (2, 5)
    assert ids[0, -1].item() == 1 and ids[1, -1].item() == 1
    ignore = IGNORE_INDEX
    assert labels[0].tolist() == [ignore, ignore, ignore, ids[0, 3].item(), 1]
    assert labels[1].tolist() == [ignore, ignore, ids[1, 2].item(), ids[1, 3].item(), 1]
    with pytest.raises(ValueError, match="max_positions"):
        encode_pairs([("ab\n", "123")], tok, max_positions=4)


def test_batch_order_covers_each_epoch_and_buckets_lengths() -> None:
    lengths = [7, 3, 9, 1, 5, 2, 8, 6]
    order = batch_order(lengths, steps=8, batch_size=2, pool_batches=4, seed=3)
    assert len(order) == 8
    # one pool per epoch: each epoch's batches are the length-sorted pairs, in shuffled order
    by_length = [{3, 5}, {1, 4}, {7, 0}, {6, 2}]
    for epoch in (order[:4], order[4:]):
        assert sorted(map(sorted, map(set, epoch))) == sorted(map(sorted, by_length))
    assert order == batch_order(lengths, steps=8, batch_size=2, pool_batches=4, seed=3)
    assert order != batch_order(lengths, steps=8, batch_size=2, pool_batches=4, seed=4)
    small_pools = batch_order(lengths, steps=3, batch_size=3, pool_batches=1, seed=0)
    assert sorted(map(len, small_pools)) == [2, 3, 3]
    assert sorted(i for b in small_pools for i in b) == list(range(8))


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    r = TinyRecipe(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, r) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, r) == pytest.approx(1.0)
    assert lr_at(9, r) == pytest.approx(0.55)
    assert lr_at(14, r) == pytest.approx(0.1)


def test_recipe_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TinyRecipe(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="privileged_fraction"):
        TinyRecipe(privileged_fraction=1.5)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        TinyRecipe(steps=0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_fast_build_is_deterministic_atomic_and_loadable(tmp_path: Path) -> None:
    fast = TinyRecipe.fast()
    state = torch.random.get_rng_state()
    a = build_tiny_model(tmp_path / "a", seed=1, progress=False, recipe=fast)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_model(tmp_path / "b", seed=1, progress=False, recipe=fast)
    c = build_tiny_model(tmp_path / "c", seed=2, progress=False, recipe=fast)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    stats = json.loads((a / RECIPE_FILE).read_text())
    assert stats["recipe"]["steps"] == fast.steps
    assert stats["seed"] == 1
    assert stats["n_pairs"] == fast.n_examples
    model, tok = load_model(a)
    assert model.config.hidden_size == fast.hidden_size
    assert model.generation_config.eos_token_id == tok.eos_token_id == 1
    with pytest.raises(FileExistsError, match="already exists"):
        build_tiny_model(a, progress=False, recipe=fast)


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object, **kwargs: object) -> list[float]:
        raise KeyboardInterrupt

    monkeypatch.setattr(dm, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_model(tmp_path / "m", progress=False, recipe=TinyRecipe.fast())
    assert list(tmp_path.iterdir()) == []


def test_cache_path_tracks_recipe_and_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASD_CACHE_DIR", str(tmp_path))
    fast = TinyRecipe.fast()
    path = tiny_model_path(seed=0, recipe=fast)
    assert path.parent == tmp_path
    assert path.name.startswith(f"tiny-v{dm.TINY_RECIPE_VERSION}-") and path.name.endswith("-seed0")
    assert tiny_model_path(seed=0, recipe=fast) == path
    assert tiny_model_path(seed=1, recipe=fast) != path
    assert tiny_model_path(seed=0, recipe=TinyRecipe(hidden_size=64)) != path
    assert tiny_model_path(seed=0) != path


def test_concurrent_first_use_builds_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DASD_CACHE_DIR", str(tmp_path))
    fast = TinyRecipe.fast()
    stale = tiny_model_path(recipe=fast)
    stale.with_name(f".{stale.name}.tmp-1-dead").mkdir()
    builds: list[Path] = []
    real_build = dm.build_tiny_model

    def counting_build(out_dir: Path, **kwargs: object) -> Path:
        builds.append(out_dir)
        return real_build(out_dir, **kwargs)

    monkeypatch.setattr(dm, "build_tiny_model", counting_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_tiny_model(progress=False, recipe=fast))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [stale, stale]
    assert builds == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale.name, stale.name + ".lock"]
    assert ensure_tiny_model(progress=False, recipe=fast) == stale
    assert len(builds) == 1


def _sampled_rewards(model: Qwen3ForCausalLM, tok: PreTrainedTokenizerFast, task: object,
                     problems: list, prompts: list[str]) -> tuple[list[float], list[str]]:
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=256)
    responses = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [task.reward(p, r) for p, r in zip(problems, responses)], responses


@pytest.mark.slow
def test_real_tiny_model_is_a_usable_world(tmp_path: Path) -> None:
    """DESIGN.md section 5: accuracy well inside (0, 1), markers, and a teacher that helps."""
    from dasd.tasks import get_task
    from dasd.tasks.countdown import MARKERS

    model, tok = load_model(build_tiny_model(tmp_path / "tiny", seed=0, progress=False))
    task = get_task("countdown")
    problems = [p for p in task.sample(32, split="eval", seed=7) for _ in range(4)]
    student, responses = _sampled_rewards(
        model, tok, task, problems, [task.student_prompt(p) for p in problems])
    teacher, _ = _sampled_rewards(
        model, tok, task, problems, [task.teacher_prompt(p) for p in problems])
    accuracy, teacher_accuracy = sum(student) / len(student), sum(teacher) / len(teacher)
    assert 0.0 < accuracy < 1.0
    assert teacher_accuracy > accuracy
    assert any(word in r for r in responses for word in MARKERS)
