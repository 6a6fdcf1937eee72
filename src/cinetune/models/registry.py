"""The model families by name. A family's module (and the diffusers classes it imports) is imported only when
a config names it, so `cinetune check` of an LTX-Video config never loads Kandinsky's or LTX-2's code."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.models.base import Flavour, ModelFamily


@dataclass(frozen=True)
class FamilyEntry:
    name: str
    module: str
    class_name: str
    aliases: tuple[str, ...] = ()


FAMILIES: dict[str, FamilyEntry] = {
    entry.name: entry
    for entry in (
        FamilyEntry(
            "ltxvideo", "cinetune.models.ltxvideo", "LTXVideoFamily", ("ltx-video", "ltx_video", "ltxv")
        ),
        FamilyEntry(
            "kandinsky5-video",
            "cinetune.models.kandinsky5",
            "Kandinsky5VideoFamily",
            ("kandinsky5_video", "kandinsky5"),
        ),
        FamilyEntry(
            "ltxvideo2", "cinetune.models.ltxvideo2", "LTX2Family", ("ltx-2", "ltx2", "ltxv2", "ltx-video-2")
        ),
    )
}
_NOT_BUILT = {
    "wan": "Wan",
    "hunyuanvideo": "HunyuanVideo",
}


def family_entry(name: str) -> FamilyEntry:
    for entry in FAMILIES.values():
        if name == entry.name or name in entry.aliases:
            return entry
    if name in _NOT_BUILT:
        raise ConfigError(
            f"model_family '{name}' ({_NOT_BUILT[name]}) is not supported yet; "
            f"available: {', '.join(FAMILIES)}"
        )
    close = difflib.get_close_matches(name, list(FAMILIES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"model_family: unknown family '{name}'{hint} (available: {', '.join(FAMILIES)})")


def family_class(name: str) -> type[ModelFamily]:
    """The spec class of a family name or alias; imports that family's module (and only that one)."""
    entry = family_entry(name)
    cls = getattr(importlib.import_module(entry.module), entry.class_name)
    if cls.name != entry.name:
        raise RuntimeError(f"registry entry '{entry.name}' names {cls.__name__}, whose name is '{cls.name}'")
    return cls


def resolve_flavour(cls: type[ModelFamily], flavour: str | None) -> Flavour:
    name = cls.flavour_aliases.get(flavour, flavour) if flavour else cls.default_flavour
    if name in cls.unbuilt_flavours:
        raise NotSupportedYet(
            f"model_flavour '{name}' ({cls.unbuilt_flavours[name]}) is not supported yet for {cls.name} "
            f"(available: {', '.join(cls.flavours)})"
        )
    if name not in cls.flavours:
        close = difflib.get_close_matches(name, list(cls.flavours), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"model_flavour: '{name}' is not a {cls.name} flavour{hint} "
            f"(available: {', '.join(cls.flavours)})"
        )
    return cls.flavours[name]


def build_family(name: str, flavour: str | None, pretrained: str | None) -> ModelFamily:
    cls = family_class(name)
    spec = resolve_flavour(cls, flavour)
    return cls(cls.make_loader(pretrained, spec))
