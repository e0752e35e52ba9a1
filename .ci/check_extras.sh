#!/usr/bin/env bash
# Each extra of sb3-r2vpo, installed ALONE in a fresh venv from one wheel built from this checkout, runs its own
# entry point ("core": no extra). The test suite cannot see a missing dependency of one extra, because it installs all of them at
# once (rl_zoo3's CLI needing scipy went unnoticed that way).
#
#   .ci/check_extras.sh                   # every check below
#   .ci/check_extras.sh zoo optuna        # some of them
#
# Environment: PYTHON (makes the venvs; default python3), BUILD_PYTHON (builds the wheel: needs setuptools and
# wheel; default .venv/bin/python), TORCH (default torch==2.13.0), KEEP=1 keeps the work folder.
# pip's cache is shared, so after the first run nothing is downloaded again; PyTorch is fetched once (CPU build:
# PyTorch's CPU index first, the default index where that cannot be reached) and installed from that file.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUILD_PYTHON=${BUILD_PYTHON:-$ROOT/.venv/bin/python}
TORCH=${TORCH:-torch==2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
ALL=(core mujoco box2d atari zoo optuna tensorboard benchmark plots ray)
CHECKS=("${@:-${ALL[@]}}")
# Nine venvs of about 1 GB are written and deleted: in memory (/dev/shm) where it is executable and has room,
# since on a busy disk the write-back of each venv took longer than its install (117 s instead of 50 s a check).
BASE=${TMPDIR:-/tmp}
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] \
    && ! (findmnt -no OPTIONS /dev/shm 2>/dev/null | grep -q noexec) \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt 4000000 ]; then
    BASE=/dev/shm
fi
WORK=$(mktemp -d "$BASE/sb3-r2vpo-extras.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1
START=$SECONDS

# The command each check runs in an empty folder, with its venv's bin/ first on PATH.
declare -A RUN
RUN[core]='r2vpo-train --env CartPole-v1 --steps 512 --eval-points 2 --eval-episodes 2 --no-progress --out run
test -f run/model.zip && test -f run/learning_curve.png'
RUN[mujoco]='r2vpo-train --env Hopper-v5 --steps 512 --eval-points 1 --eval-episodes 1 --no-progress --out run
test -f run/model.zip'
RUN[box2d]='r2vpo-train --env LunarLanderContinuous-v3 --steps 512 --eval-points 1 --eval-episodes 1 --no-progress --out run
test -f run/model.zip'
RUN[atari]='python - <<EOF
import ale_py
import gymnasium as gym
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack
from sb3_r2vpo import R2VPO
gym.register_envs(ale_py)  # gymnasium 1.x: ALE ids exist once ale_py registers them
env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=2, seed=0), n_stack=4)  # SB3 Atari wrappers (cv2)
model = R2VPO("CnnPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0).learn(64)
assert model.observation_space.shape == (4, 84, 84), model.observation_space  # stacked, channels first
print("atari: trained", model.num_timesteps, "steps")
EOF'
RUN[zoo]='r2vpo-zoo train --algo r2vpo --env CartPole-v1 -n 512 -f logs --eval-freq -1 --seed 0
r2vpo-zoo enjoy --algo r2vpo --env CartPole-v1 -f logs --no-render -n 100'
RUN[optuna]='r2vpo-tune --env CartPole-v1 --n-trials 1 --n-timesteps 512 --n-evaluations 1 --n-eval-episodes 1 --no-progress --output best.yml
grep -q "Tuned with 1 Optuna trials of 512 steps each" best.yml
python -c "import psycopg"  # the PostgreSQL driver of multi-machine studies'
RUN[tensorboard]='python - <<EOF
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from sb3_r2vpo import R2VPO
R2VPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, tensorboard_log="tb").learn(192)
events = EventAccumulator("tb/R2VPO_1")
events.Reload()
assert "train/lagrange_multiplier" in events.Tags()["scalars"], events.Tags()
EOF'
RUN[benchmark]='python -m sb3_r2vpo.benchmark run --envs CartPole-v1 --algos r2vpo ppo trpo --seeds 0 --steps 1024 --eval-points 2 --eval-episodes 1 --jobs 1 --out results
python -m sb3_r2vpo.benchmark report --out results --report-dir report --reps 50
test -f report/REPORT.md && cp -r results "$WORK/benchmark-results"'
# ray: the runner on Ray (a local instance here), alone: TRPO needs sb3-contrib, the report rliable.
RUN[ray]='python -m sb3_r2vpo.benchmark run --envs CartPole-v1 --algos r2vpo trpo --seeds 0 --steps 1024 --eval-points 2 --eval-episodes 1 --ray local --out results
python -m sb3_r2vpo.benchmark report --out results --report-dir report --reps 50
test -f results/runs/CartPole-v1/trpo/seed0/result.json && test -f report/REPORT.md'
declare -A EXTRAS_OF=([core]="")
# plots: the report of runs made elsewhere (the benchmark check's), without the training baselines' packages.
RUN[plots]='cp -r "$WORK/benchmark-results" results
python -m sb3_r2vpo.benchmark report --out results --report-dir report --reps 50
test -f report/REPORT.md'

for check in "${CHECKS[@]}"; do
    [ -n "${RUN[$check]:-}" ] || { echo "unknown check '$check'; known: ${ALL[*]}" >&2; exit 2; }
done
if [[ " ${CHECKS[*]} " == *" plots "* && " ${CHECKS[*]} " != *" benchmark "* ]]; then
    echo "the plots check reports the benchmark check's runs: run both" >&2
    exit 2
fi

# One wheel, from the files git tracks or would track (not from a stale build/ folder).
mkdir "$WORK/src" "$WORK/dist"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
"$BUILD_PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/sb3_r2vpo-*.whl)

# PyTorch once, as a file every venv installs from.
mkdir "$WORK/torch"
"$BUILD_PYTHON" -m pip download -q --no-deps --timeout 10 --retries 1 -d "$WORK/torch" "$TORCH" \
    --index-url "$TORCH_CPU_INDEX" >/dev/null 2>&1 \
    || "$BUILD_PYTHON" -m pip download -q --no-deps -d "$WORK/torch" "$TORCH"
TORCH_WHEEL=$(ls "$WORK"/torch/torch-*.whl)
echo "wheel $(basename "$WHEEL"), $(basename "$TORCH_WHEEL") in $WORK; prepared in $((SECONDS - START)) s"

failed=()
for check in "${CHECKS[@]}"; do
    venv="$WORK/venv-$check" run="$WORK/run-$check" log="$WORK/$check.log"
    extras=${EXTRAS_OF[$check]-$check}
    requirement="$WHEEL${extras:+[$extras]}"
    t0=$SECONDS
    # The venv gets no pip of its own: the build interpreter's pip installs into it (pip --python), which saves
    # seeding pip nine times; --no-compile skips byte-compiling PyTorch's thousands of files.
    if "$PYTHON" -m venv --without-pip "$venv" \
        && "$BUILD_PYTHON" -m pip --python "$venv/bin/python" install -q --no-compile "$TORCH_WHEEL" "$requirement" >"$log" 2>&1; then
        t1=$SECONDS
        mkdir "$run"
        if (cd "$run" && PATH="$venv/bin:$PATH" WORK="$WORK" bash -euo pipefail -c "${RUN[$check]}") >>"$log" 2>&1; then
            echo "ok    ${check}: install $((t1 - t0)) s, run $((SECONDS - t1)) s"
        else
            echo "FAIL  ${check}: its entry point failed (install $((t1 - t0)) s); the end of its log:"
            grep -v "^WARNING: Location .* is ignored" "$log" | tail -n 25 | sed 's/^/      /'
            failed+=("$check")
        fi
    else
        echo "FAIL  ${check}: pip could not install ${requirement##*/}; the end of its log:"
        grep -v "^WARNING: Location .* is ignored" "$log" | tail -n 25 | sed 's/^/      /'
        failed+=("$check")
    fi
    rm -rf "$venv" "$run"  # about 1 GB each
done
echo "extras check: ${#CHECKS[@]} checks in $((SECONDS - START)) s; ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
