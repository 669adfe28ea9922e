"""Control worlds: a positive control (``tiny-planted``) and a negative control (``tiny-null``)
for the paper's probes (issue 16; paper section 3 Probes 1-3, section 6 RQ1-RQ2).

These are not reproductions. Each world is the built-in ``tiny`` model (``dasd._tiny_recipe``)
fine-tuned for 1,200 steps (batch 8, peak lr 1e-3, cosine, one epoch) on 9,600 fresh Countdown
traces, half of them in the privileged format (the ``ref:`` line r in the prompt).
``load_model("tiny-planted")`` (any ``--model``) builds a world once, with a progress bar, under
a lock, and caches it beside tiny: ``cache_dir()/<name>-v<V>-<hash>-seed<S>``, the hash covering
the world's recipe and tiny's own cache name. A fine-tune of the cached tiny, not a build from
scratch: 1,200 steps are 23% of tiny's 5,200 and reuse everything tiny learned (format,
arithmetic, search), so a world builds in about 2 CPU-minutes (4-5 minutes of wall time on the
2 shared cores); the price is that a world inherits tiny's quirks, that a planted behaviour
competes with what tiny already believes, and that a change to tiny rebuilds both worlds.

Knobs (``WorldRecipe``), and why these sizes
--------------------------------------------
``tiny-planted`` plants the paper's two hypothesised mechanisms:

1. *Execution: the teacher is right where the student is confidently wrong, on low-entropy
   scaffolding.* In student-format traces the last digit of every multiplication result is
   written one higher (``slip_op="*"``: ``7*3=22``), always; privileged traces (with r) write
   it right. The slip is deterministic on purpose. A slip sampled at some rate ε raises the
   student's entropy at that token to about ε ln(k/ε) nats (0.2-0.5 nats for the rates a probe
   can see), far above the running median of a near-deterministic trajectory (tiny: median
   0.0019 nats, 67% of tokens below 0.01), so it lands in the *high* bucket (issue 16's trial:
   147 of 159 slip tokens); and a slip rate below 1 − top-p is cut off by nucleus sampling, so
   the unmodified student never makes it at the paper's top-p 0.9 (the trial's +0.7%). A
   confident slip was meant to keep the student's entropy low, survives nucleus sampling (it is
   the student's top token), and puts q and p on different top tokens, the situation in which
   attraction to the teacher can raise StepAcc. Measured (docs/control-worlds.md), it falls
   short on both counts. 99.7% of the student's ``*`` results are wrong (84% exactly the
   planted slip), yet its entropy at the slipped digit is 0.033 nats (median), 17 times the
   trajectory median (0.0019 nats): 99.5% of slips sit above the trajectory median, and Probe
   3's low bucket reached 6% of them. And the teacher is right there only when it can copy r:
   its own rollouts have StepAcc 1.0, but at the student's first ``*`` step its probability of
   the right digit is 0.60 (median), 0.01 after a slipped step (``scripts/world_stats.py``).
   The shared weights hold one multiplication, and the slip overwrote it; the ``ref:`` line
   gives the teacher r's results to copy, not a second arithmetic. (Tried and dropped: twice
   the steps with half of the privileged ``*`` results shown slipped but unscored, so that the
   teacher would learn to write the right digit after a slipped prefix; on top-p 0.9 samples
   the median at the first ``*`` step went from 0.34 to 0.19.) Only the written digit is wrong:
   the next step reads the right value, so the step judge charges the slip and the next step
   (whose operand is then not in the pool); the answer line is unchanged, so Avg@k is not the
   target. No label smoothing: smoothing spreads mass over the vocabulary, and Novelty (∝
   p/q^α) then draws that junk (the trial's −100% E(y)).
2. *Exploration: at forks the teacher points to the reference path and never revises.*
   Privileged traces never try a failed chain first (``privileged_detour=0``; tiny: 20%), so
   q puts almost no mass on epistemic markers while the student, whose traces carry one or two
   failed chains each closed by a marker in half of the cases, does.

``privileged_fraction=0.5`` (tiny: 0.25) gives the teacher format as many updates as the
student format. Nothing else differs from a fine-tune of tiny on its own data.

``tiny-null`` removes what the teacher knows: its privileged prompts carry another problem's
reference (``uninformative_reference``), followed by an ordinary student-format trace of the
problem asked, so r says nothing about the answer and the model learns to ignore it; no slips,
same sizes, same data seeds (its student-format pairs are exactly tiny-planted's before the
slips). The teacher then differs from the student only through an irrelevant context line:
q_t ≈ p_t.

What each world predicts, claim by claim (``PREDICTED_SIGN``)
------------------------------------------------------------
Signs are of the measured value (``analysis.findings.Claim.ours``); 0 means no effect (the
interval should contain 0). p = student π(·|x, o_<t), q = teacher π(·|x, r, o_<t).

A fact used throughout: with q ≈ p (the null), Novelty's π̃ ∝ p/q^α ≈ p^(1−α) is the student
at temperature 1/(1−α) = 2: it is not the absence of an intervention. Flattening a student
distribution raises its rarer options wherever nucleus sampling lets them through, so the null
predicts Novelty effects of the same sign as the paper's (low-H ΔStepAcc < 0: rarer tokens at
scaffolding are wrong tokens; high-H ΔE(y) > 0: rarer fork choices lead to failed chains and
the markers that close them). Those two cells therefore cannot tell a knowing teacher from an
uninformed one; only the size relative to the null can.

Finding 1 (Probe 1, training with A_G ± β δ_t, held-out evaluation at top-p 0.9):

* Conformity − Base, Pass@k: planted −1 (attraction suppresses the markers and the retries they
  open, which the teacher never writes; fewer retries, fewer prompts solved); null 0 (δ_t is
  noise around −KL(p‖q) ≈ 0; the β term does not move the metrics).
* Conformity − Base, E(y): planted −1 (δ_t ≪ 0 on every sampled marker token); null 0.
* Novelty − Base, StepAcc: planted 0 (repulsion reinforces the sampled slipped digit, which the
  student already writes with probability ≈ 1, and fork choices off r, which are still valid
  steps; nothing planted makes it lose steps); null 0.
* Novelty − Base, E(y): planted +1 (sampled markers have δ_t ≪ 0, so repulsion rewards them);
  null 0.

Finding 2 (Probe 2, the student's own samples at top-p 1):

* ρ_s(A_t, H_t): both 0. E_p[A_t] = −KL(p_t‖q_t) ≤ 0 at every prefix, and the KL grows with
  H_t; on sampled tokens the sign of A_t is set by whether the sample agrees with the teacher,
  which neither world ties to entropy (tiny: −0.009 [−0.035, +0.017]). Planted's slip tokens
  have A_t ≪ 0 at low H_t, which pulls ρ down; its forks agree with r more often, which pulls it
  up; the construction fixes no sign.
* ρ_s(D⁺_t, H_t) and ρ_s(D⁻_t, H_t): both +1 in both worlds. One plain SGD step moves a
  near-deterministic distribution less than an uncertain one (TV ≤ 1 − max p grows with H_t),
  and D⁺, D⁻ agree to first order in the step; the D⁻ claim ("< 0") is predicted to fail.

Finding 3 (Probe 3, Table 1; default settings: top-p 0.9 for p and for π̃, running median,
every in-bucket position after a burn-in of 8):

* low-H_t Conformity ΔStepAcc: planted +1 (the slipped digit is a low-entropy student token;
  the teacher's top token there is the right digit, so drawing from q repairs the step and the
  one after it); null 0 (q ≈ p).
* high-H_t Novelty ΔE(y): planted +1 (q(marker) ≈ 0 where p(marker) > 0: p/q^α multiplies
  markers); null +1 (tempering, above).
* high-H_t Conformity ΔE(y): planted −1 (the teacher never opens a marker line); null 0.
* low-H_t Novelty ΔStepAcc: planted −1 and null −1, by tempering at scaffolding tokens whose π̃
  keeps some mass inside the nucleus (tiny: −1.4% [−2.6, −0.5]); at the planted slip itself
  π̃ keeps the wrong digit (p/q^α is largest where q is smallest), so nothing planted adds to it.
  Measured after the table was written: wrong on both worlds at top-p 0.9 (the flattened π̃ of
  a token with p_top > 0.9998 still has a top token above 0.9, so the nucleus cuts its tail),
  right at top-p 1.0 (docs/control-worlds.md). The table is left as predicted.

RQ1 (DASD, then one routing arm flipped):

* low-H_t arm flipped − unperturbed, StepAcc: planted −1 (unperturbed DASD attracts the
  low-entropy slip tokens, where δ_t = log q − log p is several nats negative, so β ω δ_t pushes
  the slipped digit down and StepAcc rises; flipped, the push reverses on a digit already at
  probability ≈ 1); null 0 (δ_t ≈ 0: both arms inert, as the attraction arm is on tiny).
* high-H_t arm flipped − unperturbed, E(y): planted −1 (unperturbed repulsion rewards sampled
  markers, the flip penalizes them); null 0.

RQ2 (causal; `dasd-probe validate` probes the world's base model, so the claims read ``base: ...``;
the reasoning below holds for the base model and a DASD checkpoint alike):

* teacher top token at the highest-H_t position − unmodified, correct: both 0. Planted's
  teacher points at r's next step at a fork, which helps if the student can follow r without
  seeing it, but at the fork after a failed chain its top token skips the marker and the retry,
  which hurts; the construction fixes no sign. The null's teacher top token is the student's
  own mode: one greedy token.
* preserve − suppress at revision prefixes, correct: both 0. The claim is about the student
  alone (no teacher is involved); in Countdown a new attempt without the marker word scores the
  same (tiny: inconclusive), and neither world changes that.

Nucleus truncation of the intervened distribution in Probe 3
------------------------------------------------------------
Keep π̃ truncated with the same top-p as the unmodified student (the probe's current rule;
``dasd.rollout.lockstep`` departure 4), and report top-p 1.0 beside the default where tails
matter. The unmodified arm is the student's deployed policy (the paper evaluates at top-p 0.9);
if only one arm were truncated, every cell would mix the effect of the intervention with the
effect of truncation (Novelty's untruncated π̃ amplifies the junk tail: the trial's −100% E(y)).
At top-p 0.9 the probe is blind to any mechanism that lives in a tail lighter than 10%, at both
arms; that is a limit of the protocol, which this world respects by planting a confident slip
rather than a tail. Measured on tiny-planted at top-p 1.0, low-H Novelty loses 14% of StepAcc,
but to junk characters from the amplified tail, more so in the high and random buckets, and the
fork cells' marker rise vanishes under the junk (docs/control-worlds.md).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from transformers import Qwen3ForCausalLM

from dasd._tiny_recipe import TinyRecipe, encode_pairs
from dasd.models import (
    TINY_RECIPE,
    atomic_build,
    build_costs,
    build_progress_bar,
    cache_dir,
    ensure_cached,
    ensure_tiny_model,
    loss_summary,
    make_char_tokenizer,
    save_model,
    tiny_model_path,
    train_with_bar,
)
from dasd.tasks import get_task

__all__ = [
    "PREDICTED_SIGN",
    "WORLDS",
    "WORLD_FILE",
    "WORLD_RECIPE_VERSION",
    "WorldRecipe",
    "build_world",
    "ensure_world",
    "plant_slips",
    "world_examples",
    "world_path",
]

#: Bump when the control worlds' training code changes in a way ``WorldRecipe`` does not capture.
WORLD_RECIPE_VERSION = 1
#: File, beside a world's weights, with its recipe, its base model and the build statistics.
WORLD_FILE = "dasd_world.json"
_STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


@dataclass(frozen=True)
class WorldRecipe:
    """A control world: a short fine-tune of the cached ``tiny`` model (module docstring)."""

    n_examples: int = 9_600
    """Fine-tuning pairs (fresh draws from the train split, not tiny's)."""
    privileged_fraction: float = 0.5
    """Share of pairs in the privileged format (a ``ref:`` line in the prompt)."""
    privileged_detour: float = 0.0
    """Share of privileged traces that try a failed chain (with a marker) before r's steps."""
    uninformative_reference: bool = False
    """Privileged prompts carry another problem's reference and plain (student) traces."""
    slip_op: str = ""
    """In student-format traces only, the last digit of the result of every step with this
    operator is written one higher (mod 10): a systematic slip the student makes with
    confidence and the privileged teacher does not; empty: no slips."""
    steps: int = 1_200
    """Optimizer steps of the fine-tune."""
    batch_size: int = 8
    lr: float = 1e-3
    """Peak learning rate (linear warmup, cosine decay as ``dasd._tiny_recipe.lr_at``)."""
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    data_seed: int = 1_000
    """Added to the world's seed for the fine-tuning data (tiny's data use the seed itself)."""

    def __post_init__(self) -> None:
        for name in ("n_examples", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldRecipe.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("privileged_fraction", "privileged_detour"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldRecipe.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.slip_op not in ("", "+", "-", "*", "/"):
            raise ValueError(f"WorldRecipe.slip_op must be one of + - * / or empty, "
                             f"got {self.slip_op!r}")

    def schedule(self, base: TinyRecipe = TINY_RECIPE) -> TinyRecipe:
        """The fine-tune's optimizer settings in the form ``dasd._tiny_recipe.train`` takes."""
        return replace(base, n_examples=self.n_examples,
                       privileged_fraction=self.privileged_fraction, steps=self.steps,
                       batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                       min_lr_ratio=self.min_lr_ratio)

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The control worlds by name (module docstring: what each plants and why these sizes).
WORLDS: dict[str, WorldRecipe] = {
    "tiny-planted": WorldRecipe(slip_op="*"),
    "tiny-null": WorldRecipe(uninformative_reference=True),
}


# --------------------------------------------------------------------------- training data


def plant_slips(response: str, op: str) -> str:
    """``response`` with the last digit of the result of every step ``a<op>b=c`` (no spaces,
    as the Countdown traces write them) replaced by that digit plus one, mod 10."""
    def slip(line: str) -> str:
        match = _STEP.match(line)
        if not match or match.group(2) != op:
            return line
        return line[:-1] + str((int(line[-1]) + 1) % 10)

    return "\n".join(slip(line) for line in response.split("\n"))


def world_examples(recipe: WorldRecipe, *, seed: int, task_name: str = TINY_RECIPE.task
                   ) -> tuple[list[tuple[str, str]], int]:
    """The fine-tuning pairs of a world (module docstring) and how many are privileged,
    deterministic in ``seed``. Student-format pairs come first, then the privileged ones
    (training shuffles them)."""
    task = get_task(task_name)
    n_priv = round(recipe.n_examples * recipe.privileged_fraction)
    data_seed = seed + recipe.data_seed
    pairs = task.sft_examples(recipe.n_examples - n_priv, seed=data_seed, privileged_fraction=0.0)
    if recipe.slip_op:
        pairs = [(prompt, plant_slips(response, recipe.slip_op)) for prompt, response in pairs]
    if recipe.uninformative_reference:
        problems = task.sample(n_priv, split="train", seed=data_seed + 1)
        traces = task.sft_examples(n_priv, seed=data_seed + 1, privileged_fraction=0.0)
        for k, (problem, (prompt, response)) in enumerate(zip(problems, traces)):
            if prompt != task.student_prompt(problem):
                raise RuntimeError(f"task {task_name!r}: sft_examples and sample disagree on "
                                   "problem order; the null world needs them aligned")
            other = next(problems[(k + j) % n_priv] for j in range(1, n_priv + 1)
                         if problems[(k + j) % n_priv].reference != problem.reference)
            pairs.append((task.teacher_prompt(replace(problem, reference=other.reference)),
                          response))
    else:
        pairs += task.sft_examples(n_priv, seed=data_seed + 1, privileged_fraction=1.0,
                                   privileged_detour=recipe.privileged_detour)
    return pairs, n_priv


# --------------------------------------------------------------------------- build and cache


def _world_recipe(name: str) -> WorldRecipe:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; valid: {', '.join(WORLDS)}")
    return WORLDS[name]


def world_path(name: str, *, seed: int = 0, recipe: WorldRecipe | None = None,
               base: TinyRecipe = TINY_RECIPE) -> Path:
    """Cache directory of world ``name``: ``cache_dir()/<name>-v<V>-<hash>-seed<S>``.

    The hash covers the world's recipe and the cache name of the ``tiny`` model it starts
    from (itself a hash of tiny's recipe, tokenizer and data), so a change to either builds a
    new world.
    """
    recipe = recipe or _world_recipe(name)
    tiny_key = tiny_model_path(seed=seed, recipe=base).name
    key = base.fingerprint(json.dumps(asdict(recipe), sort_keys=True), tiny_key, name,
                           str(WORLD_RECIPE_VERSION))
    return cache_dir() / f"{name}-v{WORLD_RECIPE_VERSION}-{key}-seed{seed}"


def _build_world_into(out_dir: Path, name: str, *, seed: int, progress: bool,
                      recipe: WorldRecipe, base: TinyRecipe) -> None:
    """Fine-tune tiny into world ``name`` and save model, tokenizer and ``WORLD_FILE``."""
    tiny_dir = ensure_tiny_model(seed=seed, progress=progress, recipe=base)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tokenizer = make_char_tokenizer()
    model = Qwen3ForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with build_progress_bar(progress) as bar, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data_row = bar.add_task(f"{name} traces", total=1, note="")
        pairs, n_priv = world_examples(recipe, seed=seed, task_name=base.task)
        encoded = encode_pairs(pairs, tokenizer, max_positions=base.max_positions)
        bar.update(data_row, advance=1, note=f"{len(pairs)} pairs")
        losses = train_with_bar(bar, f"fine-tuning {name}", model, encoded,
                                recipe.schedule(base), seed=seed + recipe.data_seed,
                                pad_id=tokenizer.pad_token_id)
    save_model(out_dir, model, tokenizer)
    stats = {
        "world": name,
        "control": True,
        "world_recipe_version": WORLD_RECIPE_VERSION,
        "recipe": recipe.to_dict(),
        "base_model": tiny_dir.name,
        "seed": seed,
        "n_pairs": len(pairs),
        "n_privileged": n_priv,
        **loss_summary(losses),
        **build_costs(wall0, cpu0),
    }
    (out_dir / WORLD_FILE).write_text(json.dumps(stats, indent=2) + "\n")


def build_world(name: str, out_dir: Path, *, seed: int = 0, progress: bool = True,
                recipe: WorldRecipe | None = None, base: TinyRecipe = TINY_RECIPE) -> Path:
    """Build control world ``name`` into ``out_dir`` (atomic, as ``build_tiny_model``).

    Builds (or reuses) the cached ``tiny`` model of ``seed`` and ``base`` first. Deterministic
    in ``seed``: bitwise-equal weights on one machine; the global torch RNG is left as it was.
    """
    recipe = recipe or _world_recipe(name)
    return atomic_build(out_dir, lambda tmp: _build_world_into(
        tmp, name, seed=seed, progress=progress, recipe=recipe, base=base))


def ensure_world(name: str, *, seed: int = 0, progress: bool = True,
                 recipe: WorldRecipe | None = None, base: TinyRecipe = TINY_RECIPE) -> Path:
    """Path of the cached control world ``name``, building it first (under a lock) if needed."""
    recipe = recipe or _world_recipe(name)
    return ensure_cached(world_path(name, seed=seed, recipe=recipe, base=base),
                         lambda path: build_world(name, path, seed=seed, progress=progress,
                                                  recipe=recipe, base=base))


# --------------------------------------------------------------------------- predictions

#: Predicted sign of each claim's measured value (``analysis.findings.Claim.ours``) on each
#: control world, keyed by the claim's exact text: +1 positive, -1 negative, 0 no effect (the
#: 95% interval should contain 0). Written from the construction before any probe ran on the
#: worlds; the module docstring derives each entry. A sign is that of the measured value, not
#: agreement with the paper: -1 under "... > 0" predicts the claim's opposite.
PREDICTED_SIGN: dict[str, dict[str, int]] = {
    "tiny-planted": {
        "Conformity − Base, Pass@k < 0": -1,
        "Conformity − Base, E(y) < 0": -1,
        "Novelty − Base, StepAcc < 0": 0,
        "Novelty − Base, E(y) > 0": +1,
        "rho_s(A_t, H_t) > 0": 0,
        "rho_s(D+_t, H_t) > 0": +1,
        "rho_s(D-_t, H_t) < 0": +1,
        "low-H_t Conformity, ΔStepAcc % > 0": +1,
        "high-H_t Novelty, ΔE(y) % > 0": +1,
        "high-H_t Conformity, ΔE(y) % < 0": -1,
        "low-H_t Novelty, ΔStepAcc % < 0": -1,
        "low-H_t arm flipped − unperturbed, StepAcc < 0": -1,
        "high-H_t arm flipped − unperturbed, E(y) < 0": -1,
        "base: teacher top token at the highest-H_t position − unmodified, correct < 0": 0,
        "base: preserve − suppress at revision prefixes, correct > 0": 0,
    },
    "tiny-null": {
        "Conformity − Base, Pass@k < 0": 0,
        "Conformity − Base, E(y) < 0": 0,
        "Novelty − Base, StepAcc < 0": 0,
        "Novelty − Base, E(y) > 0": 0,
        "rho_s(A_t, H_t) > 0": 0,
        "rho_s(D+_t, H_t) > 0": +1,
        "rho_s(D-_t, H_t) < 0": +1,
        "low-H_t Conformity, ΔStepAcc % > 0": 0,
        "high-H_t Novelty, ΔE(y) % > 0": +1,
        "high-H_t Conformity, ΔE(y) % < 0": 0,
        "low-H_t Novelty, ΔStepAcc % < 0": -1,
        "low-H_t arm flipped − unperturbed, StepAcc < 0": 0,
        "high-H_t arm flipped − unperturbed, E(y) < 0": 0,
        "base: teacher top token at the highest-H_t position − unmodified, correct < 0": 0,
        "base: preserve − suppress at revision prefixes, correct > 0": 0,
    },
}
