"""Sweep: zfnet's commands on every CNN a user may bring, random init, as a user runs them.

Each model goes through the command line (`zfnet project` on one photo by default, or any of
`--commands`), one process per run, and each run is reported as passed, or failed with the
last line it printed: `Error: …` is a clean refusal (a transformer has no convolution to
show), anything else (a traceback) is a bug. The models: every torchvision classification model
(`--torchvision all`, the largest ViTs and RegNets left out by default), timm's (`--timm`
names, or `families`: the shortest name of each family, transformers included), and Hugging
Face transformers' image classifiers (`--hf all`, or model types such as `resnet,convnext`):
each type's default config at random init, saved with `save_pretrained` and given as `hf:DIR`
(no image processor: ImageNet's at 256/224; above `--hf-max` parameters left out).

    PYTHONPATH=src python bench/any_model_sweep.py --torchvision all --out sweep.json
    PYTHONPATH=src python bench/any_model_sweep.py --timm families --out sweep-timm.json
    PYTHONPATH=src python bench/any_model_sweep.py --hf all --out sweep-hf.json
    PYTHONPATH=src python bench/any_model_sweep.py --torchvision resnet18,convnext_tiny \
        --commands project,topk,occlusion,invariance,randomization,filters,predict

The photos are skimage's (`astronaut`, `coffee`, `chelsea`, …), 224 px as the weights' own
preprocessing gives them; `--nonlinear gradient` where a command takes it, so that networks
with GELU or SiLU are shown too. Prints one line per run and a summary; exit 1 if a run failed
with anything but a clean `Error:` line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the largest torchvision models (0.6-2 G parameters at 224 px): minutes each on 2 cores
HUGE = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf"}

COMMANDS = {
    "project": ["project", "{photo}", "--top", "2", "--nonlinear", "gradient"],
    "topk": ["visualize", "topk", "--data", "images:{photos}", "--k", "3",
             "--nonlinear", "gradient"],
    "occlusion": ["analyze", "occlusion", "--data", "images:{photos}", "--images", "1",
                  "--stride", "32", "--nonlinear", "gradient"],
    "invariance": ["analyze", "invariance", "--data", "images:{photos}"],
    "randomization": ["analyze", "randomization", "--data", "images:{photos}", "--images", "2",
                      "--nonlinear", "gradient"],
    "filters": ["analyze", "filters", "--data", "images:{photos}"],
    "predict": ["predict", "{photos}", "--ten-crop", "--out", "{out}/predictions.csv"],
}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photos(folder: Path) -> Path:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.jpg")
    return folder


def _torchvision(spec: str) -> list[str]:
    if spec == "all":  # (torchvision imported for its list alone: 3 s of the sweep's own)
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        return [f"torchvision:{n}" for n in names if n not in HUGE]
    return [f"torchvision:{n}" for n in spec.split(",") if n]


def _timm(spec: str) -> list[str]:
    if spec == "families":
        import timm

        families: dict[str, list[str]] = {}
        for name in timm.list_models():
            families.setdefault(re.split(r"[_\d]", name)[0], []).append(name)
        return [f"timm:{min(v, key=len)}" for v in families.values()]
    return [f"timm:{n}" for n in spec.split(",") if n]


def _hf(spec: str, folder: Path, max_params: float) -> tuple[list[str], list[dict]]:
    """`hf:DIR` of each transformers model type with an image classifier (`all`, or types),
    built from its default config at random init into `folder`; the types that cannot be
    built (a library missing, a config that needs more) as runs "not built", those larger than
    `max_params` as "left out"."""
    if not spec:
        return [], []
    import torch
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    types = sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES) if spec == "all" else \
        [t for t in spec.split(",") if t]
    models, skipped = [], []
    for t in types:
        try:
            cfg = CONFIG_MAPPING[t]()
            cfg.num_labels = 10
            head = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[t]  # a name, or names (DeiT's)
            cfg.architectures = [head if isinstance(head, str) else head[0]]
            torch.manual_seed(0)
            model = AutoModelForImageClassification.from_config(cfg)
        except Exception as e:  # a library missing (natten), a config that needs more
            skipped.append({"model": f"hf:{t}", "command": "build", "status": "not built",
                            "seconds": 0.0,
                            "message": f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]})
            continue
        n = sum(p.numel() for p in model.parameters())
        if n > max_params:
            skipped.append({"model": f"hf:{t}", "command": "build", "status": "left out",
                            "seconds": 0.0, "message": f"{n / 1e6:.0f} M parameters (--hf-max)"})
            continue
        model.save_pretrained(folder / t)
        models.append(f"hf:{t}")  # a folder of that name where the runs start (`folder`)
    return models, skipped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torchvision", default="", help="all, or names, comma-separated")
    ap.add_argument("--timm", default="", help="families, or names, comma-separated")
    ap.add_argument("--hf", default="", help="all, or transformers model types, comma-separated")
    ap.add_argument("--hf-max", type=float, default=150e6,
                    help="--hf: leave out models of more parameters than this")
    ap.add_argument("--skip", default="", help="models to leave out, comma-separated")
    ap.add_argument("--commands", default="project", help=",".join(COMMANDS))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--out", type=Path, help="JSON of every run")
    args = ap.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        ap.error(f"unknown command(s) {', '.join(unknown)}; valid: {', '.join(COMMANDS)}")
    skip = set(args.skip.split(","))
    models = [m for m in _torchvision(args.torchvision) + _timm(args.timm)
              if m.split(":", 1)[1] not in skip]
    if not models and not args.hf:
        ap.error("no models: give --torchvision, --timm and/or --hf")
    zfnet = [sys.executable, "-m", "zfnet.cli"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, runs = _hf(args.hf, Path(tmp) / "hf", args.hf_max)
        for run in runs:
            print(f"{run['model']:40s} {run['command']:14s} {run['status']:8s} "
                  f"{run['message']}", flush=True)
        models += hf
        photos = _photos(Path(tmp) / "photos")
        fill = {"photo": str(photos / "chelsea.jpg"), "photos": str(photos)}
        for model in models:
            out = Path(tmp) / model.replace(":", "_")
            for command in commands:
                argv = [a.format(**fill, out=out) for a in COMMANDS[command]]
                if "--out" not in argv:  # a report directory
                    argv += ["--out", str(out)]
                t0 = time.perf_counter()
                try:
                    p = subprocess.run([*zfnet, *argv, "--model", model],
                                       capture_output=True, text=True, timeout=args.timeout,
                                       cwd=Path(tmp) / "hf" if model in hf else None)
                    rc, last = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
                except subprocess.TimeoutExpired:
                    rc, last = -1, f"timed out after {args.timeout} s"
                status = "passed" if rc == 0 else "refused" if last.startswith("Error:") \
                    else "FAILED"
                run = {"model": model, "command": command, "status": status,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "message": "" if rc == 0 else last[:500]}
                runs.append(run)
                print(f"{model:40s} {command:14s} {status:8s} {run['seconds']:6.1f} s "
                      f"{run['message']}", flush=True)
    counts = {s: sum(r["status"] == s for r in runs) for s in ("passed", "refused", "FAILED")}
    print(f"{len(runs)} runs of {len(models)} models: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "counts": counts}, indent=1) + "\n")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
