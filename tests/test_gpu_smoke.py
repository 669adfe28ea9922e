"""``benchmarks.gpu_smoke`` at its CPU size: every part runs through the project's trainer,
scorer and engine, at the stated token counts, and the figures are consistent."""

from __future__ import annotations

import json
import math

from benchmarks.gpu_smoke import SIZES, main, synthetic_tokenizer


def test_synthetic_tokenizer_decodes_every_id():
    tok = synthetic_tokenizer(300)
    assert len(tok) == 300
    assert len(tok.decode(list(range(3, 300)))) == 297
    assert tok("nums: 1 2\n")["input_ids"] == synthetic_tokenizer(64)("nums: 1 2\n")["input_ids"]


def test_tiny_smoke_runs_every_part(tmp_path, capsys):
    out = tmp_path / "smoke.json"
    record = main(["--size", "tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    parts, size = record["parts"], SIZES["tiny"]
    assert list(parts) == ["update", "score fp32", "score bf16", "padding fp32", "padding bf16",
                           "ppo m=1", "ppo m=2", "generate"]
    assert not any("error" in stats for stats in parts.values())
    update = parts["update"]
    # a random model seldom emits EOS, so responses run (almost) to their limit
    assert 0.8 * 2 * 2 * size.update_tokens <= update["tokens"] <= 2 * 2 * size.update_tokens
    assert update["rollout_s"] + update["score_s"] + update["update_s"] <= update["seconds"]
    for name in ("score fp32", "score bf16", "ppo m=1", "ppo m=2"):
        assert parts[name]["tokens"] == 2 * size.long_tokens
    # micro-batches of 1 and 2 accumulate the same gradient (weights moved by one tiny step)
    g1, g2 = parts["ppo m=1"]["grad_norm"], parts["ppo m=2"]["grad_norm"]
    assert g1 > 0 and math.isclose(g1, g2, rel_tol=1e-3)
    assert 0 < parts["score bf16"]["mean_abs_dlogp"] < 0.1
    assert parts["padding fp32"]["pad_tokens"] == 57
    assert parts["padding fp32"]["max_abs_dlogp"] < 1e-5
    stated = size.generate_prompts * size.generate_tokens
    assert 0.8 * stated <= parts["generate"]["tokens"] <= stated
    printed = capsys.readouterr().out
    assert "gpu_smoke --size tiny" in printed and "ppo m=2" in printed
