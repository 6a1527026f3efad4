"""`pmtiqa-data`: look at a dataset before training on it, and build the built-in one.

    pmtiqa-data inspect --dataset livec --root /data/ChallengeDB_release [--json]
    pmtiqa-data make-builtin --out ~/data/builtin [--seed 0] [--force]

Thin over `datasets.py` and `builtin.py`, which are imported inside the commands so
`--help` stays instant (and torch-free).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

# Mirrors datasets.DATASETS (a test holds them equal); listed here so --help imports nothing.
DATASET_NAMES = ("builtin", "csv", "livec", "koniq", "kadid", "bid", "live", "csiq", "spaq")
MISSING_SHOWN = 10


@click.group(name="pmtiqa-data", context_settings={"help_option_names": ["-h", "--help"]})
def data_command() -> None:
    """Inspect IQA datasets and build the built-in offline dataset."""


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--option")
        options[key] = value
    return options


@data_command.command()
@click.option("--dataset", "name", required=True, type=click.Choice(DATASET_NAMES),
              help="Which reader: a public dataset in its shipped layout, csv (a manifest) or builtin.")
@click.option("--root", required=True, type=click.Path(path_type=Path),
              help="The folder the dataset was unpacked into (for csv: the CSV file or its folder).")
@click.option("--option", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A reader option, e.g. score_column=MOS_zscore or image_dir=512x384 for koniq.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(name: str, root: Path, pairs: tuple[str, ...], as_json: bool) -> None:
    """Read a dataset's index and summarise it; exit 1 if files it names are missing."""
    from pmtiqa_deploy.errors import DatasetError
    from pmtiqa_deploy.train.datasets import inspect_dataset, load_dataset

    try:
        summary = inspect_dataset(load_dataset(name, root, **_options(pairs)))
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(summary, indent=2) if as_json else _table(summary))
    missing = summary["missing"]
    if missing:
        click.echo(f"{len(missing)} of {summary['count']} image(s) named in the index are not on disk, "
                   f"e.g. {missing[0]}; unpack the complete dataset under {summary['root']}", err=True)
        raise SystemExit(1)


def _table(s: dict) -> str:
    """The summary as aligned `field  value` lines."""
    direction = "higher is better" if s["higher_is_better"] else "lower is better"
    resize = f"fixed {s['width']}x{s['height']}" if s["resize"] == "fixed" else s["resize"]
    references = "each image is its own" if s["references"] is None else str(s["references"])
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items()) if s["splits"] else "none shipped"
    lines = [
        ("dataset", s["name"]),
        ("root", s["root"]),
        ("images", str(s["count"])),
        ("references", references),
        ("scores", f"{s['score_min']:g}..{s['score_max']:g} {s['units']}, {direction}"),
        ("data range", f"{s['data_min']:g}..{s['data_max']:g}"),
        ("per level", " ".join(str(n) for n in s["levels"])),
        ("resize", resize),
        ("official split", splits),
        ("missing", str(len(s["missing"]))),
    ]
    lines += [("", path) for path in s["missing"][:MISSING_SHOWN]]
    if len(s["missing"]) > MISSING_SHOWN:
        lines.append(("", f"... and {len(s['missing']) - MISSING_SHOWN} more"))
    return "\n".join(f"{key:<15} {value}".rstrip() for key, value in lines)


@data_command.command("make-builtin")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to build the built-in dataset into.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random distortions (noise, impulse noise, motion-blur direction).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete build is already there.")
def make_builtin(out_dir: Path, seed: int, force: bool) -> None:
    """Build the built-in dataset (offline, seconds) as a CSV manifest folder."""
    from pmtiqa_deploy.errors import DatasetError
    from pmtiqa_deploy.train.builtin import make_builtin as build
    from pmtiqa_deploy.train.datasets import inspect_dataset, load_dataset

    try:
        root = build(out_dir, seed=seed, force=force)
        summary = inspect_dataset(load_dataset("builtin", root))
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"built-in dataset in {root}: {summary['count']} images of {summary['references']} "
               f"sources, {summary['score_min']:g}..{summary['score_max']:g} {summary['units']}")


if __name__ == "__main__":
    data_command()
