"""Workdir sync benchmark: a second launch of a large workdir with one changed file.

Creates a workdir of SIZE_MB (default 1024) in FILES files, starts a real daemon, and launches
a job with it three times: cold (empty store), again unchanged, and after changing one file.
For each launch it reports the submit latency (packaging included) and what was transferred
into the store; the reference measured in the same run is a plain full copy (`shutil.copytree`,
what a naive re-upload costs).

  python bench/sync.py [--size-mb 1024] [--files 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import DaemonProc, kill_instance_groups  # noqa: E402


def make_workdir(root: Path, size_mb: int, files: int) -> None:
    per = size_mb * (1 << 20) // files
    for i in range(files):
        with open(root / f"shard-{i:03d}.bin", "wb") as f:
            f.write(os.urandom(per))
    (root / "train.py").write_text("print('ok')\n")


async def launch(c, wd: Path) -> dict:
    yaml = f"resources: {{cpus: 1+}}\nworkdir: {wd}\nrun: 'true'\n"
    t0 = time.perf_counter()
    job = await c.launch(yaml, filename="sync.yaml")
    submit = time.perf_counter() - t0
    ev = next(e for e in await c.events(job["id"]) if e["kind"] == "files.packaged")
    return {"submit_s": submit, "message": ev["message"], "job": job["id"]}


async def run(args: argparse.Namespace) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="spotd-sync-"))
    wd = tmp / "workdir"
    wd.mkdir()
    make_workdir(wd, args.size_mb, args.files)
    t0 = time.perf_counter()
    shutil.copytree(wd, tmp / "naive-copy")
    naive = time.perf_counter() - t0
    shutil.rmtree(tmp / "naive-copy")
    home = Path(f"/tmp/spotd-bsync-{os.getpid()}")
    d = DaemonProc(home)
    d.start()
    rows = [
        {
            "launch": "reference: full copy (cp -r)",
            "submit_s": naive,
            "transferred": f"{args.files + 1} files, {args.size_mb} MB",
        }
    ]
    try:
        async with d.client() as c:
            cold = await launch(c, wd)
            warm = await launch(c, wd)
            with open(wd / "shard-007.bin", "r+b") as f:
                f.seek(1000)
                f.write(b"one changed byte range")
            changed = await launch(c, wd)
            for name, r in (
                ("1st launch (cold store)", cold),
                ("2nd launch, unchanged", warm),
                ("3rd launch, 1 file changed", changed),
            ):
                rows.append(
                    {
                        "launch": name,
                        "submit_s": r["submit_s"],
                        "transferred": r["message"].split("; ")[1],
                    }
                )
            for r in (cold, warm, changed):
                await c.wait(r["job"], timeout=120)
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = asyncio.run(run(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"\nworkdir of {args.size_mb} MB in {args.files + 1} files, local provider\n")
    print(f"| {'launch':30s} | {'submit (s)':>10s} | transferred into the store |")
    print(f"|{'-' * 32}|{'-' * 12}|----------------------------|")
    for r in rows:
        print(f"| {r['launch']:30s} | {r['submit_s']:10.2f} | {r['transferred']} |")


if __name__ == "__main__":
    main()
