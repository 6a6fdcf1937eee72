"""`cinetune doctor`: can this machine train, and with what? Every figure is read or tried, never assumed.

It reports Python, torch and its CUDA / ROCm / MPS build and the driver, each GPU (free memory, compute
capability, bf16 / fp8), which attention kernels run (each tried on tiny tensors), the FFmpeg codecs PyAV
has, free disk where the run writes, the Hugging Face token and offline mode and, given a config, whether the
memory planner's predicted peak fits the GPU found. `usable` is true when some device can train.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GIB = 2**30
# Codecs a video dataset usually holds (decode) and validation videos are written with (encode).
DECODERS = ("h264", "hevc", "vp9", "av1", "libdav1d", "mpeg4", "prores", "aac", "mp3", "opus", "pcm_s16le")
ENCODERS = ("libx264", "h264", "aac", "pcm_s16le")


def _tried(action: Callable[[], Any]) -> dict[str, Any]:
    """{"ok": True} or {"ok": False, "error": the first line of what it raised}."""
    try:
        action()
    except Exception as exc:
        return {"ok": False, "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}
    return {"ok": True}


def _driver_version() -> str | None:
    """The NVIDIA driver as nvidia-smi reports it (no shell: the executable is found on PATH)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "rocm_build": getattr(torch.version, "hip", None),
        "cuda_available": cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "driver": _driver_version() if cuda and torch.version.cuda else None,
        "packages": {
            name: _version(name) for name in ("diffusers", "transformers", "peft", "accelerate", "av")
        },
    }


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, Any]]:
    found = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        major, minor = torch.cuda.get_device_capability(index)
        found.append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "capability": f"{major}.{minor}",
                "free_gib": round(free / GIB, 2),
                "total_gib": round(total / GIB, 2),
                "bf16": torch.cuda.is_bf16_supported(),
                # fp8 matmuls (torch._scaled_mm) need Ada / Hopper or newer: compute capability 8.9+
                "fp8": (major, minor) >= (8, 9),
            }
        )
    return found


def attention_kernels(device: torch.device) -> dict[str, dict[str, Any]]:
    """Each kernel run once on (1, 2, 128, 64) tensors on `device` (bf16 on a GPU, fp32 on the CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(1, 2, 128, 64, device=device, dtype=dtype)

    def sdpa(backend: Any) -> Callable[[], Any]:
        def run() -> Any:
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, q, q)

        return run

    def flash_attn() -> Any:
        from flash_attn import flash_attn_func

        t = q.transpose(1, 2).contiguous()
        return flash_attn_func(t, t, t)

    def sage() -> Any:
        from sageattention import sageattn

        return sageattn(q, q, q, tensor_layout="HND")

    kernels = {
        "sdpa_math": sdpa(SDPBackend.MATH),
        "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "flash_attn": flash_attn,
        "sageattention": sage,
    }
    return {name: _tried(run) for name, run in kernels.items()}


def precision(device: torch.device) -> dict[str, Any]:
    """bf16 and fp8 tried on `device`: a bf16 matmul, an fp8 (e4m3) scaled matmul."""

    def bf16() -> Any:
        a = torch.ones(16, 16, device=device, dtype=torch.bfloat16)
        return a @ a

    def fp8() -> Any:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        return torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    return {"device": str(device), "bf16_matmul": _tried(bf16), "fp8_scaled_mm": _tried(fp8)}


def codecs() -> dict[str, Any]:
    import av

    def has(name: str, mode: str) -> bool:
        try:
            av.codec.Codec(name, mode)
        except Exception:
            return False
        return True

    versions = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    return {
        "pyav": av.__version__,
        "ffmpeg": versions,
        "decode": {name: has(name, "r") for name in DECODERS},
        "encode": {name: has(name, "w") for name in ENCODERS},
    }


def disk(folders: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Free space where each folder is (or would be: its nearest existing parent)."""
    out = {}
    for label, folder in folders.items():
        probe = Path(folder).resolve()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        out[label] = {"path": str(folder), "free_gib": round(usage.free / GIB, 2)}
    return out


def hugging_face() -> dict[str, Any]:
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if not token:
        try:
            from huggingface_hub import get_token

            token = get_token() is not None
        except ImportError:
            pass
    offline = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in os.environ}
    return {"token_present": token, "offline": offline, "hf_home": os.environ.get("HF_HOME")}


def predicted_peak_bytes(plan: Any) -> float | None:
    """The memory planner's predicted device peak while training, at the largest bucket the datasets give
    (as `cinetune check` prints it); None when no clip is usable (nothing to size)."""
    from cinetune.data import SkipReport, scan_datasets
    from cinetune.memory.report import RunMemory, largest_shape

    cfg = plan.train
    samples = scan_datasets(
        plan.training_media,
        plan.family.frame_rule,
        cfg.frame_rate,
        cfg.seed,
        SkipReport(),
        audio_datasets=plan.data.datasets,
    )
    shape = largest_shape(plan, samples, cfg.train_batch_size)
    return None if shape is None else float(RunMemory(plan, shape).estimate().device_peak)


def config_fit(plan: Any, found: list[dict[str, Any]]) -> dict[str, Any]:
    peak = predicted_peak_bytes(plan)
    result: dict[str, Any] = {"model": f"{plan.family.name}/{plan.flavour.name}"}
    if peak is None:
        result.update(planner="no usable clip to size the run by", fits=None)
        return result
    result["predicted_peak_gib"] = round(peak / GIB, 2)
    result["fits"] = bool(found) and all(peak <= g["free_gib"] * GIB for g in found)
    return result


def _folders(plan: Any | None) -> dict[str, Path]:
    hf = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    if plan is None:
        return {"working folder": Path.cwd(), "Hugging Face cache": hf}
    out = Path(plan.train.output_dir)
    folders = {"output_dir": out, "Hugging Face cache": hf}
    embeds = plan.data.text_embeds if plan.data is not None else None
    folders["text cache"] = Path(embeds.cache_dir) if embeds and embeds.cache_dir else out / "cache" / "text"
    for d in plan.media:
        folders[f"latent cache '{d.id}'"] = Path(d.cache_dir_vae or out / "cache" / "vae" / d.id)
    return folders


def verdict(found: list[dict[str, Any]], compute: dict[str, Any]) -> tuple[bool, str]:
    """(usable, why): a GPU that ran the probes, else the CPU (tiny models and demos only)."""
    if found:
        if not compute["ok"]:
            return False, f"CUDA is visible but a tensor operation failed there: {compute['error']}"
        return True, f"usable: training on {len(found)} GPU(s)"
    if torch.backends.mps.is_available():
        return (
            True,
            "usable for CPU training (an MPS device is present, but cinetune trains on CUDA/ROCm or CPU)",
        )
    return True, "usable for CPU training only (tiny models, demos): no CUDA or ROCm GPU found"


def diagnose(plan: Any | None = None) -> dict[str, Any]:
    """Every check, as a JSON-ready dict; `plan` (a resolved config) adds free disk and the memory fit."""
    found = gpus()
    device = torch.device("cuda", 0) if found else torch.device("cpu")
    compute = _tried(lambda: (torch.ones(4, 4, device=device) @ torch.ones(4, 4, device=device)).sum().item())
    usable, why = verdict(found, compute)
    return {
        "usable": usable,
        "verdict": why,
        "environment": environment(),
        "gpus": found,
        "attention": {"device": str(device), **attention_kernels(device)},
        "precision": precision(device),
        "codecs": codecs(),
        "disk": disk(_folders(plan)),
        "hugging_face": hugging_face(),
        "config": None if plan is None else config_fit(plan, found),
    }


def _ok(entry: dict[str, Any]) -> str:
    return "yes" if entry["ok"] else f"no ({entry['error']})"


def report_lines(r: dict[str, Any]) -> list[str]:
    env = r["environment"]
    build = f"CUDA {env['cuda_build']}" if env["cuda_build"] else None
    if env["rocm_build"]:
        build = f"ROCm {env['rocm_build']}"
    lines = [
        f"Python {env['python']} on {env['platform']}",
        f"torch {env['torch']} ({build or 'CPU build'}); CUDA available: {env['cuda_available']}, "
        f"MPS: {env['mps_available']}, driver: {env['driver'] or 'none found'}",
        "packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in env["packages"].items()),
    ]
    for g in r["gpus"] or []:
        lines.append(
            f"GPU {g['index']}: {g['name']}, compute capability {g['capability']}, {g['free_gib']:.1f} of "
            f"{g['total_gib']:.1f} GiB free, bf16 {g['bf16']}, fp8 {g['fp8']}"
        )
    if not r["gpus"]:
        lines.append("GPU: none found")
    attention = r["attention"]
    lines.append(f"attention kernels on {attention['device']}:")
    lines += [f"  {name}: {_ok(v)}" for name, v in attention.items() if name != "device"]
    p = r["precision"]
    lines.append(f"precision on {p['device']}: bf16 {_ok(p['bf16_matmul'])}; fp8 {_ok(p['fp8_scaled_mm'])}")
    c = r["codecs"]
    missing = [n for n, ok in c["decode"].items() if not ok]
    lines.append(
        f"PyAV {c['pyav']} (FFmpeg libavcodec {c['ffmpeg'].get('libavcodec', '?')}): decodes "
        + ", ".join(n for n, ok in c["decode"].items() if ok)
        + (f"; not: {', '.join(missing)}" if missing else "")
        + "; encodes "
        + ", ".join(n for n, ok in c["encode"].items() if ok)
    )
    lines += [
        f"free disk at {label} ({d['path']}): {d['free_gib']:.1f} GiB" for label, d in r["disk"].items()
    ]
    hf = r["hugging_face"]
    offline = ", ".join(f"{k}={v}" for k, v in hf["offline"].items()) or "off"
    lines.append(
        f"Hugging Face: token {'present' if hf['token_present'] else 'absent'}; offline mode {offline}"
    )
    cfg = r["config"]
    if cfg is not None:
        if cfg["fits"] is None:
            lines.append(f"config {cfg['model']}: memory planner not available, so no fit check")
        else:
            lines.append(
                f"config {cfg['model']}: predicted peak {cfg['predicted_peak_gib']:.1f} GiB: "
                + ("fits every GPU found" if cfg["fits"] else "does NOT fit the GPU(s) found")
            )
    lines.append(r["verdict"])
    return lines


__all__ = ["diagnose", "predicted_peak_bytes", "report_lines"]
