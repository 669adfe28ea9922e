"""Throughput, peak memory and model-FLOPs utilisation of a training update, and the optional
streaming of logged metrics to TensorBoard or Weights & Biases.

FLOPs. A training token costs ``6 N`` FLOPs (forward 2N, backward 4N; Kaplan et al. 2020,
"Scaling Laws for Neural Language Models", section 2.1; the MFU of Chowdhery et al. 2022,
PaLM, appendix B) and a no-gradient forward token ``2 N``, with N the parameter count of the
model (the embedding included, as the tied-or-not output layer is a matmul of the same size).
The attention term of PaLM's appendix B (``12 L H Q T`` per token for sequence length T) is
left out: at the paper's 1.7B shape and 8k tokens it adds ~40 % to 6N, so the MFU here is a
lower bound for long responses. ``mfu = flops / (seconds * peak)`` with the card's dense bf16
peak from ``PEAK_BF16_TFLOPS`` (matched on the CUDA device name) or the config's override;
MFU is not logged on a CPU or an unknown card.

Reporting. ``metrics.jsonl`` stays the source of truth; ``build_reporter("tensorboard" |
"wandb")`` returns a sink that gets the same ``(step, split, metrics)`` records
(``transformers``' and TRL's ``report_to`` convention). Both packages are optional extras
(``pip install 'dasd[tensorboard]'`` / ``'dasd[wandb]'``); a missing one is a one-line error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = [
    "PEAK_BF16_TFLOPS",
    "REPORTERS",
    "Reporter",
    "build_reporter",
    "check_report_to",
    "forward_flops",
    "peak_flops",
    "synced_time",
    "training_flops",
    "update_metrics",
]

#: Dense (no sparsity) bf16 tensor-core peak TFLOP/s by CUDA device-name fragment, from the
#: vendor data sheets; the first fragment found in the name wins, so the more specific first.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
}

#: ``report_to`` values: ``none`` (default) and the sinks ``build_reporter`` knows.
REPORTERS = ("none", "tensorboard", "wandb")


def training_flops(n_params: int, tokens: int) -> float:
    """6 N FLOPs per token through forward and backward (module docstring)."""
    return 6.0 * n_params * tokens


def forward_flops(n_params: int, tokens: int) -> float:
    """2 N FLOPs per token of a forward pass without gradient."""
    return 2.0 * n_params * tokens


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of ``device``: ``override_tflops`` when > 0, else the table's entry for a CUDA
    device's name; None on a CPU or an unknown card."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return tflops * 1e12
    return None


def synced_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done (CUDA kernels run
    asynchronously, so an unsynchronised clock would charge them to the next phase)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def update_metrics(*, device: torch.device, peak: float | None, n_params: int,
                   rollout_s: float, update_s: float, teacher_s: float, generated_tokens: int,
                   trained_tokens: int, teacher_forward_tokens: int) -> dict[str, float]:
    """The ``perf/`` metrics of one update: sampling and training throughput (tokens/s), the
    teacher's share of the scoring time, and on CUDA the peak allocated memory since the last
    ``torch.cuda.reset_peak_memory_stats`` and, where the peak FLOP/s is known, the update's
    MFU = (6 N trained + 2 N teacher-forward tokens) / (update_s x peak).

    ``trained_tokens`` counts every attended (prompt and response) token of every PPO forward
    with gradient, ``teacher_forward_tokens`` those of the no-gradient teacher forwards inside
    the update (the reverse-KL methods).
    """
    out = {
        "perf/rollout_tokens_per_s": generated_tokens / max(rollout_s, 1e-9),
        "perf/update_tokens_per_s": trained_tokens / max(update_s, 1e-9),
        "perf/teacher_s": teacher_s,
    }
    if device.type == "cuda":
        out["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if peak is not None:
        flops = training_flops(n_params, trained_tokens) + forward_flops(n_params,
                                                                         teacher_forward_tokens)
        out["perf/mfu"] = flops / (max(update_s, 1e-9) * peak)
    return out


class Reporter(Protocol):
    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", repr(dict(config)))

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(dir=str(run_dir), name=run_dir.name, config=dict(config),
                              reinit=True)

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self.run.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


_PACKAGES = {"tensorboard": ("tensorboard", _TensorBoard), "wandb": ("wandb", _Wandb)}


def check_report_to(report_to: str) -> None:
    """A one-line ``ValueError`` for an unknown sink or one whose package is not installed."""
    if report_to not in REPORTERS:
        raise ValueError(f"report_to must be one of {', '.join(REPORTERS)}, got {report_to!r}")
    if report_to == "none":
        return
    import importlib.util

    package = _PACKAGES[report_to][0]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"report_to={report_to} needs the {package} package: "
                         f"pip install 'dasd[{report_to}]' (or report_to=none)")


def build_reporter(report_to: str, run_dir: Path, config: Mapping[str, Any]) -> Reporter | None:
    """The sink named ``report_to`` writing beside ``run_dir`` (TensorBoard: ``run_dir /
    tensorboard``; W&B: its own run, in ``run_dir``), or None for ``none``."""
    check_report_to(report_to)
    if report_to == "none":
        return None
    return _PACKAGES[report_to][1](Path(run_dir), config)
