"""A run's files, read without torch: its checkpoints, the newest one, and each one's notes.

Layout (``training/checkpoint.py`` writes it): ``{train.out_dir}/checkpoints/step-N/`` (N with
eight digits or more), ``checkpoints/latest`` a symlink to the newest complete one; every
checkpoint directory (and the warm-up's, ``ibtpo sft``) holds ``ibtpo.json``, ibtpo's notes on
it. The CLI reads these before it pins the CPU kernels (``ibtpo.kernels``), hence no torch here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from ibtpo.config import Config, known_fields

CKPT_DIR = "checkpoints"
LATEST = "latest"
STEP_RE = re.compile(r"^step-(\d{8,})$")
EXTRA_FILE = "ibtpo.json"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-N directory in `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_RE.match(p.name)) and p.is_dir() and not p.is_symlink()]
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, else the newest step-N directory, else None."""
    root = Path(out_dir) / CKPT_DIR
    link = root / LATEST
    if link.is_symlink() and (root / os.readlink(link)).is_dir():
        return root / os.readlink(link)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def checkpoint_of(model_path: str) -> str:
    """`model_path`, or the newest checkpoint when it is a run directory (it holds
    `checkpoints/` and no model of its own) or that `checkpoints/` directory itself; ValueError
    when such a directory holds no checkpoint."""
    path = Path(model_path)
    run = path.parent if path.name == CKPT_DIR else path
    if not (run / CKPT_DIR).is_dir() or (path / "config.json").is_file():
        return model_path
    found = latest_checkpoint(run)
    if found is None:
        raise ValueError(f"{model_path}: a run directory whose {CKPT_DIR}/ holds no checkpoint "
                         "(expected step-N directories and a 'latest' link; they are written at "
                         "the end of ibtpo train and every train.ckpt_every steps)")
    return str(found)


def read_extra(path: str | Path) -> dict:
    """The `ibtpo.json` of a checkpoint directory ({} when it has none); ValueError naming the
    file when it is not a JSON object."""
    file = Path(path) / EXTRA_FILE
    if not file.is_file():
        return {}
    try:
        extra = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err}); expected ibtpo's checkpoint notes") \
            from None
    if not isinstance(extra, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(extra).__name__}")
    return extra


NEVER_RECORDED = (("model", "trust_remote_code"),)  # only the person running a command sets it


def recorded_config(model_dir: str | Path) -> tuple[dict, list[str]]:
    """The config a checkpoint's ibtpo.json records, as (sections, dropped): a training
    checkpoint's whole config (``config``), a warm-up's ``task``, ``model`` and ``sft``
    sections; ({}, []) for any other model (a preset, a .gguf file, an export, a plain Hugging
    Face directory). Fields today's Config lacks (another ibtpo version's) are left out and
    named in `dropped`. Never ``model.trust_remote_code``: a checkpoint's notes cannot make its
    own code run."""
    if not Path(model_dir).is_dir():
        return {}, []
    extra = read_extra(model_dir)
    sections = {f.name for f in dataclasses.fields(Config)}
    found = (extra["config"] if isinstance(extra.get("config"), dict) else
             {k: v for k, v in extra.items() if k in sections and isinstance(v, dict)})
    kept, dropped = known_fields(found)
    for sec, key in NEVER_RECORDED:
        kept.get(sec, {}).pop(key, None)
    return kept, dropped
