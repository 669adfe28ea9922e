"""dasd.integrations.verl: the tensor functions in the project environment (no verl), and, where
verl 0.9 imports (a separate environment: it pins transformers<5.11), DASDRayPPOTrainer's hooks
run on verl's own DataProto, padding, GRPO advantage and rollout-dump code with a stand-in
worker group that runs a tiny random Qwen3 on CPU. The recipe config is composed with verl's
hydra config there too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dasd.advantages import METHOD_GAP_SCALE, dasd_advantages, group_advantages
from dasd.integrations import DASDSettings
from dasd.integrations.verl import (
    ENTROPY_KEY,
    OMEGA_KEY,
    TEACHER_LOGP_KEY,
    dasd_batch_advantages,
    encode_teacher_prompts,
    rollout_dump_columns,
    settings_from_config,
    teacher_inputs,
    uid_group_advantages,
)
from dasd.models import load_model
from dasd.rollout.hf import encode_prompts
from dasd.scoring import score_responses

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}>{% endif %}")


def test_integrations_import_without_trl_verl_accelerate():
    code = ("import sys, dasd, dasd.integrations, dasd.integrations.verl, analysis.importers; "
            "print(sorted(m for m in ('trl', 'verl', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_uid_groups_match_group_advantages_in_any_order():
    # rewards [1, 0, 0, 0] -> [1.5, -0.5, -0.5, -0.5]; [1, 0] -> +-1/sqrt(2); a lone row -> 0
    scores = torch.tensor([0.0, 1.0, 0.0, 5.0, 0.0, 1.0, 0.0])
    uid = np.array(["a", "b", "a", "c", "a", "a", "b"], dtype=object)
    out = uid_group_advantages(scores, uid)
    expected = [-0.5, 2 ** -0.5, -0.5, 0.0, -0.5, 1.5, -(2 ** -0.5)]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-5)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(uid_group_advantages(scores[perm], uid[perm.numpy()]), out[perm])
    with pytest.raises(ValueError, match="one uid per row"):
        uid_group_advantages(scores, uid[:3])


def verl_like_batch(seed: int = 0, rows: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 1, 5])[:rows]
    mask = torch.arange(width)[None] < lengths[:, None]
    rewards = torch.zeros(rows, width)
    rewards[torch.arange(rows), lengths - 1] = torch.tensor([1.0, 0.0, 0.0, 1.0])[:rows]
    return {
        "responses": torch.randint(3, 40, (rows, width), generator=g).masked_fill(~mask, 0),
        "response_mask": mask.long(),
        "token_level_rewards": rewards,
        "old_log_probs": -torch.rand(rows, width, generator=g) * 3,
        ENTROPY_KEY: torch.rand(rows, width, generator=g) * 2,
        TEACHER_LOGP_KEY: -torch.rand(rows, width, generator=g) * 3,
    }


def test_batch_advantages_equal_dasd_advantages_on_the_same_tensors():
    batch = verl_like_batch()
    uid = np.array(["p", "p", "q", "q"], dtype=object)
    settings = DASDSettings(beta=0.3, options={"direction": "hard"})
    tensors, metrics = dasd_batch_advantages(batch, uid, settings)
    mask = batch["response_mask"].bool()
    group_adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    expected = dasd_advantages(group_adv, batch[ENTROPY_KEY], batch["old_log_probs"],
                               batch[TEACHER_LOGP_KEY], mask, beta=0.3, direction="hard",
                               gap_scale=METHOD_GAP_SCALE)
    torch.testing.assert_close(tensors["advantages"], expected.advantages, rtol=0, atol=1e-6)
    assert torch.equal(tensors["returns"], tensors["advantages"])
    torch.testing.assert_close(tensors[OMEGA_KEY], expected.omega)
    assert metrics["dasd/entropy_mean"] == pytest.approx(float(batch[ENTROPY_KEY][mask].mean()))
    assert metrics["dasd/omega_pos_frac"] == pytest.approx(
        float((expected.omega[mask] > 0).float().mean()))
    grpo, _ = dasd_batch_advantages(batch, uid, settings_from_config({"method": "grpo"}))
    torch.testing.assert_close(grpo["advantages"], torch.where(mask, group_adv[:, None], 0.0))
    del batch[TEACHER_LOGP_KEY]
    with pytest.raises(ValueError, match="lacks \\['dasd_teacher_log_probs'\\]") as err:
        dasd_batch_advantages(batch, uid, settings)
    assert "\n" not in str(err.value)


def test_settings_from_config_checks_keys_and_methods():
    assert settings_from_config(None) == DASDSettings()
    got = settings_from_config({"method": "dasd", "beta": 0.2, "options": {"gate": "none"}})
    assert (got.beta, dict(got.options)) == (0.2, {"gate": "none"})
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['lr'\\]"):
        settings_from_config({"lr": 1.0})
    with pytest.raises(ValueError, match="cannot run inside TRL or verl"):
        settings_from_config({"method": "sdpo"})


def test_teacher_inputs_layout_by_hand():
    out = teacher_inputs([[5, 6], [7]], torch.tensor([[1, 2, 0], [3, 0, 0]]),
                         torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]),
                         pad_token_id=0)
    assert out["prompts"].tolist() == [[5, 6], [0, 7]]
    assert out["input_ids"].tolist() == [[5, 6, 1, 2, 0], [0, 7, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 3], [0, 0, 1, 1, 1]]


def char_tokenizer():
    from dasd.models import make_char_tokenizer

    tok = make_char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_encode_teacher_prompts_strings_and_messages():
    tok = char_tokenizer()
    ids = encode_teacher_prompts(tok, ["ab", np.array([{"role": "user", "content": "ab"}])])
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    assert ids[0] == [a, b]
    assert ids[1] == [a, b, *tok.convert_tokens_to_ids(["\n", ">"])]
    with pytest.raises(ValueError, match="encodes to no tokens"):
        encode_teacher_prompts(tok, [""])


def test_teacher_layout_gives_dasd_scoring_teacher_logp(model_dir):
    """A causal LM run on teacher_inputs (attended tokens, these position ids) scores the
    responses exactly as dasd.scoring does with the teacher prompts."""
    model, tok = load_model(model_dir)
    teacher = ["ref: 1+2=3\nnums: 1 2\ntarget: 3\n", "ref: 2*2=4\nnums: 2 2\ntarget: 4\n"]
    responses = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = responses.ne(0)
    ids = encode_teacher_prompts(tok, teacher)
    t = teacher_inputs(ids, responses, mask.long(), mask.long(), pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                       position_ids=t["position_ids"]).logits
    width = responses.shape[1]
    logp = torch.log_softmax(logits[:, -width - 1:-1].float(), -1).gather(
        -1, responses[..., None]).squeeze(-1)
    t_ids, t_mask = encode_prompts(tok, teacher)
    ours = score_responses(model, responses, mask, t_ids, t_mask)  # student context = teacher's
    torch.testing.assert_close(logp[mask], ours.student_logp[mask], rtol=0, atol=1e-5)


def test_rollout_dump_columns_over_the_mask():
    batch = verl_like_batch()
    batch["advantages"] = torch.arange(24.0).view(4, 6)
    non_tensor = {"uid": np.array(["p", "p", "q", "q"], dtype=object),
                  "extra_info": np.array([{"prompt_id": f"cd-{i}"} for i in range(4)])}
    cols = rollout_dump_columns(batch, non_tensor)
    assert [len(v) for v in cols["token_ids"]] == [6, 3, 1, 5]
    assert cols["token_advantage"][2] == [12.0]
    assert cols["uid"] == ["p", "p", "q", "q"] and cols["prompt_id"][3] == "cd-3"
    assert all(isinstance(t, int) for t in cols["token_ids"][0])
    assert set(cols) == {"token_ids", "entropy", "student_logp", "teacher_logp",
                         "token_advantage", "uid", "prompt_id"}


# --------------------------------------------------------------------------- with verl installed


@pytest.fixture(scope="module")
def verl_modules():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo import ray_trainer
    from verl.utils import tensordict_utils as tu

    return DataProto, ray_trainer, tu, OmegaConf


class StandInWorkers:
    """verl's actor worker group for one CPU process: ``compute_log_prob`` runs the model over
    verl's no-padding batch (nested input_ids and position_ids) and returns per-position
    next-token log-probs and entropies as verl's engine does; ``update_actor`` records its
    batch."""

    def __init__(self, model, tu) -> None:
        self.model, self.tu, self.updates = model, tu, []

    def compute_log_prob(self, batch_td):
        ids, pos = batch_td["input_ids"], batch_td["position_ids"]
        logps, ents = [], []
        with torch.no_grad():
            for row_ids, row_pos in zip(ids.unbind(), pos.unbind()):
                logits = self.model(input_ids=row_ids[None], position_ids=row_pos[None]).logits[0]
                logp = torch.log_softmax(logits.float(), -1)
                nxt = torch.cat([row_ids[1:], row_ids[:1]])
                logps.append(logp.gather(-1, nxt[:, None]).squeeze(-1))
                ents.append(-(logp.exp() * logp).sum(-1))
        nested = {name: torch.nested.nested_tensor_from_jagged(torch.cat(v), offsets=ids.offsets())
                  for name, v in (("log_probs", logps), ("entropy", ents))}
        return self.tu.get_tensordict(nested, non_tensor_dict={"metrics": {"mfu": 0.0}})

    def update_actor(self, batch_td):
        self.updates.append(batch_td)
        return self.tu.get_tensordict({}, non_tensor_dict={"metrics": {"mfu": 0.0, "pg_loss": 0.5}})


def test_trainer_hooks_on_verl_structures(verl_modules, model_dir, tmp_path):
    """_compute_old_log_prob keeps the entropies and adds the teacher's log-probs (equal to
    dasd.scoring's), verl's GRPO advantages are replaced by DASD's before the actor update, and
    the rollout dump carries the per-token columns through dasd-analyze import."""
    from analysis.importers import import_verl
    from dasd.integrations.verl import dasd_trainer_class
    from dasd.runlog import read_rollouts

    DataProto, ray_trainer, tu, OmegaConf = verl_modules
    model, tok = load_model(model_dir)
    tok.chat_template = CHAT_TEMPLATE
    cls = dasd_trainer_class()
    trainer = object.__new__(cls)
    trainer.config = OmegaConf.create({
        "actor_rollout_ref": {"actor": {"calculate_entropy": False, "entropy_coeff": 0.0,
                                        "ppo_mini_batch_size": 2, "ppo_epochs": 1,
                                        "data_loader_seed": 0, "shuffle": False},
                              "rollout": {"multi_turn": {"enable": False}, "temperature": 1.0,
                                          "n": 2}},
        "data": {"apply_chat_template_kwargs": {}}, "distillation": None,
    })
    trainer.tokenizer, trainer.dasd = tok, DASDSettings(beta=0.5)
    trainer.actor_rollout_wg = StandInWorkers(model, tu)
    trainer.global_steps = 7
    trainer._init_dump_executor()

    student = ["nums: 1 2\ntarget: 3\n", "nums: 2 2\ntarget: 4\n"]
    teacher = [[{"role": "user", "content": "ref: 1+2=3\n" + s}] for s in student]
    rows = [0, 0, 1, 1]
    p_ids, p_mask = encode_prompts(tok, [student[r] for r in rows])
    responses = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0], [10, 1, 0, 0], [11, 12, 13, 14]])
    r_mask = responses.ne(0).long()
    attention = torch.cat([p_mask.long(), r_mask], 1)
    rewards = torch.zeros(4, 4)
    rewards[[0, 1, 2, 3], [3, 2, 1, 3]] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = DataProto.from_dict(
        tensors={"prompts": p_ids, "responses": responses, "response_mask": r_mask,
                 "input_ids": torch.cat([p_ids, responses], 1), "attention_mask": attention,
                 "position_ids": torch.clip(attention.cumsum(-1) - 1, min=0)},
        non_tensors={"uid": np.array(["u0", "u0", "u1", "u1"], dtype=object),
                     "extra_info": np.array([{"teacher_prompt": teacher[r], "prompt_id": f"cd-{r}"}
                                             for r in rows], dtype=object)},
        meta_info={"temperature": 1.0},
    )

    old, _ = trainer._compute_old_log_prob(batch)
    tt = teacher_inputs(encode_teacher_prompts(tok, [teacher[r] for r in rows]), responses,
                        r_mask, r_mask, pad_token_id=tok.pad_token_id)
    width = tt["prompts"].shape[1]
    ours = score_responses(model, responses, r_mask.bool(), p_ids, p_mask,
                           teacher_prompt_ids=tt["prompts"],
                           teacher_prompt_mask=tt["attention_mask"][:, :width].bool())
    m = r_mask.bool()
    for key, value in ((ENTROPY_KEY, ours.entropy), ("old_log_probs", ours.student_logp),
                       (TEACHER_LOGP_KEY, ours.teacher_logp)):
        torch.testing.assert_close(old.batch[key][m], value[m], rtol=0, atol=1e-5)

    old.batch.pop("entropys")  # as RayPPOTrainer.fit does after logging their mean
    batch = batch.union(old)
    batch.batch["token_level_scores"] = batch.batch["token_level_rewards"] = rewards
    batch = ray_trainer.compute_advantage(batch, adv_estimator="grpo", num_repeat=2)
    verl_grpo = batch.batch["advantages"].clone()
    output = trainer._update_actor(batch)
    sent = trainer.actor_rollout_wg.updates[-1]
    expected = dasd_advantages(group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2),
                               batch.batch[ENTROPY_KEY], batch.batch["old_log_probs"],
                               batch.batch[TEACHER_LOGP_KEY], m, beta=0.5)
    torch.testing.assert_close(batch.batch["advantages"], expected.advantages, atol=1e-6, rtol=0)
    assert not torch.allclose(batch.batch["advantages"], verl_grpo)
    torch.testing.assert_close(sent["advantages"], batch.batch["advantages"])
    assert "dasd/omega_pos_frac" in output.meta_info["metrics"]

    trainer._log_rollout_data(batch, {"acc": [True, False, True, False]}, {}, str(tmp_path / "d"))
    trainer._shutdown_dump_executor()
    rows_out = read_rollouts(import_verl(tmp_path / "d", tmp_path / "run").path)
    assert rows_out["prompt_id"].tolist() == ["cd-0", "cd-0", "cd-1", "cd-1"]
    assert rows_out["correct"].tolist() == [True, False, True, False]
    np.testing.assert_allclose(rows_out["advantage"][1], expected.advantages[1][m[1]].numpy(),
                               atol=1e-5)


def test_recipe_config_composes_with_verl(verl_modules):
    """examples/verl/dasd_countdown.yaml composes with verl's ppo_trainer config and carries the
    settings the trainer and install() read."""
    from hydra import compose, initialize_config_dir

    from dasd.integrations.verl import settings_from_config

    with initialize_config_dir(config_dir=str(ROOT / "examples" / "verl"), version_base=None):
        cfg = compose(config_name="dasd_countdown")
    assert cfg.trainer.use_v1 is False and cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-mean"
    hook = cfg.ray_kwargs.ray_init.runtime_env.worker_process_setup_hook
    assert hook == "dasd.integrations.verl.install"
    assert settings_from_config(cfg.dasd).options == {"direction": "tanh", "gate": "sigmoid"}


def test_recipe_passes_verls_own_validate_config(verl_modules):
    """verl's validate_config (micro-batch sizes, batch divisibility, actor checks) accepts the
    composed recipe, as main_ppo_v0's TaskRunner calls it."""
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    with initialize_config_dir(config_dir=str(ROOT / "examples" / "verl"), version_base=None):
        cfg = compose(config_name="dasd_countdown")
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg),
                    use_critic=need_critic(cfg))


def test_install_makes_the_legacy_task_runner_build_dasd(verl_modules, monkeypatch):
    import verl.trainer.main_ppo_v0 as v0

    from dasd.integrations.verl import dasd_trainer_class, install

    _, ray_trainer, _, _ = verl_modules
    monkeypatch.setattr(v0, "RayPPOTrainer", ray_trainer.RayPPOTrainer)
    install()
    assert v0.RayPPOTrainer is dasd_trainer_class()
    assert issubclass(v0.RayPPOTrainer, ray_trainer.RayPPOTrainer)


def test_recipe_carries_what_verls_validator_requires():
    """Without verl: the recipe sets the fields verl 0.9's validate_config and ActorConfig
    require when use_dynamic_bsz is off (micro-batch sizes per GPU, not the deprecated global
    ones), and its batch sizes divide as verl's checks and workers need."""
    import yaml

    cfg = yaml.safe_load((ROOT / "examples" / "verl" / "dasd_countdown.yaml").read_text())
    arr = cfg["actor_rollout_ref"]
    actor, rollout, ref = arr["actor"], arr["rollout"], arr["ref"]
    assert not actor.get("use_dynamic_bsz", False)
    for section, key in ((actor, "ppo_micro_batch_size"), (rollout, "log_prob_micro_batch_size"),
                         (ref, "log_prob_micro_batch_size")):
        assert isinstance(section.get(f"{key}_per_gpu"), int) and section[f"{key}_per_gpu"] >= 1
        assert section.get(key) is None, f"verl refuses both {key} and {key}_per_gpu"
    n_gpus = cfg["trainer"]["n_gpus_per_node"] * cfg["trainer"]["nnodes"]
    batch, n = cfg["data"]["train_batch_size"], rollout["n"]
    assert batch * n % n_gpus == 0 and batch >= actor["ppo_mini_batch_size"]
    mini_per_gpu, rem = divmod(actor["ppo_mini_batch_size"] * n, n_gpus)
    assert rem == 0 and mini_per_gpu % actor["ppo_micro_batch_size_per_gpu"] == 0
    assert actor["loss_agg_mode"] in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                      "seq-mean-token-sum-norm")
