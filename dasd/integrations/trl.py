"""DASD inside TRL's ``GRPOTrainer`` (DESIGN.md section 6; paper section 4, Algorithm 1 lines
6-21), for ``trl>=1.16,<2`` under accelerate or DeepSpeed.

:class:`DASDGRPOTrainer` lets TRL generate, reward and optimize; after TRL has scored a
generation batch it runs the student and the privileged teacher over the same completions
(same weights, the teacher's prompt from a dataset column, no gradient), forms the
group-relative verifier advantage A_G, and replaces TRL's per-sequence advantages with the
method's per-token advantages ``(B, T)``, which TRL's loss accepts as they are. The math is
``dasd.advantages`` (through :class:`dasd.integrations.DASDSettings`); this module moves
tensors. Multi-process runs: ``accelerate launch`` (``examples/trl_dasd.py``).

Departures from the paper and from TRL, and choices:

1. A_G is ``dasd.advantages.group_advantages`` of the weighted sum of the reward functions over
   the batch gathered from all processes: the unbiased std plus ``dasd_eps``, 0 for a group of
   equal rewards, as our trainer does; not TRL's ``(r - mean) / (std + 1e-4)``. TRL's other
   reward scalings (``scale_rewards`` other than "group", ``multi_objective_aggregation``
   other than "sum_then_normalize") are rejected. A completion that every reward function
   scores None counts as reward 0 (TRL gives it advantage 0).
2. The entropy H_t and the student log-prob come from TRL's own old-log-prob pass
   (``old_per_token_logps``, through ``_get_per_token_logps_and_entropies``, its fused LM head:
   softmax(logits / temperature)) where TRL takes one (with vLLM's importance-sampling
   correction, or when generation and optimizer steps are misaligned): that pass is asked for
   the entropies too, and no second student pass is run. Otherwise one forward pass of the same
   function is taken right after generation, from the weights that sampled, as our trainer's
   scoring pass. TRL itself computes entropies only inside the loss, after the advantages are
   fixed, so they cannot route them.
3. The privileged teacher's prompt is a whole dataset column (``teacher_prompt_column``: x with
   the reference r placed where the task places it, ``Task.teacher_prompt``), tokenized as TRL
   tokenizes prompts (its chat template for conversational prompts). Text only: environment
   observations, tool schemas and images are not added to it.
4. Positions: TRL passes no position ids, so a left-padded row's positions start at its padding
   length, not at 0 as in ``dasd.scoring``; with rotary embeddings scores change only by
   rounding (the equivalence test bounds the difference).
5. Evaluation batches keep TRL's advantages (no teacher pass): they only enter the logged loss.
6. The default ``loss_type`` is "grpo" (per-sequence token mean, then the batch mean: the
   paper's eq. 1/5, ``seq_mean_token_mean``), not TRL's "dapo"; ``num_completions_to_print``
   defaults to 0 (TRL prints every logged column, and the per-token ones are long);
   ``cast_lm_head_to_fp32`` defaults to True (TRL's own switch: float32 logits, so entropies
   and log-probs of a bf16 model are not off by bf16's ~0.04 nats, the size of delta).
7. With ``log_completions`` the completions table's ``advantage`` column holds A_G, and the
   trainer adds per-token columns ``token_ids, entropy, student_logp, teacher_logp, omega,
   token_advantage`` (over the loss mask; ``teacher_logp`` only for methods with a teacher)
   and the dataset columns ``prompt_id`` and ``answer`` when the dataset has them and no
   reward function logs them; ``analysis.importers.import_trl`` reads that table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
from accelerate.utils import gather, gather_object
from packaging.version import Version
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

from dasd.advantages import TokenAdvantages, group_advantages
from dasd.integrations import METRIC_PREFIX, DASDSettings, metric_sums, token_lists

__all__ = ["LOGGED_DATASET_COLUMNS", "TRL_RANGE", "DASDBatch", "DASDConfig", "DASDGRPOTrainer"]

#: TRL versions this module is written against (it overrides private GRPOTrainer methods).
TRL_RANGE = (Version("1.16"), Version("2"))
#: Dataset columns copied into the completions table when present (analysis.importers reads them).
LOGGED_DATASET_COLUMNS = ("prompt_id", "answer")
_PRIVATE_API = ("_generate_and_score_completions", "_calculate_rewards",
                "_get_per_token_logps_and_entropies", "_tokenize_prompts")

if not TRL_RANGE[0] <= Version(trl.__version__) < TRL_RANGE[1] or not all(
        hasattr(GRPOTrainer, name) for name in _PRIVATE_API):
    raise ImportError(
        f"dasd.integrations.trl needs trl>={TRL_RANGE[0]},<{TRL_RANGE[1]} (found {trl.__version__}); "
        "install it with pip install 'dasd[trl]'"
    )


@dataclass
class DASDConfig(GRPOConfig):
    """``GRPOConfig`` plus the DASD method and its knobs (all checked on construction).

    TRL's own ``beta`` stays the KL weight to a reference model; DASD's teacher weight is
    ``dasd_beta``.
    """

    loss_type: str = field(default="grpo", metadata={
        "help": "TRL loss type; 'grpo' (default here) is the paper's seq_mean_token_mean."})
    num_completions_to_print: int | None = field(default=0, metadata={
        "help": "Completions TRL prints per log (default 0 here: the per-token columns are long)."})
    cast_lm_head_to_fp32: bool = field(default=True, metadata={
        "help": "TRL's float32 LM head (default True here): entropies and log-probs from float32 "
                "logits."})
    dasd_method: str = field(default="dasd", metadata={
        "help": "Method of dasd.advantages.METHODS: grpo, dasd, conformity, novelty, hepo, rlsd."})
    dasd_beta: float = field(default=0.1, metadata={
        "help": "Weight of the teacher term (eq. 5/8)."})
    dasd_rho: float = field(default=0.2, metadata={"help": "Router quantile rho."})
    dasd_eps: float = field(default=1e-6, metadata={
        "help": "Added to the group std and to the per-trajectory normalizers."})
    dasd_direction: str | None = field(default=None, metadata={
        "help": "dasd only: direction map (tanh, hard, linear, plus, minus); None: tanh."})
    dasd_gate: str | None = field(default=None, metadata={
        "help": "dasd only: gate (sigmoid, none, magnitude, fixed); None: sigmoid."})
    dasd_gate_c: float | None = field(default=None, metadata={
        "help": "dasd with gate 'fixed' only: threshold in nats; None: log 2."})
    teacher_prompt_column: str = field(default="teacher_prompt", metadata={
        "help": "Dataset column holding the privileged teacher's prompt (x with the reference r)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_rewards != "group" or self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "DASD forms A_G itself from the summed rewards; keep scale_rewards='group' and "
                f"multi_objective_aggregation='sum_then_normalize' (got {self.scale_rewards!r}, "
                f"{self.multi_objective_aggregation!r})"
            )
        if self.num_generations is None or self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for a group std; got {self.num_generations}")
        self.dasd_settings()

    def dasd_settings(self) -> DASDSettings:
        """The checked method settings these fields describe."""
        options = {key: value for key, value in (("direction", self.dasd_direction),
                                                 ("gate", self.dasd_gate), ("c", self.dasd_gate_c))
                   if value is not None}
        return DASDSettings(method=self.dasd_method, beta=self.dasd_beta, rho=self.dasd_rho,
                            eps=self.dasd_eps, options=options)


@dataclass
class DASDBatch:
    """What one process computed for its last training generation batch (rows in TRL's order),
    for inspection and tests: the inputs of the shaper and its output."""

    prompt_ids: Tensor
    """``(B, P)`` left-padded student prompts."""
    prompt_mask: Tensor
    completion_ids: Tensor
    """``(B, T)`` right-padded completions."""
    mask: Tensor
    """``(B, T)`` bool loss mask (completion mask, times TRL's tool mask when present)."""
    rewards: Tensor
    """``(B,)`` weighted sum of the reward functions."""
    group_adv: Tensor
    """``(B,)`` A_G."""
    entropy: Tensor
    student_logp: Tensor
    teacher_logp: Tensor | None
    shaped: TokenAdvantages


class DASDGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantages are the DASD method's per-token ``(B, T)`` advantages.

    Takes ``GRPOTrainer``'s arguments with ``args`` a :class:`DASDConfig`. The train dataset
    needs ``prompt`` and the column ``args.teacher_prompt_column`` (for methods with a teacher).
    """

    def __init__(self, model: Any, reward_funcs: Any, args: DASDConfig, **kwargs: Any) -> None:
        if not isinstance(args, DASDConfig):
            raise TypeError(f"DASDGRPOTrainer needs args=DASDConfig(...); got {type(args).__name__}")
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.dasd = args.dasd_settings()
        self.dasd_last: DASDBatch | None = None
        self._dasd_rewards: Tensor | None = None
        self._dasd_capture = False
        self._dasd_old: tuple[Tensor, Tensor] | None = None
        self._dasd_columns: set[str] = set()

    def _calculate_rewards(self, inputs: list[dict[str, Any]], prompts: list[Any],
                           completions: list[Any], completion_ids_list: list[list[int]]) -> Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions,
                                                      completion_ids_list)
        self._dasd_rewards = rewards_per_func
        return rewards_per_func

    def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        """TRL's scoring function; while TRL prepares a training batch, its first no-grad pass
        of the policy (the old-log-prob pass, module note 2) also returns the entropies, which
        are kept for ``_dasd_scores``."""
        if not (self._dasd_capture and model is self.model and not torch.is_grad_enabled()):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        self._dasd_capture = False
        wanted = kwargs.get("compute_entropy", False)
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, *args, **{**kwargs, "compute_entropy": True})
        self._dasd_old = (logps, entropies)
        return logps, entropies if wanted else None, aux

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._dasd_capture, self._dasd_old = self.model.training, None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._dasd_capture = False
        if not self.model.training:
            return output
        device = self.accelerator.device
        weighted = self._dasd_rewards * self.reward_weights.to(self._dasd_rewards.device)
        all_adv = group_advantages(weighted.nansum(dim=1), self.num_generations, eps=self.dasd.eps)
        rows = slice(self.accelerator.process_index * len(inputs),
                     (self.accelerator.process_index + 1) * len(inputs))
        mask = output["completion_mask"].bool()
        if "tool_mask" in output:
            mask = mask & output["tool_mask"].bool()
        entropy, student_logp, teacher_logp = self._dasd_scores(inputs, output)
        group_adv = all_adv[rows].to(device)
        shaped = self.dasd.shape(group_adv, entropy, student_logp, teacher_logp, mask)
        output["advantages"] = shaped.advantages.to(torch.float32)
        self.dasd_last = DASDBatch(
            prompt_ids=output["prompt_ids"], prompt_mask=output["prompt_mask"],
            completion_ids=output["completion_ids"], mask=mask,
            rewards=weighted.nansum(dim=1)[rows], group_adv=group_adv, entropy=entropy,
            student_logp=student_logp, teacher_logp=teacher_logp, shaped=shaped,
        )
        self._dasd_log_metrics(metric_sums(mask, entropy, student_logp, teacher_logp, shaped))
        if self.log_completions:
            self._dasd_log_completions(inputs, all_adv, self.dasd_last)
        return output

    def _dasd_scores(self, inputs: Sequence[dict[str, Any]], output: dict[str, Any]
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Entropy and log-prob of the completions after the student prompts (TRL's own
        old-log-prob pass where it took one, module note 2), and their log-prob after the
        teacher prompts (None for methods without a teacher); ``(B, T)``."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        width = completion_ids.size(1)
        batch_size = self.args.per_device_train_batch_size
        teacher_logp = None
        old = output.get("old_per_token_logps")
        reused = (old is not None and self._dasd_old is not None
                  and self._dasd_old[0] is old)
        with torch.no_grad(), disable_gradient_checkpointing(
                self.model, self.args.gradient_checkpointing_kwargs):
            if reused:
                student_logp, entropy = self._dasd_old
            else:
                student_logp, entropy, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([output["prompt_ids"], completion_ids], dim=1),
                    torch.cat([output["prompt_mask"], completion_mask], dim=1),
                    width, batch_size=batch_size, compute_entropy=True,
                )
            self._dasd_old = None
            if self.dasd.needs_teacher:
                teacher_ids, teacher_mask = self._dasd_teacher_prompts(inputs)
                teacher_logp, _, _ = self._get_per_token_logps_and_entropies(
                    self.model,
                    torch.cat([teacher_ids, completion_ids], dim=1),
                    torch.cat([teacher_mask, completion_mask], dim=1),
                    width, batch_size=batch_size,
                )
        return entropy.float(), student_logp.float(), (
            None if teacher_logp is None else teacher_logp.float())

    def _dasd_teacher_prompts(self, inputs: Sequence[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        """The teacher prompts of ``inputs``, tokenized as TRL tokenizes prompts and left-padded:
        ids ``(B, P')`` and mask ``(B, P')``."""
        column = self.args.teacher_prompt_column
        if any(column not in row or row[column] is None for row in inputs):
            raise ValueError(
                f"dataset rows lack the teacher-prompt column {column!r} (columns: "
                f"{sorted(inputs[0])}); add the privileged prompt (x with the reference "
                "solution r) as that column, or set teacher_prompt_column"
            )
        ids_list, _, _ = self._tokenize_prompts([row[column] for row in inputs])
        ids = [torch.as_tensor(ids, dtype=torch.long) for ids in ids_list]
        device = self.accelerator.device
        padded = pad(ids, padding_value=self._tokenizer.pad_token_id, padding_side="left",
                     pad_to_multiple_of=self.pad_to_multiple_of).to(device)
        mask = pad([torch.ones_like(t) for t in ids], padding_value=0, padding_side="left",
                   pad_to_multiple_of=self.pad_to_multiple_of).to(device)
        return padded, mask

    def _dasd_log_metrics(self, sums: dict[str, Tensor]) -> None:
        """Token means over all processes: ``dasd/entropy_mean, delta_mean, omega_pos_frac,
        delta_bar_abs_mean, advantage_abs_mean``."""
        names = list(sums)
        local = torch.stack([sums[name] for name in names]).to(self.accelerator.device)
        total = dict(zip(names, gather(local).view(-1, len(names)).sum(dim=0).tolist()))
        tokens = max(total.pop("tokens"), 1.0)
        labels = {"entropy": "entropy_mean", "delta": "delta_mean", "omega_pos": "omega_pos_frac",
                  "delta_bar_abs": "delta_bar_abs_mean", "advantage_abs": "advantage_abs_mean"}
        for name, value in total.items():
            self._metrics["train"][f"{METRIC_PREFIX}/{labels[name]}"].append(value / tokens)

    def _dasd_log_completions(self, inputs: Sequence[dict[str, Any]], all_adv: Tensor,
                              batch: DASDBatch) -> None:
        """Per-token columns and A_G into TRL's completions table (module note 7); every
        process calls this (it gathers)."""
        for _ in range(all_adv.numel()):
            self._logs["advantages"].pop()
        self._logs["advantages"].extend(all_adv.tolist())
        mask = batch.mask
        columns: dict[str, list[Any]] = {
            "token_ids": token_lists(batch.completion_ids, mask),
            "entropy": token_lists(batch.entropy, mask),
            "student_logp": token_lists(batch.student_logp, mask),
            "omega": token_lists(batch.shaped.omega, mask),
            "token_advantage": token_lists(batch.shaped.advantages, mask),
        }
        if batch.teacher_logp is not None:
            columns["teacher_logp"] = token_lists(batch.teacher_logp, mask)
        for name in LOGGED_DATASET_COLUMNS:
            logged_by_reward = name in self._logs["extra"] and name not in self._dasd_columns
            if name in inputs[0] and not logged_by_reward:
                columns[name] = [str(row[name]) for row in inputs]
        for name, values in columns.items():
            self._dasd_columns.add(name)
            self._logs["extra"][name].extend(gather_object(values))
