"""Crash-safe, versioned training checkpoints, and loading them without running their code.

Layout of `{train.out_dir}/checkpoints/`:
    step-00000010/   a complete checkpoint: a Hugging Face model directory (config.json,
                     model.safetensors, tokenizer files, ibtpo.json) plus trainer_state.pt
    latest           symlink -> the newest complete step-N directory (relative)
    .tmp-...         a checkpoint being written; removed when its write fails or by the next write

Writing (`write_checkpoint`, one writer: rank 0):
1. every file goes into a new temp directory inside checkpoints/; each file and the directory are
   fsynced;
2. the directory is renamed to step-N (atomic on one filesystem) and checkpoints/ is fsynced;
3. `latest` is replaced by a new symlink made under a temp name and moved with os.replace
   (atomic), and checkpoints/ is fsynced again;
4. step-N directories beyond the newest `keep` are deleted.
A kill at any moment leaves `latest` naming a complete checkpoint (or no `latest` before the first
one); a failed write (disk full) removes its temp directory and changes nothing else.

Trainer state (trainer_state.pt) is plain data: tensors, numbers, strings, lists, tuples, dicts.
It is read with `torch.load(weights_only=True)`, whose unpickler admits only those types: a file
that would import or call anything (a crafted pickle) is refused with a ValueError, never run.

RNG states (`capture_rngs` / `restore_rngs`): the global generators of Python, NumPy, torch and
every CUDA device, and every `random.Random`, `torch.Generator` and NumPy generator reachable
from the trainer through ibtpo objects, dicts and lists (`find_rngs`, named by attribute path such
as "rng", "generator" or "task.rng"), so RNG streams added later are saved without changes here.

Fault points (tests of crash safety): with the environment variable IBTPO_FAULT_AT=NAME@STEP the
process SIGKILLs itself when it reaches point NAME at step STEP. Points: "step:rollout" (trees
grown, update not done), "step:end" (step done, its checkpoint not written), "ckpt:files" (files
written, not yet fsynced or renamed), "ckpt:renamed" (step-N in place, `latest` not moved),
"ckpt:pointer" (`latest` moved, old checkpoints not pruned).

Finding checkpoints (`latest_checkpoint`, a run directory given as ``--model``) and reading
their ``ibtpo.json`` take no torch: ``ibtpo.runs``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ibtpo.models import EXTRA_FILE, quiet_hf_progress
from ibtpo.runs import CKPT_DIR, LATEST, latest_checkpoint, list_checkpoints

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1
FAULT_ENV = "IBTPO_FAULT_AT"
MAX_SEARCH_LEN = 64  # lists longer than this (datasets) are not searched for RNGs
RNG_TYPES = (random.Random, torch.Generator, np.random.Generator, np.random.RandomState)


def fault_point(name: str, step: int) -> None:
    """SIGKILL this process when IBTPO_FAULT_AT == f"{name}@{step}" (see the module docstring)."""
    if os.environ.get(FAULT_ENV) == f"{name}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- the directory of checkpoints --------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file below `path`, then every directory, deepest first."""
    for dirpath, _, files in os.walk(path, topdown=False):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def point_latest(root: Path, name: str) -> None:
    """Atomically make `root/latest` a symlink to `name`."""
    tmp = root / f".{LATEST}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, root / LATEST)
    fsync_path(root)


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names), and stale
    temp directories of killed writes."""
    current = os.readlink(root / LATEST) if (root / LATEST).is_symlink() else None
    for _, path in list_checkpoints(root)[:-keep]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(root: Path) -> None:
    for path in root.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def write_checkpoint(out_dir: str | Path, step: int, write_files: Callable[[Path], None],
                     keep: int) -> Path:
    """Write checkpoint `step` with `write_files(tmp_dir)` (see the module docstring); return its
    path. An OSError while writing leaves every earlier checkpoint as it was."""
    root = Path(out_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    if latest_checkpoint(out_dir) == final:
        return final  # this step is already saved
    remove_stale_temps(root)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()  # mode 0777 & ~umask, unlike mkdtemp's 0700: checkpoints are shared
    try:
        write_files(tmp)
        fault_point("ckpt:files", step)
        fsync_tree(tmp)
        if final.exists():  # a complete checkpoint of a killed run that `latest` never named
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("ckpt:renamed", step)
    point_latest(root, final.name)
    fault_point("ckpt:pointer", step)
    prune(root, keep)
    return final


# --- model files --------------------------------------------------------------------------------
def write_model_files(model, tokenizer, directory: Path, extra: dict,
                      state_dict: dict | None = None) -> None:
    """An HF model directory: weights (safetensors; `state_dict` when the live model is sharded),
    tokenizer, and `extra` as ibtpo.json."""
    with quiet_hf_progress():
        model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / EXTRA_FILE).write_text(json.dumps(extra, indent=2, default=str))


def load_model_weights(model, path: Path, trust_remote_code: bool = False) -> None:
    """Copy the weights of the checkpoint at `path` into `model`; ValueError naming `path` when
    they cannot be read or do not fit the model."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_hf_progress():
            loaded = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                          trust_remote_code=trust_remote_code)
        model.load_state_dict(loaded.state_dict())
    except Exception as err:  # transformers / safetensors raise many types for a corrupt file
        raise ValueError(f"{path}: cannot load the checkpoint's model ({type(err).__name__}: "
                         f"{str(err).strip()[:300]}); expected the weights of the model of "
                         "train.init") from None


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the rows of a metrics.jsonl with step <= `last_step` (and drop a torn last line);
    rewritten atomically. A missing file is left missing."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


# --- trainer state: plain data in, plain data out --------------------------------------------
def save_state(state: dict, path: Path) -> None:
    torch.save(state, path)


def load_state(path: Path) -> dict:
    """The trainer state at `path`; ValueError (naming the file) if it is missing, corrupt, or
    holds anything but plain data (a pickle that would run code is refused, not executed)."""
    if not path.is_file():
        raise ValueError(f"{path}: missing; expected the trainer state of an ibtpo checkpoint")
    corrupt = f"{path}: corrupt or truncated trainer state ({{}}); expected a file written by ibtpo"
    if not zipfile.is_zipfile(path):
        raise ValueError(corrupt.format("not a torch.save archive"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"GLOBAL (\S+)", str(err))
        if code is None:
            raise ValueError(corrupt.format(str(err).strip().splitlines()[-1][:200])) from None
        raise ValueError(f"{path}: refused to load: it asks to import and call {code.group(1)}, "
                         "and a trainer state may only hold tensors, numbers, strings, lists and "
                         "dicts (nothing was run)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        raise ValueError(corrupt.format(f"{type(err).__name__}: {str(err)[:200]}")) from None
    check_state(state, path)
    return state


STATE_KEYS = {"format": int, "step": int, "generated_tokens": int, "optimizer": dict,
              "scheduler": dict, "rng": list, "world_size": int}


def check_state(state, path: Path) -> None:
    """ValueError naming the first missing or mistyped field of a trainer state."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of trainer state, got {type(state).__name__}")
    for key, tp in STATE_KEYS.items():
        if not isinstance(state.get(key), tp):
            raise ValueError(f"{path}: field {key!r}: expected {tp.__name__}, got "
                             f"{type(state.get(key)).__name__}")
    if state["format"] != STATE_FORMAT:
        raise ValueError(f"{path}: format {state['format']}, expected {STATE_FORMAT}")


# --- RNG states ---------------------------------------------------------------------------------
def _is_ours(obj) -> bool:
    return type(obj).__module__.startswith("ibtpo.")


def find_rngs(root, prefix: str = "", depth: int = 4, seen: set | None = None) -> dict:
    """{attribute path: generator} of every RNG reachable from `root` through ibtpo objects,
    dicts, lists and tuples (first path wins when one generator is reachable twice)."""
    seen = set() if seen is None else seen
    out: dict = {}
    if depth < 0 or id(root) in seen:
        return out
    seen.add(id(root))
    if isinstance(root, dict):
        items = [(str(k), v) for k, v in root.items()]
    elif isinstance(root, (list, tuple)) and len(root) <= MAX_SEARCH_LEN:
        items = [(str(i), v) for i, v in enumerate(root)]
    elif _is_ours(root) and hasattr(root, "__dict__"):
        items = list(vars(root).items())
    else:
        return out
    for name, value in items:
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(value, RNG_TYPES):
            if id(value) not in seen:
                seen.add(id(value))
                out[path] = value
        else:
            out.update(find_rngs(value, path, depth - 1, seen))
    return out


def rng_state(gen):
    """A plain-data snapshot of one generator."""
    if isinstance(gen, random.Random):
        return gen.getstate()
    if isinstance(gen, torch.Generator):
        return gen.get_state()
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state
    name, keys, pos, has_gauss, gauss = gen.get_state()  # np.random.RandomState
    return (name, keys.tolist(), pos, has_gauss, gauss)


def set_rng_state(gen, state) -> None:
    if isinstance(gen, random.Random):
        gen.setstate(state)
    elif isinstance(gen, torch.Generator):
        gen.set_state(state)
    elif isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
    else:
        gen.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))


def capture_rngs(owner) -> dict:
    """Every RNG state of this process (see the module docstring)."""
    state = {"python": random.getstate(), "numpy": rng_state(np.random.mtrand._rand),
             "torch": torch.get_rng_state(),
             "objects": {k: rng_state(g) for k, g in find_rngs(owner).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rngs(owner, state: dict, where: str) -> None:
    """Put back the states of `capture_rngs`; ValueError when a saved generator has no
    counterpart here or the reverse (the checkpoint is from another version or setup)."""
    gens = find_rngs(owner)
    saved = state.get("objects", {})
    if set(gens) != set(saved):
        raise ValueError(f"{where}: the checkpoint holds the RNG streams {sorted(saved)}, this "
                         f"trainer has {sorted(gens)}; expected the same (same ibtpo version)")
    random.setstate(state["python"])
    set_rng_state(np.random.mtrand._rand, state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in gens.items():
        set_rng_state(gen, saved[name])
