"""Probes of the FSDP2 keys for tests/test_keys.py."""

from __future__ import annotations

from typing import Any

from tests.memory_probes import _rejected

from cinetune.errors import NotSupportedYet


def probe_fsdp_version(w: Any) -> None:
    _rejected(lambda: w.plan(fsdp_enable=True, fsdp_version=1), "fsdp_version 1", error=NotSupportedYet)


def probe_fsdp_state_dict_type(w: Any) -> None:
    assert w.plan(fsdp_state_dict_type="full").train.fsdp_state_dict_type == "FULL_STATE_DICT"
    assert w.plan(fsdp_state_dict_type="sharded").train.fsdp_state_dict_type == "SHARDED_STATE_DICT"


FSDP_KEYS: dict[str, Any] = {
    "fsdp_version": probe_fsdp_version,
    "fsdp_state_dict_type": probe_fsdp_state_dict_type,
}
