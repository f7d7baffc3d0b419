"""``raydund ingest`` and ``raydund catalog``: corpora into the lake, and what the catalog declares."""

from __future__ import annotations

from raydund.cli.common import command, emit, settings


def register(sub) -> None:
    p = command(sub, "ingest", "read a catalog corpus, or a file of unlabelled text, into the lake", cmd_ingest)
    p.add_argument("corpus", nargs="?", help="catalog name (see `raydund catalog`) or a YAML file")
    p.add_argument("--split", action="append",
                   help="only these splits (repeatable; default: all); with --text the one split (default: train)")
    p.add_argument("--text", metavar="FILE", help="unlabelled sentences: text (one per line), JSONL or Parquet/Arrow")
    p.add_argument("--name", help="the corpus name for --text")
    p.add_argument("--field", default="text", help="JSONL field / Parquet column of the sentence (default: text)")
    p.add_argument("--pretokenize", default="words",
                   help="words from sentences: 'words' (letters/digits runs, punctuation apart; default), "
                        "'whitespace', or a regular expression whose matches are the words")
    command(sub, "catalog", "list the corpora and models the catalog declares", cmd_catalog)


def cmd_ingest(args) -> None:
    from raydund.corpora.job import ingest, ingest_text
    from raydund.errors import UserError

    if args.text is not None:
        if args.corpus is not None or not args.name:
            raise UserError("--text FILE takes --name NAME and no catalog corpus")
        if args.split and len(args.split) > 1:
            raise UserError("--text FILE becomes one split; give --split once")
        result = ingest_text(args.text, args.name, settings(), (args.split or ["train"])[0], args.field,
                             args.pretokenize)
    elif args.corpus is None:
        raise UserError("name a catalog corpus, or give --text FILE --name NAME")
    else:
        result = ingest(args.corpus, settings(), args.split or None)
    lines = [f"{result.corpus}/{split}: {n} sentences, {result.tokens[split]} tokens"
             for split, n in result.sentences.items()]
    lines.append(f"snapshot {result.snapshot_id}, MLflow run {result.run_id}")
    emit(args, {"corpus": result.corpus, "sentences": result.sentences, "tokens": result.tokens,
                "snapshot_id": result.snapshot_id, "run_id": result.run_id}, "\n".join(lines))


def catalog_listing() -> dict[str, list[dict]]:
    """Per kind (corpora, models): name, description and, for an entry of the user's, its path."""
    from raydund.config import CATALOG_DIR, catalog_entries, load_yaml

    listing = {}
    for kind in ("corpora", "models"):
        listing[kind] = []
        for name, path in catalog_entries(kind).items():
            entry = load_yaml(kind, str(path))
            listing[kind].append({"name": name, "description": entry.get("description", entry.get("hf_name", "")),
                                  "path": None if path.parent.parent == CATALOG_DIR else str(path)})
    return listing


def cmd_catalog(args) -> None:
    listing = catalog_listing()

    def text() -> str:
        lines = []
        for kind, entries in listing.items():
            lines.append(f"{kind}:")
            for entry in entries:
                where = "" if entry["path"] is None else f"  [{entry['path']}]"
                lines.append(f"  {entry['name']:<20} {entry['description']}{where}")
        return "\n".join(lines)

    emit(args, listing, text)
