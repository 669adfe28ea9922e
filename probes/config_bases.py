"""The settings the inference probes share, declared once with one name per knob: how they
sample (``SamplingConfig``) and how they bootstrap their intervals (``BootstrapConfig``).

A probe's options dataclass (``probes.registry``) inherits the bases it uses, so the knob has
the same field name, option name, default, documentation and check in every probe;
``dasd-probe <probe> --help`` lists a base's options in a panel of their own. The names follow
the core trainer's and ``analysis.stats``' (``generation_batch_size``, ``micro_batch_size``,
``n_boot``, ``level``); the names some probes used before stay accepted on the command line
(``--batch-size``, ``--score-batch-size``, ``--bootstrap``, ``--ci``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dasd.rollout.batching import check_sampling

__all__ = ["BootstrapConfig", "SamplingConfig"]

_SAMPLING = {"panel": "Sampling"}
_BOOTSTRAP = {"panel": "Bootstrap"}


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How a probe samples responses; the defaults are the paper's evaluation protocol."""

    temperature: float = field(default=1.0, metadata=_SAMPLING)
    """Sampling temperature (paper: 1.0)."""
    top_p: float = field(default=0.9, metadata=_SAMPLING)
    """Nucleus top-p (paper: 0.9)."""
    max_new_tokens: int = field(default=160, metadata=_SAMPLING)
    """Generation limit per response."""
    generation_batch_size: int = field(default=128,
                                       metadata={**_SAMPLING, "aliases": ("--batch-size",)})
    """Prompts per generation micro-batch."""

    def check_sampling(self) -> None:
        """One-line ``ValueError`` unless the lengths and batch are >= 1, the temperature
        >= 0 and 0 < top_p <= 1."""
        for name in ("max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_sampling(self.temperature, self.top_p)


@dataclass(frozen=True, kw_only=True)
class BootstrapConfig:
    """How a probe's confidence intervals are bootstrapped (resampling prompts)."""

    n_boot: int = field(default=1000, metadata={**_BOOTSTRAP, "aliases": ("--bootstrap",)})
    """Bootstrap resamples of the prompts."""
    level: float = field(default=0.95, metadata={**_BOOTSTRAP, "aliases": ("--ci",)})
    """Confidence level of the intervals."""

    def check_bootstrap(self, *, allow_none: bool = False) -> None:
        """One-line ``ValueError`` unless ``n_boot >= 1`` (>= 0 with ``allow_none``: 0 gives
        no interval) and ``0 < level < 1``."""
        least = 0 if allow_none else 1
        if self.n_boot < least:
            note = " (0: no interval)" if allow_none else ""
            raise ValueError(f"n_boot must be >= {least}{note}, got {self.n_boot}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
