#!/usr/bin/env bash
# A non-editable install (`pip install .`) into a fresh venv must pre-train a tiny model and render its card from the
# installed package alone: card templates and every file read at run time ship as package data.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet -r requirements-cpu.txt
"$WORK/venv/bin/python" -m pip install --quiet --no-deps "$REPO"
cd "$WORK"  # away from the source tree: only the installed package can be imported
HF_HUB_OFFLINE=1 "$WORK/venv/bin/python" -m run_mtm --synthetic_users 40 --synthetic_days 14 --vocab_size 150 \
    --hidden_size 32 --num_hidden_layers 1 --num_attention_heads 2 --intermediate_size 64 --max_seq_length 64 \
    --max_steps 4 --eval_steps 2 --save_steps 4 --use_cpu --disable_tqdm true --output_dir "$WORK/tiny" > "$WORK/log" 2>&1 \
    || { tail -40 "$WORK/log"; exit 1; }
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys
from pathlib import Path

import model_cards
import modeling_trajfm

work = Path(sys.argv[1])
for module in (modeling_trajfm, model_cards):
    assert str(work / "venv") in module.__file__, f"{module.__name__} imported from {module.__file__}"
card = (work / "tiny" / "README.md").read_text()
assert "model-index" in card and "perplexity" in card, card[:500]
print(f"install check: non-editable package pre-trained and rendered its card ({len(card)} characters)")
PY
