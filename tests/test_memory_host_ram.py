"""Host RAM while loading: a combined checkpoint is read one component at a time (safetensors `safe_open`
reads by tensor), and a sharded diffusers folder one shard at a time, so loading holds at most one component
plus one shard, whatever the file's size.

Measured for real: a child process loads while a thread samples its anonymous resident memory (RssAnon in
/proc/self/status: tensors the process holds; the file pages safetensors maps are the page cache's, not the
process's) every 5 ms; the peak above the memory before loading is compared with the sizes on disk.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
MIB = 2**20

_CHILD = r"""
import json, sys, threading, time, torch
from pathlib import Path

def anon():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

family_name, flavour, source = sys.argv[1], sys.argv[2], sys.argv[3]
from cinetune.config import TrainConfig
from cinetune.models.registry import build_family
family = build_family(family_name, flavour, source)
family.configure(TrainConfig(model_family=family_name, model_flavour=flavour,
                             pretrained_model_name_or_path=source, ltx2_checkpoint_filename=Path(source).name
                             if source.endswith(".safetensors") else None))
import gc
del_me = family.load_transformer(torch.float32)  # imports and one-time allocations happen before measuring
del del_me
gc.collect()
peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.005)
before = anon()
thread = threading.Thread(target=sample); thread.start()
model = family.load_transformer(torch.float32)
stop[0] = True; thread.join()
tensors = [*model.parameters(), *model.buffers()]
size = sum(t.numel() * t.element_size() for t in tensors)
print(json.dumps({"peak": max(peak[0], anon()) - before, "model": size}))
"""


def _load(family: str, flavour: str, source: Path) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, family, flavour, str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pad_safetensors(path: Path, key: str, nbytes: int) -> None:
    """Append one `nbytes` fp32 tensor to a safetensors file without writing its bytes (a sparse region of
    zeros): a 2 GB file for the price of a few."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    data = raw[8 + length :]
    header[key] = {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [len(data), len(data) + nbytes]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded + data)
        out.truncate(8 + len(encoded) + len(data) + nbytes)


def test_a_2gb_combined_file_loads_one_component(tmp_path: Path) -> None:
    from cinetune.models.ltxvideo2 import tiny

    path = tiny.save_tiny_combined_file(tmp_path / "ltx-2-19b-dev.safetensors", with_text_encoder=False)
    # 2 GiB of other components' weights (the released file holds ~40 GB besides the transformer)
    _pad_safetensors(path, "padding.other_components", 2 * 2**30)
    assert path.stat().st_size > 2 * 2**30
    measured = _load("ltxvideo2", "2.0", path)
    assert measured["model"] < MIB
    assert measured["peak"] < 64 * MIB, measured  # the transformer only; nothing of the 2 GiB


def test_a_sharded_folder_loads_one_shard_at_a_time(tmp_path: Path) -> None:
    """A 256 MiB transformer in 32 MiB shards: the peak is the model plus about one shard, not two models."""
    script = r"""
import sys, torch
from diffusers import LTXVideoTransformer3DModel
torch.manual_seed(0)
model = LTXVideoTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=16,
                                   attention_head_dim=64, cross_attention_dim=1024, num_layers=4,
                                   caption_channels=32)
model.save_pretrained(sys.argv[1] + "/transformer", max_shard_size="32MB")
"""
    folder = tmp_path / "LTX-Video-big"
    subprocess.run([sys.executable, "-c", script, str(folder)], check=True, timeout=600)
    shards = sorted((folder / "transformer").glob("*.safetensors"))
    assert len(shards) > 6
    largest = max(s.stat().st_size for s in shards)
    measured = _load("ltxvideo", "0.9.5", folder)
    assert measured["model"] > 240 * MIB
    assert measured["peak"] < measured["model"] + 2 * largest, measured
