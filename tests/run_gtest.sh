#!/bin/sh
# ctest's runner of a GoogleTest binary: run_gtest.sh PATTERN COMMAND...
# A run that exits 0 and prints PATTERN (tests skipped: no GPU, no second device) exits 77, which
# ctest reports as skipped (SKIP_RETURN_CODE); any other run keeps its status. So a failure that
# also prints skips (an ASSERT in SetUpTestSuite skips the suite's tests) still fails, which
# SKIP_REGULAR_EXPRESSION, matching the output whatever the status, did not do.
pattern=$1
shift
out=$(mktemp) || exit 1
"$@" > "$out" 2>&1
rc=$?
cat "$out"
if [ "$rc" -eq 0 ] && grep -qF -- "$pattern" "$out"; then rc=77; fi
rm -f "$out"
exit "$rc"
