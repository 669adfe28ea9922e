"""DASD inside verl's PPO trainer (DESIGN.md section 6; paper section 4, Algorithm 1 lines 6-21),
written against verl 0.9.1's ``RayPPOTrainer`` (the DataProto trainer verl runs with
``trainer.use_v1=false``); recipe in ``examples/verl/``.

verl's old-log-prob pass already computes each response token's entropy (``entropys``) beside
``old_log_probs``, logs their mean and drops them. :class:`DASDRayPPOTrainer` (built by
:func:`dasd_trainer_class`, since the class needs verl at definition time):

* ``_compute_old_log_prob``: keeps a copy of the entropies in the batch (``dasd_entropys``) and
  runs the same pass once more on the privileged teacher's inputs (the teacher prompt from the
  row's ``extra_info["teacher_prompt"]``, then the same responses, same weights, no gradient),
  whose log-probs stay in the batch as ``dasd_teacher_log_probs``;
* ``_update_actor``: sets ``advantages`` (and ``returns``) to the method's per-token
  advantages (:func:`dasd_batch_advantages`) right before verl's actor update;
* ``_log_rollout_data``: adds per-token columns to verl's rollout dump (``trainer.
  rollout_data_dir``), which ``dasd-analyze import verl`` reads.

:func:`install` (a Ray ``worker_process_setup_hook``) makes verl's legacy TaskRunner build this
trainer. The tensor functions at the top of this module need no verl; the math is
``dasd.advantages`` (through :class:`dasd.integrations.DASDSettings`).

Departures from the paper and from verl, and choices:

1. verl calls ``compute_advantage`` as a module function, and a registered advantage estimator
   sees only ``token_level_rewards``, ``response_mask``, ``index`` and ``config``, not the
   entropies or log-probs; so verl first computes its GRPO advantages
   (``algorithm.adv_estimator=grpo``, which is checked) and DASD's replace them before the actor
   update. verl's ``compute_data_metrics`` then reports DASD's.
2. A_G is ``dasd.advantages.group_advantages`` over each ``uid`` group of the summed
   ``token_level_rewards`` (unbiased std plus eps, 0 for equal rewards), groups of unequal sizes
   normalized size by size; verl's GRPO gives a single-response group its raw score, ours 0.
3. The student's statistics are verl's: ``old_log_probs`` and the entropies of the same pass
   (its temperature, its engine). The teacher prompt is a string used as is, or chat messages
   rendered with the tokenizer's chat template, the generation prompt and
   ``data.apply_chat_template_kwargs``; its position ids count attended tokens (verl's
   ``compute_position_id_with_mask``): text models only, no multimodal inputs.
4. Only the legacy DataProto trainer is supported, not verl 0.9's default v1 trainer (its
   batches live in TransferQueue; a second forward pass there needs its own design). The
   rollout-correction bypass mode (no old-log-prob pass, so no entropies) is rejected.
5. Not run end to end here: verl needs GPUs and vLLM/SGLang for rollouts. The tensor functions
   are tested in the project environment; the trainer's hooks against verl 0.9.1's own
   DataProto, padding and advantage code with a stand-in worker group, where verl imports.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dasd.advantages import group_advantages
from dasd.integrations import METRIC_PREFIX, DASDSettings, metric_sums, token_lists

__all__ = [
    "CONFIG_SECTION",
    "ENTROPY_KEY",
    "OMEGA_KEY",
    "TEACHER_LOGP_KEY",
    "TEACHER_PROMPT_FIELD",
    "dasd_batch_advantages",
    "dasd_trainer_class",
    "encode_teacher_prompts",
    "install",
    "rollout_dump_columns",
    "settings_from_config",
    "teacher_inputs",
    "uid_group_advantages",
]

#: Batch key of the old-log-prob pass's per-token entropies, kept for DASD.
ENTROPY_KEY = "dasd_entropys"
#: Batch key of the privileged teacher's per-token log-probs.
TEACHER_LOGP_KEY = "dasd_teacher_log_probs"
#: Batch key of omega_t (logged in the rollout dump).
OMEGA_KEY = "dasd_omega"
#: Key of ``extra_info`` (a dataset column verl keeps in the batch) holding the teacher prompt.
TEACHER_PROMPT_FIELD = "teacher_prompt"
#: Top-level section of the verl config with DASD's settings.
CONFIG_SECTION = "dasd"
_SETTINGS_KEYS = ("method", "beta", "rho", "eps", "options")


def settings_from_config(section: Mapping[str, Any] | None) -> DASDSettings:
    """:class:`DASDSettings` from the verl config's ``dasd`` section (``method, beta, rho, eps,
    options``; missing keys take the defaults); an unknown key is an error listing the valid."""
    values = dict(section or {})
    unknown = sorted(set(values) - set(_SETTINGS_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the verl config's {CONFIG_SECTION} "
                         f"section; valid: {', '.join(_SETTINGS_KEYS)}")
    if "options" in values:
        values["options"] = dict(values["options"] or {})
    return DASDSettings(**values)


def uid_group_advantages(scores: Tensor, uid: Sequence[Any], *, eps: float = 1e-6) -> Tensor:
    """A_G (``group_advantages``) of ``scores (B,)`` within groups of equal ``uid`` (verl's
    ``non_tensor_batch["uid"]``), rows in any order; float32 ``(B,)`` on ``scores``' device."""
    keys = np.asarray([str(u) for u in uid], dtype=object)
    if keys.shape != (scores.shape[0],):
        raise ValueError(f"need one uid per row: {keys.shape[0]} uids for {scores.shape[0]} rows")
    _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sizes = counts[group]
    out = torch.zeros(scores.shape[0], dtype=torch.float32, device=scores.device)
    for size in np.unique(sizes):
        rows = np.flatnonzero(sizes == size)
        rows = torch.as_tensor(rows[np.argsort(group[rows], kind="stable")], device=scores.device)
        out[rows] = group_advantages(scores[rows].double(), int(size), eps=eps).float()
    return out


def dasd_batch_advantages(batch: Mapping[str, Tensor], uid: Sequence[Any],
                          settings: DASDSettings) -> tuple[dict[str, Tensor], dict[str, float]]:
    """The method's per-token advantages of a verl batch (padded ``(B, R)`` tensors).

    Reads ``token_level_rewards``, ``response_mask``, ``old_log_probs``, ``dasd_entropys`` and,
    for methods with a teacher, ``dasd_teacher_log_probs``. Returns the tensors to write
    (``advantages``, ``returns`` (the same, as verl's outcome estimators), ``dasd_omega``) and
    token-mean metrics ``dasd/entropy_mean, delta_mean, omega_pos_frac, delta_bar_abs_mean,
    advantage_abs_mean``.
    """
    needed = ["token_level_rewards", "response_mask", "old_log_probs", ENTROPY_KEY]
    if settings.needs_teacher:
        needed.append(TEACHER_LOGP_KEY)
    missing = [key for key in needed if key not in batch]
    if missing:
        raise ValueError(f"verl batch lacks {missing} (DASDRayPPOTrainer keeps the entropies and "
                         "adds the teacher log-probs in its old-log-prob pass)")
    mask = batch["response_mask"].bool()
    entropy, student = batch[ENTROPY_KEY].float(), batch["old_log_probs"].float()
    teacher = batch[TEACHER_LOGP_KEY].float() if settings.needs_teacher else None
    group_adv = uid_group_advantages(batch["token_level_rewards"].sum(-1), uid, eps=settings.eps)
    shaped = settings.shape(group_adv, entropy, student, teacher, mask)
    advantages = shaped.advantages.float()
    sums = metric_sums(mask, entropy, student, teacher, shaped)
    tokens = max(float(sums.pop("tokens")), 1.0)
    labels = {"entropy": "entropy_mean", "delta": "delta_mean", "omega_pos": "omega_pos_frac",
              "delta_bar_abs": "delta_bar_abs_mean", "advantage_abs": "advantage_abs_mean"}
    metrics = {f"{METRIC_PREFIX}/{labels[k]}": float(v) / tokens for k, v in sums.items()}
    return {"advantages": advantages, "returns": advantages.clone(),
            OMEGA_KEY: shaped.omega.float()}, metrics


def encode_teacher_prompts(tokenizer: Any, prompts: Sequence[Any],
                           chat_template_kwargs: Mapping[str, Any] | None = None) -> list[list[int]]:
    """Token ids of each teacher prompt: a string as is (no special tokens added), chat messages
    through the tokenizer's chat template with the generation prompt (as verl's agent loop
    renders the student's ``raw_prompt``)."""
    ids = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids.append(list(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
            continue
        encoded = tokenizer.apply_chat_template(
            [dict(m) for m in prompt], add_generation_prompt=True, tokenize=True,
            **dict(chat_template_kwargs or {}))
        if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        ids.append([int(t) for t in encoded])
    if any(not row for row in ids):
        raise ValueError("a teacher prompt encodes to no tokens; check extra_info.teacher_prompt")
    return ids


def teacher_inputs(teacher_prompt_ids: Sequence[Sequence[int]], responses: Tensor,
                   response_attention: Tensor, response_mask: Tensor, *,
                   pad_token_id: int) -> dict[str, Tensor]:
    """The teacher pass's batch in verl's left/right-padded layout: ``prompts (B, P')``
    left-padded, ``responses (B, R)`` and ``response_mask`` as given, ``input_ids`` their
    concatenation, ``attention_mask`` the prompt mask then ``response_attention`` (the response
    part of the student batch's attention mask), ``position_ids`` counting attended tokens."""
    rows = responses.shape[0]
    if len(teacher_prompt_ids) != rows:
        raise ValueError(f"{len(teacher_prompt_ids)} teacher prompts for {rows} responses")
    width = max(len(ids) for ids in teacher_prompt_ids)
    prompts = torch.full((rows, width), pad_token_id, dtype=responses.dtype)
    prompt_mask = torch.zeros((rows, width), dtype=response_attention.dtype)
    for i, ids in enumerate(teacher_prompt_ids):
        prompts[i, width - len(ids):] = torch.as_tensor(list(ids), dtype=responses.dtype)
        prompt_mask[i, width - len(ids):] = 1
    prompts, prompt_mask = prompts.to(responses.device), prompt_mask.to(responses.device)
    attention = torch.cat([prompt_mask, response_attention], dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention,
        "position_ids": torch.clip(torch.cumsum(attention, dim=-1) - 1, min=0),
    }


def rollout_dump_columns(batch: Mapping[str, Tensor], non_tensor: Mapping[str, Any]
                         ) -> dict[str, list[Any]]:
    """Per-response columns for verl's rollout dump: ``uid``, ``prompt_id`` (when the rows'
    ``extra_info`` has one), and over the response mask ``token_ids``, ``entropy``,
    ``student_logp``, ``teacher_logp``, ``omega``, ``token_advantage`` (those in the batch)."""
    mask = batch["response_mask"].bool()
    columns: dict[str, list[Any]] = {"token_ids": token_lists(batch["responses"], mask)}
    for name, key in (("entropy", ENTROPY_KEY), ("student_logp", "old_log_probs"),
                      ("teacher_logp", TEACHER_LOGP_KEY), ("omega", OMEGA_KEY),
                      ("token_advantage", "advantages")):
        if key in batch:
            columns[name] = token_lists(batch[key], mask)
    if "uid" in non_tensor:
        columns["uid"] = [str(u) for u in non_tensor["uid"]]
    infos = non_tensor.get("extra_info")
    if infos is not None and all(isinstance(i, Mapping) and "prompt_id" in i for i in infos):
        columns["prompt_id"] = [str(i["prompt_id"]) for i in infos]
    return columns


@functools.cache
def dasd_trainer_class() -> type:
    """``DASDRayPPOTrainer``, a subclass of verl's ``RayPPOTrainer`` (module docstring); needs
    verl 0.9 installed."""
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class DASDRayPPOTrainer(RayPPOTrainer):
        """verl's PPO trainer with DASD advantages; settings from the config's ``dasd`` section."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.dasd = settings_from_config(self.config.get(CONFIG_SECTION))
            algorithm = self.config.algorithm
            if str(algorithm.adv_estimator) not in ("grpo", "AdvantageEstimator.GRPO"):
                raise ValueError(f"DASD replaces GRPO's advantages; set algorithm.adv_estimator="
                                 f"grpo (got {algorithm.adv_estimator})")
            correction = algorithm.get("rollout_correction", None)
            if correction and correction.get("bypass_mode", False):
                raise ValueError("DASD needs verl's old-log-prob pass (its entropies); set "
                                 "algorithm.rollout_correction.bypass_mode=false")

        def _compute_old_log_prob(self, batch: Any) -> tuple[Any, Any]:
            output, mfu = super()._compute_old_log_prob(batch)
            output.batch[ENTROPY_KEY] = output.batch["entropys"].clone()
            if self.dasd.needs_teacher:
                output.batch[TEACHER_LOGP_KEY] = self._dasd_teacher_log_probs(batch)
            return output, mfu

        def _dasd_teacher_log_probs(self, batch: Any) -> Tensor:
            infos = batch.non_tensor_batch.get("extra_info")
            if infos is None or not all(isinstance(i, Mapping) and i.get(TEACHER_PROMPT_FIELD)
                                        is not None for i in infos):
                raise ValueError(f"every row needs extra_info.{TEACHER_PROMPT_FIELD} (the "
                                 "privileged prompt: x with the reference r); see "
                                 "examples/verl/prepare_data.py")
            kwargs = self.config.data.get("apply_chat_template_kwargs", None) or {}
            ids = encode_teacher_prompts(self.tokenizer, [i[TEACHER_PROMPT_FIELD] for i in infos],
                                         kwargs)
            responses = batch.batch["responses"]
            tensors = teacher_inputs(ids, responses,
                                     batch.batch["attention_mask"][:, -responses.shape[1]:],
                                     batch.batch["response_mask"],
                                     pad_token_id=self.tokenizer.pad_token_id)
            teacher = DataProto.from_dict(tensors=tensors, meta_info=dict(batch.meta_info))
            output, _ = super()._compute_old_log_prob(teacher)
            return output.batch["old_log_probs"]

        def _update_actor(self, batch: Any) -> Any:
            tensors, metrics = dasd_batch_advantages(batch.batch, batch.non_tensor_batch["uid"],
                                                     self.dasd)
            for key, value in tensors.items():
                batch.batch[key] = value
            output = super()._update_actor(batch)
            output.meta_info["metrics"].update(metrics)
            return output

        def _log_rollout_data(self, batch: Any, reward_extra_infos_dict: dict, timing_raw: dict,
                              rollout_data_dir: str) -> None:
            extras = {**reward_extra_infos_dict,
                      **rollout_dump_columns(batch.batch, batch.non_tensor_batch)}
            super()._log_rollout_data(batch, extras, timing_raw, rollout_data_dir)

    return DASDRayPPOTrainer


def install() -> None:
    """Make verl's legacy TaskRunner (``verl.trainer.main_ppo_v0``) build ``DASDRayPPOTrainer``.

    Meant as Ray's ``worker_process_setup_hook`` (``ray_kwargs.ray_init.runtime_env.
    worker_process_setup_hook: dasd.integrations.verl.install``), so that it runs in the Ray
    process where the TaskRunner constructs the trainer by its module-level name.
    """
    import verl.trainer.main_ppo_v0 as v0

    v0.RayPPOTrainer = dasd_trainer_class()
