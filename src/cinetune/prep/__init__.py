"""Dataset preparation: raw footage -> scene clips -> captions -> a config pair, checked, cached, trained.

`split` (scenes.py, cutter.py, split.py), `caption` (captioning.py with the backends in captioners.py,
openai_api.py, local_vlm.py), `all` (project.py, pipeline.py); `command.py` is the `cinetune prep` command
line. The package imports nothing heavy at import time, so `cinetune --help` stays fast.
"""
