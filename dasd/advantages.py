"""Group-relative verifier advantages and the DASD token-advantage shaper (paper section 4).

Pure tensor math over padded batches: tensors in, tensors out, no configuration objects, no
logging, no ``.item()``. Implements

* ``group_advantages``: the per-prompt group-relative verifier advantage
  A_G = (R - mu_G) / sigma_G (section 2, Algorithm 1 line 4);
* ``dasd_advantages``: eq. (4) and eq. (8) as Algorithm 1 lines 13-21 state them. Per
  trajectory, over its valid tokens: tau = Quantile_rho(H), sigma_H = MeanAbsDev(H),
  delta~ = median |delta|; per token: delta_bar = delta / (delta~ + eps), router
  z = D((tau - H) / (sigma_H + eps)), gate g, omega = z g, A_hat = A_G + beta omega delta_bar;
* the registries ``DIRECTIONS`` (the direction map D, Table 13), ``GATES`` (the reliability
  gate, Table 14), ``ARM_FLIPS`` (one routing arm's sign reversed, section 6 RQ1, Fig. 6b/6c)
  and ``METHODS`` (name -> advantage shaper, DESIGN.md section 3);
* the paper's baselines (appendix F, Table 2) as registered methods: ``hepo``, ``rlsd``,
  ``opsd``, ``sdpo``, ``srpo``; each docstring names what it follows and where it departs.

Departures from the paper, and conventions it leaves open:

1. ``dasd_advantages`` uses the trajectory-normalized gap delta_bar of eq. (8) by default
   (``gap_scale="median"``), the paper's own implemented score (appendix B), and the raw delta
   of Proposition 1 with ``gap_scale="none"``. The registered methods default to the raw
   gap (``METHOD_GAP_SCALE`` says why).
2. Padding: every statistic of a trajectory uses only the positions where ``mask`` is True;
   values at the other positions are never read (they may be anything, NaN included), and
   every output is exactly 0 there.
3. Empty and one-token trajectories: a row with no valid token has all statistics 0 and all
   outputs 0. With one valid token, tau = H and sigma_H = 0, so the router argument is
   0 / eps = 0 and the continuous maps (tanh, hard, linear) give omega = 0, A_hat = A_G.
4. Median and quantile follow numpy: the median of an even count is the mean of the two
   middle values; the quantile interpolates linearly between order statistics at rank
   rho (n - 1) (``numpy.quantile``'s default "linear").
5. Groups whose rewards are all equal (and ``group_size == 1``) get A_G = 0 exactly, not
   (R - mean) / (0 + eps), which the rounding of the mean can make nonzero; the std is the
   unbiased one (divisor G - 1), which the paper does not specify.
6. When more than half of a trajectory's gaps are exactly 0, delta~ = 0 and
   delta_bar = delta / eps is large (1e6 delta at the default eps). The paper's formula does
   this; we keep it, and require ``eps > 0`` so that it stays finite.
7. Outputs carry no gradient (computed under ``torch.no_grad``): Proposition 1 treats A_G,
   delta and omega as measured constants of the update.
8. The ``entropy`` argument is only a per-token routing signal: the ablations of Table 12
   (position, token frequency, gradient norm, attention entropy) pass other signals through
   the same code.

Computation runs in the promoted floating dtype of the inputs, at least float32 (bfloat16 and
float16 inputs are computed and returned in float32). "No NaN or inf for any finite input"
holds for inputs whose results are representable in that dtype: |A_hat| is at most
|A_G| + |beta| |delta| / eps times a gate factor of at most max(1, |delta_bar|).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from dasd.config_checks import check_value
from dasd.registry import Registry

__all__ = [
    "ARM_FLIPS",
    "DIRECTIONS",
    "GAP_SCALES",
    "GATES",
    "METHODS",
    "METHOD_GAP_SCALE",
    "TEACHER_CONTEXTS",
    "Method",
    "ShaperInputs",
    "TokenAdvantages",
    "dasd_advantages",
    "get_method",
    "group_advantages",
    "register_method",
]

#: Default threshold c (nats) of the ``fixed`` gate 1[|delta_t| > c]. The paper gives no value
#: (Table 14 calls it "hand-tuned"); log 2 keeps tokens whose teacher and student
#: probabilities differ by more than a factor of two.
DEFAULT_FIXED_GATE_C = math.log(2.0)

#: The gap scale of the registered methods ``dasd``, ``conformity`` and ``novelty`` (option
#: ``gap_scale``): "none", the raw sampled-token gap delta_t of Proposition 1 (eq. 7) and of
#: Probe 1, not eq. (8)'s delta_t / (median_t |delta_t| + eps). The paper introduces eq. (8)
#: "for numerical stability"; on a model that is near-deterministic on most tokens it does the
#: opposite: on the built-in tiny model the per-trajectory median |delta_t| is ~3e-5 nats
#: (float32 round-off between two forward passes), so delta_bar reaches 1e4-1e5 at forks and
#: beta * omega * delta_bar swamps A_G (mean |delta_bar| ~2,200 in training). The pure
#: ``dasd_advantages`` keeps eq. (8) as its default; ``gap_scale="median"`` gives it here.
METHOD_GAP_SCALE = "none"


# --------------------------------------------------------------------------- group advantage


def group_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """Group-relative verifier advantage A_G = (R - mean) / (std + eps) per consecutive group.

    Args:
        rewards: ``(N,)`` rewards; rows ``[k G, (k + 1) G)`` are the G rollouts of prompt k.
        group_size: G, the number of rollouts per prompt (>= 1, divides N).
        eps: added to the unbiased group std.

    Returns:
        ``(N,)`` advantages in the rewards' floating dtype (float32 for integer or bool
        rewards). A group whose rewards are all equal, and every group when ``group_size`` is
        1, gets 0. Statistics are computed in float64.

    Example: rewards [1, 0, 0, 0] have mean 0.25 and unbiased std 0.5, so the advantages are
    [1.5, -0.5, -0.5, -0.5] (up to eps).
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,); got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int; got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"{rewards.shape[0]} rewards do not split into groups of {group_size}; "
            "pass all G rollouts of every prompt"
        )
    _check_eps(eps)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    with torch.no_grad():
        if group_size == 1 or rewards.numel() == 0:
            return torch.zeros_like(rewards, dtype=out_dtype)
        r = rewards.detach().to(torch.float64).reshape(-1, group_size)
        mean = r.mean(dim=1, keepdim=True)
        std = r.std(dim=1, keepdim=True, correction=1)
        constant = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
        adv = torch.where(constant, 0.0, (r - mean) / (std + eps))
        return adv.reshape(-1).to(out_dtype)


# --------------------------------------------------------------------------- registries


class DirectionMap(Protocol):
    def __call__(self, x: Tensor) -> Tensor:
        """Map the normalized routing argument x = (tau - H) / (sigma_H + eps) to z."""
        ...


class GateFn(Protocol):
    def __call__(self, delta: Tensor, delta_bar: Tensor, *, c: float) -> Tensor:
        """The reliability gate g from the raw gap delta and the normalized gap delta_bar."""
        ...


#: Direction maps D (Table 13): positive below the entropy quantile (attract), negative above.
DIRECTIONS: Registry[DirectionMap] = Registry("direction")
#: Reliability gates g (Table 14).
GATES: Registry[GateFn] = Registry("gate")
#: Gap scales: the per-trajectory divisor of delta, ``(B,)`` from |delta| ``(B, T)``.
GAP_SCALES: Registry[Callable[[Tensor, Tensor, Tensor, float], Tensor]] = Registry("gap scale")


@DIRECTIONS.register("tanh")
def _direction_tanh(x: Tensor) -> Tensor:
    """tanh(x): the smooth signed map of eq. (4); DASD's default."""
    return torch.tanh(x)


@DIRECTIONS.register("hard")
def _direction_hard(x: Tensor) -> Tensor:
    """sign(x), 0 at 0: the hard-threshold router of Table 13."""
    return torch.sign(x)


@DIRECTIONS.register("linear")
def _direction_linear(x: Tensor) -> Tensor:
    """x clipped to [-1, 1]: the linear ramp of Table 13."""
    return x.clamp(-1.0, 1.0)


@DIRECTIONS.register("plus")
def _direction_plus(x: Tensor) -> Tensor:
    """+1 everywhere: uniform attraction (Conformity, OPSD-like; Probe 1, Table 13)."""
    return torch.ones_like(x)


@DIRECTIONS.register("minus")
def _direction_minus(x: Tensor) -> Tensor:
    """-1 everywhere: uniform repulsion (Novelty; Probe 1, Table 13)."""
    return -torch.ones_like(x)


#: Arm flips (section 6 RQ1, Fig. 6b/6c): the router z with one routing arm's sign reversed.
ARM_FLIPS: Registry[Callable[[Tensor], Tensor]] = Registry("arm flip")


@ARM_FLIPS.register("low")
def _flip_low(z: Tensor) -> Tensor:
    """-|z|: the low-entropy arm (z > 0, attraction) becomes repulsive; z < 0 is kept."""
    return -z.abs()


@ARM_FLIPS.register("high")
def _flip_high(z: Tensor) -> Tensor:
    """|z|: the high-entropy arm (z < 0, repulsion) becomes attractive; z > 0 is kept."""
    return z.abs()


@GATES.register("sigmoid")
def _gate_sigmoid(delta: Tensor, delta_bar: Tensor, *, c: float) -> Tensor:
    """sigma(|delta_bar| - 1): the scale-free gap-reliability gate of eq. (4); the default."""
    return torch.sigmoid(delta_bar.abs() - 1.0)


@GATES.register("none")
def _gate_none(delta: Tensor, delta_bar: Tensor, *, c: float) -> Tensor:
    """1 everywhere: signed pressure at all positions (Table 14, "no gate")."""
    return torch.ones_like(delta_bar)


@GATES.register("magnitude")
def _gate_magnitude(delta: Tensor, delta_bar: Tensor, *, c: float) -> Tensor:
    """|delta_bar| without thresholding (Table 14, "magnitude-only"); omega leaves [-1, 1]."""
    return delta_bar.abs()


@GATES.register("fixed")
def _gate_fixed(delta: Tensor, delta_bar: Tensor, *, c: float) -> Tensor:
    """1[|delta| > c] on the raw gap in nats (Table 14, "fixed threshold")."""
    return (delta.abs() > c).to(delta_bar.dtype)


@GAP_SCALES.register("median")
def _gap_scale_median(abs_delta: Tensor, mask: Tensor, n: Tensor, eps: float) -> Tensor:
    """median_t |delta_t| + eps: the trajectory normalization of eq. (8); the default."""
    return _masked_median(abs_delta, mask, n) + eps


@GAP_SCALES.register("none")
def _gap_scale_none(abs_delta: Tensor, mask: Tensor, n: Tensor, eps: float) -> Tensor:
    """1: delta_bar = delta, the raw sampled-token coefficient of Proposition 1 (eq. 7)."""
    return torch.ones(abs_delta.shape[0], dtype=abs_delta.dtype, device=abs_delta.device)


# --------------------------------------------------------------------------- masked statistics


def _order_stat_pair(x: Tensor, mask: Tensor, n: Tensor, lo: Tensor, step: Tensor,
                     k: int) -> tuple[Tensor, Tensor]:
    """The order statistics of rank ``lo[b]`` and ``lo[b] + step[b]`` (0-based, ``step`` in
    {0, 1}, both ranks < n[b]) of each row's valid entries in ``x (B, T)``; 0 where n == 0.
    No sort.

    ``lo`` must be a function lo(n) of the row's count that never falls as n grows and grows by
    at most 1 per valid entry (the median's and the quantile's ranks do), and ``k = lo(T)``.
    Every row is then padded so that its rank-``lo`` value sits at rank k of the whole row: of
    its T - n invalid entries the first k - lo (<= T - n) become -inf, the rest +inf. One
    ``torch.kthvalue`` (a selection, O(T) per row) finds it for all rows at once; the next
    order statistic is a tie of it (more than k + 1 entries <= it) or the smallest entry
    above it.
    """
    b, t = x.shape
    if t == 0:  # every row is empty
        zero = x.new_zeros((b,))
        return zero, zero
    below = (~mask).cumsum(dim=-1, dtype=torch.int32) <= (k - lo).to(torch.int32)[:, None]
    y = torch.where(mask, x, torch.where(below, -math.inf, math.inf))
    first = torch.kthvalue(y, k + 1, dim=-1).values
    at_most = y <= first[:, None]
    ties = torch.count_nonzero(at_most, dim=-1) > k + 1
    above = torch.where(at_most, math.inf, y).amin(dim=-1)
    second = torch.where((step == 0) | ties, first, above)
    empty = n == 0
    return first.masked_fill(empty, 0.0), second.masked_fill(empty, 0.0)


def _masked_median(x: Tensor, mask: Tensor, n: Tensor) -> Tensor:
    """Per-row median over ``mask``, as ``numpy.median``; 0 for rows with no valid entry.

    ``x`` must be finite where ``mask`` is True; ``n`` is ``mask.sum(-1)``.
    """
    last = (n - 1).clamp(min=0)
    a, b = _order_stat_pair(x, mask, n, last // 2, n // 2 - last // 2,
                            k=max(x.shape[-1] - 1, 0) // 2)
    return (a + b) / 2  # odd n: a == b; even n: numpy's mean of the two middle values


def _masked_quantile(x: Tensor, mask: Tensor, n: Tensor, q: float) -> Tensor:
    """Per-row ``q``-quantile over ``mask``, as ``numpy.quantile`` (method "linear").

    The virtual rank is q (n - 1) in float64; the value interpolates between the order
    statistics at its floor and ceiling with numpy's two-sided lerp. 0 for empty rows.
    """
    last = (n - 1).clamp(min=0)
    rank = last.to(torch.float64) * q
    lo = rank.floor()
    gamma = rank - lo
    lo = lo.long()
    a, b = _order_stat_pair(x, mask, n, lo, torch.minimum(lo + 1, last) - lo,
                            k=math.floor(max(x.shape[-1] - 1, 0) * q))
    diff = b - a
    return torch.where(
        gamma >= 0.5,
        b - diff * (1.0 - gamma).to(x.dtype),
        a + diff * gamma.to(x.dtype),
    )


def _masked_mean(x: Tensor, mask: Tensor, n: Tensor) -> Tensor:
    """Per-row mean over ``mask`` of an ``x`` that is already 0 off ``mask``; 0 when empty."""
    return x.sum(dim=-1) / n.clamp(min=1).to(x.dtype)


# --------------------------------------------------------------------------- DASD shaper


@dataclass(frozen=True)
class TokenAdvantages:
    """Per-token outputs of an advantage shaper, each ``(B, T)`` and exactly 0 off ``mask``."""

    advantages: Tensor
    """A_hat_t = A_G + beta omega_t delta_bar_t: the advantage fed to the PPO surrogate."""
    omega: Tensor
    """omega_t = z_t g_t: the signed teacher-pressure coefficient of eq. (3)-(4)."""
    delta_bar: Tensor
    """delta_t / (median_t |delta_t| + eps): the trajectory-normalized gap of eq. (8)."""
    router: Tensor
    """z_t = D((tau - H_t) / (sigma_H + eps)): the direction factor."""
    gate: Tensor
    """g_t: the reliability factor."""


def dasd_advantages(
    group_adv: Tensor,
    entropy: Tensor,
    student_logp: Tensor,
    teacher_logp: Tensor,
    mask: Tensor,
    *,
    beta: float,
    rho: float = 0.2,
    eps: float = 1e-6,
    direction: str = "tanh",
    gate: str = "sigmoid",
    c: float = DEFAULT_FIXED_GATE_C,
    flip: str | None = None,
    gap_scale: str = "median",
) -> TokenAdvantages:
    """Direction-adaptive token advantages, eq. (4) and (8), Algorithm 1 lines 13-21.

    Args:
        group_adv: ``(B,)`` verifier advantage A_G of each trajectory (``group_advantages``).
        entropy: ``(B, T)`` routing signal H_t; the student's predictive entropy in DASD, any
            per-token signal in the routing ablations (Table 12).
        student_logp: ``(B, T)`` log pi_theta(o_t | x, o_<t) of the emitted tokens.
        teacher_logp: ``(B, T)`` log pi_theta(o_t | x, r, o_<t) of the privileged teacher.
        mask: ``(B, T)`` bool, True on valid response tokens.
        beta: weight of the directional correction; 0 recovers GRPO.
        rho: router quantile in [0, 1] (default 0.2, section 5).
        eps: > 0, added to the median gap and to the entropy mean absolute deviation.
        direction: name in ``DIRECTIONS``: "tanh" (default), "hard", "linear", "plus", "minus".
        gate: name in ``GATES``: "sigmoid" (default), "none", "magnitude", "fixed".
        c: threshold in nats of the "fixed" gate 1[|delta_t| > c] (default log 2; the paper
            gives none); ignored by the other gates.
        flip: None (DASD), or a name in ``ARM_FLIPS`` (RQ1's selective flips): "low" negates
            z where z > 0, "high" where z < 0. Every gate is >= 0, so omega = z g changes sign
            exactly where omega > 0 (low) or omega < 0 (high); delta_bar and g are unchanged.
        gap_scale: name in ``GAP_SCALES``: "median" (eq. 8, default) divides delta by
            median_t |delta_t| + eps; "none" keeps the raw delta of Proposition 1, so the
            sigmoid gate's threshold becomes 1 nat. See departure 6 of the module docstring.

    Returns:
        ``TokenAdvantages`` with ``advantages, omega, delta_bar, router, gate``, each
        ``(B, T)`` in the promoted float dtype (at least float32), 0 off ``mask``.
    """
    direction_fn = DIRECTIONS.get(direction)
    flip_fn = None if flip is None else ARM_FLIPS.get(flip)
    gate_fn = GATES.get(gate)
    GAP_SCALES.get(gap_scale)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1]; got {rho!r}")
    _check_eps(eps)
    _check_shapes(group_adv, mask, entropy=entropy, student_logp=student_logp,
                  teacher_logp=teacher_logp)
    dtype = _compute_dtype(group_adv, entropy, student_logp, teacher_logp)
    with torch.no_grad():
        h = torch.where(mask, entropy.detach().to(dtype), 0.0)
        n = torch.count_nonzero(mask, dim=-1)

        delta, delta_bar = _sampled_gap(student_logp, teacher_logp, mask, eps=eps, dtype=dtype,
                                        gap_scale=gap_scale)
        # Lines 17-21: per-token gate, router, omega, advantage.
        router = direction_fn(_router_argument(h, mask, n, rho=rho, eps=eps))
        if flip_fn is not None:
            router = flip_fn(router)
        g = gate_fn(delta, delta_bar, c=c)
        omega = router * g
        adv = group_adv.detach().to(dtype)[:, None] + beta * omega * delta_bar
        return TokenAdvantages(
            advantages=torch.where(mask, adv, 0.0),
            omega=torch.where(mask, omega, 0.0),
            delta_bar=delta_bar,  # already +0.0 off the mask (delta is)
            router=torch.where(mask, router, 0.0),
            gate=torch.where(mask, g, 0.0),
        )


def _router_argument(h: Tensor, mask: Tensor, n: Tensor, *, rho: float, eps: float) -> Tensor:
    """(tau - H_t) / (sigma_H + eps) ``(B, T)`` from the masked entropies ``h (B, T)`` and the
    valid counts ``n (B,)``: Algorithm 1 lines 13-15's per-trajectory statistics over valid
    tokens, tau = Quantile_rho(H) and sigma_H = MeanAbsDev(H)."""
    tau = _masked_quantile(h, mask, n, rho)
    h_mean = _masked_mean(h, mask, n)
    sigma_h = _masked_mean(torch.where(mask, (h - h_mean[:, None]).abs(), 0.0), mask, n)
    return (tau[:, None] - h) / (sigma_h[:, None] + eps)


# --------------------------------------------------------------------------- method registry


#: A method's shaper: called as ``method_shaper``'s wrapper is (group_adv, entropy,
#: student_logp, teacher_logp, mask, *, beta, rho, eps, **options) -> ``TokenAdvantages``.
AdvantageShaper = Callable[..., TokenAdvantages]


@dataclass(frozen=True)
class ShaperInputs:
    """The arguments of one method call, as its formula receives them: validated (shapes,
    options, the tensors the method needs), the call running under ``torch.no_grad``.

    Attributes:
        group_adv: ``(B,)`` A_G. entropy, student_logp, teacher_logp: ``(B, T)`` or None
            where the method needs none. mask: ``(B, T)`` bool.
        dtype: the compute dtype (module docstring). beta, rho, eps: as passed.
        options: the method's options, as passed.
    """

    group_adv: Tensor
    entropy: Tensor | None
    student_logp: Tensor | None
    teacher_logp: Tensor | None
    mask: Tensor
    dtype: torch.dtype
    beta: float
    rho: float
    eps: float
    options: dict[str, Any]

    @property
    def anchor(self) -> Tensor:
        """``(B, 1)`` A_G in the compute dtype, detached (broadcasts over tokens)."""
        return self.group_adv.detach().to(self.dtype)[:, None]

    @property
    def masked_entropy(self) -> Tensor:
        """``(B, T)`` H_t in the compute dtype, 0 off the mask."""
        return torch.where(self.mask, self.entropy.detach().to(self.dtype), 0.0)

    def zeros(self) -> Tensor:
        """``(B, T)`` zeros in the compute dtype."""
        return torch.zeros(self.mask.shape, dtype=self.dtype, device=self.mask.device)

    def gap(self, gap_scale: str | None = None) -> tuple[Tensor, Tensor]:
        """``_sampled_gap``: delta and delta_bar ``(B, T)``, scaled by ``gap_scale`` (default:
        the option ``gap_scale``, else ``METHOD_GAP_SCALE``)."""
        scale = gap_scale or str(self.options.get("gap_scale", METHOD_GAP_SCALE))
        return _sampled_gap(self.student_logp, self.teacher_logp, self.mask, eps=self.eps,
                            dtype=self.dtype, gap_scale=scale)


#: What a method's formula is: the validated inputs -> its outputs (masked by the wrapper).
ShaperFormula = Callable[[ShaperInputs], TokenAdvantages]


def method_shaper(
    name: str,
    formula: ShaperFormula,
    *,
    options: Mapping[str, Any],
    requires: tuple[str, ...] = (),
    checks: tuple[Callable[[ShaperInputs], None], ...] = (),
) -> AdvantageShaper:
    """The shaper of method ``name`` around its ``formula``: refuses options not in
    ``options`` (name -> type), runs ``checks``, refuses None for the tensors in ``requires``,
    checks the shapes, then runs ``formula`` under ``torch.no_grad`` in the compute dtype and
    sets every output to exactly 0 off the mask."""

    @functools.wraps(formula)
    def shaper(
        group_adv: Tensor,
        entropy: Tensor | None,
        student_logp: Tensor | None,
        teacher_logp: Tensor | None,
        mask: Tensor,
        *,
        beta: float,
        rho: float = 0.2,
        eps: float = 1e-6,
        **given: object,
    ) -> TokenAdvantages:
        _check_options(name, given, options)
        tensors = {"entropy": entropy, "student_logp": student_logp, "teacher_logp": teacher_logp}
        x = ShaperInputs(group_adv, **tensors, mask=mask, dtype=_compute_dtype(
            group_adv, *tensors.values()), beta=beta, rho=rho, eps=eps, options=given)
        for check in checks:
            check(x)
        _require_tensors(name, **{key: tensors[key] for key in requires})
        _check_shapes(group_adv, mask, **tensors)
        with torch.no_grad():
            out = formula(x)
            return TokenAdvantages(**{f.name: torch.where(mask, getattr(out, f.name), 0.0)
                                      for f in dataclasses.fields(out)})

    return shaper


#: Where a method's privileged teacher gets its context r: no teacher pass, the task's reference
#: solution (appendix F), or a correct sibling rollout of the same group (SDPO-style).
TEACHER_CONTEXTS = ("none", "reference", "sibling")


@dataclass(frozen=True)
class Method:
    """A training method: its advantage shaper plus what the trainer must compute for it.

    Calling a ``Method`` calls its shaper. ``teacher`` is one of ``TEACHER_CONTEXTS``;
    ``reverse_kl`` adds beta * KL(p || sg q) over the full vocabulary to the loss (eq. 2);
    ``needs_correct`` passes the per-trajectory verifier outcome ``correct (B,)`` as an option.
    """

    name: str
    shaper: AdvantageShaper
    teacher: str = "none"
    reverse_kl: bool = False
    needs_correct: bool = False

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_CONTEXTS:
            raise ValueError(f"teacher must be one of {TEACHER_CONTEXTS}; got {self.teacher!r}")

    def __call__(self, *args: Tensor | None, **kwargs: object) -> TokenAdvantages:
        return self.shaper(*args, **kwargs)


#: Training methods by name (``dasd-probe train --method``).
METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str,
    *,
    teacher: str = "none",
    reverse_kl: bool = False,
    needs_correct: bool = False,
    options: Mapping[str, Any] | None = None,
    requires: tuple[str, ...] = (),
    checks: tuple[Callable[[ShaperInputs], None], ...] = (),
) -> Callable[[ShaperFormula], AdvantageShaper]:
    """Decorator: register the decorated formula, wrapped by ``method_shaper`` (``options``,
    ``requires``, ``checks``), as method ``name`` with the given traits; returns the shaper."""

    def deco(formula: ShaperFormula) -> AdvantageShaper:
        shaper = method_shaper(name, formula, options=options or {}, requires=requires,
                               checks=checks)
        METHODS.register(name)(
            Method(name, shaper, teacher=teacher, reverse_kl=reverse_kl, needs_correct=needs_correct)
        )
        return shaper

    return deco


def get_method(name: str) -> Method:
    """The method registered as ``name``; a ``ValueError`` listing the valid names."""
    return METHODS.get(name)


#: The per-token inputs of the teacher-gap methods, and of those routed by entropy too.
_GAP_INPUTS = ("student_logp", "teacher_logp")
_REFERENCE_INPUTS = ("entropy", *_GAP_INPUTS)


@register_method("grpo")
def grpo(x: ShaperInputs) -> TokenAdvantages:
    """GRPO: every valid token inherits its trajectory's A_G (eq. 1; section 2).

    Follows the paper's verifier-only baseline, the beta = 0 limit of eq. (5). Departs in
    nothing; ``beta``, ``rho`` and ``eps`` are accepted for the shared signature and ignored,
    ``entropy``, ``student_logp`` and ``teacher_logp`` may be None (no teacher pass needed),
    and ``omega``, ``delta_bar``, ``router`` and ``gate`` are all 0. Takes no options.
    """
    zeros = x.zeros()
    return TokenAdvantages(advantages=x.anchor.expand(x.mask.shape), omega=zeros,
                           delta_bar=zeros, router=zeros, gate=zeros)


@register_method("dasd", teacher="reference", options={
    "direction": str, "gate": str, "c": float, "flip": str | None, "gap_scale": str},
                 requires=_REFERENCE_INPUTS)
def dasd(x: ShaperInputs) -> TokenAdvantages:
    """DASD: entropy-routed, gap-gated direction (eq. 4) on the sampled-token gap.

    Follows section 4 and Algorithm 1 lines 13-21 with the tanh router and sigmoid gate; the
    options ``direction``, ``gate`` and ``c`` pass through to ``dasd_advantages`` for the
    design-space ablations of Tables 13-14 (e.g. Table 13's "constant +1" row is
    ``direction="plus"`` with the sigmoid gate kept); the option ``flip`` ("low" or "high")
    reverses one routing arm's sign for RQ1's selective flips (section 6, Fig. 6b/6c).
    Departs in its default ``gap_scale``: see ``METHOD_GAP_SCALE``; ``gap_scale="median"``
    is eq. (8) exactly. Other departures: those listed in the module docstring.
    """
    return _dasd_with(x, **({"gap_scale": METHOD_GAP_SCALE} | x.options))


@register_method("conformity", teacher="reference", options={"gap_scale": str},
                 requires=_REFERENCE_INPUTS)
def conformity(x: ShaperInputs) -> TokenAdvantages:
    """Conformity, omega = +1: uniform attraction to the privileged teacher (Probe 1, section 3).

    Follows Probe 1's OPSD-like sign s_t = +1 on a GRPO backbone, here A_hat = A_G + beta
    delta_bar (``direction="plus"``, ``gate="none"``), with DASD's gap scale so that the same
    beta compares like with like: by default (``METHOD_GAP_SCALE``) the raw sampled gap
    A_t = delta_t of Probe 1; option ``gap_scale="median"`` uses eq. (8)'s delta_bar. Departs
    in nothing else: Probe 1 runs on this GRPO backbone with the same A_G anchor.
    """
    return _dasd_with(x, direction="plus", gate="none",
                      gap_scale=str(x.options.get("gap_scale", METHOD_GAP_SCALE)))


@register_method("novelty", teacher="reference", options={"gap_scale": str},
                 requires=_REFERENCE_INPUTS)
def novelty(x: ShaperInputs) -> TokenAdvantages:
    """Novelty, omega = -1: uniform repulsion from the privileged teacher (Probe 1, section 3).

    Follows Probe 1's mirror sign s_t = -1 on a GRPO backbone, here A_hat = A_G - beta
    delta_bar (``direction="minus"``, ``gate="none"``), with DASD's gap scale: by default
    (``METHOD_GAP_SCALE``) Probe 1's raw gap A_t = delta_t; option ``gap_scale="median"``
    uses eq. (8)'s delta_bar. Departs in nothing else: Probe 1 runs on this GRPO backbone with
    the same A_G anchor.
    """
    return _dasd_with(x, direction="minus", gate="none",
                      gap_scale=str(x.options.get("gap_scale", METHOD_GAP_SCALE)))


def _dasd_with(x: ShaperInputs, **options: Any) -> TokenAdvantages:
    """``dasd_advantages`` on the call's inputs with the given options."""
    return dasd_advantages(x.group_adv, x.entropy, x.student_logp, x.teacher_logp, x.mask,
                           beta=x.beta, rho=x.rho, eps=x.eps, **options)


# --------------------------------------------------------------------------- paper baselines


def _sampled_gap(
    student_logp: Tensor, teacher_logp: Tensor, mask: Tensor, *, eps: float, dtype: torch.dtype,
    gap_scale: str = "median",
) -> tuple[Tensor, Tensor]:
    """The sampled-token gap delta and its scaled delta_bar, each ``(B, T)``.

    delta_t = teacher_logp - student_logp on ``mask`` (0 elsewhere); delta_bar_t = delta_t
    divided by the trajectory's ``GAP_SCALES[gap_scale]`` ("median": eq. 8's
    median_t |delta_t| + eps; "none": 1), the same scaling as ``dasd_advantages``.
    """
    scale_fn = GAP_SCALES.get(gap_scale)
    delta = teacher_logp.detach().to(dtype) - student_logp.detach().to(dtype)
    delta = torch.where(mask, delta, 0.0)
    scale = scale_fn(delta.abs(), mask, torch.count_nonzero(mask, dim=-1), eps)
    return delta, delta / scale[:, None]


def _check_eps_of(x: ShaperInputs) -> None:
    _check_eps(x.eps)


def _check_rho_of(x: ShaperInputs) -> None:
    _check_rho(x.rho)


@register_method("hepo", requires=("entropy",), checks=(_check_rho_of,))
def hepo(x: ShaperInputs) -> TokenAdvantages:
    """HEPO: only the top-rho high-entropy ("forking") tokens of the batch keep A_G.

    A_hat_t = A_G on valid tokens with H_t >= Quantile_{1 - rho}(H over ALL valid tokens of
    the batch), 0 elsewhere (a zero advantage passes no gradient through the PPO surrogate).
    The quantile interpolates linearly, as ``numpy.quantile``; ties at the threshold are all
    kept: with n distinct valid entropies n - ceil((n - 1)(1 - rho)) tokens are kept (2 of 10
    at rho = 0.2), with all entropies equal every token, rho = 1 keeps every token (GRPO) and
    rho = 0 only the batch's maximum-entropy token(s). ``router`` holds the 0/1 selection
    indicator; ``omega``, ``delta_bar`` and ``gate`` are 0.

    Follows Wang et al. [24] (baseline "HEPO" of Table 2 and appendix F): the policy gradient
    is kept only on the top 20% highest-entropy tokens, the threshold computed over the whole
    batch. Departs: appendix F describes HEPO as updating high-entropy tokens "more strongly";
    we take Wang et al.'s hard mask (other tokens get no update at all). Unlike every other
    method, a row's output depends on the other rows passed in the same call: pass the whole
    rollout batch at once. ``rho`` is the kept share here, not DASD's router quantile;
    ``beta`` and ``eps`` are ignored, ``student_logp`` and ``teacher_logp`` may be None.
    Takes no options.
    """
    h = x.masked_entropy
    flat_mask = x.mask.reshape(1, -1)
    threshold = _masked_quantile(h.reshape(1, -1), flat_mask, flat_mask.sum(dim=-1), 1.0 - x.rho)
    selected = x.mask & (h >= threshold)
    zeros = x.zeros()
    return TokenAdvantages(advantages=torch.where(selected, x.anchor, 0.0), omega=zeros,
                           delta_bar=zeros, router=selected.to(x.dtype), gate=zeros)


def _check_rlsd_clip(x: ShaperInputs) -> None:
    clip = x.options.get("clip", 0.2)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0.0 <= clip <= 1.0:
        raise ValueError(f"rlsd option clip must be a number in [0, 1]; got {clip!r}")


@register_method("rlsd", teacher="reference", options={"clip": float}, requires=_GAP_INPUTS,
                 checks=(_check_rlsd_clip, _check_eps_of))
def rlsd(x: ShaperInputs) -> TokenAdvantages:
    """RLSD: A_G rescaled per token by the clipped teacher-student evidence ratio.

    A_hat_t = A_G clip(exp(sign(A_G) delta_t), 1 - clip, 1 + clip) with the raw gap
    delta_t = teacher_logp - student_logp in nats, so the scale is (q/p)^sign(A_G) clipped:
    the verifier fixes the sign of every token's update, the privileged teacher only its
    magnitude, and A_hat = A_G where delta = 0, A_hat = 0 where A_G = 0. ``gate`` holds that
    clipped scale (in [1 - clip, 1 + clip] on valid tokens); ``delta_bar`` records the
    gap scaled as the other methods' (``METHOD_GAP_SCALE``) as a diagnostic (the scale
    itself uses the raw delta, whose exponential is the likelihood ratio); ``omega`` and
    ``router`` are 0 (no directional term).

    Follows RLSD [19] (Yang et al., "Self-Distilled RLVR"): the reward gives the direction, the
    self-teacher's token-level log-evidence ratio the update magnitude, with the teacher given
    the reference solution (appendix F). Departs: the clip band is the symmetric 1 +- ``clip``
    that DESIGN.md section 3 states (option ``clip``, default 0.2, in [0, 1]; 0 recovers GRPO),
    not tuned to RLSD's own settings; there is no beta (``beta`` and ``rho`` are ignored,
    ``eps`` enters only ``delta_bar``), and ``entropy`` may be None.
    """
    clip = x.options.get("clip", 0.2)
    a = x.anchor
    delta, delta_bar = x.gap(METHOD_GAP_SCALE)
    scale = torch.exp(torch.sign(a) * delta).clamp(1.0 - clip, 1.0 + clip)
    zeros = x.zeros()
    return TokenAdvantages(advantages=a * scale, omega=zeros, delta_bar=delta_bar, router=zeros,
                           gate=scale)


@register_method("opsd", teacher="reference", reverse_kl=True, requires=_GAP_INPUTS,
                 checks=(_check_eps_of,))
def opsd(x: ShaperInputs) -> TokenAdvantages:
    """OPSD: GRPO advantages; the trainer adds beta KL(p || sg q) over the full vocabulary.

    The PPO advantage is A_hat_t = A_G; the self-distillation term of eq. (2) is not an
    advantage but the trainer's ``dasd.losses.reverse_kl_loss`` with coefficient beta
    (``Method.reverse_kl``). ``omega``, ``router`` and ``gate`` are 1 on valid tokens, the
    uniform attraction of eq. (3) with omega = +1 (passing ``omega`` as that loss's ``weight``
    changes nothing); ``delta_bar`` records the sampled gap scaled as the other methods'
    (``METHOD_GAP_SCALE``) as a diagnostic.

    Follows OPSD [16] as section 2 (eq. 2) and appendix F state it: reverse KL from the student
    to the stop-gradient self-teacher that sees the reference solution, uniformly attractive.
    Departs: OPSD as published trains on the distillation loss alone; here it keeps the
    per-prompt verifier anchor A_G that appendix F gives every method ("All methods use G = 8
    rollouts per prompt with per-prompt group-relative verifier advantages"). A large beta
    lets the KL term dominate; pure distillation needs the trainer to drop the PPO term, which
    this shaper cannot express. ``beta`` and ``rho`` are ignored here, ``entropy`` may be None.
    Takes no options.
    """
    _, delta_bar = x.gap(METHOD_GAP_SCALE)
    ones = x.mask.to(x.dtype)
    return TokenAdvantages(advantages=x.anchor.expand(x.mask.shape), omega=ones,
                           delta_bar=delta_bar, router=ones, gate=ones)


@register_method("sdpo", teacher="sibling", options={"gap_scale": str}, requires=_GAP_INPUTS,
                 checks=(_check_eps_of,))
def sdpo(x: ShaperInputs) -> TokenAdvantages:
    """SDPO: sampled-token distillation toward a sibling-conditioned self-teacher.

    A_hat_t = A_G + beta delta_bar_t with omega = router = gate = 1 on valid tokens; on the
    same inputs this is exactly ``conformity``, only the teacher's context differs.

    Follows SDPO [18] (appendix F: "distills feedback-conditioned next-token predictions"):
    the teacher is the same weights conditioned on a successful rollout of the same group
    (``teacher="sibling"``), and its pressure is uniformly attractive. Departs: (1) SDPO
    distills full (or top-k) next-token distributions; we use the sampled-token estimator of
    Proposition 1 on the emitted tokens; (2) the gap is scaled as DASD's (option ``gap_scale``,
    default ``METHOD_GAP_SCALE``), so beta is comparable across methods; (3) A_G stays as the verifier anchor every
    method keeps (appendix F); (4) when no rollout of the group is correct the trainer
    conditions the teacher on the task's reference solution instead of a sibling. ``rho`` is
    ignored and ``entropy`` may be None.
    """
    _, delta_bar = x.gap()
    ones = x.mask.to(x.dtype)
    return TokenAdvantages(advantages=x.anchor + x.beta * delta_bar, omega=ones,
                           delta_bar=delta_bar, router=ones, gate=ones)


def _check_srpo_correct(x: ShaperInputs) -> None:
    if "correct" not in x.options:
        raise ValueError("method 'srpo' needs option correct: a (B,) bool tensor of outcomes")
    correct = x.options["correct"]
    if not isinstance(correct, Tensor) or correct.dtype != torch.bool:
        raise ValueError(f"srpo option correct must be a bool tensor; got {correct!r}")
    if correct.shape != x.mask.shape[:1]:
        raise ValueError(
            f"srpo option correct must be (B,) = {tuple(x.mask.shape[:1])}; "
            f"got {tuple(correct.shape)}"
        )


@register_method("srpo", teacher="sibling", needs_correct=True,
                 options={"correct": Any, "gap_scale": str},
                 requires=_REFERENCE_INPUTS, checks=(_check_srpo_correct, _check_eps_of))
def srpo(x: ShaperInputs) -> TokenAdvantages:
    """SRPO: GRPO on correct rollouts, entropy-weighted SDPO correction on failed ones.

    Requires the option ``correct``: a ``(B,)`` bool tensor, the verifier outcome of each
    trajectory. Correct rows: A_hat_t = A_G exactly. Failed rows: A_hat_t = A_G +
    beta w_t delta_bar_t with the reliability weight w_t = exp(-max(H_t, 0)) in (0, 1], the
    inverse of the student's perplexity exp(H_t) (the effective number of equally likely next
    tokens): the sampled-token gap is trusted fully where the student is certain and by 1/k
    where it hesitates among k tokens. The weight is absolute rather than normalized per
    trajectory, so a rollout that is uncertain throughout receives little correction; the
    clamp at 0 only absorbs rounding in a computed entropy. ``router`` = 1 on failed rows and
    0 on correct ones, ``gate`` = w_t on every valid token, ``omega`` = router * gate;
    ``delta_bar`` (the gap scaled as DASD's) is recorded on all rows.

    Follows SRPO [17] (appendix F): correct samples get GRPO's reward-aligned reinforcement,
    failed samples SDPO-style correction toward a teacher conditioned on a successful sibling,
    down-weighted where the distillation signal is unreliable. Departs: (1) SRPO applies
    logit-level distillation and describes suppressing high-entropy distillation targets (the
    teacher's distributions); we use the sampled-token estimator of Proposition 1 and weight
    by the student's entropy, which the trainer already computes; (2) failed rows keep A_G as the verifier anchor every
    method keeps (appendix F), the correction being added to it; (3) the gap is scaled as
    DASD's (option ``gap_scale``, default ``METHOD_GAP_SCALE``); (4) when no rollout of the group is correct the trainer conditions
    the teacher on the task's reference solution. ``rho`` is ignored.
    """
    _, delta_bar = x.gap()
    weight = torch.where(x.mask, torch.exp(-x.masked_entropy.clamp(min=0.0)), 0.0)
    router = (x.mask & ~x.options["correct"][:, None]).to(x.dtype)
    omega = router * weight
    return TokenAdvantages(advantages=x.anchor + x.beta * omega * delta_bar, omega=omega,
                           delta_bar=delta_bar, router=router, gate=weight)


# --------------------------------------------------------------------------- checks


def _check_eps(eps: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")


def _check_rho(rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1]; got {rho!r}")


def _require_tensors(method: str, **tensors: Tensor | None) -> None:
    missing = [name for name, x in tensors.items() if x is None]
    if missing:
        raise ValueError(f"method {method!r} needs {', '.join(missing)}; got None")


def _check_options(method: str, options: dict[str, object], allowed: Mapping[str, Any]
                   ) -> None:
    """Refuse options the method does not take, and values not of the type ``allowed`` gives
    (``dasd.config_checks`` rules: numbers finite, strings strings)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"method {method!r} got unknown options {unknown}; valid: {valid}")
    for name, value in options.items():
        check_value(value, allowed[name], f"method {method!r} option {name}")


def _check_shapes(group_adv: Tensor, mask: Tensor, **per_token: Tensor | None) -> None:
    """``mask`` bool (B, T), ``group_adv`` (B,), every non-None ``per_token`` tensor (B, T)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor; got {mask.dtype} (pass mask.bool())")
    if mask.ndim != 2:
        raise ValueError(f"mask must be (B, T); got shape {tuple(mask.shape)}")
    if group_adv.shape != mask.shape[:1]:
        raise ValueError(
            f"group_adv must be (B,) = {tuple(mask.shape[:1])} to match mask {tuple(mask.shape)}; "
            f"got {tuple(group_adv.shape)}"
        )
    for name, x in per_token.items():
        if x is not None and x.shape != mask.shape:
            raise ValueError(
                f"{name} must have mask's shape {tuple(mask.shape)}; got {tuple(x.shape)}"
            )


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    dtype = torch.float32
    for x in tensors:
        if x is not None:
            dtype = torch.promote_types(dtype, x.dtype)
    return dtype

