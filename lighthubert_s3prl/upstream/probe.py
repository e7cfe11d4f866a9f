"""How many hidden states an s3prl upstream gives, asked the way s3prl's runner builds it.

SUPERB's QbE runs DTW on every hidden state layer by layer (``-l 0 .. L-1``), so the batch runner must know
L before it starts; for our entries it follows from the subnet, for any other upstream only from running it.
This module builds the upstream through the same hub (our entries registered) and prints one JSON line::

    python -m lighthubert_s3prl.upstream.probe -u lighthubert_local -k ckpt.pt [-g subnet.yaml]
    {"hidden_states": 13, "dim": 384, "downsample_rate": 320}
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

PREFIX = "upstream probe: "


def probe(upstream: str, ckpt: Optional[str] = None, model_config: Optional[str] = None) -> Dict[str, int]:
    """``{"hidden_states", "dim", "downsample_rate"}`` of ``upstream`` on one second of noise."""
    import torch

    from .run_downstream import prepare_hub

    prepare_hub()
    import s3prl.hub as hub

    if not hasattr(hub, upstream):
        raise SystemExit(f"unknown upstream {upstream!r}: s3prl's hub has no such entry")
    model = getattr(hub, upstream)(ckpt=ckpt, model_config=model_config, refresh=False).eval()
    with torch.no_grad():
        states = model([torch.randn(16000)])["hidden_states"]
    states = [states] if torch.is_tensor(states) else list(states)
    return {"hidden_states": len(states), "dim": int(states[-1].shape[-1]),
            "downsample_rate": int(model.get_downsample_rates("hidden_states"))}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lighthubert_s3prl.upstream.probe", description=__doc__.split("\n")[0])
    parser.add_argument("-u", "--upstream", required=True)
    parser.add_argument("-k", "--upstream_ckpt", default=None)
    parser.add_argument("-g", "--upstream_model_config", default=None)
    args = parser.parse_args(argv)
    found = probe(args.upstream, args.upstream_ckpt, args.upstream_model_config)
    print(PREFIX + json.dumps(found, sort_keys=True), flush=True)
    return 0


def parse_probe_output(text: str) -> Optional[Dict[str, int]]:
    """The probe's answer in a process's output, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return None


if __name__ == "__main__":
    sys.exit(main())
