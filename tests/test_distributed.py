"""`cinetune train --num_processes 2` on CPU (gloo): two DDP ranks split the cache, train and end with the
same LoRA; ranks of one machine take turns loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_in_sync(tmp_path: Path, clips_dir: Path, make_config) -> None:
    config = make_config(
        tmp_path,
        clips_dir,
        None,
        max_train_steps=3,
        train_batch_size=1,
        checkpointing_steps=2,
        num_processes=2,
        cpu=True,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cinetune.cli", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "output"
    ranks = json.loads((out / "ddp_sync.json").read_text())["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert {"rng_0.pt", "rng_1.pt"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert (out / "pytorch_lora_weights.safetensors").exists()
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())
    assert state["world_size"] == 2
    # the cache was split: each rank encoded its share of the latents and of the captions
    for kind in ("vae", "text"):
        ranks = [_encoded_by(path) for path in (tmp_path / "cache" / kind).rglob("*.safetensors")]
        assert sorted(set(ranks)) == ["0", "1"] and abs(ranks.count("0") - ranks.count("1")) <= 1, kind


def _encoded_by(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["rank"]


def test_ranks_take_turns_loading(tmp_path: Path) -> None:
    """Two ranks of one machine: the second reads its component only once the first has left its turn."""
    import threading
    import time

    from cinetune.training.ranks import in_turn

    spans: list[tuple[float, float]] = []

    def rank() -> None:
        def load() -> None:
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

        in_turn(tmp_path, "transformer", True)(load)

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (_, a_end), (b_start, _) = sorted(spans)
    assert b_start >= a_end  # never two copies in host RAM at once
