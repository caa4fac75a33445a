"""Command line: ``raretarget ingest|sql|status|quarantine|embed|demo|report``.

Printed output never contains source file names or identifiers: quarantined records are shown by
pseudonymous file reference (``--show-paths`` resolves them from the link folder, for the data owner).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _print_table(con, table, title: str | None = None, limit: int = 50) -> None:
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for name in table.column_names:
        t.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        t.add_row(*[_fmt(v) for v in row.values()])
    con.print(t)
    if table.num_rows > limit:
        con.print(f"... {table.num_rows - limit} more row(s)")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v) if v is not None else ""
    return s if len(s) <= 80 else s[:77] + "..."


def cmd_ingest(args) -> int:
    from . import Engine

    con = _console()
    eng = Engine.open(args.store, create=True, links=args.links)
    t0 = time.perf_counter()
    rep = eng.ingest(args.paths, progress=not args.quiet, fhir_validate=args.fhir_validate)
    dt = time.perf_counter() - t0
    con.print(f"[bold]ingest[/bold] {rep.summary()} in {dt:.1f}s")
    if rep.quarantine:
        q = eng.quarantine(reveal=args.show_paths)
        shown = q.slice(q.num_rows - rep.quarantined) if q.num_rows >= rep.quarantined else q
        _print_table(con, shown.drop_columns(["record_id", "batch_id"]), title="quarantined (this run)", limit=20)
        con.print(f"raw records of quarantined inputs are kept on the secure side: {eng.store.links / 'quarantine'}")
    return 0


def cmd_sql(args) -> int:
    from . import Engine

    eng = Engine.open(args.store, links=args.links)
    res = eng.sql(args.query)
    if args.format == "json":
        print(json.dumps(res.to_pylist(), default=str))
    elif args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(res, sys.stdout.buffer)
    else:
        _print_table(_console(), res, limit=args.limit)
    return 0


def cmd_status(args) -> int:
    from . import Engine

    eng = Engine.open(args.store, links=args.links)
    print(json.dumps(eng.status(), indent=1))
    return 0


def cmd_quarantine(args) -> int:
    from . import Engine

    eng = Engine.open(args.store, links=args.links)
    q = eng.quarantine(reveal=args.show_paths)
    print(f"{q.num_rows} quarantined record(s)")
    for r in q.slice(0, args.limit).to_pylist():   # plain lines: long paths must not be cut
        where = r["path"] if args.show_paths else r["file_ref"]
        print(f"{where} [{r['record']}] ({r['kind']}): {r['reason']}")
    return 0


def cmd_embed(args) -> int:
    """Embed the store with its current model: in one process, in ``--workers`` parallel shard processes, or
    one shard of a split run on several machines sharing the store (``--shard i --shards n``, then ``--merge n``)."""
    from . import Engine

    eng = Engine.open(args.store, links=args.links)
    t0 = time.perf_counter()
    if args.shard is not None:
        if not args.shards:
            raise ValueError("--shard needs --shards")
        counts = eng.embed_shard(args.shard, args.shards, batch_size=args.batch_size, device=args.device)
        what = f"shard {args.shard} of {args.shards}"
    elif args.merge:
        counts = eng.merge_shards(args.merge)
        what = f"merged {args.merge} shards"
    else:
        counts = eng.embed(batch_size=args.batch_size, workers=args.workers, device=args.device)
        what = f"{args.workers} worker(s)"
    print(f"embed ({what}): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f" in {time.perf_counter() - t0:.1f}s")
    if args.index and args.shard is None:
        info = eng.build_index()
        print(f"index generation {info['generation']}: {sum(info['counts'].values())} vectors")
    return 0


def cmd_demo(args) -> int:
    """Generate a small cohort, ingest it, and show what the store holds."""
    from . import Engine
    from .cohort import generate

    con = _console()
    out = Path(args.out)
    cohort_dir = out.with_name(out.name + ".cohort")
    con.rule("[bold]raretarget demo")
    t0 = time.perf_counter()
    generate(n_patients=args.patients, seed=args.seed, out=cohort_dir)
    con.print(f"1. generated a cohort of {args.patients} patients (FHIR + DICOM + VCF) in {cohort_dir} "
              f"({time.perf_counter() - t0:.1f}s)")
    eng = Engine.open(out, create=True)
    t0 = time.perf_counter()
    rep = eng.ingest([cohort_dir / "fhir", cohort_dir / "dicom", cohort_dir / "vcf"], progress=True)
    con.print(f"2. ingest: {rep.summary()} ({time.perf_counter() - t0:.1f}s)")
    st = eng.status()
    con.print("3. store status:", json.dumps(st["tables"]), f"quarantined={st['quarantined']}")
    _print_table(con, eng.sql(
        "select hpo_id, any_value(display) as phenotype, count(distinct patient_id) as patients "
        "from conditions where hpo_id is not null group by hpo_id order by patients desc limit 8"),
        title="top phenotypes (HPO) across patients")
    _print_table(con, eng.sql(
        "select gene, count(distinct patient_id) as carriers, "
        "count(*) filter (where clinvar like '%pathogenic%' and clinvar not like '%conflicting%') as plp "
        "from variants group by gene order by plp desc, carriers desc limit 8"),
        title="genes with (likely) pathogenic variants")
    _print_table(con, eng.sql(
        "select loinc, any_value(display) as lab, unit, count(*) as n, "
        "count(distinct original_unit) as units_seen, round(avg(value), 2) as mean from observations "
        "where unit_status in ('canonical', 'converted') group by loinc, unit order by units_seen desc, n desc limit 5"),
        title="labs in canonical UCUM units")
    if args.no_train:
        return 0
    t0 = time.perf_counter()
    extra = {} if args.knowledge_steps is None else {"model.knowledge.steps": args.knowledge_steps}
    summary = eng.train(max_epochs=args.epochs, **extra)
    con.print(f"4. trained the shared-space encoders (model {summary['model_version']}, "
              f"{args.epochs} epochs, {time.perf_counter() - t0:.0f}s); held-out recall@1 "
              f"{_fmt((summary.get('recall_untrained') or {}).get('recall@1'))} (untrained) → "
              f"{_fmt((summary.get('recall') or {}).get('recall@1'))}")
    counts = eng.embed()
    info = eng.build_index()
    con.print(f"5. embedded {sum(counts.values())} records {json.dumps(counts)}; index generation {info['generation']}")
    truth = json.loads((cohort_dir / "truth.json").read_text())
    dis = max(truth["diseases"], key=lambda d: sum(p.get("disease_id") == d["disease_id"] for p in truth["patients"]))
    terms = dis["hpo"][:6]
    con.print(f"6. hypothesis: patients with the phenotype of {dis['name']} ({', '.join(terms)})")
    hits = eng.search(phenotypes=terms, k=8, modalities=["patient", "note", "image"])
    _print_table(con, hits.drop_columns(["record_id", "gene"]), title="cross-modal hits")
    ranked = eng.rank_targets(phenotypes=terms, k=10)
    cols = [c for c in ranked.column_names if c not in ("evidence",)]
    _print_table(con, ranked.select(cols), title="ranked candidate genes/targets")
    genes = ranked.column("gene").to_pylist()
    where = [g for g in dis["genes"] if g in genes]
    con.print(f"7. the cohort's causal gene {', '.join(dis['genes'])} is ranked "
              + (f"#{genes.index(where[0]) + 1}" if where else "outside the top 10")
              + "; eng.explain(gene, phenotypes=...) lists the evidence and source records.")
    outcomes = []
    for target in ("HP:0000822", "SNOMED:44054006"):      # hypertension, type 2 diabetes
        try:
            outcomes.append(eng.predict_outcome(target))
        except ValueError as e:                           # too few patients/classes in a small demo
            con.print(f"   outcome {target}: skipped ({e})")
    for o in outcomes:
        con.print(f"   outcome {o['target']}: held-out AUROC " + ", ".join(
            f"{m} {r['auroc']:.2f}" for m, r in o["results"].items() if r.get("auroc") is not None))
    page = eng.report(out.with_name(out.name + ".report"), ranked=ranked, max_patients=20, outcomes=outcomes)
    con.print(f"8. report (static HTML, opens offline): {page}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raretarget", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("store", help="store folder")
        sp.add_argument("--links", default=None, help="secure link folder (default: <store>.links)")

    sp = sub.add_parser("ingest", help="ingest FHIR/DICOM/VCF files or folders into a store")
    common(sp)
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--fhir-validate", choices=["none", "full"], default="none")
    sp.add_argument("--show-paths", action="store_true", help="print real file paths of quarantined inputs")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("sql", help="run DuckDB SQL over the store")
    common(sp)
    sp.add_argument("query")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.add_argument("--limit", type=int, default=50)
    sp.set_defaults(func=cmd_sql)

    sp = sub.add_parser("status", help="row counts, quarantine, embeddings, index")
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("quarantine", help="list quarantined records and reasons")
    common(sp)
    sp.add_argument("--show-paths", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(func=cmd_quarantine)

    sp = sub.add_parser("embed", help="embed the store with its current model (optionally sharded)")
    common(sp)
    sp.add_argument("--workers", type=int, default=1, help="parallel shard processes on this machine")
    sp.add_argument("--shard", type=int, default=None, help="embed only this shard (0-based) of --shards")
    sp.add_argument("--shards", type=int, default=None)
    sp.add_argument("--merge", type=int, default=None, metavar="N", help="merge the N finished shards")
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--device", default="auto", help="auto (CUDA when present, bf16) | cpu | cuda:N")
    sp.add_argument("--index", action="store_true", help="build a new index generation afterwards")
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("demo", help="generate a cohort, ingest it, show the store")
    sp.add_argument("--out", default="demo_store")
    sp.add_argument("--patients", type=int, default=50)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=int, default=20)
    sp.add_argument("--knowledge-steps", type=int, default=None,
                    help="HPO-term↔gene alignment steps before patient training (default: config, 1500)")
    sp.add_argument("--no-train", action="store_true", help="stop after ingest")
    sp.set_defaults(func=cmd_demo)

    from .report import add_parser

    add_parser(sub, common)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"raretarget: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
