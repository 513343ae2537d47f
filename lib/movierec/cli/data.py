"""``movierec data fetch|prepare|synth|info``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from movierec import storage
from movierec.data.prepare import PrepareConfig, load_card, prepare
from movierec.data.sources import RELEASES, resolve_source
from movierec.data.synth import SynthConfig, write_synthetic

DATASETS = [*RELEASES, "canonical"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group."""
    group = sub.add_parser("data", help="fetch, prepare and inspect datasets",
                           description="Fetch MovieLens, prepare sequences and splits.")
    cmds = group.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    fetch = cmds.add_parser("fetch", help="download (or locate) a release and verify it",
                            description="Download a MovieLens release into the cache "
                            "(MOVIEREC_HOME) and verify its checksum. Releases: "
                            + ", ".join(f"{k} ({v.description})" for k, v in RELEASES.items()))
    fetch.add_argument("dataset", choices=list(RELEASES))
    fetch.add_argument("--source", type=Path, help="use this zip or folder instead")
    fetch.set_defaults(run=run_fetch)

    prep = cmds.add_parser("prepare", help="validate, sequence and split a dataset",
                           description="Validate, filter, order, remap and split a dataset "
                           "into a versioned folder with a dataset card (dataset.json).")
    prep.add_argument("--dataset", required=True, choices=DATASETS)
    prep.add_argument("--source",
                      help="official zip, its folder, RecBole atomic files or canonical folder "
                      "(a canonical folder may be s3://BUCKET/PREFIX)")
    prep.add_argument("--out", required=True,
                      help="output folder, or s3://BUCKET/PREFIX (prepared locally, then "
                      "uploaded with a _COMPLETE manifest)")
    prep.add_argument("--min-rating", type=float, help="keep ratings >= X (implicit feedback)")
    prep.add_argument("--min-user", type=int, default=0, help="k-core: interactions per user")
    prep.add_argument("--min-item", type=int, default=0, help="k-core: interactions per item")
    mode = prep.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="strict", action="store_true", default=True,
                      help="fail on the first bad row, naming file and line (default)")
    mode.add_argument("--lenient", dest="strict", action="store_false",
                      help="drop bad rows and report how many per rule")
    prep.add_argument("--json", action="store_true", help="print the card as JSON")
    prep.set_defaults(run=run_prepare)

    synth = cmds.add_parser("synth", help="write a synthetic MovieLens-shaped dataset",
                            description="Write a synthetic dataset in the canonical layout "
                            "(Zipf popularity, taste clusters) for scale tests.")
    synth.add_argument("--interactions", type=int, required=True)
    synth.add_argument("--users", type=int)
    synth.add_argument("--items", type=int)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True)
    synth.set_defaults(run=run_synth)

    info = cmds.add_parser("info", help="print the dataset card of a prepared folder")
    info.add_argument("folder", help="prepared folder or s3://BUCKET/PREFIX")
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")
    info.set_defaults(run=run_info)

    push = cmds.add_parser("push", help="upload a folder to S3-compatible object storage",
                           description="Upload any folder (prepared data, a bundle) to "
                           "s3://BUCKET/PREFIX: files first, then a _COMPLETE manifest with "
                           "the sha256 of each, so readers never see a partial upload. "
                           "Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; endpoint: "
                           f"{storage.ENV_ENDPOINT} or AWS_ENDPOINT_URL.")
    push.add_argument("folder", type=Path)
    push.add_argument("uri", help="s3://BUCKET/PREFIX")
    push.set_defaults(run=run_push)

    pull = cmds.add_parser("pull", help="download a folder from object storage, verified",
                           description="Download s3://BUCKET/PREFIX into a new local folder, "
                           "checking every file against the _COMPLETE manifest.")
    pull.add_argument("uri", help="s3://BUCKET/PREFIX")
    pull.add_argument("--out", type=Path, required=True, help="new local folder")
    pull.set_defaults(run=run_pull)


def run_fetch(args: argparse.Namespace) -> int:
    """Resolve and verify a release; say where it came from."""
    source = resolve_source(args.dataset, args.source)
    print(f"{args.dataset}: {source.path}\n  source: {source.origin}\n  sha256: {source.sha256}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare a dataset and print its card."""
    config = PrepareConfig(dataset=args.dataset, min_rating=args.min_rating,
                           min_user=args.min_user, min_item=args.min_item, strict=args.strict)
    source = storage.materialize(args.source) if args.source else None
    if not args.json:  # stdout stays pure JSON with --json
        print(f"preparing {args.dataset}: parse, validate, split ...", flush=True)
    if not storage.is_remote(args.out):
        card = prepare(config, Path(args.out), source=source)
    else:
        storage.parse_uri(args.out)  # a malformed URI or missing credentials fail before
        storage.filesystem(args.out)  # minutes of preparing
        with tempfile.TemporaryDirectory(prefix="movierec-prepare-") as tmp:
            card = prepare(config, Path(tmp) / "prepared", source=source)
            storage.upload_folder(Path(tmp) / "prepared", args.out)
    print(json.dumps(card, indent=2) if args.json else format_card(card))
    if not args.json:
        print(f"  {'uploaded' if storage.is_remote(args.out) else 'written':<11} {args.out}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """Write a synthetic canonical folder."""
    sizes = write_synthetic(SynthConfig(interactions=args.interactions, users=args.users,
                                        items=args.items, seed=args.seed), args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{v:,} {k}" for k, v in sizes.items()))
    print(f"next: movierec data prepare --dataset canonical --source {args.out} --out DIR")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print a prepared folder's card."""
    card = load_card(storage.materialize(args.folder))
    print(json.dumps(card, indent=2) if args.json else format_card(card))
    return 0


def run_push(args: argparse.Namespace) -> int:
    """Upload a folder with its manifest."""
    manifest = storage.upload_folder(args.folder, args.uri)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"uploaded {args.folder} to {args.uri}: {len(manifest['files'])} files, "
          f"{size:,} bytes ({manifest['generation']})")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Download and verify a remote folder."""
    manifest = storage.download_folder(args.uri, args.out)
    print(f"downloaded {args.uri} to {args.out}: {len(manifest['files'])} files verified")
    return 0


def format_card(card: dict) -> str:
    """A one-screen human summary of a dataset card."""
    validation = card["validation"]
    fired = {k: v["count"] for k, v in validation["rules"].items() if v["count"]}
    lengths = card["sequence_length"]
    lines = [
        f"{card['name']}  data_version {card['data_version']}",
        f"  source      {card['source']['origin']} ({card['source']['layout']})",
        f"  sha256      {card['source']['sha256']}",
        f"  users       {card['users']:,}   items {card['items']:,}   "
        f"interactions {card['interactions']:,}",
        f"  split       train {card['train_interactions']:,} interactions, "
        f"valid {card['valid_users']:,} users, test {card['test_users']:,} users, "
        f"train-only {card['train_only_users']:,} users",
        f"  lengths     min {lengths['min']}, median {lengths['median']:g}, "
        f"mean {lengths['mean']:g}, max {lengths['max']}",
        f"  validation  {validation['rows_read']:,} rows read, "
        f"{validation['rows_dropped']:,} dropped"
        + (f" ({', '.join(f'{k}: {v}' for k, v in fired.items())})" if fired
           else f", all {len(validation['rules'])} rules passed"),
        f"  filtering   {card['filtering']}",
    ]
    return "\n".join(lines)
