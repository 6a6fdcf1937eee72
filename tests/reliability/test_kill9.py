"""kill -9 at seeded points across scan, cache, train, checkpoint writing, validation and export, then resume:
the final LoRA equals the uninterrupted run's, bit for bit.

One chain of real `cinetune train` processes (the CLI in a subprocess, as a user runs it) in one output
folder: each process is killed by SIGKILL the N-th time it reaches a fault point (src/cinetune/faults.py;
N drawn from a seeded RNG, so every run of the suite kills at the same places), and the next one resumes
from what the last one left (`resume_from_checkpoint: latest`; with no checkpoint yet it starts over and
keeps the cache entries written). The last process runs to the end. After every kill the folder is
checked: each checkpoint-N folder verifies, no half-written file sits under a final name.

CINETUNE_FAULT_SEED=<n> draws another chain (for exploring; the suite's seed is fixed).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from cinetune.cache.store import TensorCache
from cinetune.export.manifest import verify_manifest
from cinetune.plan import list_checkpoints

from .runs import lora, same_lora, train_subprocess, write_run

# (fault point, how many passes the killed process makes at most before that phase ends), in run order.
# Each process resumes from its predecessor, so each range holds in the process that reaches it.
CHAIN = [
    ("scan.file", 4),  # while probing the 4 clips
    ("cache.text", 6),  # after a caption embedding is written
    ("cache.write", 3),  # a cache entry written to its temporary name, not yet renamed
    ("cache.latent", 3),  # after a latent entry is written
    ("train.micro_batch", 2),  # in the middle of an optimizer step (backward done, no update yet)
    ("checkpoint.file", 5),  # while writing checkpoint-2's files
    ("checkpoint.saved", 1),  # checkpoint-2 renamed into place, not yet pruned / logged
    ("validation.video", 1),  # the step-3 validation video written
    ("train.step", 2),  # after an update, before the step is counted
    ("checkpoint.prune", 1),  # checkpoint-2 moved aside for pruning, not yet deleted
    ("export.file", 2),  # the LoRA files half moved into place
]


def _draw(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{point}:{rng.randint(1, most)}" for point, most in CHAIN]


def _outcome(output: Path, caches: Path) -> str:
    """What a killed run left behind, and a check that all of it is usable."""
    checkpoints = list_checkpoints(output)
    for folder in checkpoints:
        assert verify_manifest(folder) is None, (folder, verify_manifest(folder))
    entries = []
    for kind in ("text", "vae"):
        store = TensorCache(caches / kind)
        files = sorted(store.root.rglob("*.safetensors")) if store.root.exists() else []
        for path in files:  # every entry under its final name is whole
            assert store.damaged(path.stem) is None, path
        entries.append(f"{len(files)} {kind}")
    leftovers = sorted(p.name for p in output.glob(".tmp-*")) + sorted(
        p.name for p in output.glob(".trash-*")
    )
    return (
        f"checkpoints {[p.name for p in checkpoints]}, cache entries {', '.join(entries)}, "
        f"leftovers {leftovers or 'none'}"
    )


def test_kill9_chain_ends_on_the_uninterrupted_lora(tmp_path: Path, clips_dir: Path, reference: Path) -> None:
    seed = int(os.environ.get("CINETUNE_FAULT_SEED", "11"))
    config = write_run(tmp_path / "run", clips_dir)
    output, caches = tmp_path / "run" / "output", tmp_path / "run" / "cache"
    log = []
    for spec in _draw(seed):
        proc = train_subprocess(config, fault=spec)
        killed = proc.returncode in (-9, 137)  # SIGKILL; on Windows the hook ends the process with 137
        assert killed, f"{spec}: the run was not killed there (exit {proc.returncode})\n{proc.stderr[-3000:]}"
        log.append(f"kill -9 at {spec}: {_outcome(output, caches)}")
    final = train_subprocess(config)
    assert final.returncode == 0, final.stderr[-3000:]
    log.append(f"final run: {_outcome(output, caches)}")
    (tmp_path / "outcomes.json").write_text(json.dumps(log, indent=1))
    print("\n".join(log))
    assert same_lora(lora(output), lora(reference))
    assert "taking over the stale lock" in final.stderr  # the last killed run's note, its process gone
    assert not list(output.glob(".tmp-*")) and not list(output.glob(".trash-*"))
    for line in (output / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON, no partial line
