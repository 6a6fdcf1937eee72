"""Probes of the FSDP2 keys for tests/test_keys.py. What a key does across two processes (sharding, the
checkpoint kinds, rank-0 loading, validation on every rank) is run for real in tests/test_fsdp.py; here each
key's effect on the plan and on `cinetune check`'s memory prediction, and the rejections."""

from __future__ import annotations

import re
from typing import Any

from tests.memory_probes import _rejected, _warned

from cinetune.errors import ConfigError, NotSupportedYet

TWO = {"fsdp_enable": True, "num_processes": 2}
FULL_SIZE = {"model_flavour": "0.9.5"}  # the tiny model's figures round to 0.00 GiB; check reads no weights


def _training_gib(w: Any, **kw: Any) -> tuple[float, str]:
    """`cinetune check`'s predicted training peak (GiB) and where it says it is."""
    line = next(line for line in w.check(**FULL_SIZE, **kw).splitlines() if "training:" in line)
    match = re.search(r"training: ([0-9.]+) GiB on (.*?) \(", line)
    assert match, line
    return float(match.group(1)), match.group(2)


def probe_fsdp_enable(w: Any) -> None:
    plain, where = _training_gib(w, num_processes=2)
    sharded, where_sharded = _training_gib(w, **TWO)
    assert where == "the device" and where_sharded == "each of the 2 ranks' devices"
    assert sharded < plain
    _warned(w, "fsdp_enable", "one process holds the whole model", fsdp_enable=True)
    _rejected(
        lambda: w.plan(**TWO, base_model_precision="int8-quanto"),
        "with fsdp_enable is not supported yet",
        "DTensors",
        error=NotSupportedYet,
    )
    _rejected(lambda: w.plan(**TWO, use_ema=True), "use_ema with fsdp_enable", error=NotSupportedYet)


def probe_fsdp_version(w: Any) -> None:
    _rejected(lambda: w.plan(**TWO, fsdp_version=1), "fsdp_version 1", error=NotSupportedYet)
    _rejected(lambda: w.plan(**TWO, fsdp_version=3), "fsdp_version", error=ConfigError)


def probe_fsdp_reshard_after_forward(w: Any) -> None:
    resharded, _ = _training_gib(w, **TWO)
    kept, _ = _training_gib(w, **TWO, fsdp_reshard_after_forward=False)
    assert kept > resharded  # every block stays gathered from its forward to its backward
    _warned(w, "fsdp_reshard_after_forward", "fsdp_enable is false", fsdp_reshard_after_forward=False)


def probe_fsdp_state_dict_type(w: Any) -> None:
    assert w.plan(**TWO, fsdp_state_dict_type="full").train.fsdp_state_dict_type == "FULL_STATE_DICT"
    assert w.plan(**TWO, fsdp_state_dict_type="sharded").train.fsdp_state_dict_type == "SHARDED_STATE_DICT"
    _rejected(lambda: w.plan(**TWO, fsdp_state_dict_type="LOCAL_STATE_DICT"), "fsdp_state_dict_type")
    _warned(w, "fsdp_state_dict_type", "fsdp_enable is false", fsdp_state_dict_type="FULL_STATE_DICT")


def probe_fsdp_cpu_ram_efficient_loading(w: Any) -> None:
    assert w.plan(**TWO, fsdp_cpu_ram_efficient_loading=True).train.fsdp_cpu_ram_efficient_loading
    _warned(w, "fsdp_cpu_ram_efficient_loading", "fsdp_enable is false", fsdp_cpu_ram_efficient_loading=True)


def probe_fsdp_auto_wrap_policy(w: Any) -> None:
    assert w.plan(**TWO, fsdp_auto_wrap_policy="TRANSFORMER_BASED_WRAP").train.fsdp_enable
    _rejected(lambda: w.plan(**TWO, fsdp_auto_wrap_policy="SIZE_BASED_WRAP"), "fsdp_auto_wrap_policy")


FSDP_KEYS: dict[str, Any] = {
    "fsdp_enable": probe_fsdp_enable,
    "fsdp_version": probe_fsdp_version,
    "fsdp_reshard_after_forward": probe_fsdp_reshard_after_forward,
    "fsdp_state_dict_type": probe_fsdp_state_dict_type,
    "fsdp_cpu_ram_efficient_loading": probe_fsdp_cpu_ram_efficient_loading,
    "fsdp_auto_wrap_policy": probe_fsdp_auto_wrap_policy,
}
