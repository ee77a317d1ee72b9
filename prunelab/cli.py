"""The ``prunelab`` command: headless sweeps and the lab, for scripts and CI."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from ._version import __version__
from .core.checks import check_fraction


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0,0.5,0.9; got {text!r}")
    try:
        if not values:
            raise ValueError("no sparsity given")
        return [check_fraction(v) for v in values]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsities must be fractions in [0, 1], e.g. 0,0.5,0.9; got {text!r}") from None


def sweep_rows(demo: str, sparsities: list[float], criterion: str, granularity: str) -> list[dict]:
    """Prune the demo to each sparsity (one-shot, global) and measure it."""
    from . import demos
    from .pruner import Pruner

    d = demos.load(demo)
    pruner = Pruner(d.model, d.val, train_data=d.train)
    rows = []
    for s in sparsities:
        if granularity == "2:4" and s not in (0, 0.5):
            raise SystemExit(f"prunelab sweep: 2:4 sparsity is always 0.5 (or 0), got {s}: pass --sparsity 0.5 (or "
                             "0,0.5), or choose another --granularity.")
        pruner.reset()
        if s:
            pruner.prune(s, criterion=criterion, granularity=granularity)
        m = pruner.evaluate()
        rows.append({
            "sparsity": s, "accuracy": m.accuracy, "params": m.params, "nonzero_params": m.nonzero_params,
            "dense_mb": m.dense_bytes / 1e6, "sparse_mb": m.sparse_bytes / 1e6,
            "compression": m.compression_ratio, "flops": m.flops, "nonzero_flops": m.nonzero_flops,
            "samples": m.samples,
        })
    return rows


def format_rows(rows: list[dict], fmt: str, *, granularity: str = "unstructured") -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    pruned = "Units pruned" if granularity == "structured" else "Pruned"
    lines = [f"| {pruned} | Accuracy | Parameters | Nonzero | Memory (sparse) | Compression |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sparsity']:.0%} | {r['accuracy']:.1%} | {r['params'] / 1e6:.2f}M | "
                     f"{r['nonzero_params'] / 1e6:.2f}M | {r['sparse_mb']:.2f} MB | {r['compression']:.1f}x |")
    lines.append(f"\nMeasured on {rows[0]['samples']} validation samples; memory stores masked weights as a "
                 "bitmask plus nonzero fp32 values.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .core.criteria import CRITERIA
    from .demos import NAMES
    from .core.checks import GRANULARITIES

    parser = argparse.ArgumentParser(
        prog="prunelab",
        description="Explore neural-network pruning. In JupyterLab: `import prunelab as pl; pl.explore('digits-mlp')`.",
    )
    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sweep = sub.add_parser("sweep", help="prune a demo to several sparsities and print the results table",
                           description="One-shot global pruning of a demo model at each sparsity, measured on "
                                       "its validation data. Prints the table people publish about pruning.")
    sweep.add_argument("--demo", default="digits-mlp", choices=NAMES, help="built-in demo (default: digits-mlp)")
    sweep.add_argument("--sparsity", type=_fractions, default=[0, 0.5, 0.8, 0.9, 0.95],
                       help="comma-separated fractions to prune, e.g. 0,0.5,0.9")
    sweep.add_argument("--criterion", default="magnitude", choices=sorted(CRITERIA))
    sweep.add_argument("--granularity", default="unstructured", choices=GRANULARITIES)
    sweep.add_argument("--format", default="markdown", choices=("markdown", "json", "csv"))

    sub.add_parser("lab", help="open JupyterLab on the quickstart notebook")
    _add_export_parser(sub, NAMES, CRITERIA, GRANULARITIES)
    return parser


def _add_export_parser(sub, demos, criteria, granularities):
    from .export import FORMATS

    export = sub.add_parser(
        "export", help="prune a demo (or replay a recipe) and export it",
        description="Prune a built-in demo one-shot (or replay a recipe on it) and write it in one format, or "
                    "with --format all every format into a folder with a table of real file sizes and measured "
                    "dense vs structured latency.")
    export.add_argument("--demo", default="digits-cnn", choices=demos, help="built-in demo (default: digits-cnn)")
    export.add_argument("--sparsity", type=float, default=0.5, help="fraction to prune (default 0.5)")
    export.add_argument("--criterion", default="magnitude", choices=sorted(criteria))
    export.add_argument("--granularity", default="structured", choices=granularities)
    export.add_argument("--scope", default="layer", choices=("global", "layer"),
                        help="rank all layers together or each on its own (default: layer)")
    export.add_argument("--recipe", help="replay this recipe JSON instead of --sparsity/--criterion/--granularity")
    export.add_argument("--format", default="sparse", choices=FORMATS + ("all",))
    export.add_argument("--out", required=True,
                        help="file to write (for 'structured': the name of its .safetensors and .pt2), or the "
                             "folder for --format all")


def export_command(args) -> int:
    """Run ``prunelab export``; returns the exit status."""
    from pathlib import Path

    from . import demos
    from .pruner import Pruner, apply_recipe
    from .export import compare_formats, export

    try:
        check_fraction(args.sparsity, "--sparsity")
    except ValueError as e:
        raise SystemExit(f"prunelab export: {e}") from None
    d = demos.load(args.demo)
    try:
        if args.recipe:
            pruner = apply_recipe(d.model, args.recipe, d.val, train_data=d.train)
        else:
            pruner = Pruner(d.model, d.val, train_data=d.train)
            if args.sparsity:
                pruner.prune(args.sparsity, criterion=args.criterion, granularity=args.granularity,
                             scope=args.scope)
        print(f"{args.demo}: {pruner.evaluate()}")
        if args.format == "all":
            folder = Path(args.out)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise type(e)(e.errno, f"could not create the folder {folder} ({e.strerror or e}): choose an --out "
                                       "folder you can write to.") from None
            report = compare_formats(pruner, directory=folder)
            print(report.table())
            print()
            print(report.sentence())
            print(f"\nFiles in {folder}/")
        else:
            done = export(pruner, args.out, args.format)
            print(f"wrote {done}")
            for key, value in done.details.items():
                print(f"  {key}: {value}")
    except (OSError, ValueError, ImportError) as e:
        print(one_line(f"prunelab export: {explain(e)}"), file=sys.stderr)
        return 1
    return 0


def one_line(text: str) -> str:
    """``text`` on one line (newlines and runs of spaces folded), as the CLI prints every error."""
    return " ".join(text.split())


def explain(error: BaseException) -> str:
    """What the CLI says about ``error``: prunelab's own message (it says what to do), an OS error
    with its path and what to check, or, for anything else, that it is a bug to report."""
    if isinstance(error, OSError) and error.strerror:
        if error.filename is None:  # prunelab's own: the message is the whole story, no "[Errno n]"
            return error.strerror
        return (f"{error.strerror}: {error.filename}. Check that the path exists and that you may write there, "
                "or choose another one.")
    if isinstance(error, (OSError, ValueError, ImportError)):
        return str(error)
    if isinstance(error, RecursionError):
        return "an input is nested too deeply to read; check the files you passed."
    return (f"unexpected {type(error).__name__}: {error}. This is a bug in prunelab: please report it with the "
            "command you ran (python -m prunelab ... with PRUNELAB_TRACEBACK=1 shows where it happened).")


def main(argv: list[str] | None = None) -> int:
    """The ``prunelab`` command. Never a traceback: any error is one line on stderr saying what
    to do, and a non-zero exit status (1; 130 when interrupted; 2 for usage errors).

    Example:
        >>> main(["sweep", "--sparsity", "0,0.5"])
        0
    """
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:
        print(f"prunelab {args.command}: interrupted; no export was left half-written.", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("PRUNELAB_TRACEBACK"):
            raise
        print(one_line(f"prunelab {args.command or ''}: {explain(e)}"), file=sys.stderr)
        return 1


def _run(parser, args) -> int:
    if args.command == "sweep":
        rows = sweep_rows(args.demo, args.sparsity, args.criterion, args.granularity)
        print(format_rows(rows, args.format, granularity=args.granularity))
        return 0
    if args.command == "export":
        return export_command(args)
    if args.command == "lab":
        from pathlib import Path
        import subprocess

        notebook = Path.cwd() / "notebooks" / "01-quickstart.ipynb"
        import os

        cmd = [sys.executable, "-m", "jupyter", "lab"] + ([str(notebook)] if notebook.exists() else [])
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # as root (containers) it refuses to start otherwise
            cmd.append("--allow-root")
        return subprocess.call(cmd)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
