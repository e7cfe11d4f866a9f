"""Stands in for ``python -m lighthubert_s3prl.run_downstream ...`` in tests of executors that start their own
processes (cluster jobs): the recorder of ``test_superb_runner_states`` as a program.

Run as ``python tests/fake_s3prl.py -m lighthubert_s3prl.run_downstream <s3prl args>``. With
``FAKE_S3PRL_SLOW_TRAIN=<expdir suffix>``, the first training of that unit saves its first checkpoint and
then hangs (until stopped): a job that must be interrupted and resumed.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_superb_runner_states import FakeS3prl  # noqa: E402


def member_root(expdir: Path) -> Path:
    return expdir.parent.parent if expdir.parent.name == "er" else expdir.parent


def main(argv):
    cmd = ["python"] + argv
    args = argv[argv.index("lighthubert_s3prl.run_downstream") + 1:]
    mode = args[args.index("-m") + 1]
    expdir = Path(args[args.index("-p") + 1]) if mode == "train" else Path(args[args.index("-e") + 1]).parent
    fake = FakeS3prl(member_root(expdir))
    slow = os.environ.get("FAKE_S3PRL_SLOW_TRAIN")
    first_time = not (expdir / "fake_slow_once").exists()
    if mode == "train" and slow and str(expdir).endswith(slow) and first_time:
        expdir.mkdir(parents=True, exist_ok=True)
        (expdir / "fake_slow_once").write_text("")
        (expdir / "states-2.ckpt").write_bytes(b"step 2")
        print("saved states-2.ckpt; hanging", flush=True)
        time.sleep(600)
        return 0
    log = expdir / "fake_s3prl.log"
    rc, text = fake(cmd, log)
    print(text, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
