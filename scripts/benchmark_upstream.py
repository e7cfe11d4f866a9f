#!/usr/bin/env python
"""Benchmark s3prl's built-in LightHuBERT upstream against our supernet and compact paths.

In one run, on the same checkpoint file and the same seeded batch of waveforms, for each subnet
(small, base, stage1 by default) it measures:

* wall time per batch: median of ``--repeats`` runs after ``--warmup``, each peer in a process of its own.
  By default (``--schedule alone``) the peers take turns: one process at a time loads its peer, warms up
  and runs all its repeats back to back, then exits. This is the conservative schedule: s3prl's expert
  page-faults about 11 GB per batch, and in one check it ran 25-30 % slower when other work ran between
  its batches (as a downstream model's steps do in real use). ``--schedule interleaved`` keeps every
  peer's process alive and alternates them batch by batch, so that load changes on a shared machine hit
  every peer alike;
* peak memory: on CPU the peak RSS increase, each peer in a fresh subprocess (so allocations of one peer
  never count for another), both for load + forward and for the forward alone; on CUDA
  ``torch.cuda.max_memory_allocated``;
* checkpoint load time (in that fresh subprocess, page cache warm) and file size: the official-format
  supernet file against the compact export;
* a correctness cross-check: the largest difference of the last hidden state between the peers, on the
  longest (unpadded) utterance, and between our two paths on every valid frame;
* with ``--onnx``, ONNX Runtime too: the subnet exported by ``lighthubert_s3prl.model.onnx_export`` and run
  with as many intra-op threads as the other peers, in both tables.

It prints a table with ratios against s3prl's built-in expert and writes JSON atomically. ``--quick`` is a
short smoke run (the test suite uses it). Official files ``lighthubert_{small,base,stage1}.pt`` are used
when ``--checkpoint-dir`` holds them; otherwise seeded random supernets in the official format are written.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lighthubert_s3prl import hardware  # noqa: E402
from lighthubert_s3prl.cpu_budget import LoadAwareThreads, choose_threads  # noqa: E402

PEERS = ("s3prl", "supernet", "compact")
PEER_LABELS = {
    "s3prl": "s3prl built-in",
    "supernet": "ours supernet",
    "compact": "ours compact",
    "compact-bfloat16": "ours compact bf16",
    "compact-float16": "ours compact fp16",
    "onnx": "ONNX Runtime",
}
SAMPLE_RATE = 16000


# ---------------------------------------------------------------------------------------------------
def make_batch(n: int, min_s: float, max_s: float, seed: int) -> List[torch.Tensor]:
    """``n`` seeded waveforms with lengths uniform in [min_s, max_s] seconds (noise plus a tone)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = (min_s + (max_s - min_s) * torch.rand(n, generator=gen)) * SAMPLE_RATE
    wavs = []
    for i, length in enumerate(lengths.long().tolist()):
        t = torch.arange(length) / SAMPLE_RATE
        wavs.append(0.3 * torch.sin(2 * torch.pi * (100 + 30 * i) * t) + 0.1 * torch.randn(length, generator=gen))
    return wavs


def build_peer(peer: str, ckpt: str, compact: str, subnet_name: str, device: str) -> torch.nn.Module:
    from lighthubert_s3prl.model.config import get_preset

    if peer == "onnx":
        return onnx_peer(compact)
    if peer == "s3prl":
        from s3prl.upstream.lighthubert.expert import UpstreamExpert as BuiltIn

        model = BuiltIn(ckpt)
        model.model.set_sample_config(get_preset(subnet_name).to_dict())
    else:
        from lighthubert_s3prl.upstream.expert import UpstreamExpert

        if peer == "supernet":
            model = UpstreamExpert(ckpt, subnet=subnet_name, implementation="supernet")
        elif peer == "compact":
            model = UpstreamExpert(compact)
        elif peer.startswith("compact-"):
            model = UpstreamExpert(compact, dtype=peer.split("-", 1)[1])
        else:
            raise ValueError(f"unknown peer {peer!r}")
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime as a peer (--onnx). Opt-in rather than automatic: each subnet costs an export (a trace and an
# ONNX Runtime check, seconds to tens of seconds) and a 100-380 MB file, onnxruntime is an optional extra, and
# a run that asked for it should fail loudly without it instead of silently leaving out its row.
def onnx_path_for(compact: str) -> Path:
    """The ONNX export of a subnet lies beside its compact export (so that worker specs need no new field)."""
    return Path(compact).with_suffix(".onnx")


def export_onnx_peer(ckpt: Path, subnet_name: str, compact: Path) -> int:
    from lighthubert_s3prl.model.onnx_export import export_onnx

    print(f"[{subnet_name}] exporting to ONNX and checking it against ONNX Runtime", flush=True)
    return export_onnx(ckpt, subnet_name, onnx_path_for(str(compact)), force=True).output_bytes


def onnx_peer(compact: str) -> Any:
    """The exported graph in an ONNX Runtime session with the thread count every peer's process was given."""
    from lighthubert_s3prl.model.onnx_export import OnnxRuntimeUpstream

    return OnnxRuntimeUpstream(onnx_path_for(compact), intra_op_threads=torch.get_num_threads())


def onnx_argument_errors(device: str) -> List[str]:
    errors = [] if device == "cpu" else ["--onnx times ONNX Runtime's CPU provider only; use --device cpu"]
    for package in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError as err:
            errors.append(f"--onnx needs the {package} package ({err}): pip install 'lighthubert-s3prl[onnx]'")
    return errors


def run_peer(model: torch.nn.Module, wavs: List[torch.Tensor], device: str) -> List[torch.Tensor]:
    with torch.inference_mode():
        out = model(wavs)["hidden_states"]
    if device == "cuda":
        torch.cuda.synchronize()
    return out


# ---------------------------------------------------------------------------------------------------
# Memory and load time, each peer in a fresh process.
def _status_kb(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_now_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def _rss_peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def child_main(spec: Dict[str, Any]) -> Dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    import s3prl.upstream.lighthubert.expert  # noqa: F401  (imports count for every peer alike, not as load)
    import lighthubert_s3prl.upstream.expert  # noqa: F401

    wavs = [w.to(device) for w in make_batch(spec["batch"], spec["min_s"], spec["max_s"], spec["seed"])]
    gc.collect()
    result: Dict[str, Any] = {}
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        result["rss_reset"] = _reset_peak_rss()
        base = _rss_now_mb()
    start = time.perf_counter()
    model = build_peer(spec["peer"], spec["ckpt"], spec["compact"], spec["subnet"], device)
    if device == "cuda":
        torch.cuda.synchronize()
    result["load_s"] = time.perf_counter() - start
    if device == "cuda":
        loaded = torch.cuda.memory_allocated()
        result["load_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        result["resident_mb"] = (loaded - base) / 2**20
        torch.cuda.reset_peak_memory_stats()
        run_peer(model, wavs, device)
        result["forward_peak_mb"] = (torch.cuda.max_memory_allocated() - loaded) / 2**20
        result["peak_mb"] = max(result["load_peak_mb"], (torch.cuda.max_memory_allocated() - base) / 2**20)
        result["memory_method"] = "torch.cuda.max_memory_allocated"
    else:
        loaded = _rss_now_mb()
        result["load_peak_mb"] = _rss_peak_mb() - base
        result["resident_mb"] = loaded - base
        reset = _reset_peak_rss()
        run_peer(model, wavs, device)
        peak = _rss_peak_mb()
        result["forward_peak_mb"] = peak - loaded if reset else float("nan")
        result["peak_mb"] = max(result["load_peak_mb"], peak - base)
        result["memory_method"] = "peak RSS (VmHWM, reset via /proc/self/clear_refs)" if reset else "ru_maxrss"
    return result


def timer_main(spec: Dict[str, Any]) -> None:
    """Worker of one peer: load it, then answer ``run`` (time one batch) and ``save PATH`` lines on stdin."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    wavs = [w.to(device) for w in make_batch(spec["batch"], spec["min_s"], spec["max_s"], spec["seed"])]
    start = time.perf_counter()
    model = build_peer(spec["peer"], spec["ckpt"], spec["compact"], spec["subnet"], device)
    print(json.dumps({"load_s": time.perf_counter() - start}), flush=True)
    out = None
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "run":
            start = time.perf_counter()
            out = run_peer(model, wavs, device)
            elapsed = time.perf_counter() - start
            chosen = getattr(model, "threads", None)  # ours: the load-aware choice of that forward
            threads = chosen.threads if isinstance(chosen, LoadAwareThreads) else torch.get_num_threads()
            print(json.dumps({"batch_s": elapsed, "threads": threads}), flush=True)
        elif command == "save":
            torch.save(out[-1].float().cpu(), arg)
            print(json.dumps({"saved": arg}), flush=True)
        elif command == "quit":
            break


class PeerProcess:
    """A running :func:`timer_main` worker; its stderr goes to ``log``."""

    def __init__(self, spec: Dict[str, Any], log: Path) -> None:
        self.peer, self.log = spec["peer"], log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--timer", json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self._reply()  # loaded

    def _reply(self) -> Dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        tail = "\n".join(self.log.read_text().strip().splitlines()[-15:])
        raise RuntimeError(f"the {self.peer} worker stopped (exit code {self.proc.wait()}):\n{tail}")

    def ask(self, command: str) -> Dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def measure_in_subprocess(spec: Dict[str, Any]) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"memory measurement of {spec['peer']} ({spec['subnet']}) failed:\n{tail}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------
def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def prepare_files(subnet_name: str, args: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    from lighthubert_s3prl.model.checkpoint import write_random_checkpoint
    from lighthubert_s3prl.model.export import export_compact

    # which released file a preset comes from: its search space's supernet (stage1 has its own)
    kind = "stage1" if subnet_name == "stage1" else "base" if subnet_name.startswith("base") else "small"
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else workdir
    ckpt = ckpt_dir / f"lighthubert_{kind}.pt"
    official = ckpt.is_file()
    if not official:
        print(f"[{subnet_name}] writing a seeded random supernet in the official format: {ckpt}", flush=True)
        write_random_checkpoint(ckpt, kind, seed=args.seed)
    compact = workdir / f"{subnet_name}_compact.pt"
    export_compact(ckpt, subnet_name, compact, dtype="float32", force=True)
    info = {"checkpoint": str(ckpt), "checkpoint_given": official, "compact": str(compact),
            "supernet_bytes": ckpt.stat().st_size, "compact_bytes": compact.stat().st_size}
    if args.onnx:
        info["onnx_bytes"] = export_onnx_peer(ckpt, subnet_name, compact)
    if not args.quick:
        compact16 = workdir / f"{subnet_name}_compact_bf16.pt"
        export_compact(ckpt, subnet_name, compact16, dtype="bfloat16", force=True)
        info["compact_bf16_bytes"] = compact16.stat().st_size
        compact16.unlink()
    for path in (ckpt, compact):
        _warm_page_cache(path)
    return info


def max_diffs(outputs: Dict[str, List[torch.Tensor]], wavs: List[torch.Tensor]) -> Dict[str, float]:
    """Largest |difference| of the last hidden state: the longest utterance vs s3prl, all valid frames ours."""
    longest = max(range(len(wavs)), key=lambda i: len(wavs[i]))
    diffs = {}
    ref = outputs.get("s3prl")
    for peer, hs in outputs.items():
        if peer != "s3prl" and ref is not None:
            a, b = hs[-1][longest].float().cpu(), ref[-1][longest].float().cpu()
            T = min(a.size(0), b.size(0))
            diffs[f"{peer}_vs_s3prl_longest"] = float((a[:T] - b[:T]).abs().max())
    for peer in ("supernet", "onnx"):
        if peer in outputs and "compact" in outputs:  # padded frames are 0 in all three
            diffs[f"compact_vs_{peer}_all"] = float(
                (outputs["compact"][-1].float().cpu() - outputs[peer][-1].float().cpu()).abs().max())
    return diffs


def time_peers(peers: List[str], spec_base: Dict[str, Any], args: argparse.Namespace,
               prefix: Path) -> Tuple[Dict[str, List[float]], Dict[str, List[torch.Tensor]], Dict[str, List[int]]]:
    """Batch times of every peer (each in its own process, see ``--schedule``), its last hidden state, and the
    intra-op threads each timed forward ran with."""
    times: Dict[str, List[float]] = {peer: [] for peer in peers}
    threads_used: Dict[str, List[int]] = {peer: [] for peer in peers}
    outputs: Dict[str, List[torch.Tensor]] = {}
    workers: Dict[str, PeerProcess] = {}

    def finish(peer: str) -> None:
        path = Path(f"{prefix}_{peer}_last_hidden.pt")
        workers[peer].ask(f"save {path}")
        outputs[peer] = [torch.load(path, weights_only=True)]
        path.unlink()
        workers.pop(peer).close()

    try:
        if args.schedule == "alone":
            for peer in peers:
                workers[peer] = PeerProcess({**spec_base, "peer": peer}, Path(f"{prefix}_{peer}.log"))
                for _ in range(args.warmup):
                    workers[peer].ask("run")
                for _ in range(args.repeats):
                    reply = workers[peer].ask("run")
                    times[peer].append(reply["batch_s"])
                    threads_used[peer].append(reply["threads"])
                finish(peer)
        else:
            for peer in peers:
                workers[peer] = PeerProcess({**spec_base, "peer": peer}, Path(f"{prefix}_{peer}.log"))
            for _ in range(args.warmup):
                for worker in workers.values():
                    worker.ask("run")
            for _ in range(args.repeats):
                for peer, worker in workers.items():
                    reply = worker.ask("run")
                    times[peer].append(reply["batch_s"])
                    threads_used[peer].append(reply["threads"])
            for peer in peers:
                finish(peer)
    finally:
        for worker in workers.values():
            worker.close()
    return times, outputs, threads_used


def bench_subnet(subnet_name: str, args: argparse.Namespace, workdir: Path, wavs: List[torch.Tensor],
                 peers: List[str]) -> Dict[str, Any]:
    from lighthubert_s3prl.model.config import count_parameters, get_preset

    subnet = get_preset(subnet_name)
    files = prepare_files(subnet_name, args, workdir)
    result: Dict[str, Any] = {"subnet": subnet.to_dict(), "describe": subnet.describe(),
                              "parameters": count_parameters(subnet), "files": files, "peers": {}}
    spec_base = {"ckpt": files["checkpoint"], "compact": files["compact"], "subnet": subnet_name,
                 "device": args.device, "threads": args.threads, "batch": args.batch, "min_s": args.min_seconds,
                 "max_s": args.max_seconds, "seed": args.seed}
    for peer in peers:
        entry: Dict[str, Any] = {}
        if not args.no_memory:
            print(f"[{subnet_name}] memory / load time of {PEER_LABELS[peer]} (fresh process)", flush=True)
            entry.update(measure_in_subprocess({**spec_base, "peer": peer}))
        result["peers"][peer] = entry

    print(f"[{subnet_name}] timing {', '.join(PEER_LABELS[p] for p in peers)}: {args.warmup} warm-up + "
          f"{args.repeats} runs each, schedule '{args.schedule}'", flush=True)
    times, outputs, _ = time_peers(peers, spec_base, args, workdir / f"timer_{subnet_name}")
    result["max_abs_diff"] = max_diffs(outputs, wavs)

    for peer in peers:
        entry = result["peers"][peer]
        entry["batch_s"] = statistics.median(times[peer])
        entry["batch_s_min"] = min(times[peer])  # least disturbed run, useful on a shared machine
        entry["batch_s_runs"] = times[peer]
    ref = result["peers"].get("s3prl", {})
    for peer in peers:
        entry = result["peers"][peer]
        if ref:
            entry["speedup_vs_s3prl"] = ref["batch_s"] / entry["batch_s"]
            entry["speedup_vs_s3prl_min"] = ref["batch_s_min"] / entry["batch_s_min"]
            if "peak_mb" in entry and ref.get("peak_mb"):
                entry["peak_mb_ratio_vs_s3prl"] = entry["peak_mb"] / ref["peak_mb"]
                entry["forward_peak_mb_ratio_vs_s3prl"] = entry["forward_peak_mb"] / ref["forward_peak_mb"]
    result["compact_file_ratio"] = files["compact_bytes"] / files["supernet_bytes"]
    return result


def batch_flops(subnet_name: str, wavs: List[torch.Tensor]) -> float:
    """Useful FLOPs of one batch (2 x the analytic MACs of every utterance at its own length, no padding)."""
    from lighthubert_s3prl.model.config import get_preset
    from lighthubert_s3prl.model.cost import analytic_macs

    subnet = get_preset(subnet_name)
    return sum(2.0 * analytic_macs(subnet, seconds=len(w) / SAMPLE_RATE) for w in wavs)


def bench_contention(subnet_name: str, args: argparse.Namespace, workdir: Path, wavs: List[torch.Tensor],
                     levels: List[int]) -> Dict[str, Any]:
    """s3prl's built-in against our compact path with 0, 1, 2 ... busy processes started beside them; at each
    level also the machine's fp32 matmul rate, and our FLOP rate as a fraction of the quiet machine's."""
    from lighthubert_s3prl.machine_load import BusyProcesses, matmul_gflops

    files = prepare_files(subnet_name, args, workdir)
    spec_base = {"ckpt": files["checkpoint"], "compact": files["compact"], "subnet": subnet_name,
                 "device": args.device, "threads": args.threads, "batch": args.batch, "min_s": args.min_seconds,
                 "max_s": args.max_seconds, "seed": args.seed}
    peers = ["s3prl", "compact"] + (["onnx"] if args.onnx else [])
    memory = {}
    if not args.no_memory:
        for peer in peers:
            print(f"[{subnet_name}] memory of {PEER_LABELS[peer]} (fresh process, no busy processes)", flush=True)
            memory[peer] = measure_in_subprocess({**spec_base, "peer": peer})
    flops = batch_flops(subnet_name, wavs)
    rows = []
    for level in levels:
        print(f"[{subnet_name}] {level} busy process(es): timing {', '.join(PEER_LABELS[p] for p in peers)} "
              f"({args.warmup} warm-up + {args.repeats} runs each, schedule '{args.schedule}') and the matmul rate",
              flush=True)
        with BusyProcesses(level) as busy:
            time.sleep(0.5)  # let the scheduler spread them
            load_before = _load_average()
            gflops = matmul_gflops(args.threads)
            times, _, threads_used = time_peers(peers, spec_base, args, workdir / f"timer_{subnet_name}_c{level}")
            row = {"busy_processes": level, "busy_pids": busy.pids, "load_average": load_before,
                   "matmul_gflops": gflops}
        for peer in peers:
            row[peer] = {"batch_s": statistics.median(times[peer]), "batch_s_runs": times[peer],
                         "threads_runs": threads_used[peer]}
        row["speedup_vs_s3prl"] = row["s3prl"]["batch_s"] / row["compact"]["batch_s"]
        if "onnx" in row:
            row["onnx_speedup_vs_s3prl"] = row["s3prl"]["batch_s"] / row["onnx"]["batch_s"]
        row["compact_gflops"] = flops / row["compact"]["batch_s"] / 1e9
        rows.append(row)
    quiet = next((r["matmul_gflops"] for r in rows if r["busy_processes"] == 0), None)
    for row in rows:
        row["compact_fraction_of_matmul_rate"] = row["compact_gflops"] / row["matmul_gflops"]
        if quiet:
            row["compact_fraction_of_quiet_matmul_rate"] = row["compact_gflops"] / quiet
    return {"subnet": subnet_name, "batch_gflop": flops / 1e9, "memory": memory, "levels": rows, "files": files}


def print_contention(results: Dict[str, Any]) -> None:
    header = (f"{'subnet':<7} {'busy':>4} {'load avg':>9} {'s3prl s':>8} {'ours s':>8} {'ours threads':>12} {'ours vs s3prl':>13} "
              f"{'ours GFLOP/s':>12} {'matmul GFLOP/s':>14} {'of matmul':>9} {'of quiet matmul':>15}")
    onnx = any("onnx" in row for res in results.values() for row in res["levels"])
    if onnx:
        header += f" {'ORT s':>8} {'ORT vs s3prl':>12}"
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        for row in res["levels"]:
            load = "-" if not row["load_average"] else f"{row['load_average'][0]:.2f}"
            quiet = row.get("compact_fraction_of_quiet_matmul_rate")
            print(f"{name:<7} {row['busy_processes']:>4} {load:>9} {row['s3prl']['batch_s']:8.3f} "
                  f"{row['compact']['batch_s']:8.3f} {_threads_used(row['compact']['threads_runs']):>12} "
                  f"{row['speedup_vs_s3prl']:12.2f}x {row['compact_gflops']:12.1f} "
                  f"{row['matmul_gflops']:14.1f} {row['compact_fraction_of_matmul_rate']:9.0%} "
                  f"{'-' if quiet is None else format(quiet, '.0%'):>15}"
                  + (f" {row['onnx']['batch_s']:8.3f} {row['onnx_speedup_vs_s3prl']:11.2f}x" if onnx else ""))
        memory = res["memory"]
        if memory:
            print(f"{'':<7} peak memory (load + forward, no busy processes): s3prl {memory['s3prl']['peak_mb']:.0f} MB, "
                  f"ours {memory['compact']['peak_mb']:.0f} MB ({memory['compact']['peak_mb'] / memory['s3prl']['peak_mb']:.0%})")
        print(f"{'':<7} one batch: {res['batch_gflop']:.1f} GFLOP of useful work (analytic, unpadded)")


def _threads_used(runs: List[int]) -> str:
    """The thread counts our forwards ran with, e.g. ``2`` or ``1-2``."""
    return str(runs[0]) if len(set(runs)) == 1 else f"{min(runs)}-{max(runs)}"


def check_contention_targets(results: Dict[str, Any]) -> Dict[str, Any]:
    """Ours >= 1.5x s3prl at every level; at level 0 at least 75 % of the matmul rate (reported, not enforced)."""
    out = {}
    for name, res in results.items():
        for row in res["levels"]:
            out[f"{name}, {row['busy_processes']} busy: ours >= 1.5x s3prl"] = {
                "value": row["speedup_vs_s3prl"], "met": row["speedup_vs_s3prl"] >= 1.5}
            if row["busy_processes"] == 0:
                out[f"{name}, quiet: ours >= 75% of the matmul rate"] = {
                    "value": row["compact_fraction_of_matmul_rate"], "met": row["compact_fraction_of_matmul_rate"] >= 0.75}
    return out


def print_table(results: Dict[str, Any], audio_s: float) -> None:
    header = (f"{'subnet':<7} {'peer':<18} {'batch s':>8} {'RTF':>7} {'speedup':>8} {'peak MB':>8} {'of s3prl':>8} "
              f"{'fwd MB':>8} {'of s3prl':>8} {'load s':>7} {'file MB':>8} {'of sup.':>7}")
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        files = res["files"]
        for peer, e in res["peers"].items():
            compact_file = peer.startswith("compact")
            size = files["compact_bytes"] if compact_file else files["supernet_bytes"]
            if peer == "onnx":
                size = files["onnx_bytes"]

            def fmt(key: str, spec: str, default: str = "-") -> str:
                return format(e[key], spec) if key in e and e[key] == e[key] else default

            print(f"{name:<7} {PEER_LABELS[peer]:<18} {e['batch_s']:8.3f} {e['batch_s'] / audio_s:7.4f} "
                  f"{fmt('speedup_vs_s3prl', '7.2f')}x {fmt('peak_mb', '8.0f'):>8} "
                  f"{fmt('peak_mb_ratio_vs_s3prl', '8.0%'):>8} {fmt('forward_peak_mb', '8.0f'):>8} "
                  f"{fmt('forward_peak_mb_ratio_vs_s3prl', '8.0%'):>8} {fmt('load_s', '7.2f'):>7} "
                  f"{size / 2**20:8.1f} {size / files['supernet_bytes']:7.0%}")
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in res["max_abs_diff"].items())
        print(f"{'':<7} max |diff| of the last hidden state: {diffs}")


def check_targets(results: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's targets for the small subnet (reported, never enforced)."""
    res = results.get("small")
    if not res or "s3prl" not in res["peers"] or "compact" not in res["peers"]:
        return {}
    compact = res["peers"]["compact"]
    out = {
        "speedup_vs_s3prl >= 3": {"value": compact["speedup_vs_s3prl"], "met": compact["speedup_vs_s3prl"] >= 3},
        "compact file <= 30% of official": {"value": res["compact_file_ratio"], "met": res["compact_file_ratio"] <= 0.30},
    }
    if "peak_mb_ratio_vs_s3prl" in compact:
        out["peak memory <= 40% of s3prl (load + forward)"] = {
            "value": compact["peak_mb_ratio_vs_s3prl"], "met": compact["peak_mb_ratio_vs_s3prl"] <= 0.40}
        out["forward peak memory <= 40% of s3prl"] = {
            "value": compact["forward_peak_mb_ratio_vs_s3prl"], "met": compact["forward_peak_mb_ratio_vs_s3prl"] <= 0.40}
    for peer in [p for p in res["peers"] if p.startswith("compact-")]:
        out[f"{peer} speedup_vs_s3prl >= 3"] = {"value": res["peers"][peer]["speedup_vs_s3prl"],
                                               "met": res["peers"][peer]["speedup_vs_s3prl"] >= 3}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time, memory, load time and file size of s3prl's built-in LightHuBERT upstream against our "
                    "supernet and compact paths, on one checkpoint file and one seeded batch.",
    )
    parser.add_argument("--subnets", default="small,base,stage1",
                        help="comma-separated presets to run (default small,base,stage1)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="folder with lighthubert_{small,base,stage1}.pt (official files); missing files are "
                             "written there as seeded random supernets. Default: the work folder")
    parser.add_argument("--workdir", default=None,
                        help="folder for generated files (default: a temporary folder removed at the end)")
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch (default 8)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest utterance (default 2 s)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="longest utterance (default 15 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch and of generated checkpoints")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per peer (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per peer first (default 1)")
    parser.add_argument("--schedule", default="alone", choices=["alone", "interleaved"],
                        help="'alone' (default, conservative): each peer's runs back to back in its own process, "
                             "one process at a time; 'interleaved': all peers' processes alive, alternating batch "
                             "by batch (s3prl's expert can run slower that way)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every peer (default: the CPUs this process may use, from "
                             "its affinity and cgroup quota)")
    parser.add_argument("--contention", default=None,
                        help="e.g. 0,1,2: time s3prl's built-in against our compact path with that many busy "
                             "processes started beside them (stopped at the end, whatever happens), with the "
                             "machine's fp32 matmul rate at each level; replaces the per-peer table")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")
    parser.add_argument("--extra-dtypes", default="bfloat16",
                        help="also time our compact path in these dtypes (comma-separated: bfloat16, float16; "
                             "'' for none; default bfloat16)")
    parser.add_argument("--onnx", action="store_true",
                        help="also export each subnet to ONNX and time ONNX Runtime (CPU, same threads and batch) in "
                             "both tables; needs pip install 'lighthubert-s3prl[onnx]'")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-peer subprocess memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small only, 2 utterances of 1-2 s, 1 run, no warm-up, no extra dtypes")
    parser.add_argument("--json", default="benchmark_upstream.json", help="where to write the results (atomically)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--timer", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0
    if args.timer is not None:
        timer_main(json.loads(args.timer))
        return 0
    if args.quick:
        args.subnets, args.batch, args.min_seconds, args.max_seconds = "small", 2, 1.0, 2.0
        args.repeats, args.warmup, args.extra_dtypes = 1, 0, ""
    from lighthubert_s3prl.io_utils import atomic_write_text
    from lighthubert_s3prl.model.config import ConfigError, get_preset

    subnets = [s.strip() for s in args.subnets.split(",") if s.strip()]
    errors = []
    for s in subnets:
        try:
            get_preset(s)
        except ConfigError as err:
            errors.append(str(err))
    extra = [d.strip() for d in args.extra_dtypes.split(",") if d.strip()]
    errors += [f"--extra-dtypes: {d!r} is not one of bfloat16, float16" for d in extra if d not in ("bfloat16", "float16")]
    if args.device == "cuda" and not torch.cuda.is_available():
        errors.append("--device cuda was asked for but no CUDA GPU is available")
    if args.onnx:
        errors += onnx_argument_errors(args.device)
    levels: List[int] = []
    if args.contention is not None:
        try:
            levels = [int(x) for x in args.contention.split(",") if x.strip()]
        except ValueError:
            levels = [-1]
        if not levels or min(levels) < 0:
            errors.append(f"--contention {args.contention!r}: give busy-process counts, e.g. 0,1,2")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        errors.append("--batch, --repeats and --threads must be at least 1 and --warmup at least 0")
    if not 0 < args.min_seconds <= args.max_seconds:
        errors.append("need 0 < --min-seconds <= --max-seconds")
    if args.checkpoint_dir and not Path(args.checkpoint_dir).is_dir():
        errors.append(f"--checkpoint-dir {args.checkpoint_dir} is not a folder")
    if errors:
        for e in errors:
            print(f"benchmark_upstream: error: {e}", file=sys.stderr)
        return 2

    threads = choose_threads(1, args.threads)
    args.threads = threads.threads
    torch.set_num_threads(args.threads)
    peers = list(PEERS) + [f"compact-{d}" for d in extra] + (["onnx"] if args.onnx else [])
    wavs = [w.to(args.device) for w in make_batch(args.batch, args.min_seconds, args.max_seconds, args.seed)]
    audio_s = sum(len(w) for w in wavs) / SAMPLE_RATE
    import s3prl

    meta: Dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "device": args.device, "threads": args.threads, "cpu": hardware.cpu_model_name(), "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": hardware.cpu_has_native_bf16(),
        "cpu_flags": sorted(f for f in hardware.cpu_flags() if f.startswith(("avx", "amx", "fma", "bf16"))),
        "torch": torch.__version__, "s3prl": getattr(s3prl, "__version__", "?"), "python": platform.python_version(),
        "batch_seconds": [round(len(w) / SAMPLE_RATE, 3) for w in wavs], "audio_seconds": audio_s,
        "padded_seconds": len(wavs) * max(len(w) for w in wavs) / SAMPLE_RATE,
        "repeats": args.repeats, "warmup": args.warmup, "schedule": args.schedule, "seed": args.seed,
        "load_average_start": _load_average(),
    }
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    print(f"cpu: {hardware.describe_cpu()}", flush=True)
    print(f"threads: {threads.reason}", flush=True)
    for dtype in extra:
        reason = hardware.slow_dtype_reason(getattr(torch, dtype), args.device)
        if reason:
            print(f"note: compact {dtype} is emulated on this machine, so its row measures a slowdown: {reason}",
                  flush=True)
    print(f"batch: {len(wavs)} utterances, {audio_s:.1f} s of audio ({meta['padded_seconds']:.1f} s padded), "
          f"{args.threads} threads on {args.device}; load average {meta['load_average_start']}", flush=True)

    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="lighthubert_bench_")
        workdir = Path(tmp)
    try:
        if levels:
            results = {name: bench_contention(name, args, workdir, wavs, levels) for name in subnets}
        else:
            results = {name: bench_subnet(name, args, workdir, wavs, peers) for name in subnets}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["load_average_end"] = _load_average()
    if levels:
        print()
        print_contention(results)
        targets = check_contention_targets(results)
        print("\ntargets (CPU under contention):")
        for name, t in targets.items():
            value = f"{t['value']:.2f}x" if "s3prl" in name else f"{t['value']:.0%}"
            print(f"  {'met    ' if t['met'] else 'MISSED '} {name}: {value}")
        atomic_write_text(args.json, json.dumps({"meta": meta, "contention": results, "targets": targets}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
        return 0
    print()
    print_table(results, audio_s)
    targets = check_targets(results)
    if targets:
        print("\ntargets (small subnet, CPU targets of the issue):")
        for name, t in targets.items():
            value = f"{t['value']:.2f}x" if "speedup" in name else f"{t['value']:.0%}"
            print(f"  {'met    ' if t['met'] else 'MISSED '} {name}: {value}")
    payload = {"meta": meta, "results": results, "targets": targets}
    atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
