"""The s3prl processes of a unit: their command lines, and running one with its output kept in a log.

Every s3prl run goes through our launcher (``python -m lighthubert_s3prl.run_downstream``) in its own
process, so a crash in one task cannot take the batch down and each run can be resumed on its own.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from lighthubert_s3prl.cpu_budget import choose_threads

from .options import RunnerError, RunOptions
from .units import Unit, now_iso, tasks_module

LAUNCHER_MODULE = "lighthubert_s3prl.run_downstream"
PROBE_MODULE = "lighthubert_s3prl.upstream.probe"


class Launcher:
    """Builds and runs the s3prl commands of the units of one run (``opts``); configs come from ``configs``."""

    def __init__(self, opts: RunOptions, configs: Path) -> None:
        self.opts = opts
        self.configs = configs
        # the available CPUs are shared by the units running at once (--executor local:N), unless told otherwise
        self.threads = choose_threads(opts.parallel, opts.threads)

    def _launcher(self, distributed: bool) -> List[str]:
        if distributed and self.opts.gpus > 1:
            # s3prl only knows --local_rank; our launcher maps torchrun's LOCAL_RANK onto it
            return [self.opts.python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.opts.gpus}", "-m", LAUNCHER_MODULE]
        return [self.opts.python, "-m", LAUNCHER_MODULE]

    @staticmethod
    def _quoted(value: Union[str, Path]) -> str:
        text = str(value)
        # s3prl splits -o on ',,' and '=' and eval()s the value: such paths cannot be passed through it
        if any(bad in text for bad in ("=", ",,", '"', "\\")):
            raise RunnerError(f"path {text!r} contains '=', ',,', a double quote or a backslash, which s3prl's "
                              "-o cannot carry; choose another --exp-root")
        return f'"{text}"'

    def _upstream_args(self) -> List[str]:
        args = ["-u", self.opts.upstream]
        if self.opts.ckpt:
            args += ["-k", self.opts.ckpt]
        if self.opts.subnet:
            args += ["-g", self.opts.subnet]
        return args

    def train_command(self, unit: Unit) -> List[str]:
        spec = tasks_module().get_task(unit.task)
        overrides = [f"args.expdir={self._quoted(unit.expdir)}"]  # pins the expdir when -a resumes a moved root
        if unit.fold:
            overrides.append(f'config.downstream_expert.datarc.test_fold="{unit.fold}"')
        cmd = self._launcher(distributed=True) + [
            "-m", "train", *self._upstream_args(), "-d", spec.downstream,
            "-c", str(self.configs / f"{unit.task}.yaml"), "-p", str(unit.expdir), "-a",
            "--device", self.opts.device, "-o", ",,".join(overrides)]
        if self.opts.seed is not None:
            cmd += ["--seed", str(self.opts.seed)]
        return cmd + list(self.opts.extra_args)

    def test_command(self, unit: Unit, ckpt: Path, split: str, outdir: Path) -> List[str]:
        # -e takes args+config from the checkpoint; -o args.expdir sends its prediction files to outdir
        return self._launcher(distributed=False) + [
            "-m", "evaluate", "-e", str(ckpt), "-t", split, "--device", self.opts.device,
            "-o", f"args.expdir={self._quoted(outdir)}"]

    def probe_command(self) -> List[str]:
        """Prints how many hidden states the run's upstream gives (QbE scores each one)."""
        return [self.opts.python, "-m", PROBE_MODULE, *self._upstream_args()]

    def layer_command(self, unit: Unit, split: str, layer: Union[int, str], outdir: Path) -> List[str]:
        """Evaluate one hidden state (``-l``) without a trained downstream: QbE's DTW (the dry run passes a
        placeholder for the layer)."""
        spec = tasks_module().get_task(unit.task)
        return self._launcher(distributed=False) + [
            "-m", "evaluate", *self._upstream_args(), "-d", spec.downstream, "-c", str(self.configs / f"{unit.task}.yaml"),
            "-l", str(layer), "-t", split, "-p", str(outdir), "--device", self.opts.device]

    def env(self, cuda_devices: Optional[str] = None) -> Dict[str, str]:
        """The environment of every s3prl process of the run; ``cuda_devices`` pins its unit's GPUs."""
        env = dict(os.environ)
        if cuda_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_devices
        env["PYTHONUNBUFFERED"] = "1"  # result lines reach the log in order with tqdm's stderr
        if not self.opts.stream:
            env.setdefault("TQDM_MININTERVAL", "10")  # keep logs of 200k-step runs small
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads.threads)
        from lighthubert_s3prl.upstream.feature_cache import ENV_CACHE_MB, SMALL_SCALE_CACHE_MB

        if self.opts.feature_cache_mb is not None:
            env[ENV_CACHE_MB] = f"{self.opts.feature_cache_mb:g}"
        elif self.opts.scale != "full":  # small corpora, many epochs: each utterance's features computed once
            env.setdefault(ENV_CACHE_MB, str(SMALL_SCALE_CACHE_MB))
        return env

    def execute(self, cmd: List[str], log_path: Path, cuda_devices: Optional[str] = None) -> Tuple[int, str]:
        """Run ``cmd`` appending its output to ``log_path``; return (exit code, this run's output)."""
        env = self.env(cuda_devices)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            start = log.tell()
            log.write(f"\n===== {now_iso()} $ {shlex.join(cmd)}\n".encode())
            log.flush()
            if self.opts.stream:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.opts.exp_root)
                assert proc.stdout is not None
                for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
                    log.write(chunk)
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                rc = proc.wait()
            else:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.opts.exp_root).returncode
            log.write(f"===== exit code {rc}\n".encode())
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode("utf-8", errors="replace")
        return rc, text.replace("\r", "\n")  # tqdm redraws with \r: the result line must start a line
