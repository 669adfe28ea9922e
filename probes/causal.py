"""`dasd-probe causal`: RQ2, are the protected forks and the revisions they enable causally
useful? (paper section 6 "RQ2", Fig. 7).

For each checkpoint (``checkpoints``; a model, a checkpoint directory, or a train run's newest
checkpoint) the student samples ``k`` rollouts of each of ``n_prompts`` held-out problems and
the scorer gives each token its entropy H_t. Every rollout is then cut into prefixes, and each
prefix is continued ``continuations`` times under several conditions; the conditions of one
prefix share its cut, so they compare like with like (paired).

* Forks (Fig. 7a, b). Per rollout and per cut rule (``CUTS``): ``high``, the highest-H_t
  position (the strongest repulsion of DASD's router); ``low``, the lowest-H_t position; and
  ``random``, a uniformly drawn position. The response is cut before position t. Conditions:
  ``unmodified``, the student samples o_t and continues; ``teacher_top``, the privileged
  teacher's top choice argmax q_t(. | x, r, o_<t) is emitted at t and the student continues.
  Reported: final correctness and revision rate of the whole response.
* Revisions (Fig. 7c, d). Per rollout, the first epistemic marker that revises (the test of
  ``analysis.health``: the 30 words after the marker share at most 30% of their trigrams with
  the 30 before); the response is cut before the marker. Conditions: ``preserve``, the student
  continues; ``suppress``, the student continues with every token that can begin a marker
  word banned at the cut (``marker_start_tokens``); ``teacher_force``, the privileged teacher
  (context x + r + prefix) writes the continuation. Reported: final correctness (and the
  revision rate, and how often the continuation opens with a marker).

Effects are differences of rates (intervened minus reference) with percentile intervals of a
paired bootstrap over prompts (every condition of a resampled prompt enters with the same
weight). A condition's first token is chosen by a rule (``FIRST_TOKENS``), the rest is plain
``dasd.rollout.generate`` from the condition's context; nothing in the model or the sampler
is patched.

Departures and choices (the paper gives the conditions in one sentence each):

1. The default ctx is the built-in one (the tiny model on Countdown); the default checkpoint
   is the tiny model itself, and ``--checkpoints`` compares others (e.g. GRPO, OPSD and DASD
   train runs), each with its own rollouts, prefixes and continuations.
2. Prefixes are text: a continuation's prompt is the context's prompt string followed by the
   decoded prefix (and first token), re-tokenized. This is exact for the character-level
   tokenizer of the built-in ctx; a subword tokenizer may merge tokens across the cut.
3. Cut positions exclude the final EOS. Ties go to the earliest position. The revision cut is
   the first revising marker of a rollout (one prefix per rollout at most).
4. Suppress bans, at the cut position only, the first token of each marker word in lower case
   and capitalized, with and without a leading space (the first token that is not whitespace;
   forms the tokenizer cannot spell are skipped). In the character-level ctx this is each
   marker's first letter (a, c, h, l, m, p, s, w), which also rules out an "answer:" line
   right at the cut (the cut follows a failed attempt, which the reward would score 0). A
   continuation that opens with whitespace and then a marker is not banned; ``marker_at_cut``
   reports how often a continuation opens with a marker.
5. Every final response (prefix, first token, continuation) is limited to ``max_new_tokens``
   tokens, as the rollouts are: continuations are truncated to what the prefix leaves.
6. Sampling follows the paper's evaluation protocol (temperature 1.0, top-p 0.9) for rollouts
   and continuations. Common random numbers: the conditions of one cut rule draw from
   generators with the same seed, and every checkpoint uses the same seeds (the same weights
   under two names give the same numbers). Entropies are scored at temperature 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dasd.health import REV_MAX_OVERLAP, REV_WINDOW, response_health, trigrams, words
from dasd.markers import DEFAULT_MARKERS, find_markers
from analysis.stats import paired_difference, per_prompt_sums
from dasd.config_checks import as_tuple, check_fields
from dasd.evaluation import sample_rollout_rows
from dasd.models import load_model
from dasd.registry import Registry
from dasd.rollout import generate
from dasd.rollout.hf import (
    encode_prompts,
    eval_mode,
    model_call_kwargs,
    positions_from_mask,
    sample_from_logits,
    stop_token_ids,
)
from dasd.runlog import create_run, read_json, read_manifest
from dasd.tasks import build_task
from dasd.tasks.base import Problem, Task
from figures.terminal import Terminal, cell
from probes.config_bases import BootstrapConfig, SamplingConfig
from probes.registry import register_probe, timestamped_name

__all__ = [
    "CONDITIONS",
    "CUTS",
    "FIRST_TOKENS",
    "FirstTokenInputs",
    "KIND",
    "PAPER_FINDING",
    "PARTS",
    "CausalConfig",
    "Checkpoint",
    "Condition",
    "Part",
    "ProbeContext",
    "marker_start_tokens",
    "next_token_logits",
    "probe_rollouts",
    "resolve_checkpoint",
    "revising_markers",
    "run_causal",
    "starts_with_marker",
]

KIND = "probe:causal"
#: Fig. 7's finding (Qwen3, DASD checkpoint), to read beside the built-in ctx's numbers.
PAPER_FINDING = ("paper (Fig. 7): teacher-forcing high-H_t forks lowers correctness and closes "
                 "revisions, low-H_t and random controls much less; preserving DASD's revision "
                 "continuation beats suppressing it by a wide margin, GRPO's and OPSD's little")
#: Per-response outcomes compared between conditions.
METRICS = ("correct", "revises")


# --------------------------------------------------------------------------- pure parts


#: Cut rules of the forks part: ``f(entropy (n,), rng) -> position`` over a rollout's
#: eligible positions (its tokens before any final EOS; n >= 1).
CUTS: Registry[Callable[[np.ndarray, np.random.Generator], int]] = Registry("cut")


@CUTS.register("high")
def _cut_high(entropy: np.ndarray, rng: np.random.Generator) -> int:
    """The highest-entropy position (earliest on ties): DASD's strongest repulsion."""
    return int(np.argmax(entropy))


@CUTS.register("low")
def _cut_low(entropy: np.ndarray, rng: np.random.Generator) -> int:
    """The lowest-entropy position (earliest on ties): the strongest attraction."""
    return int(np.argmin(entropy))


@CUTS.register("random")
def _cut_random(entropy: np.ndarray, rng: np.random.Generator) -> int:
    """A uniformly drawn position, entropy-agnostic."""
    return int(rng.integers(len(entropy)))


@dataclass(frozen=True)
class FirstTokenInputs:
    """What a first-token rule chooses from: the next-token logits ``(N, V)`` of both
    contexts at the cut, the token ids a rule may ban, and how generation samples."""

    student: Tensor
    teacher: Tensor
    banned: Tensor
    temperature: float
    top_p: float
    generator: torch.Generator | None

    def sample(self, logits: Tensor) -> Tensor:
        """``(N,)`` token ids drawn from ``logits (N, V)`` as generation draws them."""
        return sample_from_logits(logits, temperature=self.temperature, top_p=self.top_p,
                                  generator=self.generator)[0]


#: First-token rules: ``f(FirstTokenInputs) -> (N,) token ids``.
FIRST_TOKENS: Registry[Callable[[FirstTokenInputs], Tensor]] = Registry("first-token rule")


@FIRST_TOKENS.register("student")
def _first_student(x: FirstTokenInputs) -> Tensor:
    """A sample of the student p_t, as generation would draw it."""
    return x.sample(x.student)


@FIRST_TOKENS.register("student_banned")
def _first_student_banned(x: FirstTokenInputs) -> Tensor:
    """A sample of the student p_t with the ``banned`` token ids masked (renormalised)."""
    return x.sample(x.student.float().index_fill(-1, x.banned, -math.inf))


@FIRST_TOKENS.register("teacher_top")
def _first_teacher_top(x: FirstTokenInputs) -> Tensor:
    """The privileged teacher's top choice argmax q_t (lowest id on ties)."""
    return x.teacher.argmax(-1)


@FIRST_TOKENS.register("teacher")
def _first_teacher(x: FirstTokenInputs) -> Tensor:
    """A sample of the privileged teacher q_t."""
    return x.sample(x.teacher)


@dataclass(frozen=True)
class Condition:
    """How a prefix is continued: its first token's rule, and whose context continues."""

    first: str
    """A name in ``FIRST_TOKENS``."""
    context: str
    """``student`` (x + prefix) or ``teacher`` (x with r + prefix) generates the rest."""


CONDITIONS: dict[str, Condition] = {
    "unmodified": Condition(first="student", context="student"),
    "teacher_top": Condition(first="teacher_top", context="student"),
    "preserve": Condition(first="student", context="student"),
    "suppress": Condition(first="student_banned", context="student"),
    "teacher_force": Condition(first="teacher", context="teacher"),
}


def revising_markers(text: str, markers: Sequence[str] = DEFAULT_MARKERS, *,
                     window: int = REV_WINDOW, max_overlap: float = REV_MAX_OVERLAP
                     ) -> list[re.Match[str]]:
    """The marker occurrences of ``text`` that revise, in order: those whose next ``window``
    words share at most ``max_overlap`` of their distinct trigrams with the ``window`` words
    before (``dasd.health.revises`` is True exactly when this list is not empty)."""
    tokens = words(text)
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    found = []
    for match in find_markers(text, markers):
        first = int(np.searchsorted(starts, match.start(), side="right")) - 1
        last = int(np.searchsorted(starts, match.end() - 1, side="right")) - 1
        after = set(trigrams(tokens[last + 1: last + 1 + window]))
        before = set(trigrams(tokens[max(0, first - window): first]))
        if after and len(after & before) / len(after) <= max_overlap:
            found.append(match)
    return found


def starts_with_marker(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> bool:
    """Whether ``text`` opens with a marker word (after leading whitespace only)."""
    found = find_markers(text, markers)
    return bool(found) and not text[: found[0].start()].strip()


def marker_start_tokens(tokenizer: PreTrainedTokenizerBase,
                        markers: Sequence[str] = DEFAULT_MARKERS) -> list[int]:
    """Token ids that can begin a marker word: for each marker in lower case and capitalized,
    with and without a leading space, the first token of its encoding that is not whitespace;
    forms holding the unknown token are skipped. Sorted, without repeats."""
    found = set()
    for marker in markers:
        for form in {marker, marker.capitalize(), f" {marker}", f" {marker.capitalize()}"}:
            ids = tokenizer(form, add_special_tokens=False)["input_ids"]
            if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
                continue
            first = next((i for i in ids if tokenizer.decode([i]).strip()), None)
            if first is not None:
                found.add(int(first))
    if not found:
        raise ValueError("the tokenizer spells none of the markers; give markers it can encode")
    return sorted(found)


def next_token_logits(model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                      prompts: Sequence[str], *, batch_size: int) -> Tensor:
    """The model's next-token logits after each prompt, ``(N, V)`` float32 on CPU; one forward
    pass per micro-batch of left-padded prompts (no cache), in eval mode."""
    ids, mask = encode_prompts(tokenizer, list(prompts))
    device = next(model.parameters()).device
    _, has_keep = model_call_kwargs(model)
    keep = {"logits_to_keep": 1} if has_keep else {}
    parts = []
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, len(ids), batch_size):
            b_ids, b_mask = ids[start:start + batch_size], mask[start:start + batch_size]
            first = int(b_mask.any(0).nonzero()[0])
            b_ids, b_mask = b_ids[:, first:].to(device), b_mask[:, first:].to(device).long()
            out = model(input_ids=b_ids, attention_mask=b_mask,
                        position_ids=positions_from_mask(b_mask), use_cache=False, **keep)
            parts.append(out.logits[:, -1].float().cpu())
    return torch.cat(parts)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CausalConfig(BootstrapConfig, SamplingConfig):
    """Settings of one causal probe; written into the run's manifest."""

    checkpoints: tuple[str, ...] = field(default=("tiny",), metadata={"repeatable": True})
    """Models to compare: ``tiny``, a checkpoint directory, or a train run directory (its
    newest checkpoint)."""
    task: str = "countdown"
    """A registered task name."""
    benchmark: str = ""
    """The task's benchmark where it has several; empty: the task's default."""
    parts: tuple[str, ...] = ("forks", "revisions")
    """``forks`` (Fig. 7a, b) and/or ``revisions`` (Fig. 7c, d) (``PARTS``)."""
    cuts: tuple[str, ...] = ("high", "low", "random")
    """Cut rules of the forks part (``CUTS``)."""
    n_prompts: int = 32
    """Held-out problems."""
    k: int = 2
    """Rollouts per problem (each gives one prefix per cut rule and at most one revision)."""
    continuations: int = 4
    """Continuations per prefix and condition."""
    markers: tuple[str, ...] = DEFAULT_MARKERS
    """Epistemic markers (revision prefixes, suppression, revision rate)."""
    seed: int = 0
    """Seed of the problems, sampling (shared by all conditions) and bootstrap."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""

    def __post_init__(self) -> None:
        for name in ("checkpoints", "parts", "cuts", "markers"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        check_fields(self)
        for name in ("checkpoints", "parts", "cuts", "markers"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for part in self.parts:
            if part not in PARTS:
                raise ValueError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
        for cut in self.cuts:
            CUTS.get(cut)
        for name in ("n_prompts", "k", "continuations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.check_sampling()
        self.check_bootstrap()


@dataclass(frozen=True)
class Checkpoint:
    """A model to probe: its label in tables, what ``load_model`` takes, its method if known."""

    label: str
    model: str
    method: str | None = None


def resolve_checkpoint(spec: str) -> Checkpoint:
    """``tiny`` or a hub id as is; a train run directory -> its newest checkpoint, labelled
    ``<method>@<step>``; a checkpoint directory ``.../checkpoints/step-N`` of a train run ->
    itself, labelled the same way; any other directory -> itself, labelled by its name."""
    path = Path(spec)
    if not path.is_dir():
        return Checkpoint(label=Path(spec).name or spec, model=spec)
    run, step = None, None
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if manifest["kind"] != "train":
            raise ValueError(f"{spec} is a {manifest['kind']} run; give a train run, a "
                             "checkpoint directory or a model")
        found = sorted((int(p.name[5:]), p) for p in (path / "checkpoints").glob("step-*")
                       if p.name[5:].isdigit() and (p / "config.json").is_file())
        if not found:
            raise FileNotFoundError(f"{spec} holds no checkpoint; train it with checkpoints "
                                    "or give a model")
        step, path = found[-1]
        run = manifest
    elif path.parent.name == "checkpoints" and path.name[5:].isdigit() \
            and (path.parent.parent / "manifest.json").is_file():
        run, step = read_manifest(path.parent.parent), int(path.name[5:])
    if run is None:
        return Checkpoint(label=path.name, model=str(path))
    method = run.get("method")
    return Checkpoint(label=f"{method}@{step}", model=str(path), method=method)


def _unique(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    seen: dict[str, int] = {}
    out = []
    for cp in checkpoints:
        seen[cp.label] = seen.get(cp.label, 0) + 1
        label = cp.label if seen[cp.label] == 1 else f"{cp.label}#{seen[cp.label]}"
        out.append(Checkpoint(label=label, model=cp.model, method=cp.method))
    return out


# --------------------------------------------------------------------------- orchestration


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


@dataclass
class ProbeContext:
    """One checkpoint loaded for the probe: what its cuts and continuations need."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: Task
    problems: dict[str, Problem]
    """The held-out problems by id, in sampling order."""
    banned: Tensor
    """Token ids the ``student_banned`` rule masks (``marker_start_tokens``)."""
    stops: list[int]
    """Token ids that end a response."""
    cfg: CausalConfig

    @classmethod
    def load(cls, checkpoint: Checkpoint, cfg: CausalConfig) -> ProbeContext:
        """Load ``checkpoint`` and the task; sample ``cfg.n_prompts`` held-out problems."""
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" \
            else cfg.device
        model, tokenizer = load_model(checkpoint.model, device=device)
        options = {"benchmark": cfg.benchmark} if cfg.benchmark else {}
        task = build_task(cfg.task, tokenizer=tokenizer, **options)
        problems = task.sample(cfg.n_prompts, split="eval", seed=cfg.seed)
        return cls(model, tokenizer, task, {p.id: p for p in problems},
                   torch.tensor(marker_start_tokens(tokenizer, cfg.markers)),
                   stop_token_ids(model, tokenizer), cfg)

    def sample_rollouts(self) -> pd.DataFrame:
        """``cfg.k`` rollouts of every problem (run-schema rows with ``token_ids`` and
        ``entropy``) and whether each revises; the same seed for every checkpoint."""
        cfg = self.cfg
        rows = sample_rollout_rows(
            self.model, self.tokenizer, self.task, list(self.problems.values()), k=cfg.k,
            step=0, split="eval", max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
            teacher=False, generator=torch.Generator().manual_seed(_seed(cfg.seed, 0)))
        rows["revises"] = response_health(rows["response"],
                                          markers=cfg.markers)["revises"].to_numpy()
        return rows


def _continue(ctx: ProbeContext, cuts: pd.DataFrame, condition: str, seed: int) -> pd.DataFrame:
    """``continuations`` continuations of every prefix of ``cuts`` (columns ``prompt_id``,
    ``prefix``) under ``condition``; one row per continuation with the final response, its
    outcome, and the first token after the cut."""
    cfg, tok = ctx.cfg, ctx.tokenizer
    rule, m = CONDITIONS[condition], cfg.continuations
    problems = [ctx.problems[pid] for pid in cuts["prompt_id"]]
    student = [ctx.task.student_prompt(p) + x for p, x in zip(problems, cuts["prefix"])]
    teacher = [ctx.task.teacher_prompt(p) + x for p, x in zip(problems, cuts["prefix"])]
    s_logits = next_token_logits(ctx.model, tok, student, batch_size=cfg.generation_batch_size)
    t_logits = next_token_logits(ctx.model, tok, teacher, batch_size=cfg.generation_batch_size)
    first = FIRST_TOKENS.get(rule.first)(FirstTokenInputs(
        s_logits.repeat_interleave(m, 0), t_logits.repeat_interleave(m, 0),
        banned=ctx.banned, temperature=cfg.temperature, top_p=cfg.top_p,
        generator=torch.Generator().manual_seed(_seed(seed, 0)),
    )).tolist()
    first_text = ["" if t in ctx.stops else tok.decode([t]) for t in first]
    contexts = np.repeat(np.array(student if rule.context == "student" else teacher,
                                  dtype=object), m)
    prefixes = np.repeat(cuts["prefix"].to_numpy(dtype=object), m)
    budget = cfg.max_new_tokens - np.array(
        [len(tok(x + f, add_special_tokens=False)["input_ids"])
         for x, f in zip(prefixes, first_text)])
    go = [i for i, t in enumerate(first) if t not in ctx.stops and budget[i] > 0]
    tails = [""] * len(first)
    if go:
        out = generate(ctx.model, tok, [contexts[i] + first_text[i] for i in go],
                       max_new_tokens=int(budget[go].max()), temperature=cfg.temperature,
                       top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
                       generator=torch.Generator().manual_seed(_seed(seed, 1)))
        stops = torch.tensor(ctx.stops)
        for row, i in enumerate(go):
            ids = out.response_ids[row, : budget[i]][out.response_mask[row, : budget[i]]]
            tails[i] = tok.decode(ids[~torch.isin(ids, stops)].tolist())
    rows = cuts.loc[cuts.index.repeat(m)].reset_index(drop=True).drop(columns="prefix")
    rows.insert(0, "condition", condition)
    rows["continuation_idx"] = np.tile(np.arange(m, dtype=np.int32), len(cuts))
    rows["first_token"] = np.asarray(first, dtype=np.int64)
    after = [f + t for f, t in zip(first_text, tails)]
    rows["response"] = [x + a for x, a in zip(prefixes, after)]
    rows["correct"] = [ctx.task.reward(ctx.problems[pid], r) > 0.5
                       for pid, r in zip(rows["prompt_id"], rows["response"])]
    rows["revises"] = response_health(rows["response"], markers=cfg.markers)["revises"].to_numpy()
    rows["marker_at_cut"] = [starts_with_marker(a, cfg.markers) for a in after]
    return rows


def _fork_cuts(ctx: ProbeContext, rollouts: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One prefix per (rollout, cut rule): the rollout's response before the chosen position;
    rollouts with no token before their EOS give none."""
    rng = np.random.default_rng(seed)
    stops = set(ctx.stops)
    rows = []
    for r in rollouts.itertuples(index=False):
        ids = np.asarray(r.token_ids)
        n = len(ids) - (1 if len(ids) and int(ids[-1]) in stops else 0)
        if n < 1:
            continue
        entropy = np.asarray(r.entropy[:n], dtype=np.float64)
        for cut in ctx.cfg.cuts:
            t = CUTS.get(cut)(entropy, rng)
            rows.append({"cut": cut, "prompt_id": r.prompt_id, "sample_idx": r.sample_idx,
                         "position": t, "entropy_at_cut": float(entropy[t]),
                         "original_token": int(ids[t]),
                         "prefix": ctx.tokenizer.decode(ids[:t].tolist())})
    return pd.DataFrame(rows, columns=["cut", "prompt_id", "sample_idx", "position",
                                       "entropy_at_cut", "original_token", "prefix"])


def _revision_cuts(ctx: ProbeContext, rollouts: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One prefix per rollout that revises: its response before the first revising marker."""
    rows = []
    for r in rollouts.itertuples(index=False):
        found = revising_markers(r.response, ctx.cfg.markers)
        if found:
            rows.append({"prompt_id": r.prompt_id, "sample_idx": r.sample_idx,
                         "marker": found[0].group(0), "offset": found[0].start(),
                         "prefix": r.response[: found[0].start()]})
    return pd.DataFrame(rows, columns=["prompt_id", "sample_idx", "marker", "offset", "prefix"])


@dataclass(frozen=True)
class Part:
    """One half of Fig. 7: where rollouts are cut, how the prefixes are continued, and which
    conditions are contrasted (intervened, reference)."""

    cutter: Callable[[ProbeContext, pd.DataFrame, int], pd.DataFrame]
    conditions: tuple[str, ...]
    contrasts: tuple[tuple[str, str], ...]
    by: tuple[str, ...] = ()
    """Columns of the cuts that split them into separately reported groups."""


#: The probe's parts, in Fig. 7's order.
PARTS: dict[str, Part] = {
    "forks": Part(_fork_cuts, ("unmodified", "teacher_top"), (("teacher_top", "unmodified"),),
                  by=("cut",)),
    "revisions": Part(_revision_cuts, ("preserve", "suppress", "teacher_force"),
                      (("preserve", "suppress"), ("teacher_force", "preserve"))),
}


def _groups(frame: pd.DataFrame, by: tuple[str, ...]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    if not by:
        return [({}, frame)]
    return [(dict(zip(by, key if isinstance(key, tuple) else (key,))), group)
            for key, group in frame.groupby(list(by), sort=False)]


def _report(rows: pd.DataFrame, part: Part, order: list[str], cfg: CausalConfig
            ) -> dict[str, list[dict[str, Any]]]:
    """Rates per condition and paired contrasts per metric, for every group of ``part.by``."""
    rates, contrasts = [], []
    for key, group in _groups(rows, part.by):
        conditions = dict(list(group.groupby("condition", sort=False)))
        for condition, g in conditions.items():
            rate = {"n": len(g), **{c: float(g[c].mean())
                                    for c in (*METRICS, "marker_at_cut")}}
            if "original_token" in g:
                rate["changed"] = float((g["first_token"] != g["original_token"]).mean())
            rates.append({**key, "condition": condition, **rate})
        for new, ref in part.contrasts:
            for metric in METRICS:
                sums = {c: per_prompt_sums(conditions[c]["prompt_id"],
                                           conditions[c][metric].to_numpy(np.float64), order)
                        for c in (new, ref)}
                change = paired_difference(sums[ref], sums[new], n_boot=cfg.n_boot,
                                           level=cfg.level, seed=cfg.seed)
                contrasts.append({**key, "condition": new, "reference": ref, "metric": metric,
                                  "rate": change["value"], "reference_rate": change["base"],
                                  "diff": change["diff"], "ci_low": change["ci_low"],
                                  "ci_high": change["ci_high"]})
    return {"rates": rates, "contrasts": contrasts}


def probe_rollouts(ctx: ProbeContext, rollouts: pd.DataFrame
                   ) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Every part of ``ctx.cfg`` on one checkpoint's ``rollouts`` (rows of the run schema
    with ``token_ids`` and ``entropy``): per part its number of prefixes, the rates of every
    condition and the paired contrasts, and the table of continuations (absent when the part
    found no prefix). The cuts and continuations are seeded alike for every checkpoint."""
    cfg = ctx.cfg
    order = list(ctx.problems)
    report: dict[str, Any] = {}
    tables: dict[str, pd.DataFrame] = {}
    for name in cfg.parts:
        part = PARTS[name]
        cuts = part.cutter(ctx, rollouts, _seed(cfg.seed, 1))
        report[name] = {"n_prefixes": len(cuts), "rates": [], "contrasts": []}
        if cuts.empty:
            continue
        tables[name] = pd.concat([
            _continue(ctx, group.reset_index(drop=True), condition,
                      seed=_seed(cfg.seed, 2, g))
            for g, (_, group) in enumerate(_groups(cuts, part.by))
            for condition in part.conditions
        ], ignore_index=True)
        report[name] |= _report(tables[name], part, order, cfg)
    return report, tables


def run_causal(cfg: CausalConfig, run_dir: Path, *,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run RQ2 with ``cfg`` and log it to ``run_dir`` (kind ``probe:causal``):
    ``source_rollouts.parquet`` (the rollouts of every checkpoint, column ``checkpoint``), one
    table per part that found prefixes (``forks.parquet``, ``revisions.parquet``: one row per
    continuation), all rewritten after each checkpoint, and ``summary.json`` (per checkpoint:
    rollout accuracy and revision rate, and per part the rates of every condition and the
    paired contrasts). ``progress`` gets one line per checkpoint. Returns the summary as
    written."""
    checkpoints = _unique([resolve_checkpoint(spec) for spec in cfg.checkpoints])
    config = {**asdict(cfg), "resolved": [asdict(cp) for cp in checkpoints]}
    tables: dict[str, list[pd.DataFrame]] = {}
    entries = []
    with create_run(run_dir, kind=KIND, config=config, seed=cfg.seed,
                    model=checkpoints[0].model, task=cfg.task) as run:
        for cp in checkpoints:
            if progress is not None:
                progress(f"{cp.label}: {cfg.n_prompts} x {cfg.k} rollouts, "
                         f"{cfg.continuations} continuations per prefix and condition")
            ctx = ProbeContext.load(cp, cfg)
            rollouts = ctx.sample_rollouts()
            report, parts = probe_rollouts(ctx, rollouts)
            entries.append({
                "label": cp.label, "model": cp.model, "method": cp.method,
                "rollouts": {"n": len(rollouts), "accuracy": float(rollouts["correct"].mean()),
                             "rev_rate": float(rollouts["revises"].mean())},
                **report,
            })
            for name, frame in {"source_rollouts": rollouts, **parts}.items():
                tables.setdefault(name, []).append(frame.assign(checkpoint=cp.label))
                run.write_table(name, pd.concat(tables[name], ignore_index=True))
        run.write_json("summary", {
            "figure": "Fig. 7: causal interventions on forks and revisions",
            "n_prompts": cfg.n_prompts, "k": cfg.k, "continuations": cfg.continuations,
            "ci": {"level": cfg.level, "n_boot": cfg.n_boot, "resampled": "prompts (paired)"},
            "paper_finding": PAPER_FINDING,
            "checkpoints": entries,
        })
    return read_json(run_dir, "summary")


def _run(cfg: CausalConfig, run_dir: Path, terminal: Terminal) -> dict[str, Any]:
    """RQ2 (Fig. 7): cut each checkpoint's rollouts at a high-H_t, low-H_t or random position
    and emit the privileged teacher's top choice there, or at a revision prefix and preserve,
    suppress or teacher-force the revision; final correctness and revision rate against the
    paired reference continuations, with prompt-bootstrap CIs."""
    with terminal.status("probing") as update:
        return run_causal(cfg, run_dir, progress=update)


def _effect(c: dict[str, Any]) -> str:
    """A contrast's difference and interval, or "–"."""
    if cell(c["diff"]) == "–":
        return "–"
    return f"{c['diff']:+.3f} [{cell(c['ci_low'], '+.3f')}, {cell(c['ci_high'], '+.3f')}]"


def _show_forks(terminal: Terminal, forks: dict[str, Any], continuations: int,
                level: str) -> None:
    """Fig. 7a,b of one checkpoint: per cut and metric, the unmodified and teacher-top rates."""
    terminal.table(f"Fig. 7a,b: teacher's top choice at the cut vs the student "
                   f"({forks['n_prefixes']} prefixes x {continuations}), {level}",
                   ["cut", "metric", "unmodified", "teacher top", "difference"],
                   [[c["cut"], c["metric"], cell(c["reference_rate"]), cell(c["rate"]),
                     _effect(c)] for c in forks["contrasts"]], left=2)


def _show_revisions(terminal: Terminal, revisions: dict[str, Any], continuations: int,
                    level: str) -> None:
    """Fig. 7c,d of one checkpoint: the rates per condition, then each contrast's difference."""
    rows = [[condition, cell(r["correct"]), cell(r["revises"]), cell(r["marker_at_cut"])]
            for condition, r in {r["condition"]: r for r in revisions["rates"]}.items()]
    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for c in revisions["contrasts"]:
        pairs.setdefault((c["condition"], c["reference"]), {})[c["metric"]] = c
    rows += [[f"{new} - {ref}", _effect(by_metric["correct"]), _effect(by_metric["revises"]),
              ""] for (new, ref), by_metric in pairs.items()]
    terminal.table(f"Fig. 7c,d: continuations of {revisions['n_prefixes']} revision "
                   f"prefixes x {continuations}, {level}",
                   ["condition", "correct", "revises", "marker at cut"], rows)


def _show(cfg: CausalConfig, summary: dict[str, Any], run_dir: Path,
          terminal: Terminal) -> None:
    """Per checkpoint: its rollouts, then Fig. 7a,b and Fig. 7c,d; the paper's finding."""
    level = f"{summary['ci']['level']:.0%} CI"
    for entry in summary["checkpoints"]:
        terminal.line(f"{entry['label']}: {entry['rollouts']['n']} rollouts, accuracy "
                      f"{entry['rollouts']['accuracy']:.3f}, revision rate "
                      f"{entry['rollouts']['rev_rate']:.3f}")
        if entry.get("forks", {}).get("contrasts"):
            _show_forks(terminal, entry["forks"], summary["continuations"], level)
        if entry.get("revisions", {}).get("contrasts"):
            _show_revisions(terminal, entry["revisions"], summary["continuations"], level)
        elif "revisions" in entry:
            terminal.line("  no revision prefix in these rollouts")
    terminal.line(PAPER_FINDING)
    terminal.line(f"run directory: {run_dir}")


register_probe("causal", options=CausalConfig, run=_run, show=_show,
               default_name=lambda cfg: timestamped_name("causal", cfg.checkpoints[0]),
               default_name_text="causal-<first checkpoint>-<time>")
