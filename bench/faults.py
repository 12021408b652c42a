"""The fault-injection tally: every fault of the table in ``tests/faults.py`` (symlinks, a full
disk, bit flips and forged checkpoint state, other data on resume, damaged run files, bad flags,
config values and model folders, a training already in progress, config edits before a resume,
missing evidence, a run folder moved while training, real file-size, disk and address-space
limits, non-UTF-8 terminals, broken clocks, read-only caches) against a finished tiny run,
each classified as survived / clear error / traceback / data lost / silent wrong::

    python bench/faults.py [--json bench/results/faults.json]

Exit status 0 when the last three columns (and "unclear error") are all zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT, machine_info

sys.path.insert(0, str(REPO_ROOT / "tests"))
import faults  # noqa: E402  (the table lives beside the tests that run it)

BAD = ("traceback", "data lost", "silent wrong", "unclear error")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="also write the tally as JSON here")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    info = machine_info()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print("a real full disk (tmpfs) case: " + ("included (root)" if faults.can_mount() else
                                              "left out (mounting a tmpfs needs root)"))
    with tempfile.TemporaryDirectory(prefix="reclor-faults-") as tmp:
        tally = faults.run_table(Path(tmp))
    print(f"{len(faults.FAULTS)} faults: " + ", ".join(f"{len(v)} {k}" for k, v in tally.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "tally": tally}, indent=2) + "\n")
    return 1 if any(tally[k] for k in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
