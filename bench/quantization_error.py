"""Output error of the tiny transformers with quantized frozen blocks, against full precision, per family.

    python bench/quantization_error.py

The same measure tests/test_memory.py bounds (`TOLERANCE`): relative L2 distance of one training forward's
prediction (same synthetic batch, same noise) between the model with `base_model_precision` set and the plain
fp32 model, on the built-in tiny models of the three families (CPU).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.memory_helpers import FAMILIES, make_trainer
from tests.test_memory import TOLERANCE, _prediction, _relative


def main() -> int:
    logging.disable(logging.WARNING)
    root = Path(tempfile.mkdtemp())
    print(f"{'family':11s} " + " ".join(f"{p:>13s}" for p in TOLERANCE))
    for family, keys in FAMILIES.items():
        plain = _prediction(make_trainer(root / family / "plain", **keys))
        errors = []
        for precision in TOLERANCE:
            trainer = make_trainer(root / family / precision, **keys, base_model_precision=precision)
            errors.append(_relative(_prediction(trainer), plain))
        print(f"{family:11s} " + " ".join(f"{e:13.4f}" for e in errors), flush=True)
    print(f"{'bound (test)':11s} " + " ".join(f"{t:13.4f}" for t in TOLERANCE.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
