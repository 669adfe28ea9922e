"""DASD inside existing scale-out trainers (DESIGN.md section 6): TRL and verl.

``dasd.integrations.trl`` plugs DASD into TRL's ``GRPOTrainer`` (accelerate / DeepSpeed);
``dasd.integrations.verl`` into verl's PPO trainer. Both only move tensors: the advantages come
from the method registry of ``dasd.advantages`` through :class:`DASDSettings`, which this
module holds so that the two integrations check and apply a method the same way.
``import dasd.integrations`` needs neither TRL nor verl; each submodule imports its engine.

Departures shared by both integrations:

1. Only methods whose teacher context is none or the reference solution and whose whole effect
   is the advantage can run inside a foreign trainer: ``grpo``, ``dasd``, ``conformity``,
   ``novelty``, ``hepo`` and ``rlsd``. ``opsd`` (a reverse-KL loss term), ``sdpo`` and ``srpo``
   (a sibling rollout as the teacher's context) are rejected with a one-line error.
2. ``hepo``'s batch quantile is taken over the rows one process holds, not the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dasd.advantages import TokenAdvantages, get_method

__all__ = ["METRIC_PREFIX", "DASDSettings", "metric_sums", "token_lists"]

#: Namespace of the metrics both integrations log (``dasd/omega_pos_frac`` ...).
METRIC_PREFIX = "dasd"


@dataclass(frozen=True)
class DASDSettings:
    """A registered method and its knobs, checked on construction.

    ``options`` go to the method's shaper (``dasd``: ``direction``, ``gate``, ``c``; ``rlsd``:
    ``clip``); a bad name or option fails here, before any rollout, with the registry's message.
    """

    method: str = "dasd"
    """A method of ``dasd.advantages.METHODS`` that runs in a foreign trainer (module note 1)."""
    beta: float = 0.1
    """Weight of the teacher term (eq. 5/8; the paper gives no value)."""
    rho: float = 0.2
    """Router quantile (paper: 0.2); HEPO's kept share."""
    eps: float = 1e-6
    """Added to the group std and to the per-trajectory normalizers."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Extra options of the method's shaper."""

    def __post_init__(self) -> None:
        method = get_method(self.method)
        if method.teacher == "sibling" or method.reverse_kl or method.needs_correct:
            raise ValueError(
                f"method {self.method!r} cannot run inside TRL or verl (it needs a sibling-rollout "
                "teacher or a reverse-KL loss term); use grpo, dasd, conformity, novelty, hepo or "
                "rlsd, or dasd-probe train for the others"
            )
        if not math.isfinite(self.beta) or not 0.0 <= self.rho <= 1.0 or not self.eps > 0:
            raise ValueError(
                f"need a finite beta, rho in [0, 1] and eps > 0; got beta={self.beta}, "
                f"rho={self.rho}, eps={self.eps}"
            )
        ones = torch.ones(1, 2)
        self.shape(torch.zeros(1), ones, -ones, -ones, ones.bool())

    @property
    def needs_teacher(self) -> bool:
        """Whether the method reads the privileged teacher's log-probs (one more forward pass)."""
        return get_method(self.method).teacher == "reference"

    def shape(self, group_adv: Tensor, entropy: Tensor, student_logp: Tensor,
              teacher_logp: Tensor | None, mask: Tensor) -> TokenAdvantages:
        """The method's per-token advantages; tensors as ``dasd.advantages.dasd_advantages``:
        ``group_adv (B,)``, the others ``(B, T)``, ``mask`` bool."""
        return get_method(self.method)(
            group_adv, entropy, student_logp, teacher_logp, mask,
            beta=self.beta, rho=self.rho, eps=self.eps, **dict(self.options),
        )


def metric_sums(mask: Tensor, entropy: Tensor, student_logp: Tensor,
                teacher_logp: Tensor | None, shaped: TokenAdvantages) -> dict[str, Tensor]:
    """Sums over the valid tokens of ``mask (B, T)``, as 0-d float64 tensors, for metrics that
    a trainer reduces across processes and then divides by ``"tokens"``: ``entropy`` (H_t),
    ``delta`` (teacher minus student log-prob; 0 without a teacher), ``omega_pos`` (tokens with
    omega > 0), ``delta_bar_abs``, ``advantage_abs``."""
    m = mask.bool()

    def total(x: Tensor) -> Tensor:
        return torch.where(m, x.detach().to(torch.float64), 0.0).sum()

    delta = (teacher_logp - student_logp) if teacher_logp is not None else torch.zeros_like(entropy)
    return {
        "tokens": m.sum().to(torch.float64),
        "entropy": total(entropy),
        "delta": total(delta),
        "omega_pos": total((shaped.omega > 0).to(torch.float64)),
        "delta_bar_abs": total(shaped.delta_bar.abs()),
        "advantage_abs": total(shaped.advantages.abs()),
    }


def token_lists(values: Tensor, mask: Tensor) -> list[list[float]] | list[list[int]]:
    """Each row of ``values (B, T)`` at its valid positions of ``mask (B, T)``, as Python
    numbers (floats, or ints for an integer tensor): the per-token columns of a rollout log."""
    values = values.detach().cpu()
    if values.is_floating_point():
        values = values.float()
    mask = mask.bool().cpu()
    return [row[keep].tolist() for row, keep in zip(values, mask)]
