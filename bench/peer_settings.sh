#!/usr/bin/env bash
# The settings the peers publish figures for (issue 5), one `cinetune bench` each, figures into
# bench/results/<name>.json. Needs a CUDA GPU with room for the model (LTX-2 19B: ~38 GB of bf16 weights).
#   bash bench/peer_settings.sh            # all
#   bash bench/peer_settings.sh ltxv2b     # names containing "ltxv2b"
# Then copy the printed figures into bench/RESULTS.md with the device, versions, date and command.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
filter=${1:-}
common=(--steps 10 --warmup 3 --mixed_precision=bf16 --lora_rank=128)

run() {
  local name=$1
  shift
  if [[ -n "$filter" && "$name" != *"$filter"* ]]; then return; fi
  echo "== $name: cinetune bench $*"
  cinetune bench "$@" "${common[@]}" --json "$out/$name.json"
}

# LTX-Video 2B 0.9.5 LoRA 768x512x49 (peer on H100: 0.274 s/step at 8.8 GiB; 0.46 s at 4.2 GiB checkpointed)
run ltxv2b-768x512x49 --family ltxvideo --flavour 0.9.5 --resolution 768x512 --frames 49
run ltxv2b-768x512x49-gc --family ltxvideo --flavour 0.9.5 --resolution 768x512 --frames 49 --gradient_checkpointing=true
# LTX-Video 13B 0.9.7 at the same settings (no peer figure)
run ltxv13b-768x512x49 --family ltxvideo --flavour 0.9.7-13b-dev --resolution 768x512 --frames 49
run ltxv13b-768x512x49-gc --family ltxvideo --flavour 0.9.7-13b-dev --resolution 768x512 --frames 49 --gradient_checkpointing=true
# Kandinsky 5 Lite T2V LoRA 768x512x81 (peer on H100: 2.27 s/step, 9.8 GiB)
run k5lite-768x512x81 --family kandinsky5-video --flavour t2v-lite-sft-5s --resolution 768x512 --frames 81 --gradient_checkpointing=true
# LTX-2 19B LoRA 1280x704x49 checkpointed (peer on H100, LTX-2.3 22B: 3.99 s/step, 47.9 GiB)
run ltx23-1280x704x49-gc --family ltxvideo2 --flavour 2.3 --resolution 1280x704 --frames 49 --gradient_checkpointing=true
run ltx2-1280x704x49-gc --family ltxvideo2 --flavour 2.0 --resolution 1280x704 --frames 49 --gradient_checkpointing=true
run ltx2-1280x704x49-gc-audio --family ltxvideo2 --flavour 2.0 --resolution 1280x704 --frames 49 --gradient_checkpointing=true --audio
# LTX-2 480p x 17 frames batch 2 (peer: about 8 s/step on A100)
run ltx2-832x480x17-b2 --family ltxvideo2 --flavour 2.0 --resolution 832x480 --frames 17 --batch 2 --gradient_checkpointing=true
