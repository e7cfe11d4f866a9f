"""Summarise mutmut's results per module: killed, survived, untested, the score, and every survivor.

Run from the repository root after ``mutmut run`` (scripts/mutation.sh does). Arguments are the same
name patterns the run was limited to; mutants outside them are left out. The score counts a mutant as
caught when a test failed or timed out on it; a mutant no selected test reaches ("no tests") counts as
missed, like a survivor.
"""
from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

CAUGHT = ("killed", "timeout", "caught by type check")
MISSED = ("survived", "no tests", "suspicious", "segfault")


def read_results(mutmut: Path) -> List[Tuple[str, str]]:
    out = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    pairs = []
    for line in out.splitlines():
        match = re.match(r"^\s+(\S+): (.+)$", line)
        if match:
            pairs.append((match.group(1), match.group(2).strip()))
    return pairs


def module_of(name: str) -> str:
    """``pkg.mod.x_func__mutmut_3`` and ``pkg.mod.xǁClassǁmethod__mutmut_3`` -> ``pkg.mod``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def summarise(pairs: Sequence[Tuple[str, str]], patterns: Sequence[str]) -> str:
    if patterns:
        pairs = [(n, s) for n, s in pairs if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    by_module: Dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in pairs:
        by_module[module_of(name)][status] += 1
        if status in MISSED:
            survivors.append(f"  {status:<10} {name}")
    lines = [f"{'module':<42} {'caught':>7} {'missed':>7} {'unrun':>6} {'score':>7}"]
    total_caught = total_missed = 0
    for module in sorted(by_module):
        counts = by_module[module]
        caught = sum(counts[s] for s in CAUGHT)
        missed = sum(counts[s] for s in MISSED)
        unrun = sum(counts.values()) - caught - missed
        total_caught, total_missed = total_caught + caught, total_missed + missed
        score = f"{caught / (caught + missed):.1%}" if caught + missed else "-"
        lines.append(f"{module:<42} {caught:>7} {missed:>7} {unrun:>6} {score:>7}")
    checked = total_caught + total_missed
    lines.append(f"{'all':<42} {total_caught:>7} {total_missed:>7} {'':>6} "
                 f"{(f'{total_caught / checked:.1%}' if checked else '-'):>7}")
    lines += ["", f"missed mutants ({len(survivors)}; `.venv/bin/mutmut show NAME` prints one's diff):"] + survivors
    return "\n".join(lines)


def forget_missed(patterns: Sequence[str], root: Path = Path("mutants")) -> int:
    """Clear mutmut's verdict for every missed mutant matching ``patterns``, so the next run judges it again."""
    import json

    missed_codes = {0, 5, 33, 35}  # survived, no tests (two codes), suspicious
    forgotten = 0
    for meta in root.rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        names = [n for n, code in codes.items()
                 if code in missed_codes and (not patterns or any(fnmatch.fnmatchcase(n, p) for p in patterns))]
        for name in names:
            codes[name] = None
        if names:
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(meta)
            forgotten += len(names)
    return forgotten


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--forget-missed":
        print(f"[mutation] {forget_missed(argv[1:])} missed mutants will be judged again")
        return 0
    mutmut = Path(sys.executable).with_name("mutmut")
    print(summarise(read_results(mutmut), argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
