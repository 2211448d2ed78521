"""The ``attviz`` command line: extract, info, convert, plugins, demo, serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from attviz.errors import AttvizError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attviz", description="Explore the self-attention of transformer language models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a limit on untrusted input for info, convert, stats and serve (uploads), e.g. --limit max_bytes=2e9 "
        "--limit timeout_s=30; names: max_bytes, max_archive_files, max_expanded_bytes, max_documents, "
        "max_tokens, max_depth, timeout_s, sample_bytes (the same as the ATTVIZ_<NAME> variables, which it sets)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "extract",
        help="run a model over texts and store every attention matrix",
        description="Run a model over texts and store its attention in a zarr store.",
    )
    p.add_argument("input", help="texts: .txt (one per line), .csv/.tsv or .jsonl")
    p.add_argument("-o", "--output", required=True, help="store to write (a .zarr directory)")
    p.add_argument("--model", default=None, help="Hugging Face model name or path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--text-column", default="text", help="column with the text (csv/tsv/jsonl)")
    p.add_argument("--label-column", default=None, help="column with gold labels (default: 'label' if present)")
    p.add_argument("--id-column", default=None, help="column with document ids (default: 'id' if present)")
    p.add_argument("--target-column", default=None, help="decoder text for encoder-decoder models")
    p.add_argument(
        "--label-descriptions",
        default=None,
        help="JSON file {label: description} for zero-shot predictions (models without a classifier)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per document (default: model limit)")
    p.add_argument("--windows", action="store_true", help="split long texts into overlapping windows")
    p.add_argument("--stride", type=int, default=64, help="overlap of windows in tokens (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    p.add_argument(
        "--compression",
        default="lz4",
        choices=["lz4", "zstd", "none", "uint8"],
        help="chunks: lz4 (lossless float16, blosc lz4 + bitshuffle, default), zstd (lossless, slower), "
        "none, or uint8 (quantised per row, ~4x smaller, "
        "max error row max / 510)",
    )
    p.add_argument(
        "--attention",
        default=None,
        choices=["auto", "qk", "matrices"],
        help="keep attention as queries and keys (qk: the model runs its fast SDPA kernel and every weight is "
        "rebuilt exactly, checked against eager attention on the first batch), as eager matrices, or per document "
        "the smaller of the two (auto, default, or $ATTVIZ_ATTENTION); a model whose attention cannot be "
        "rebuilt keeps matrices and says why",
    )
    keep = p.add_argument_group(
        "storage policy", "what to keep per document (default: every matrix); reductions run on the model's device"
    )
    keep.add_argument("--layers", default=None, help="keep the matrices of these layers only, e.g. 0,4-5")
    keep.add_argument("--heads", default=None, help="keep the matrices of these heads only, e.g. 0-3")
    keep.add_argument(
        "--vectors",
        default=None,
        help="also store token-level aggregations (comma-separated ids, parameters after ':', e.g. "
        "attention_received,attention_from:query=0,entropy)",
    )
    keep.add_argument("--summary", action="store_true", help="also store per-head statistics (head_summary)")
    keep.add_argument(
        "--no-matrices",
        action="store_true",
        help="keep no matrices (only --vectors / --summary); the explorer recomputes a document on demand",
    )
    p.add_argument(
        "--capture",
        action="append",
        default=None,
        metavar="ID",
        help="also run this capture plugin and store what it records per document, e.g. value_norm "
        "(attviz-valuenorm); parameters after ':'; repeatable or comma-separated; `attviz plugins` lists them",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store / unfinished job")
    p.add_argument("--force", action="store_true", help="write even if the estimated size exceeds free disk")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model repository")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="shard the documents over a dask.distributed cluster (e.g. tcp://host:8786): each worker loads "
        "the model once (--device there; auto takes its GPU) and writes its documents into the store, which "
        "must be a path every worker sees",
    )

    p = sub.add_parser(
        "info",
        help="describe a store or any readable input",
        description="Documents, tokens, layers, heads, model, labels, accuracy.",
    )
    p.add_argument("input", help="store, netCDF file or legacy AttViz JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    checks = p.add_mutually_exclusive_group()
    checks.add_argument(
        "--check",
        action="store_true",
        help="check every document that carries no attention self-check now, on sampled rows (extraction and "
        "conversion store one; by default only up to 200 such documents are checked)",
    )
    checks.add_argument("--no-check", action="store_true", help="report only the stored attention checks")

    p = sub.add_parser(
        "convert",
        help="convert between formats (store, .nc, legacy AttViz JSON)",
        description="Read any readable input and write a store (.zarr) or a netCDF file (.nc).",
    )
    p.add_argument("input", help="store, netCDF file, legacy AttViz JSON or .npz tensors")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: DIR.zarr (store), FILE.nc (netCDF) or FILE.json (original AttViz format, vectors only)",
    )
    p.add_argument("--reader", default=None, help="reader plugin name (default: guess)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser(
        "export",
        help="write a self-contained interactive HTML page (works offline, no server)",
        description="Write one HTML file with the attention of some documents: switch document, layer, head "
        "and mean/max over heads, hover, click a token; all client-side, quantised to uint8 per row.",
    )
    p.add_argument("input", help="store or file to export (anything `attviz info` reads)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--doc", action="append", default=None, metavar="ID", help="a document to export (repeatable)")
    p.add_argument("--views", default="text,matrix,predictions", help="comma-separated: text, matrix, predictions")
    p.add_argument("--max-tokens", type=int, default=2048, help="longest document part exported (default 2048)")
    p.add_argument("--window", default=None, metavar="START:STOP", help="token window of long documents")
    p.add_argument("--layers", default=None, help="comma-separated layer positions to keep (default all)")
    p.add_argument("--heads", default=None, help="comma-separated head positions to keep (default all)")
    p.add_argument(
        "--quantization",
        choices=("row", "matrix"),
        default="row",
        help="uint8 scale per row (default: every row keeps 256 levels) or per head's matrix (a 512-token "
        "MiniLM page 6.4 MB instead of 11.9; the same absolute error bound, 1/510, but weak rows keep few levels)",
    )
    p.add_argument(
        "--payload",
        choices=("auto", "qk", "matrix"),
        default="auto",
        help="for documents kept as queries and keys: carry their float16 q/k where smaller than uint8 matrices "
        "(auto, default; the page computes what it shows; up to 8,192 tokens without a window), always (qk), "
        "or never (matrix)",
    )
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser(
        "plugins",
        help="list aggregation, view, reader and capture plugins",
        description="Every plugin with its group, name, distribution and status.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "demo",
        help="build (once) and describe the bundled demo corpus",
        description="Extract the demo corpus with the bundled model (cached) and describe it.",
    )
    p.add_argument("--rebuild", action="store_true", help="extract again even if cached")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "serve",
        help="start the explorer (default: on the demo corpus)",
        description="Start the attviz explorer in a browser. By default it listens on this machine only "
        "(localhost) and answers only requests for localhost / 127.0.0.1 / [::1] on its port; the page, its "
        "scripts, styles and fonts all come from this server (no network needed).",
    )
    p.add_argument("inputs", nargs="*", help="stores or files to explore (default: the demo corpus)")
    p.add_argument("--model", default=None, help="model for live input (default: bundled MiniLM)")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    p.add_argument("--show", action="store_true", help="open a browser")
    p.add_argument(
        "--address",
        default=None,
        help="address to listen on (default: localhost, this machine only); another address (e.g. 0.0.0.0) lets "
        "other machines in and prints a warning; name the host they use with --allow-websocket-origin",
    )
    p.add_argument(
        "--allow-websocket-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a host name under which the page may be opened (Host header and websocket Origin), e.g. "
        "myhost.example.org:5006 (repeatable; without a port: the served port; default: localhost only)",
    )
    p.add_argument(
        "--basic-auth",
        default=None,
        metavar="PASSWORD|FILE",
        help="require a login: one password (any user name), or a JSON file of {user: password} "
        "(default: $ATTVIZ_BASIC_AUTH; a file keeps the password out of the process list)",
    )
    p.add_argument(
        "--cookie-secret",
        default=None,
        help="secret that signs login cookies (default: $ATTVIZ_COOKIE_SECRET, else a new one each start)",
    )
    p.add_argument("--oauth-provider", default=None, help="log in through Panel's OAuth provider (github, google, ...)")
    p.add_argument("--oauth-key", default=None, help="OAuth client id")
    p.add_argument("--oauth-secret", default=None, help="OAuth client secret")
    p.add_argument("--oauth-redirect-uri", default=None, help="OAuth redirect URI")
    p.add_argument("--oauth-encryption-key", default=None, help="key that encrypts OAuth tokens in cookies")

    p = sub.add_parser(
        "stats",
        help="corpus statistics: head atlas, head similarity, contrasts (report or CSV tables)",
        description="Per-document statistics of a store (cached in its stats/ group): the head atlas, head "
        "similarity, and class contrasts of heads and token types. Without -o a summary is printed.",
    )
    p.add_argument("input", help="store (or anything `attviz info` reads; only stores cache the statistics)")
    p.add_argument(
        "--by",
        choices=("gold", "predicted", "correct"),
        default=None,
        help="group the documents for the contrasts (default: gold labels when there are two or more)",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="OTHER_STORE",
        help="a second store over the same texts (another checkpoint or model with the same heads): "
        "store A vs store B tables, documents paired by text",
    )
    p.add_argument(
        "-o", "--output", default=None, help="REPORT.html (one self-contained offline page) or a folder of CSV tables"
    )
    p.add_argument(
        "--aggregation",
        default="attention_received",
        help="token vector per document (an aggregation id or a JSON pipeline; default attention_received)",
    )
    p.add_argument(
        "--kind",
        choices=["self", "encoder", "decoder", "cross"],
        default=None,
        help="which attention of an encoder-decoder corpus (default: self, else encoder)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="compute on a dask.distributed cluster (tcp://host:8786); its workers must see the store",
    )
    p.add_argument("--no-cache", action="store_true", help="compute again, neither reading nor writing stats/")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _apply_limits(args.limit)
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("attviz: interrupted", file=sys.stderr)
        return 130
    except (AttvizError, OSError, KeyError, ValueError) as exc:
        if args.debug:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"attviz {args.command}: error: {message}", file=sys.stderr)
        return 1


def _apply_limits(items: Sequence[str]) -> None:
    """``--limit NAME=VALUE``: set ``ATTVIZ_<NAME>`` (read by this process, its sandbox workers and a served
    app's sessions), after checking that the limits are known and positive."""
    import dataclasses

    from attviz.limits import Limits

    names = {f.name for f in dataclasses.fields(Limits)}
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower().replace("-", "_")
        if not sep or name not in names:
            raise AttvizError(f"--limit {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        values[f"ATTVIZ_{name.upper()}"] = value.strip()
    if values:
        Limits.from_env({**os.environ, **values})  # refuses a value that is not a positive number
        os.environ.update(values)


def _extract(args: argparse.Namespace) -> int:
    from attviz.extract import extract
    from attviz.inputs import read_texts
    from attviz.models import ZeroShotClassifier, load_model
    from attviz.policy import StoragePolicy

    data = read_texts(
        args.input,
        text_column=args.text_column,
        label_column=args.label_column,
        id_column=args.id_column,
        target_column=args.target_column,
    )
    policy = StoragePolicy(
        matrices=not args.no_matrices,
        layers=args.layers,
        heads=args.heads,
        vectors=tuple(_split_specs(args.vectors)),
        summary=args.summary,
    )
    if args.scheduler:  # the workers load it by name or path; extract() loads it here on the CPU
        loaded = args.model
    else:
        loaded = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    descriptions = ZeroShotClassifier.from_file(args.label_descriptions) if args.label_descriptions else None
    corpus = extract(
        data.texts,
        model=loaded,
        device=args.device,
        dtype=args.dtype if args.scheduler else None,  # (a loaded model's settings have always said float32)
        trust_remote_code=args.trust_remote_code,
        scheduler=args.scheduler,
        ids=data.ids,
        labels=data.labels,
        targets=data.targets,
        label_descriptions=descriptions,
        batch_size=args.batch_size,
        max_length=args.max_length,
        long_texts="window" if args.windows else "truncate",
        stride=args.stride,
        store=args.output,
        overwrite=args.overwrite,
        compression=args.compression,
        policy=policy,
        progress=not args.quiet,
        force=args.force,
        captures=[spec for text in args.capture or () for spec in _split_specs(text)] or None,
        attention=args.attention,
    )
    if not args.quiet:
        print(f"wrote {len(corpus)} documents to {args.output}", file=sys.stderr)
    return 0


def _split_specs(text: str | None) -> list[str]:
    """``"a,b:x=1,y=2,c"`` → ``["a", "b:x=1,y=2", "c"]``: a comma before ``name=`` continues a spec."""
    specs: list[str] = []
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        if specs and "=" in part and ":" not in part and ":" in specs[-1]:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def _print_info(corpus, as_json: bool, check: bool | None = None) -> None:
    from attviz.info import format_summary, summarize

    info = summarize(corpus, check=check)
    print(json.dumps(info) if as_json else format_summary(info))


def _info(args: argparse.Namespace) -> int:
    from attviz.readers import read

    _print_info(read(args.input), args.json, check=True if args.check else False if args.no_check else None)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from attviz.readers import read

    corpus = read(args.input, reader=args.reader)
    out = Path(args.output)
    suffix = out.suffix.lower()
    store = suffix not in (".nc", ".nc4", ".h5", ".json")
    # a store left by a conversion killed just after it took its place is this job's, to finish
    if out.exists() and not args.overwrite and not (store and _converted_here(out, args)):
        raise AttvizError(f"{out} already exists; pass --overwrite to replace it")
    if suffix in (".nc", ".nc4", ".h5"):
        from attviz.readers.netcdf import write_netcdf_isolated

        write_netcdf_isolated(args.input, out, reader=args.reader)  # HDF5 may crash on a full disk: not here
    elif suffix == ".json":
        from attviz.readers.legacy import write_attviz_json

        write_attviz_json(corpus, out)
    else:
        from attviz.store import write_corpus

        try:  # a conversion that was killed resumes; one that fails removes what it wrote
            write_corpus(corpus, out, overwrite=args.overwrite, fingerprint=_convert_job(args), keep_partial=False)
        except OSError as exc:
            raise AttvizError(
                f"could not write {out}: {exc}; nothing was written (the partial store was removed); free some "
                "disk space if it is full and run the same command again"
            ) from exc
    print(f"wrote {len(corpus)} documents to {out}", file=sys.stderr)
    return 0


def _convert_job(args: argparse.Namespace) -> str:
    """What identifies a conversion (its input as it is now, the reader), so that a rerun resumes only the same one."""
    import hashlib

    source = Path(args.input).resolve()
    parts: list = ["convert", str(source), args.reader or ""]
    path = source / "zarr.json" if source.is_dir() else source  # (a store's folder changes with its stats/ cache)
    if path.exists():
        stat = path.stat()
        parts += [stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _converted_here(out: Path, args: argparse.Namespace) -> bool:
    from attviz.store import SETTINGS

    try:
        return json.loads((out / SETTINGS).read_text()).get("fingerprint") == _convert_job(args)
    except (OSError, ValueError, AttributeError):
        return False


def _export(args: argparse.Namespace) -> int:
    from attviz.export import export_html

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise AttvizError(f"{out} already exists; pass --overwrite to replace it")

    from attviz.policy import parse_indices

    def ints(text: str | None, what: str) -> list[int] | None:
        values = parse_indices(text, f"--{what}")
        return None if values is None else list(values)

    window = None
    if args.window:
        parts = ints(args.window.replace(":", ","), "window")
        if not parts or len(parts) != 2:
            raise AttvizError(f"--window takes START:STOP, not {args.window!r}")
        window = (parts[0], parts[1])
    start = time.perf_counter()
    html = export_html(
        args.input,
        out,
        doc_ids=args.doc,
        views=[v.strip() for v in args.views.split(",") if v.strip()],
        max_tokens=args.max_tokens,
        window=window,
        layers=ints(args.layers, "layers"),
        heads=ints(args.heads, "heads"),
        title=args.title,
        quantization=args.quantization,
        payload=args.payload,
    )
    size = len(html.encode("utf-8"))
    print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    from attviz.export import read_manifest

    manifest = read_manifest(html)
    for what, key in (("uint8 matrices", "matrix_error"), ("queries and keys", "qk_error")):
        if manifest.get(key) is not None:
            count = sum((d.get("payload") or "matrix") == key.split("_")[0] for d in manifest["docs"])
            print(f"  {count} document(s) as {what}: max abs error of a weight {manifest[key]:.3g}", file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from attviz import registry

    infos = [info.as_dict() for info in registry.plugin_infos()]
    if args.json:
        print(json.dumps(infos, indent=1))
        return 0
    for info in infos:
        status = "ok" if info["status"] == "ok" else f"{info['status'].upper()}: {info['error']}"
        print(f"{info['group']:<20} {info['name']:<22} {info['distribution']:<16} {status}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from attviz.demo import demo_corpus

    _print_info(demo_corpus(rebuild=args.rebuild), args.json)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from attviz.app import serve

    oauth = {
        key: getattr(args, f"oauth_{key}") for key in ("provider", "key", "secret", "redirect_uri", "encryption_key")
    }
    return serve(
        args.inputs,
        model=args.model,
        port=args.port,
        show=args.show,
        address=args.address,
        allow_websocket_origin=args.allow_websocket_origin,
        basic_auth=args.basic_auth or os.environ.get("ATTVIZ_BASIC_AUTH"),
        cookie_secret=args.cookie_secret or os.environ.get("ATTVIZ_COOKIE_SECRET"),
        oauth=oauth,
    )


def _stats(args: argparse.Namespace) -> int:
    from attviz.analysis.engine import corpus_statistics, statistics_path
    from attviz.analysis.report import compute_tables, corpus_info, summary, write_report, write_tables
    from attviz.readers import read

    def statistics(source: str):
        # sandbox=False: a crash in a codec costs this command only (the sandbox keeps a server alive),
        # and the engine's tasks open the store directly anyway
        corpus = read(source, sandbox=False)
        stats = corpus_statistics(
            corpus,
            aggregation=args.aggregation,
            kind=args.kind,
            scheduler=args.scheduler,
            cache=not args.no_cache,
            progress=not args.quiet,
        )
        return corpus, stats

    start = time.perf_counter()
    corpus, stats = statistics(args.input)
    other = statistics(args.compare)[1] if args.compare else None
    folder = statistics_path(corpus.path, stats.settings) if getattr(corpus, "path", None) else None
    cache = folder if folder is not None and folder.is_dir() and not args.no_cache else None
    compare_id = str(Path(args.compare).resolve()) if args.compare else None
    tables = compute_tables(stats, by=args.by, compare=other, cache=cache, compare_id=compare_id)
    out = Path(args.output) if args.output else None
    if out is None:
        print(summary(stats, tables))
    elif out.suffix.lower() in (".html", ".htm"):
        info = {**corpus_info(corpus), **({"compare": args.compare} if args.compare else {})}
        write_report(stats, out, title=args.title, corpus=info, tables=tables)
        size = out.stat().st_size
        print(f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    else:
        written = write_tables(stats, out, tables=tables)
        print(f"wrote {len(written)} tables to {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


COMMANDS = {
    "extract": _extract,
    "info": _info,
    "convert": _convert,
    "export": _export,
    "plugins": _plugins,
    "demo": _demo,
    "serve": _serve,
    "stats": _stats,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
