#!/bin/bash
# Submit the shard array, then the merge once every task has succeeded.
set -euo pipefail
cd "$(dirname "$0")"
jobid=$(sbatch --parsable shard.sbatch)
sbatch --dependency=afterok:"$jobid" merge.sbatch
