"""The ``prunelab`` command: the report tables (``sweep`` is ``report sparsity``), export and the lab,
for scripts and CI."""

from __future__ import annotations

import argparse
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


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.05; got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.05; got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_source_flags(parser, demos, default_demo: str) -> None:
    """--demo, or --model/--weights/--data/--train-data: where the model and data come from."""
    parser.add_argument("--demo", choices=demos, help=f"built-in demo (default: {default_demo}, unless --model)")
    parser.add_argument("--model", metavar="MODULE:ATTR",
                        help="your model: an nn.Module attribute or a function returning one, e.g. mypkg.models:build")
    parser.add_argument("--weights", metavar="FILE", help="a .safetensors state to load into --model")
    parser.add_argument("--data", metavar="MODULE:ATTR",
                        help="validation data for --model (a DataLoader, Dataset or (inputs, targets), or a "
                             "function returning it), e.g. mypkg.data:val")
    parser.add_argument("--train-data", metavar="MODULE:ATTR", help="training data for --model (fine-tuning)")
    parser.set_defaults(default_demo=default_demo)


def _pruner_from(args, command: str):
    """The Pruner the flags name (a demo, or --model with --data), or SystemExit with one line."""
    from . import demos
    from .cli_paths import PathError, load_data, load_model
    from .pruner import Pruner

    if args.model is None:
        for flag in ("weights", "data", "train_data"):
            if getattr(args, flag) is not None:
                raise SystemExit(f"prunelab {command}: --{flag.replace('_', '-')} goes with --model MODULE:ATTR.")
        d = demos.load(args.demo or args.default_demo)
        return Pruner(d.model, d.val, train_data=d.train)
    if args.demo is not None:
        raise SystemExit(f"prunelab {command}: give --demo or --model, not both.")
    if args.data is None:
        raise SystemExit(f"prunelab {command}: --model needs --data MODULE:ATTR (the validation data to measure on).")
    try:
        model = load_model(args.model, args.weights)
        val = load_data(args.data)
        train = load_data(args.train_data, "--train-data") if args.train_data else None
        return Pruner(model, val, train_data=train)
    except PathError as e:
        raise SystemExit(f"prunelab {command}: {e}") from None
    except (ValueError, TypeError) as e:  # the Pruner's checks of the model against the data
        raise SystemExit(f"prunelab {command}: {str(e).splitlines()[0]}") from None


# which report options each flag sets (the option's name in prunelab.reports), per kind
_SINGLE_SPARSITY = ("timing", "compare")


def _report_options(args, kind: str) -> dict:
    from .reports import options_of

    given = {"sparsity": args.sparsity, "criterion": args.criterion, "criteria": args.criteria,
             "granularity": args.granularity, "thresholds": args.thresholds, "target": args.target,
             "steps": args.steps, "epochs": args.epochs, "compare": args.compare}
    known = options_of(kind)
    options = {}
    for flag, value in given.items():
        if value is None:
            continue
        name = {"sparsity": "sparsity" if kind in _SINGLE_SPARSITY else "sparsities", "compare": "models"}.get(flag, flag)
        if name not in known:
            raise SystemExit(f"prunelab report {kind}: --{flag} does not apply to this report (its options: "
                             f"{', '.join(known) or 'none'}).")
        if name == "sparsity":
            if len(value) != 1:
                raise SystemExit(f"prunelab report {kind}: --sparsity takes one fraction here, got {len(value)}.")
            value = value[0]
        if name == "models":
            value = {entry: _compared(entry) for entry in value}
        options[name] = value
    return options


def _compared(entry: str):
    """A --compare entry: a .safetensors state, or MODULE:ATTR naming a model."""
    from .cli_paths import PathError, load_model

    if ":" in entry and not entry.endswith(".safetensors"):
        try:
            return load_model(entry)
        except PathError as e:
            raise SystemExit(f"prunelab report compare: {str(e).replace('--model', '--compare', 1)}") from None
    return entry


def format_table(table, fmt: str) -> str:
    """The table as markdown (without its title: a table to paste), JSON rows or CSV."""
    if fmt == "json":
        return json.dumps(table.rows, indent=2)
    if fmt == "csv":
        return table.to_csv().rstrip("\n")
    return table.to_markdown(title=False)


def report_command(args, kind: str, command: str = "report") -> int:
    """Run ``prunelab report KIND`` (and ``prunelab sweep``); returns the exit status."""
    from .retrain import Cancelled

    options = _report_options(args, kind)
    odd = [v for v in options.get("sparsities", ()) if v not in (0, 0.5)]
    if options.get("granularity") == "2:4" and odd:
        raise SystemExit(f"prunelab {command}: 2:4 sparsity is always 0.5 (or 0), got {odd[0]}: pass --sparsity 0.5 "
                         "(or 0,0.5), or choose another --granularity.")
    pruner = _pruner_from(args, command)
    try:
        table = pruner.report(kind, **options)
    except (ValueError, TypeError, OSError, ImportError, Cancelled) as e:
        raise SystemExit(f"prunelab {command}: {str(e).splitlines()[0]}") from None
    print(format_table(table, args.format))
    return 0


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
    _add_source_flags(sweep, NAMES, "digits-mlp")
    sweep.add_argument("--sparsity", type=_fractions, default=[0, 0.5, 0.8, 0.9, 0.95],
                       help="comma-separated fractions to prune, e.g. 0,0.5,0.9")
    sweep.add_argument("--criterion", default="magnitude", choices=sorted(CRITERIA))
    sweep.add_argument("--granularity", default="unstructured", choices=GRANULARITIES)
    sweep.add_argument("--format", default="markdown", choices=("markdown", "json", "csv"))
    sweep.set_defaults(criteria=None, thresholds=None, target=None, steps=None, epochs=None, compare=None)

    sub.add_parser("lab", help="open JupyterLab on the quickstart notebook")
    _add_report_parser(sub, NAMES, CRITERIA, GRANULARITIES)
    _add_export_parser(sub, NAMES, CRITERIA, GRANULARITIES)
    return parser


def _add_report_parser(sub, demos, criteria, granularities):
    from .reports import DESCRIPTIONS, KINDS

    report = sub.add_parser(
        "report", help="measure one of the tables people publish about pruning",
        description="Measure a table on a demo or on your own model (--model mypkg.models:build --data "
                    "mypkg.data:val). Kinds: " + "; ".join(f"{k}: {DESCRIPTIONS[k]}" for k in KINDS) + ".")
    report.add_argument("kind", choices=KINDS, help="which table")
    _add_source_flags(report, demos, "digits-mlp")
    report.add_argument("--sparsity", type=_fractions, help="fractions to prune, e.g. 0,0.5,0.9 (one for timing, compare)")
    report.add_argument("--criterion", choices=sorted(criteria), help="how weights are ranked (default magnitude)")
    report.add_argument("--criteria", type=_names, help="for 'criteria': comma-separated, e.g. magnitude,random")
    report.add_argument("--granularity", choices=granularities, help="default unstructured")
    report.add_argument("--thresholds", type=_numbers, help="for 'thresholds': |w| values, e.g. 0.01,0.05")
    report.add_argument("--target", type=float, help="for 'iterations': run iterate() to this sparsity on a copy")
    report.add_argument("--steps", type=int, help="for 'iterations': steps of that run")
    report.add_argument("--epochs", type=int, help="for 'timing': fine-tuning epochs timed (0 skips)")
    report.add_argument("--compare", action="append", metavar="STATE",
                        help="for 'compare': a .safetensors state or MODULE:ATTR model (repeat the flag)")
    report.add_argument("--format", default="markdown", choices=("markdown", "json", "csv"))


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
    if args.command == "sweep":  # the short name of `report sparsity`
        return report_command(args, "sparsity", "sweep")
    if args.command == "report":
        return report_command(args, args.kind)
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
