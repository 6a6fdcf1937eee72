"""FAMILIES: model family name -> spec class. The trainer looks families up here and nowhere else."""

from __future__ import annotations

import difflib

from cinetune.errors import ConfigError
from cinetune.models.base import Flavour, ModelFamily
from cinetune.models.kandinsky5 import Kandinsky5VideoFamily
from cinetune.models.ltxvideo import LTXVideoFamily
from cinetune.models.ltxvideo2 import LTX2Family

FAMILIES: dict[str, type[ModelFamily]] = {
    cls.name: cls for cls in (LTXVideoFamily, Kandinsky5VideoFamily, LTX2Family)
}
_NOT_BUILT = {
    "wan": "Wan",
    "hunyuanvideo": "HunyuanVideo",
}


def family_class(name: str) -> type[ModelFamily]:
    for cls in FAMILIES.values():
        if name == cls.name or name in cls.aliases:
            return cls
    if name in _NOT_BUILT:
        raise ConfigError(
            f"model_family '{name}' ({_NOT_BUILT[name]}) is not supported yet; "
            f"available: {', '.join(FAMILIES)}"
        )
    close = difflib.get_close_matches(name, list(FAMILIES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"model_family: unknown family '{name}'{hint} (available: {', '.join(FAMILIES)})")


def resolve_flavour(cls: type[ModelFamily], flavour: str | None) -> Flavour:
    name = flavour or cls.default_flavour
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
