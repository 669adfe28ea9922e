"""Load a model by name; build the built-in ``tiny`` model (DESIGN.md section 5)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
import torch
import transformers
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import SafetensorError
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3ForCausalLM,
)

from dasd._tiny_recipe import TinyRecipe, encode_pairs, qwen3_config, train
from dasd.tasks import get_task

try:
    import fcntl
except ImportError:
    fcntl = None

__all__ = [
    "CHARSET",
    "DEVICES",
    "MODEL_DTYPES",
    "RECIPE_FILE",
    "TINY_RECIPE",
    "TINY_RECIPE_VERSION",
    "TinyRecipe",
    "atomic_build",
    "build_progress_bar",
    "build_tiny_model",
    "cache_dir",
    "ensure_cached",
    "ensure_tiny_model",
    "load_model",
    "make_char_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "tiny_model_path",
]

#: Characters of the built-in world's tokenizer (one token each), after the special tokens.
CHARSET = "0123456789+-*/=()., :;?!'\n abcdefghijklmnopqrstuvwxyz"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def make_char_tokenizer(charset: str = CHARSET) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (one token per character), left-padded.

    Special tokens: ``<pad>`` (id 0), ``<eos>`` (id 1), ``<unk>`` (id 2); characters outside
    ``charset`` map to ``<unk>``. Saved with ``save_pretrained`` it loads with ``AutoTokenizer``.
    """
    chars = list(dict.fromkeys(charset))
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


#: Bump when the tiny model's training code changes in a way ``TinyRecipe`` does not capture.
TINY_RECIPE_VERSION = 1
#: The recipe of the built-in ``tiny`` model (``TinyRecipe.fast()`` is a seconds-long variant).
TINY_RECIPE = TinyRecipe()
#: File, beside the weights, with the recipe and the measured training statistics.
RECIPE_FILE = "dasd_tiny.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def cache_dir() -> Path:
    """Where built models are cached: ``$DASD_CACHE_DIR`` if set, else the user cache dir."""
    env = os.environ.get("DASD_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("dasd"))


def _data_fingerprint(recipe: TinyRecipe, seed: int) -> str:
    """A few training pairs, so that a changed trace generator changes the cache path."""
    pairs = get_task(recipe.task).sft_examples(
        16, seed=seed, privileged_fraction=recipe.privileged_fraction
    )
    return json.dumps(pairs)


def tiny_model_path(*, seed: int = 0, recipe: TinyRecipe = TINY_RECIPE) -> Path:
    """Cache directory of the tiny model for ``seed``: ``cache_dir()/tiny-v<V>-<hash>-seed<S>``.

    The hash covers the recipe, the tokenizer's charset and a sample of the task's training
    traces, so a change to any of them (or to ``TINY_RECIPE_VERSION``) builds a new model.
    """
    key = recipe.fingerprint(CHARSET, _data_fingerprint(recipe, seed))
    return cache_dir() / f"tiny-v{TINY_RECIPE_VERSION}-{key}-seed{seed}"


def build_progress_bar(enabled: bool) -> Progress:
    """The progress bar of a model build (stderr; ``enabled=False`` shows nothing)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def train_with_bar(bar: Progress, description: str, model: PreTrainedModel,
                   encoded: list[tuple[list[int], list[int]]], recipe: TinyRecipe, *, seed: int,
                   pad_id: int) -> list[float]:
    """``dasd._tiny_recipe.train`` with a row of ``bar`` showing the steps and the loss;
    returns the per-step losses."""
    row = bar.add_task(description, total=recipe.steps, note="")
    return train(model, encoded, recipe, seed=seed, pad_id=pad_id,
                 on_step=lambda step, loss: bar.update(row, advance=1, note=f"loss {loss:.3f}"))


def save_model(out_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save a built model (generation config: the tokenizer's EOS and pad) and its tokenizer."""
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def loss_summary(losses: list[float]) -> dict[str, float]:
    """A build's first-step loss and mean loss over its last 5% of steps."""
    tail = losses[-max(1, len(losses) // 20):]
    return {"loss_first_step": losses[0], "loss_last_5pct": sum(tail) / len(tail)}


def build_costs(wall0: float, cpu0: float) -> dict[str, Any]:
    """Wall and CPU seconds since ``wall0`` / ``cpu0`` and the software that built a model."""
    return {
        "wall_seconds": time.perf_counter() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


def _build_into(out_dir: Path, *, seed: int, progress: bool, recipe: TinyRecipe) -> None:
    """Generate the traces, train, and save model, tokenizer and ``RECIPE_FILE`` in ``out_dir``."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tokenizer = make_char_tokenizer()
    with build_progress_bar(progress) as bar, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data_row = bar.add_task(f"{recipe.task} traces", total=1, note="")
        pairs = get_task(recipe.task).sft_examples(
            recipe.n_examples, seed=seed, privileged_fraction=recipe.privileged_fraction
        )
        encoded = encode_pairs(pairs, tokenizer, max_positions=recipe.max_positions)
        bar.update(data_row, advance=1, note=f"{len(pairs)} pairs")
        data_wall = time.perf_counter() - wall0
        model = Qwen3ForCausalLM(qwen3_config(recipe, tokenizer))
        losses = train_with_bar(bar, "training tiny", model, encoded, recipe, seed=seed,
                                pad_id=tokenizer.pad_token_id)
    save_model(out_dir, model, tokenizer)
    stats = {
        "recipe_version": TINY_RECIPE_VERSION,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_pairs": len(pairs),
        "mean_pair_tokens": sum(len(ids) for ids, _ in encoded) / len(encoded),
        **loss_summary(losses),
        "data_wall_seconds": data_wall,
        **build_costs(wall0, cpu0),
    }
    (out_dir / RECIPE_FILE).write_text(json.dumps(stats, indent=2) + "\n")


def build_tiny_model(
    out_dir: Path, *, seed: int = 0, progress: bool = True, recipe: TinyRecipe = TINY_RECIPE
) -> Path:
    """Train the tiny model (DESIGN.md section 5) and save it to ``out_dir``; returns ``out_dir``.

    Deterministic in ``seed``: weights are bitwise equal across builds on one machine, and the
    global torch RNG is left as it was. Atomic: the model is built in a temporary
    directory beside ``out_dir`` and renamed into place at the end, so a killed build leaves no
    half model; if a concurrent build renamed its copy first, that copy is kept. The recipe is
    ``dasd._tiny_recipe`` (its docstring lists the choices made).
    """
    return atomic_build(out_dir, lambda tmp: _build_into(tmp, seed=seed, progress=progress,
                                                         recipe=recipe))


def atomic_build(out_dir: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a temporary directory beside ``out_dir``, then rename it into place.

    A killed build leaves nothing; if a concurrent build renamed its copy first, that copy is
    kept. Raises ``FileExistsError`` if ``out_dir`` exists.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"model directory {out_dir} already exists; delete it to rebuild")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        build(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (released if the process dies).

    Without ``fcntl`` (Windows) there is no lock: concurrent builds then both train, and the
    atomic rename in ``atomic_build`` keeps the first finished copy.
    """
    with open(lock_path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_cached(path: Path, build: Callable[[Path], object]) -> Path:
    """``path`` if it is a directory, else ``build(path)`` under a lock file beside it.

    Concurrent callers wait on the lock; leftovers of killed builds are removed first.
    """
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(path.name + ".lock")):
        if not path.is_dir():
            for stale in path.parent.glob(f".{path.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            build(path)
    return path


def ensure_tiny_model(
    *, seed: int = 0, progress: bool = True, recipe: TinyRecipe = TINY_RECIPE
) -> Path:
    """Path of the cached tiny model for ``seed``, building it first if it is not there.

    Concurrent callers wait on a lock file beside the model; leftovers of killed builds are
    removed before building.
    """
    return ensure_cached(tiny_model_path(seed=seed, recipe=recipe), lambda path: build_tiny_model(
        path, seed=seed, progress=progress, recipe=recipe))


def _resolve(name: str | os.PathLike[str]) -> Path | str:
    """``tiny`` -> its cached directory; a control world (``dasd.worlds.WORLDS``) -> its cached
    directory; an existing directory -> itself; a hub id -> itself."""
    from dasd.worlds import WORLDS, ensure_world

    if str(name) == "tiny":
        return ensure_tiny_model()
    if str(name) in WORLDS:
        return ensure_world(str(name))
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if str(name).startswith("tiny-"):
        raise ValueError(f"unknown built-in world {name!r}; valid: tiny, {', '.join(WORLDS)} "
                         "(or an existing model directory)")
    if path.exists():
        raise ValueError(f"model path {name} is a file; pass a directory saved with "
                         "save_pretrained, 'tiny', or a hub id such as Qwen/Qwen3-1.7B")
    if _HUB_ID.fullmatch(str(name)) and ".." not in str(name):
        return str(name)
    raise FileNotFoundError(f"no model directory at {name}; pass an existing directory, "
                            "'tiny', or a hub id such as Qwen/Qwen3-1.7B")


@contextmanager
def _unloadable(name: str | os.PathLike[str]) -> Iterator[None]:
    """What ``from_pretrained`` raises for a malformed checkpoint (config not JSON or absent,
    truncated or garbage weights, shapes that do not match the config, an unreachable hub)
    -> one ``ValueError`` line naming the model and what to do."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"model {name}: cannot be loaded ({detail[:300]}); pass a directory "
                         "saved with save_pretrained (config.json, weights, tokenizer), "
                         "'tiny', or a hub id") from None
#: ``device`` options of the configs: ``auto`` is cuda when available, else cpu.
DEVICES = ("auto", "cpu", "cuda")
#: ``dtype`` options of the evaluation configs -> what ``load_model`` gets (``auto``: bf16 on
#: CUDA, float32 on a CPU; ``checkpoint``: the checkpoint's own, None).
MODEL_DTYPES: dict[str, torch.dtype | None] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "checkpoint": None,
}


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; ``cpu`` and ``cuda``
    as given; anything else a one-line ``ValueError``."""
    if name not in DEVICES:
        raise ValueError(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype | None:
    """The ``load_model`` dtype of a ``dtype`` option (``auto`` or a ``MODEL_DTYPES`` name) on
    ``device``, so that a base model and its trained checkpoints (saved in float32) are loaded
    alike; an unknown name is a one-line ``ValueError``."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in MODEL_DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(MODEL_DTYPES)}, got {name!r}")
    return MODEL_DTYPES[name]


def load_model(
    name: str | os.PathLike[str] = "tiny",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, by name: what every ``--model`` option accepts.

    ``"tiny"`` builds (first call, a few minutes, with a progress bar) or loads the cached
    built-in model (DESIGN.md section 5; write ``./tiny`` for a local directory of that
    name); ``"tiny-planted"`` and ``"tiny-null"`` are the control worlds of ``dasd.worlds``
    (fine-tunes of ``tiny``, built and cached the same way; any other ``tiny-*`` name that is
    not a local directory raises a ``ValueError`` listing them); an existing local directory
    loads with
    ``AutoModelForCausalLM`` / ``AutoTokenizer``; any other hub-id-shaped name is passed to
    ``from_pretrained``. A name that looks like a path but does not exist raises a one-line
    ``FileNotFoundError``. The tokenizer pads on the left; without a pad token it pads with
    EOS. ``dtype=None`` keeps the checkpoint's dtype. The model is returned in eval mode.
    """
    source = _resolve(name)
    with _unloadable(name):
        tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of model {name} has neither a pad nor an eos token; "
                             "set pad_token in its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {} if dtype is None else {"dtype": dtype}
    with _unloadable(name):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model = model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
