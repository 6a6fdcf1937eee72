"""Several machines through torchrun: two `cinetune train` launchers on 127.0.0.1 play machine 0 and
machine 1 (gloo on the CPU); what each launcher runs; the shared-storage check that stops a run whose
machines do not see one output folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cinetune import cli
from cinetune.training.lock import HOLDER_FILE, INHERITED

NODE_TIMEOUT = 300  # seconds a launcher may take before the test calls it hung and kills it


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _multinode_config(tmp_path: Path, clips_dir: Path, make_config: Any, **keys: Any) -> Path:
    return make_config(
        tmp_path,
        clips_dir,
        None,
        num_machines=2,
        num_processes=2,
        main_process_ip="127.0.0.1",
        main_process_port=_free_port(),
        cpu=True,
        **keys,
    )


def _start_node(
    config: Path, machine_rank: int, *overrides: str, torchrun: list[str] | None = None
) -> subprocess.Popen[str]:
    """`cinetune train` as machine `machine_rank`; under `torchrun` (its arguments) when given."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}  # no wrap
    for launched in ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", INHERITED):
        env.pop(launched, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun else [sys.executable]
    cmd = [*launcher, "-m", "cinetune.cli", "train", "--config", str(config)]
    return subprocess.Popen(
        [*cmd, f"--machine_rank={machine_rank}", *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=os.name == "posix",  # its own group: a hung node is killed with its ranks
    )


def _finish(nodes: list[subprocess.Popen[str]]) -> list[tuple[int, str, float]]:
    """Each node's exit code, output (whitespace runs as one space) and seconds from the start; a node past
    NODE_TIMEOUT is killed (with its torchrun ranks) and fails the test."""
    start, results, hung = time.monotonic(), [], []
    for node in nodes:
        try:
            output, _ = node.communicate(timeout=max(1.0, NODE_TIMEOUT - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            _kill(node)
            output, _ = node.communicate()
            hung.append(output)
        results.append((node.returncode, " ".join(output.split()), time.monotonic() - start))
    assert not hung, "a node hung:\n" + "\n---\n".join(out[-3000:] for out in hung)
    return results


def _kill(node: subprocess.Popen[str]) -> None:
    if os.name == "posix":
        os.killpg(node.pid, signal.SIGKILL)
    else:
        node.kill()


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(tmp_path: Path, clips_dir: Path, make_config) -> None:
    config = _multinode_config(tmp_path, clips_dir, make_config, max_train_steps=2, train_batch_size=1)
    nodes = [_start_node(config, 0), _start_node(config, 1)]
    (rc0, out0, _), (rc1, out1, _) = _finish(nodes)
    assert rc0 == 0 and rc1 == 0, out0[-4000:] + "\n---\n" + out1[-4000:]
    # each launcher ran its machine's one rank under torchrun, meeting at machine 0's address
    for rank, out in enumerate((out0, out1)):
        assert f"--nnodes=2 --node_rank={rank} --nproc_per_node=1 --master_addr=127.0.0.1" in out, out
        assert "--standalone" not in out
    assert "machine 1 joins machine 0's run" in out1 and "joins" not in out0
    assert "shared storage: all 2 ranks see output_dir" in out0
    output = tmp_path / "output"
    ranks = json.loads((output / "ddp_sync.json").read_text())["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # one DDP run over both machines, the ranks in sync
    # the LoRA is exported once, by global rank 0: only machine 0's launcher reports it
    assert (output / "pytorch_lora_weights.safetensors").exists()
    assert "pytorch_lora_weights.safetensors" in out0 and "pytorch_lora_weights" not in out1
    assert not (output / HOLDER_FILE).exists()  # machine 0's lock released, no note left by machine 1
    assert not list(output.glob(".cinetune-shared-*")) and not list(tmp_path.rglob("*.probe"))


@pytest.mark.slow
def test_machine_that_does_not_see_the_output_folder_stops_every_rank(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    config = _multinode_config(tmp_path, clips_dir, make_config, max_train_steps=2, train_batch_size=1)
    elsewhere = tmp_path / "machine1-local" / "output"  # as if machine 1 had its own disk at that path
    nodes = [_start_node(config, 0), _start_node(config, 1, f"--output_dir={elsewhere}")]
    (rc0, out0, t0), (rc1, out1, t1) = _finish(nodes)
    assert rc0 != 0 and rc1 != 0, out0[-3000:] + "\n---\n" + out1[-3000:]
    for out in (out0, out1):  # every rank stops with the same message, naming the folders
        assert "output_dir is not on storage every machine sees" in out, out[-4000:]
        assert f"wrote a file into {tmp_path / 'output'};" in out
        assert "rank 1 (" in out and f"cannot see it in output_dir {elsewhere}." in out
    assert not (tmp_path / "output" / "pytorch_lora_weights.safetensors").exists()
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # stopped before caching
    print(f"both machines stopped after {t0:.1f} s / {t1:.1f} s")


@pytest.mark.slow
def test_under_torchrun_by_hand_nothing_is_relaunched(tmp_path: Path, clips_dir: Path, make_config) -> None:
    """An external launcher (torchrun by hand, as `accelerate launch --num_machines 2` runs it) sets
    WORLD_SIZE: each process is a rank already and trains in place."""
    config = _multinode_config(tmp_path, clips_dir, make_config, max_train_steps=1, train_batch_size=1)
    port = json.loads(config.read_text())["main_process_port"]
    nodes = [
        _start_node(
            config,
            rank,
            torchrun=[
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
            ],
        )
        for rank in (0, 1)
    ]
    (rc0, out0, _), (rc1, out1, _) = _finish(nodes)
    assert rc0 == 0 and rc1 == 0, out0[-4000:] + "\n---\n" + out1[-4000:]
    assert "launching" not in out0 + out1
    ranks = json.loads((tmp_path / "output" / "ddp_sync.json").read_text())["ranks"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert (tmp_path / "output" / "pytorch_lora_weights.safetensors").exists()


class _Launched:
    """What `cinetune train` would run (subprocess.Popen), not run."""

    calls: ClassVar[list[tuple[list[str], dict[str, str]]]] = []

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        _Launched.calls.append((cmd, env))

    def wait(self) -> int:
        return 0


def _launch(monkeypatch: pytest.MonkeyPatch, config: Path, *overrides: str) -> tuple[list[str], dict]:
    _Launched.calls = []
    for launched in ("WORLD_SIZE", "RANK", INHERITED):
        monkeypatch.delenv(launched, raising=False)
    monkeypatch.setattr(cli.subprocess, "Popen", _Launched)
    assert cli.main(["train", "--config", str(config), *overrides]) == 0
    ((cmd, env),) = _Launched.calls
    return cmd, env


def test_one_machine_launches_standalone(tmp_path: Path, clips_dir: Path, make_config, monkeypatch) -> None:
    config = make_config(tmp_path, clips_dir, None, num_processes=2, cpu=True)
    cmd, env = _launch(monkeypatch, config)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert not any(arg.startswith(("--nnodes", "--node_rank", "--master_addr")) for arg in cmd)
    assert cmd[-1] == "--num_processes=2" and env[INHERITED]  # the ranks share the launcher's lock


@pytest.mark.parametrize("num_processes", [2, 4])
def test_two_machines_launch_their_share_of_the_ranks(
    tmp_path: Path, clips_dir: Path, make_config, monkeypatch, capsys, num_processes: int
) -> None:
    config = make_config(
        tmp_path,
        clips_dir,
        None,
        num_processes=num_processes,
        num_machines=2,
        main_process_ip="10.1.2.3",
        main_process_port=29511,
        cpu=True,
    )
    output = tmp_path / "output"
    for rank in (0, 1):
        cmd, env = _launch(monkeypatch, config, f"--machine_rank={rank}")
        torchrun = cmd[cmd.index("torch.distributed.run") + 1 : cmd.index("cinetune.cli") - 1]
        assert torchrun == [
            "--nnodes=2",
            f"--node_rank={rank}",
            f"--nproc_per_node={num_processes // 2}",  # this machine's share of the total
            "--master_addr=10.1.2.3",
            "--master_port=29511",
        ]
        assert cmd[-2:] == [f"--machine_rank={rank}", f"--num_processes={num_processes}"]
        joined = "machine 1 joins machine 0's run" in " ".join(capsys.readouterr().err.split())
        # machine 0's launcher holds the run lock and its ranks share it; machine 1's takes none
        assert (INHERITED in env) == (rank == 0) and joined == (rank == 1)
    assert not (output / HOLDER_FILE).exists()


def test_machine_one_joins_while_machine_zero_holds_the_lock(
    tmp_path: Path, clips_dir: Path, make_config, monkeypatch
) -> None:
    from cinetune.training.lock import RunLock

    keys = {"num_machines": 2, "num_processes": 2, "main_process_ip": "127.0.0.1", "cpu": True}
    config = make_config(tmp_path, clips_dir, None, **keys)
    with RunLock(tmp_path / "output", "machine 0's cinetune train"):
        cmd, _ = _launch(monkeypatch, config, "--machine_rank=1")  # no "another run is writing" stop
        assert "--node_rank=1" in cmd
        monkeypatch.setattr(cli.subprocess, "Popen", _Launched)
        assert cli.main(["train", "--config", str(config)]) == 2  # a second machine 0 is still refused


def test_the_storage_check_covers_the_folders_outside_the_output_folder(tmp_path: Path, monkeypatch) -> None:
    from cinetune.training.ranks import spans_machines, storage_folders

    out = tmp_path / "output"
    inside = (out / "cache" / "text", {"clips": out / "cache" / "vae" / "clips"})
    assert storage_folders(out, inside) == {"output_dir": out}
    apart = (tmp_path / "text", {"clips": out / "vae", "stills": tmp_path / "vae"})
    assert storage_folders(out, apart) == {
        "output_dir": out,
        "text_embeds cache_dir": tmp_path / "text",
        "cache_dir_vae of dataset stills": tmp_path / "vae",
    }
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not spans_machines(2) and spans_machines(4)  # 2 of 4 ranks here: the others are elsewhere
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert not spans_machines(1) and spans_machines(2)  # a launcher that does not tell: checked
