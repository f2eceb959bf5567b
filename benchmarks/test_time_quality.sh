#!/bin/sh
# What the test-time methods give a trained model: `rnnlm tune` on a validation text for the
# cache, dynamic evaluation (sgd, rms) and rms + cache, then `rnnlm eval` of the test text with
# each one's best flags (exact, batch 1), and the seconds each took.
#
#   sh benchmarks/test_time_quality.sh MODEL_DIR TEST_TEXT OUT_PREFIX
#
# tune reads the model's own validation text (its config's data.valid); TUNE_ARGS="--valid FILE"
# names another. Writes OUT_PREFIX.tune.NAME.json, OUT_PREFIX.eval.NAME.json and one line per
# run in OUT_PREFIX.summary:
#   NAME PERPLEXITY SECONDS FLAGS
# This produced the table "Test-time adaptation on Penn Treebank" in docs/results.md.
set -eu
model=$1; test_text=$2; out=$3
: "${TUNE_ARGS:=}"
now() { python3 -c 'import time; print(time.time())'; }
field() { python3 -c "import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print('' if v is None else v)" "$1" "$2"; }
seconds() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$2"; }
for what in "cache:--cache" "sgd:--dynamic sgd" "rms:--dynamic rms" "both:--dynamic rms --cache"; do
    name=${what%%:*}; args=${what#*:}
    start=$(now)
    # shellcheck disable=SC2086  # the options are words
    rnnlm tune "$model" $args $TUNE_ARGS --json > "$out.tune.$name.json"
    echo "tune $name $(seconds "$start" "$(now)") s" >> "$out.summary"
done
run() {
    name=$1; shift
    start=$(now)
    rnnlm eval "$model" "$test_text" --json "$@" > "$out.eval.$name.json"
    echo "$name $(field "$out.eval.$name.json" perplexity) $(seconds "$start" "$(now)") $*" >> "$out.summary"
}
run static
for name in cache sgd rms both; do
    # shellcheck disable=SC2046  # the flags are words
    run "$name" $(field "$out.tune.$name.json" flags)
done
cat "$out.summary"
