"""A deterministic stand-in for a training run: pure Python, resumable, with a final digest.

Each step folds the step number into a SHA-256 chain, so the final digest depends on every step
having been applied exactly once, in order — the same digest after any number of preemptions
proves nothing was skipped or repeated. It checkpoints (atomically) every CKPT_EVERY steps into
$SPOTD_CHECKPOINT_DIR, resumes from there, and on SIGTERM checkpoints and exits.
"""

import hashlib
import json
import os
import signal
import sys
import time

STEPS = int(os.environ.get("TRAIN_STEPS", "60"))
STEP_SECONDS = float(os.environ.get("STEP_SECONDS", "0.1"))
CKPT_EVERY = int(os.environ.get("CKPT_EVERY", "5"))
VERBOSE = os.environ.get("VERBOSE_STEPS") == "1"  # print every step (the benchmark counts them)
FAIL_AT = int(os.environ.get("FAIL_AT_STEP", "-1"))  # for tests: exit 1 at this step
CKPT_DIR = os.environ.get("SPOTD_CHECKPOINT_DIR", "./checkpoint")
CKPT = os.path.join(CKPT_DIR, "state.json")


def save(step: int, state: str) -> None:
    os.makedirs(CKPT_DIR, exist_ok=True)
    tmp = CKPT + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step, "state": state}, f)
    os.replace(tmp, CKPT)


def load() -> tuple[int, str]:
    try:
        with open(CKPT) as f:
            d = json.load(f)
        return int(d["step"]), str(d["state"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0, hashlib.sha256(b"spotd-train-seed").hexdigest()


step, state = load()
attempt = os.environ.get("SPOTD_ATTEMPT", "?")
print(
    f"attempt {attempt}: {'resumed from step ' + str(step) if step else 'starting at step 0'}"
    f" of {STEPS}",
    flush=True,
)


def on_term(signum, frame):
    save(step, state)
    print(f"SIGTERM at step {step}: checkpoint saved", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)

while step < STEPS:
    if step == FAIL_AT:
        print(f"simulated failure at step {step}", flush=True)
        sys.exit(1)
    time.sleep(STEP_SECONDS)
    state = hashlib.sha256(f"{state}:{step}".encode()).hexdigest()
    step += 1
    if VERBOSE:
        print(f"at step {step}", flush=True)
    if step % CKPT_EVERY == 0 or step == STEPS:
        save(step, state)
        print(f"step {step} loss {int(state[:6], 16) / 0xFFFFFF:.4f} (checkpoint)", flush=True)

print(f"DIGEST {state}", flush=True)
