"""VCF/BCF reader → the ``variants`` table.

* Reads plain, gzip/bgzip VCF and BCF with cyvcf2 (htslib). Coordinates are kept as in the file:
  ``pos`` is the VCF ``POS``, **1-based**; ``chrom`` loses a ``chr`` prefix and ``M``/``chrM`` become ``MT``.
* One row per sample × alt allele the sample's genotype carries (multi-allelic sites are split; hom-ref
  and no-call samples give no row). ``zygosity`` is ``het`` / ``hom_alt`` / ``hemi`` (haploid call, e.g.
  male chrX/Y or MT). Sites-only files (no samples, e.g. ClinVar) give one row per alt allele with null
  ``patient_id`` and ``zygosity``.
* Annotation per allele: VEP ``CSQ`` (field order from the header's ``Format:``) or snpEff ``ANN``;
  the most severe consequence (Ensembl order, :data:`CONSEQUENCE_ORDER`) wins, canonical/MANE
  transcripts first at equal severity. The gene comes from that entry (``SYMBOL`` / ``Gene_Name``;
  ClinVar ``GENEINFO`` as fallback, ClinVar ``MC`` for the consequence) and is normalised with
  :class:`raretarget.ingest.genes.GeneNormalizer`. ``clinvar`` is ``CLNSIG`` lower-cased with ``_``
  (numeric Scout/old-ClinVar codes are decoded from the header legend; several assertions are
  ``|``-joined). ``af`` is a population frequency: gnomAD-like CSQ fields, else INFO population fields
  (:data:`INFO_AF_KEYS`), and INFO ``AF`` only for sites-only files (in a sample file it is the cohort's).
* Accounting: every data line is one record. A line giving rows is accepted; a line whose samples carry
  no alt allele is ignored as ``vcf_site_without_carrier`` (``vcf_site_without_alt`` for ALT ``.``);
  a bad line is quarantined with its line number and the reader goes on.

Robustness: htslib aborts the whole iteration on one malformed line (bad POS, wrong column count, bad
GT; see ``tests/test_vcf.py``) and silently accepts unknown contigs. Text VCFs are therefore pre-scanned
in Python (bytes, C-speed checks): bad lines (non-UTF-8, wrong column count, non-integer POS, bad
REF/ALT/QUAL, bad GT, contig neither in ``##contig`` lines nor a standard human contig) are quarantined
and cyvcf2 reads a copy of the file without them (the original when nothing was wrong). A truncated or
corrupt gzip stream is quarantined once; the lines before it are ingested. If htslib still fails on a
line the reader quarantines that line and restarts after it.
"""

from __future__ import annotations

import gzip
import io
import re
import tempfile
import zlib
from array import array
from pathlib import Path

import numpy as np

# SO consequence → impact: the one table is raretarget.vocab.variants (these names stay importable from here)
from raretarget.vocab.variants import CONSEQUENCE_ORDER, IMPACTS, SEVERITY, TERM_ALIASES, TERM_IMPACT  # noqa: F401
from raretarget.vocab.variants import UNRANKED as _UNRANKED

#: population allele frequency fields looked up in CSQ entries, first present wins
CSQ_AF_FIELDS = ("gnomADe_AF", "gnomAD_AF", "gnomADg_AF", "gnomAD_exomes_AF", "gnomAD_genomes_AF", "MAX_AF", "AF")
#: population allele frequency INFO fields (any file), first present wins; INFO ``AF`` is added for sites-only files
INFO_AF_KEYS = ("gnomAD_AF", "gnomADe_AF", "gnomADg_AF", "GNOMADAF", "gnomad_AF", "AF_EXAC", "EXACAF",
                "AF_TGP", "1000GAF", "AF_ESP")
CSQ_CLNSIG_FIELDS = ("CLNSIG", "clnsig", "ClinVar_CLNSIG", "CLIN_SIG")
#: in-silico predictions read from CSQ entries when a VEP plugin (REVEL, CADD, SpliceAI) or dbNSFP put them there,
#: first present wins; a value of several transcripts ("0.2&0.7", dbNSFP) counts as its maximum
CSQ_REVEL_FIELDS = ("REVEL", "REVEL_score")                  # REVEL (Ioannidis et al. 2016), 0-1
CSQ_CADD_FIELDS = ("CADD_PHRED", "CADD_phred")              # CADD PHRED-scaled score (Kircher et al. 2014), ~0-99
#: CADD PHRED as an INFO field (vcfanno / MIP-style pipelines, e.g. Scout's demo VCFs), used when CSQ has none
INFO_CADD_KEYS = ("CADD_PHRED", "CADD")
#: SpliceAI delta scores (Jaganathan et al. 2019), 0-1: the allele's score is the maximum of the four
CSQ_SPLICEAI_FIELDS = ("SpliceAI_pred_DS_AG", "SpliceAI_pred_DS_AL", "SpliceAI_pred_DS_DG", "SpliceAI_pred_DS_DL",
                       "SpliceAI_DS_max", "SpliceAI_max")
ANN_DEFAULT_FORMAT = ("Allele", "Annotation", "Annotation_Impact", "Gene_Name", "Gene_ID", "Feature_Type",
                      "Feature_ID", "Transcript_BioType", "Rank", "HGVS.c", "HGVS.p", "cDNA.pos / cDNA.length",
                      "CDS.pos / CDS.length", "AA.pos / AA.length", "Distance", "ERRORS / WARNINGS / INFO")
STANDARD_CONTIGS = frozenset([str(i) for i in range(1, 23)] + ["X", "Y", "MT"])

_VARIANT_COLS = ("patient_id", "chrom", "pos", "ref", "alt", "gene", "gene_raw", "gene_status", "consequence",
                 "impact", "hgvsc", "hgvsp", "clinvar", "af", "revel", "cadd_phred", "spliceai", "zygosity", "qual",
                 "filter", "source_ref")

_REF_RE = re.compile(rb"[ACGTNacgtn]+")
_ALT_RE = re.compile(rb"\.|(?:[ACGTNacgtn*]+|<[^<>\t]+>|[^\t,]*[\[\]][^\t,]*|\.[ACGTNacgtn]+|[ACGTNacgtn]+\.)"
                     rb"(?:,(?:[ACGTNacgtn*]+|<[^<>\t]+>|[^\t,]*[\[\]][^\t,]*|\.[ACGTNacgtn]+|[ACGTNacgtn]+\.))*")
_QUAL_RE = re.compile(rb"\.|[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|nan|Inf|NaN|INF|NAN)")
_GT = rb"(?:\.|\d+)(?:[/|](?:\.|\d+))*"
_SAMPLES_GT_FIRST = re.compile(rb"[/|]?" + _GT + rb"(?::[^\t]*)?(?:\t[/|]?" + _GT + rb"(?::[^\t]*)?)*")
_GT_ONE = re.compile(rb"[/|]?" + _GT)
_CLNSIG_SPLIT = re.compile(r"[|&]|,(?!_)")


def normalize_chrom(c: str) -> str:
    """``chr1`` → ``1``, ``chrM``/``M`` → ``MT`` (other names unchanged apart from the prefix)."""
    if c[:3].lower() == "chr":
        c = c[3:]
    return "MT" if c in ("M", "m", "MT", "mt") else c


class VcfFormatError(Exception):
    pass


# ---- entry point ---------------------------------------------------------------------------------

def read_vcf(path: Path, ctx) -> None:
    """Read one VCF/BCF file into ``variants`` (see the module docstring; ``pos`` is 1-based)."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "bcf":
        _Reader(ctx, path).run_bcf()
        return
    if kind == "unreadable":
        ctx.record()
        ctx.quarantine("file", "unreadable_gzip")
        return
    scan = _prescan(path, ctx)
    if scan is None:
        return
    reader = _Reader(ctx, path)
    reader.run_text(scan)


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(4)
        except (OSError, EOFError, zlib.error):
            return "unreadable"
        return "bcf" if inner[:3] == b"BCF" else "vcf"
    return "bcf" if head[:3] == b"BCF" else "vcf"


# ---- pre-scan of text VCFs -----------------------------------------------------------------------

class _Scan:
    __slots__ = ("header", "good", "problems", "samples")

    def __init__(self):
        self.header: list[bytes] = []
        self.good = array("q")        # line numbers (1-based, physical) of the data lines that passed
        self.problems = False         # True → cyvcf2 must read a cleaned copy
        self.samples = 0


def _open_bytes(path: Path, fast: bool = True):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        if not fast:
            return gzip.open(path, "rb")       # line by line: loses nothing before a truncation point
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)   # much faster readline
    return open(path, "rb", buffering=1 << 20)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _prescan(path: Path, ctx, on_good=None) -> _Scan | None:
    """Validate every line; quarantine the bad ones. None when the file as a whole is unusable.

    ``on_good(n, line, scan)``: called for each good data line (line number, bytes without the line end) instead
    of keeping its number (the store-free reader parses the lines as they pass)."""
    scan = _Scan()
    contigs: set[bytes] = set()
    ncols = 0
    gt_first_fmt: dict[bytes, int] = {}
    n = 0
    chrom_ok: dict[bytes, bool] = {}
    retried = None
    with _open_bytes(path) as f:
        it = iter(f)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                break
            except (OSError, EOFError, zlib.error) as e:
                if retried is None and _is_gzip(path):
                    # the big read buffer lost the lines just before the bad spot: re-read them slowly
                    retried = _open_bytes(path, fast=False)
                    try:
                        for _ in range(n):
                            retried.readline()
                    except (OSError, EOFError, zlib.error):
                        pass
                    it = iter(retried)
                    continue
                ctx.record()
                where = f"line {n + 1}" if n else "file"
                ctx.quarantine(where, "unreadable_gzip", detail=e)
                scan.problems = True
                if ncols == 0:
                    return None
                break
            n += 1
            line = raw.rstrip(b"\r\n")
            if len(line) != len(raw) - 1:
                scan.problems = True              # CRLF or no final newline: hand htslib a clean copy
            if ncols == 0:
                if not line.startswith(b"#"):
                    if not line.strip():
                        continue
                    ctx.record()
                    ctx.quarantine("file", "not_vcf", raw)
                    return None
                scan.header.append(line)
                if line.startswith(b"##contig=<"):
                    m = re.search(rb"[<,]ID=([^,>]+)", line)
                    if m:
                        contigs.add(m.group(1))
                elif line.startswith(b"#CHROM"):
                    ncols = line.count(b"\t") + 1
                    if ncols < 8:
                        ctx.record()
                        ctx.quarantine("file", "not_vcf", raw, field="#CHROM", detail=ncols)
                        return None
                    scan.samples = max(0, ncols - 9)
                continue
            if not line.strip():
                scan.problems = True
                continue
            bad = _check_line(line, ncols, contigs, chrom_ok, gt_first_fmt, scan.samples)
            if bad is None:
                if on_good is None:
                    scan.good.append(n)
                else:
                    on_good(n, line, scan)
            else:
                ctx.record()
                ctx.quarantine(f"line {n}", bad[0], raw, field=bad[1])
                scan.problems = True
    if retried is not None:
        retried.close()
    if ncols == 0:
        ctx.record()
        ctx.quarantine("file", "not_vcf")
        return None
    return scan


def _check_line(line: bytes, ncols: int, contigs: set, chrom_ok: dict, fmt_cache: dict,
                nsamples: int) -> tuple[str, str | None] | None:
    """None for a good line, else (reason code, field)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8", None
    nt = line.count(b"\t") + 1
    if nt != ncols:
        return "vcf_column_count", None
    p = line.split(b"\t", 9)
    chrom = p[0]
    ok = chrom_ok.get(chrom)
    if ok is None:
        c = chrom.decode("utf-8", "replace")
        ok = chrom_ok[chrom] = bool(chrom) and (chrom in contigs or normalize_chrom(c) in STANDARD_CONTIGS)
    if not ok:
        return "vcf_unknown_contig", "CHROM"
    if not p[1].isdigit() or int(p[1]) == 0:
        return "vcf_bad_pos", "POS"
    if not _REF_RE.fullmatch(p[3]):
        return "vcf_bad_ref", "REF"
    if not _ALT_RE.fullmatch(p[4]):
        return "vcf_bad_alt", "ALT"
    if not _QUAL_RE.fullmatch(p[5]):
        return "vcf_bad_qual", "QUAL"
    if nsamples:
        fmt = p[8]
        gi = fmt_cache.get(fmt)
        if gi is None:
            keys = fmt.split(b":")
            gi = fmt_cache[fmt] = keys.index(b"GT") if b"GT" in keys else -1
        if gi == 0:
            if not _SAMPLES_GT_FIRST.fullmatch(p[9]):
                return "vcf_bad_gt", "FORMAT/GT"
        elif gi > 0:
            for s in p[9].split(b"\t"):
                parts = s.split(b":")
                if len(parts) > gi and not _GT_ONE.fullmatch(parts[gi]):
                    return "vcf_bad_gt", "FORMAT/GT"
    return None


def _write_subset(path: Path, scan: _Scan, good: array, out: Path) -> None:
    """Header + the given data lines (by line number) of ``path`` into a plain-text VCF."""
    keep = set(good)
    with open(out, "wb") as w:
        for h in scan.header:
            w.write(h + b"\n")
        n = 0
        with _open_bytes(path, fast=False) as f:
            try:
                for raw in f:
                    n += 1
                    if n in keep:
                        w.write(raw.rstrip(b"\r\n") + b"\n")
            except (OSError, EOFError, zlib.error):
                pass


# ---- annotation ----------------------------------------------------------------------------------

def _format_from_description(desc: str) -> list[str] | None:
    m = re.search(r"Format:\s*'?([^'\"]+)", desc or "")
    if not m:
        return None
    return [x.strip() for x in m.group(1).strip().split("|")]


def _clnsig_legend(desc: str) -> dict[str, str]:
    """Numeric CLNSIG legend from a header description ("0 - Uncertain significance, 1 - not provided, ...")."""
    return {k: v.strip().lower().replace(" ", "_") for k, v in re.findall(r"(\d+)\s*-\s*([A-Za-z][A-Za-z _]*)", desc or "")}


def _num(x) -> float | None:
    if x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x) if x == x else None
    best = None
    for t in str(x).replace("&", ",").split(","):
        try:
            v = float(t)
        except ValueError:
            continue
        if v == v and (best is None or v > best):
            best = v
    return best


def _vep_keys(ref: str, alts: list[str]) -> dict[str, int]:
    """CSQ ``Allele`` → alt index. VEP drops the first base when all alleles share it and any is an indel."""
    m: dict[str, int] = {}
    plain = [a for a in alts if a and a[0] not in "<*." and "[" not in a and "]" not in a]
    if ref and plain and any(len(a) != len(ref) for a in plain) and all(a[0] == ref[0] for a in plain):
        for i, a in enumerate(alts):
            if a in plain:
                m.setdefault(a[1:] or "-", i)
    for i, a in enumerate(alts):
        m.setdefault(a, i)
    return m


class _Reader:
    def __init__(self, ctx, path: Path):
        self.ctx = ctx
        self.path = path
        self.genes = ctx.res.genes
        self.cols: dict[str, list] = {c: [] for c in _VARIANT_COLS}
        self.n_acc = 0                # records read whose rows are in self.cols
        self._chrom: dict[str, str] = {}
        self._ann_cache: dict = {}
        self._pick_idx: dict = {}
        self._cln_cache: dict = {}

    # -- header ---------------------------------------------------------------------------------
    def _setup(self, vcf) -> None:
        info = {}
        for h in vcf.header_iter():
            try:
                d = h.info()
            except Exception:
                continue
            if d.get("HeaderType") == "INFO" and "ID" in d:
                info[d["ID"]] = d.get("Description", "")
        self._configure(info, list(vcf.samples))

    def _configure(self, info: dict[str, str], samples: list[str]) -> None:
        """Annotation fields and samples from the header (INFO id → description; sample names)."""
        self.csq = self.ann = None
        if "CSQ" in info:
            fmt = _format_from_description(info["CSQ"])
            if fmt:
                self.csq = {k: i for i, k in enumerate(fmt)}
        if "ANN" in info:
            fmt = _format_from_description(info["ANN"]) or list(ANN_DEFAULT_FORMAT)
            self.ann = {k: i for i, k in enumerate(fmt)}
        self.has_clnsig = "CLNSIG" in info
        self.clnsig_legend = _clnsig_legend(info.get("CLNSIG", "")) if self.has_clnsig else {}
        self._cln_cache = {}
        self.has_geneinfo = "GENEINFO" in info
        self.has_mc = "MC" in info
        self.samples = samples
        self.sites_only = not self.samples
        keys = (("AF",) if self.sites_only else ()) + INFO_AF_KEYS
        self.af_keys = [k for k in keys if k in info]
        self.cadd_key = next((k for k in INFO_CADD_KEYS if k in info), None)
        batch = self.ctx.batch
        self.pids = np.array([batch.patient_for_identifier(s) for s in self.samples], dtype=object)
        self.gt_columns: list[int] | None = None     # sample columns read (None: all of them)

    # -- running --------------------------------------------------------------------------------
    def run_text(self, scan: _Scan) -> None:
        import cyvcf2

        good = scan.good
        start = 0
        tmpdir = None
        restarts = 0
        try:
            while start < len(good):
                if scan.problems or start > 0:
                    if tmpdir is None:
                        tmpdir = tempfile.TemporaryDirectory(prefix="raretarget-vcf-")
                    src = Path(tmpdir.name) / f"part{restarts}.vcf"
                    _write_subset(self.path, scan, good[start:], src)
                else:
                    src = self.path
                try:
                    vcf = cyvcf2.VCF(str(src), gts012=False, lazy=True)
                except Exception as e:
                    self.ctx.record()
                    self.ctx.quarantine("file", "vcf_htslib_header", detail=e)
                    # the data lines were not read: count them as covered by this one entry
                    return
                try:
                    self._setup(vcf)
                    self._where = lambda d, s=start: f"line {good[s + d - 1]}"
                    done = self._iterate(vcf)
                    start = len(good)
                except _IterError as e:
                    ln = good[start + e.done]
                    self.ctx.record()
                    self.ctx.quarantine(f"line {ln}", "vcf_htslib_record", detail=e.cause)
                    start += e.done + 1
                    restarts += 1
                    if restarts > 1000:
                        for ln in good[start:]:
                            self.ctx.record()
                            self.ctx.quarantine(f"line {ln}", "vcf_too_many_errors")
                        start = len(good)
                finally:
                    vcf.close()
        finally:
            self._flush()
            if tmpdir is not None:
                tmpdir.cleanup()

    def run_bcf(self) -> None:
        import cyvcf2

        try:
            vcf = cyvcf2.VCF(str(self.path), lazy=True)
        except Exception as e:
            self.ctx.record()
            self.ctx.quarantine("file", "vcf_htslib_header", detail=e)
            return
        try:
            self._setup(vcf)
            self._where = lambda d: f"record {d}"
            self._iterate(vcf)
        except _IterError as e:
            self.ctx.record()
            self.ctx.quarantine(f"record {e.done + 1}", "vcf_htslib_record", detail=e.cause)
        finally:
            vcf.close()
            self._flush()

    def _flush(self) -> None:
        cols = self.cols
        if cols["pos"]:
            self.ctx.emit_columns("variants", cols, records=self.n_acc)
        self.n_acc = 0
        self.cols = {c: [] for c in _VARIANT_COLS}

    # -- hot loop -------------------------------------------------------------------------------
    def _iterate(self, vcf) -> int:
        ctx = self.ctx
        cols = self.cols
        c_pid, c_chrom, c_pos, c_ref, c_alt = (cols[k] for k in ("patient_id", "chrom", "pos", "ref", "alt"))
        c_gene, c_graw, c_gst, c_cons, c_imp = (cols[k] for k in ("gene", "gene_raw", "gene_status", "consequence", "impact"))
        c_hc, c_hp, c_cv, c_af, c_zyg = (cols[k] for k in ("hgvsc", "hgvsp", "clinvar", "af", "zygosity"))
        c_q, c_f, c_sr = cols["qual"], cols["filter"], cols["source_ref"]
        c_rv, c_cd, c_sa = cols["revel"], cols["cadd_phred"], cols["spliceai"]
        chrom_cache = self._chrom
        sites_only = self.sites_only
        pids = self.pids
        zyg_names = np.array(["het", "hom_alt", "hemi"], dtype=object)
        annotate = self._annotate
        ref_fn = ctx.ref
        ignored_carrier = ignored_alt = bad_ann = 0
        done = 0
        it = iter(vcf)
        try:
            while True:
                try:
                    v = next(it)
                except StopIteration:
                    break
                except Exception as e:
                    raise _IterError(done, e) from None
                done += 1
                ctx.record()
                alts = v.ALT
                nalt = len(alts)
                if nalt == 0:
                    ignored_alt += 1
                    continue
                raw_chrom = v.CHROM
                chrom = chrom_cache.get(raw_chrom)
                if chrom is None:
                    chrom = chrom_cache[raw_chrom] = normalize_chrom(raw_chrom)
                pos = v.POS
                ref = v.REF
                qual = v.QUAL
                filt = v.FILTERS
                filt = ";".join(filt) if filt else None
                if sites_only:
                    rows = 0
                    try:
                        anns = annotate(v, ref, alts)
                    except _BadAnnotation:
                        bad_ann += 1
                        ctx.quarantine(self._where(done), "vcf_bad_annotation", field="INFO/CSQ")
                        continue
                    for k, alt in enumerate(alts):
                        if alt == "*":
                            continue
                        a = anns[k]
                        c_pid.append(None); c_chrom.append(chrom); c_pos.append(pos); c_ref.append(ref); c_alt.append(alt)
                        c_gene.append(a[0]); c_graw.append(a[1]); c_gst.append(a[2]); c_cons.append(a[3]); c_imp.append(a[4])
                        c_hc.append(a[5]); c_hp.append(a[6]); c_cv.append(a[7]); c_af.append(a[8]); c_zyg.append(None)
                        c_rv.append(a[9]); c_cd.append(a[10]); c_sa.append(a[11])
                        c_q.append(qual); c_f.append(filt); c_sr.append(ref_fn(f"{chrom}:{pos}:{ref}:{alt}:-"))
                        rows += 1
                    if not rows:
                        ignored_alt += 1
                    continue
                g = v.genotype
                if g is None:
                    ignored_carrier += 1
                    continue
                arr = g.array()[:, :-1]
                if self.gt_columns is not None:
                    arr = arr[self.gt_columns]
                if arr.shape[1] == 1:
                    ploidy = None                           # all haploid
                else:
                    ploidy = (arr != -2).sum(1)
                rows = 0
                anns = None
                for k in range(1, nalt + 1):
                    hit = arr == k
                    cnt = hit.sum(1) if hit.ndim == 2 else hit
                    idx = np.flatnonzero(cnt)
                    m = len(idx)
                    if not m:
                        continue
                    alt = alts[k - 1]
                    if alt == "*":
                        continue
                    if anns is None:
                        try:
                            anns = annotate(v, ref, alts)
                        except _BadAnnotation:
                            rows = -1
                            break
                    a = anns[k - 1]
                    if ploidy is None:
                        zyg = ["hemi"] * m
                    else:
                        pl = ploidy[idx]
                        cn = cnt[idx]
                        code = np.where(pl == 1, 2, np.where(cn >= pl, 1, 0))
                        zyg = zyg_names[code].tolist()
                    sel = pids[idx].tolist()
                    prefix = ref_fn(f"{chrom}:{pos}:{ref}:{alt}:")
                    c_sr.extend([prefix + p for p in sel])
                    c_pid.extend(sel)
                    c_zyg.extend(zyg)
                    c_chrom.extend([chrom] * m); c_pos.extend([pos] * m); c_ref.extend([ref] * m); c_alt.extend([alt] * m)
                    c_gene.extend([a[0]] * m); c_graw.extend([a[1]] * m); c_gst.extend([a[2]] * m)
                    c_cons.extend([a[3]] * m); c_imp.extend([a[4]] * m); c_hc.extend([a[5]] * m); c_hp.extend([a[6]] * m)
                    c_cv.extend([a[7]] * m); c_af.extend([a[8]] * m); c_q.extend([qual] * m); c_f.extend([filt] * m)
                    c_rv.extend([a[9]] * m); c_cd.extend([a[10]] * m); c_sa.extend([a[11]] * m)
                    rows += m
                if rows < 0:
                    bad_ann += 1
                    ctx.quarantine(self._where(done), "vcf_bad_annotation", field="INFO/CSQ")
                    continue
                if not rows:
                    ignored_carrier += 1
        finally:
            self.n_acc += done - ignored_carrier - ignored_alt - bad_ann
            if ignored_carrier:
                ctx.ignore("vcf_site_without_carrier", ignored_carrier)
            if ignored_alt:
                ctx.ignore("vcf_site_without_alt", ignored_alt)
        return done

    # -- per-allele annotation ----------------------------------------------------------------------
    def _annotate(self, v, ref: str, alts: list[str]) -> list[tuple]:
        """Per alt: (gene, gene_raw, gene_status, consequence, impact, hgvsc, hgvsp, clinvar, af, revel,
        cadd_phred, spliceai)."""
        INFO = v.INFO
        csq = INFO.get("CSQ") if self.csq else None
        ann = INFO.get("ANN") if (self.ann and not csq) else None
        clnsig = INFO.get("CLNSIG") if self.has_clnsig else None
        geneinfo = INFO.get("GENEINFO") if self.has_geneinfo else None
        mc = INFO.get("MC") if (self.has_mc and not csq and not ann) else None
        afv = None
        for key in self.af_keys:
            afv = INFO.get(key)
            if afv is not None:
                break
        cadd = INFO.get(self.cadd_key) if self.cadd_key else None
        key = (ref, tuple(alts), csq, ann, clnsig, geneinfo, mc, afv if not isinstance(afv, list) else tuple(afv),
               cadd if not isinstance(cadd, list) else tuple(cadd))
        hit = self._ann_cache.get(key)
        if hit is not None:
            return hit
        out = self._annotate_values(ref, alts, csq, ann, clnsig, geneinfo, mc, afv, cadd)
        if len(self._ann_cache) > 20000:
            self._ann_cache.clear()
        self._ann_cache[key] = out
        return out

    def _annotate_values(self, ref: str, alts: list[str], csq, ann, clnsig, geneinfo, mc, afv,
                         cadd=None) -> list[tuple]:
        """:meth:`_annotate` from the INFO values (no cache)."""
        nalt = len(alts)
        if csq:
            picks = self._pick(csq, self.csq, ref, alts, "Allele", "Consequence", "IMPACT", "SYMBOL", "HGVSc", "HGVSp", True)
        elif ann:
            picks = self._pick(ann, self.ann, ref, alts, "Allele", "Annotation", "Annotation_Impact", "Gene_Name",
                               "HGVS.c", "HGVS.p", False)
        else:
            picks = [None] * nalt
        clin_info = self._clnsig(clnsig) if clnsig is not None else None
        gene_fallback = None
        if geneinfo:
            gene_fallback = str(geneinfo).split("|")[0].split(":")[0] or None
        mc_pick = _most_severe_mc(mc) if mc else None
        out = []
        for k in range(nalt):
            p = picks[k]
            if p is not None:
                gene_raw, cons, impact, hgvsc, hgvsp, clin_csq, af, rv, cd, sa = p
            else:
                gene_raw = cons = impact = hgvsc = hgvsp = clin_csq = af = rv = cd = sa = None
            if not gene_raw:
                gene_raw = gene_fallback
            if cons is None and mc_pick is not None:
                cons, impact = mc_pick
            if af is None and afv is not None:
                if isinstance(afv, (tuple, list)):
                    af = _num(afv[k]) if k < len(afv) else None
                else:
                    af = _num(afv)
            if cd is None and cadd is not None:
                cd = _num(cadd[k] if isinstance(cadd, (tuple, list)) and k < len(cadd) else
                          (None if isinstance(cadd, (tuple, list)) else cadd))
            gene, status = self.genes.normalize(gene_raw)
            out.append((gene, gene_raw, status, cons, impact, hgvsc, hgvsp, clin_info or clin_csq, af, rv, cd, sa))
        return out

    def _pick(self, text: str, fmt: dict, ref: str, alts: list[str], f_allele: str, f_cons: str, f_imp: str,
              f_sym: str, f_hc: str, f_hp: str, vep: bool) -> list:
        """Most severe entry per alt allele of a CSQ/ANN value → (symbol, term, impact, hgvsc, hgvsp, clnsig, af,
        revel, cadd_phred, spliceai); the predictions are those of the picked entry (None when absent)."""
        idx = self._pick_idx.get(id(fmt))
        if idx is None or idx[0] is not fmt:
            ix = _pick_indices(fmt, f_allele, f_cons, f_imp, f_sym, f_hc, f_hp, vep)
            # the fields that choose an entry come first in VEP/snpEff formats: an entry is split only up to the
            # last of them (a VEP --everything entry has ~80 fields), the picked entry in full below
            sel = max(i for i in (*ix[:4], *ix[6:9], 0) if i is not None) + 1
            idx = self._pick_idx[id(fmt)] = (fmt, *ix, sel)
        _, ia, ic, ii, isy, ihc, ihp, inum, ican, imane, iaf, icl, irv, icd, isp, sel = idx
        if len(alts) == 1 and inum is None:
            amap = _ONE_ALT                 # one alt allele: every entry is its (see below: k None → 0)
        else:
            amap = _vep_keys(ref, alts) if vep else {a: i for i, a in enumerate(alts)}
        nalt = len(alts)
        best: list = [None] * nalt          # (key, fields, term)
        best_sym: list = [None] * nalt      # most severe entry with a gene symbol
        nfmt = len(fmt)
        crank = _cons_rank
        for entry in text.split(","):
            nf = entry.count("|") + 1
            if vep and nf > nfmt:                       # more fields than the header names: misaligned
                raise _BadAnnotation()
            f = entry.split("|", sel)
            k = None
            if inum is not None and inum < nf and f[inum].isdigit():
                k = int(f[inum]) - 1
            elif ia is not None and ia < nf:
                k = amap.get(f[ia])
            if k is None:
                if nalt == 1:
                    k = 0
                else:
                    continue
            if not 0 <= k < nalt:
                continue
            cons = f[ic] if ic is not None and ic < nf else ""
            rt = crank.get(cons)
            if rt is None:
                rt = _consequence_rank(cons)
            rank, term = rt
            if vep and (rank >= _UNRANKED or (ii is not None and ii < nf and f[ii] not in _IMPACTS)):
                raise _BadAnnotation()              # not an SO term / not a VEP impact: fields misaligned
            mane = imane is not None and imane < nf and f[imane] != ""
            canon = ican is not None and ican < nf and f[ican] == "YES"
            key = (rank, not mane, not canon)
            b = best[k]
            if b is None or key < b[0]:
                best[k] = (key, entry, term)
            sym = f[isy] if isy is not None and isy < nf else ""
            if sym:
                bs = best_sym[k]
                if bs is None or key < bs[0]:
                    best_sym[k] = (key, entry, term)
        out = []
        for k in range(nalt):
            b = best[k]
            if b is None:
                out.append(None)
                continue
            _, entry, term = b
            f = entry.split("|")
            nf = len(f)
            sym = (f[isy] or None) if isy is not None and isy < nf else None
            if not sym and best_sym[k] is not None:
                sym = best_sym[k][1].split("|")[isy]
            impact = ((f[ii] or None) if ii is not None and ii < nf else None) or (TERM_IMPACT.get(term) if term else None)
            hc = (f[ihc] or None) if ihc is not None and ihc < nf else None
            hp = (f[ihp] or None) if ihp is not None and ihp < nf else None
            if hp and "%3D" in hp:
                hp = hp.replace("%3D", "=")
            af = _num((f[iaf] or None) if iaf < nf else None) if iaf is not None else None
            clv = (f[icl] or None) if icl is not None and icl < nf else None
            cl = self._clnsig(clv) if clv else None
            rv = _num(f[irv] or None) if irv is not None and irv < nf else None
            cd = _num(f[icd] or None) if icd is not None and icd < nf else None
            sa = None
            for i in isp:
                v = _num(f[i] or None) if i < nf else None
                if v is not None and (sa is None or v > sa):
                    sa = v
            out.append((sym, term, impact, hc, hp, cl, af, rv, cd, sa))
        return out

    def _clnsig(self, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            value = ",".join(str(x) for x in value)
        hit = self._cln_cache.get(value)
        if hit is not None:
            return hit[0]
        out = self._clnsig_parse(value)
        if len(self._cln_cache) < 10_000:
            self._cln_cache[value] = (out,)
        return out

    def _clnsig_parse(self, value: str) -> str | None:
        legend = self.clnsig_legend
        seen: list[str] = []
        for tok in _CLNSIG_SPLIT.split(str(value)):
            tok = tok.strip()
            if not tok or tok == ".":
                continue
            tok = legend.get(tok, tok) if tok.isdigit() else tok
            tok = tok.lower().replace(" ", "_")
            if tok not in seen:
                seen.append(tok)
        return "|".join(seen) or None


_ONE_ALT: dict = {}
#: CSQ/ANN consequence string → (severity rank, most severe Ensembl term); memo of :func:`_consequence_rank`
_cons_rank: dict[str, tuple[int, str | None]] = {}


def _consequence_rank(cons: str) -> tuple[int, str | None]:
    rank, term = _UNRANKED + 1, None
    for t in cons.split("&"):
        t = TERM_ALIASES.get(t, t)
        r = SEVERITY.get(t, _UNRANKED)
        if r < rank and t:
            rank, term = r, t
    if len(_cons_rank) < 100_000:
        _cons_rank[cons] = (rank, term)
    return rank, term


def _pick_indices(fmt: dict, f_allele, f_cons, f_imp, f_sym, f_hc, f_hp, vep: bool) -> tuple:
    """Field positions :meth:`_Reader._pick` reads, once per CSQ/ANN format."""
    imane = None
    if vep:
        for name in ("MANE_SELECT", "MANE"):
            if name in fmt:
                imane = fmt[name]
                break
    return (fmt.get(f_allele), fmt.get(f_cons), fmt.get(f_imp), fmt.get(f_sym), fmt.get(f_hc), fmt.get(f_hp),
            fmt.get("ALLELE_NUM") if vep else None, fmt.get("CANONICAL") if vep else None, imane,
            next((fmt[n] for n in CSQ_AF_FIELDS if n in fmt), None) if vep else None,
            next((fmt[n] for n in CSQ_CLNSIG_FIELDS if n in fmt), None) if vep else None,
            next((fmt[n] for n in CSQ_REVEL_FIELDS if n in fmt), None) if vep else None,
            next((fmt[n] for n in CSQ_CADD_FIELDS if n in fmt), None) if vep else None,
            tuple(fmt[n] for n in CSQ_SPLICEAI_FIELDS if n in fmt) if vep else ())


def _most_severe_mc(mc) -> tuple[str, str] | None:
    """ClinVar ``MC`` ("SO:0001583|missense_variant,SO:…") → (most severe Ensembl term, impact)."""
    best = None
    for part in str(mc).split(","):
        term = part.split("|")[-1].strip()
        term = TERM_ALIASES.get(term, term)
        r = SEVERITY.get(term, _UNRANKED)
        if term and (best is None or r < best[0]):
            best = (r, term)
    if best is None:
        return None
    return best[1], TERM_IMPACT.get(best[1])


_IMPACTS = frozenset(IMPACTS + ("",))


class _BadAnnotation(Exception):
    """A CSQ entry whose field count differs from the header's Format: the fields can't be trusted."""


class _IterError(Exception):
    def __init__(self, done: int, cause: Exception):
        super().__init__(str(cause))
        self.done = done
        self.cause = cause


def _msg(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


# ---- store-free reading (ranking one case) --------------------------------------------------------

#: columns of :func:`read_variants`' table, in order (the store's ``variants`` columns without ``patient_id``
#: and ``source_ref``: nothing that names a sample or the file)
DIRECT_COLS = ("gene", "consequence", "impact", "hgvsc", "hgvsp", "clinvar", "af", "revel", "cadd_phred", "spliceai",
               "zygosity", "chrom", "pos", "ref", "alt", "gene_raw", "gene_status", "qual", "filter")
_DIRECT_TYPES = {"pos": "int64", "af": "float64", "revel": "float64", "cadd_phred": "float64", "spliceai": "float64",
                 "qual": "float64"}


class NoUsableVariant(ValueError):
    """A VCF that gives no variant to rank with (unreadable, no carried allele, no gene)."""


class VcfProblems:
    """What :func:`read_variants` met besides the rows: quarantined lines as ``(locator, code, field)`` (codes from
    :mod:`raretarget.ingest.reasons`; locators are ``line N`` / ``record N`` / ``file``, never a value), ignored
    record counts by kind, the sample choice and the genome build used for genes by position."""

    def __init__(self):
        self.records = 0
        self.quarantined: list[tuple[str, str, str | None]] = []
        self.ignored: dict[str, int] = {}
        self.n_samples = 0
        self.sample_index: int | None = None        # 0-based column of the sample ranked (None: sites-only)
        self.build: str | None = None               # genome build used for genes by position, when used
        self.by_position = 0                        # rows whose gene came from the interval table
        self.notes: dict[str, str] = {}

    def codes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, c, _f in self.quarantined:
            out[c] = out.get(c, 0) + 1
        return out

    def __repr__(self) -> str:
        return (f"VcfProblems(records={self.records}, quarantined={self.codes()}, ignored={self.ignored}, "
                f"samples={self.n_samples}, sample_index={self.sample_index}, build={self.build})")


class _DirectBatch:
    """Stands in for the ingest batch: a sample's 'patient id' is its column index, never its name."""

    def __init__(self):
        self._n = 0

    def patient_for_identifier(self, value):
        i = self._n
        self._n += 1
        return str(i)


class _DirectContext:
    """The reader's ingest context for :func:`read_variants`: counts and codes only, no store, no raw values."""

    kind = "vcf"

    def __init__(self, resources, problems: VcfProblems):
        self.res = resources
        self.batch = _DirectBatch()
        self.p = problems
        self.parts: list[dict[str, list]] = []

    def record(self, n: int = 1) -> None:
        self.p.records += n

    def ignore(self, what: str, n: int = 1) -> None:
        self.p.ignored[what] = self.p.ignored.get(what, 0) + n

    def quarantine(self, record, code, raw=None, *, field=None, detail=None, n: int = 1) -> None:
        from .reasons import REASONS

        if code not in REASONS:
            raise KeyError(f"unknown quarantine reason code {code!r}")
        self.p.quarantined.append((str(record)[:80], code, field))

    def ref(self, locator: str) -> str:
        return ""

    def emit_columns(self, table: str, columns: dict[str, list], records: int = 0) -> None:
        self.parts.append(columns)


def read_variants(path, resources=None, *, sample: str | int | None = None, build: str | None = None,
                  require_gene: bool = True, max_af: float | None = None):
    """Read one VCF/BCF for ranking, without a store → ``(pyarrow.Table, VcfProblems)``.

    The same reader as ingest (pre-scan, quarantine codes, CSQ/ANN picking, ClinVar, AF, gene normalisation
    with ``resources.genes``, loaded once per ``resources``). Rows: one per alt allele the chosen sample carries,
    columns :data:`DIRECT_COLS` (``pos`` 1-based as in the file; no sample name or patient id).

    * ``sample``: the sample column to rank — its name or 0-based index; default the **first** sample
      (``problems.notes["sample"]`` says so when the file has several). Sites-only files give every alt allele
      with ``zygosity`` NULL.
    * Rows without a gene from CSQ/ANN/GENEINFO get one by position from the shipped gene-interval table
      (:mod:`raretarget.ingest.intervals`): ``build`` ``"GRCh37"``/``"GRCh38"``, default from the header
      (``##reference``/``##assembly``, contig lengths); ``consequence`` and ``impact`` stay NULL (unknown),
      ``gene_status`` is ``position``.
    * ``max_af``: alleles whose population AF (the ``af`` column's value: CSQ gnomAD-like field, else INFO) is
      ``≥ max_af`` give no row; they are counted as ``problems.ignored["vcf_common_allele"]``. For ranking, where a
      common allele adds nothing (:data:`raretarget.vocab.variants.COMMON_AF`). On a one-alt text record with a
      CSQ the frequency field of every entry is read before any entry is picked (common when all are ≥
      ``max_af``, so the picked one is too): picking is most of the time a ranking spends reading a
      multi-transcript VEP file. Such a record's entries are then only checked for their field count: a common
      allele whose entry is malformed in content is counted as common rather than quarantined.
    * Raises :class:`NoUsableVariant` when nothing can be ranked (file unreadable, no allele carried by the
      sample, or — with ``require_gene`` — no row with a gene); the message gives counts and reason codes, never
      a value from the file.
    """
    import pyarrow as pa

    if resources is None:
        from .core import Resources

        resources = Resources()
    path = Path(path)
    problems = VcfProblems()
    ctx = _DirectContext(resources, problems)
    reader = _DirectReader(ctx, path, sample)
    reader.max_af = max_af
    kind = _sniff(path)
    if kind == "unreadable":
        ctx.record()
        ctx.quarantine("file", "unreadable_gzip")
    elif kind == "bcf":
        reader.run_bcf()
    else:
        reader.run_fast()
    if reader.sample_error is not None:
        raise reader.sample_error
    problems.n_samples = reader.n_samples
    problems.sample_index = reader.sample_index
    cols: dict[str, list] = {c: [] for c in _VARIANT_COLS}
    for part in ctx.parts:
        for c in _VARIANT_COLS:
            cols[c].extend(part[c])
    if max_af is not None and cols["pos"]:
        # what the text path's early test (_DirectReader._common) did not skip: BCF, multi-allelic records, an
        # entry without a frequency, CSQ entries that disagree; decided on the picked entry's AF
        keep = [a is None or not a >= max_af for a in cols["af"]]
        if not all(keep):
            for c in _VARIANT_COLS:
                cols[c] = [x for x, k in zip(cols[c], keep) if k]
            ctx.ignore("vcf_common_allele", keep.count(False))
    n = len(cols["pos"])
    if reader.n_samples > 1:
        problems.notes["sample"] = (f"multi-sample VCF ({reader.n_samples} samples): ranked for sample column "
                                    f"{reader.sample_index + 1}" + (" (the first; pass sample= to choose)"
                                                                    if sample is None else ""))
    if n:
        cols = _genes_by_position(cols, reader, resources, problems, build)
    arrays = {}
    for c in DIRECT_COLS:
        t = _DIRECT_TYPES.get(c, "string")
        arrays[c] = pa.array(cols[c], type=getattr(pa, t)())
    table = pa.table(arrays)
    if n == 0:
        raise NoUsableVariant(_nothing_message(problems, reader))
    if require_gene and table.column("gene").null_count == n:
        raise NoUsableVariant(
            f"VCF has {n} variant(s) but none could be assigned to a gene (no CSQ/ANN/GENEINFO gene"
            + (f"; none lies in a {problems.build} gene of the shipped interval table" if problems.build else
               "; genome build unknown for genes by position: pass build='GRCh37' or 'GRCh38' or add ##reference "
               "to the header") + ")" + _problem_suffix(problems))
    return table, problems


def _problem_suffix(p: VcfProblems) -> str:
    parts = []
    if p.quarantined:
        parts.append("quarantined: " + ", ".join(f"{c} ×{k}" for c, k in sorted(p.codes().items())))
    if p.ignored:
        parts.append("ignored: " + ", ".join(f"{c} ×{k}" for c, k in sorted(p.ignored.items())))
    return ("; " + "; ".join(parts)) if parts else ""


def _nothing_message(p: VcfProblems, reader) -> str:
    if p.records == 0:
        what = "VCF has no data line"
    elif p.ignored.get("vcf_common_allele") and not p.quarantined:
        what = f"every allele the ranked sample carries in the VCF's {p.records} record(s) is common"
    elif reader.n_samples and not p.quarantined:
        what = f"the ranked sample carries no alt allele in any of the VCF's {p.records} record(s)"
    else:
        what = f"no usable variant in the VCF's {p.records} record(s)"
    return what + _problem_suffix(p)


class _DirectReader(_Reader):
    """:class:`_Reader` keeping one sample's calls (by column index; names are only compared, never kept).

    Text VCFs are parsed in Python as the pre-scan passes each good line (:meth:`run_fast`: one pass, no
    htslib; values as cyvcf2 gives them, INFO floats rounded to float32 as htslib stores them); BCF goes
    through cyvcf2 like ingest."""

    def __init__(self, ctx, path: Path, sample):
        super().__init__(ctx, path)
        self.want = sample
        self.n_samples = 0
        self.sample_index: int | None = None
        self.sample_error: Exception | None = None
        self.contig_lengths: dict[str, int] = {}
        self.reference: str | None = None
        self.max_af: float | None = None            # see read_variants
        self._csq_af_index: tuple | None = None     # (CSQ format, its frequency field's position)

    # -- header ---------------------------------------------------------------------------------
    def _setup(self, vcf) -> None:
        self.reference = None
        for h in vcf.header_iter():
            try:
                d = h.info()
            except Exception:
                continue
            if d.get("HeaderType") == "CONTIG" and d.get("ID") and str(d.get("length", "")).isdigit():
                self.contig_lengths[normalize_chrom(d["ID"])] = int(d["length"])
            elif d.get("HeaderType") == "GENERIC" and d.get("key") in ("reference", "assembly"):
                self.reference = (self.reference or "") + " " + str(d.get("value", ""))
        super()._setup(vcf)

    def _configure(self, info: dict[str, str], samples: list[str]) -> None:
        super()._configure(info, samples)
        self.n_samples = n = len(samples)
        if not n:
            return
        want = self.want
        if want is None:
            idx = 0
        elif isinstance(want, int) and not isinstance(want, bool):
            idx = want if 0 <= want < n else None
        else:
            idx = samples.index(str(want)) if str(want) in samples else None
        if idx is None:
            self.sample_error = ValueError(f"sample {'index' if isinstance(want, int) else 'name'} not in the VCF "
                                           f"(it has {n} sample column(s))")
            idx = 0
        self.sample_index = idx
        # BCF goes through the ingest loop (:meth:`_Reader._iterate`) restricted to this one genotype column
        self.gt_columns = [idx]
        self.pids = self.pids[[idx]]

    def _header_from_lines(self, header: list[bytes]) -> None:
        info: dict[str, str] = {}
        self.info_float: set[str] = set()
        for raw in header:
            line = raw.decode("utf-8", "replace")
            if line.startswith("##INFO=<"):
                m = re.search(r"[<,]ID=([^,>]+)", line)
                if not m:
                    continue
                d = re.search(r'Description="((?:[^"\\]|\\.)*)"', line)
                info[m.group(1)] = d.group(1) if d else ""
                if re.search(r"[<,]Type=Float[,>]", line):
                    self.info_float.add(m.group(1))
            elif line.startswith("##contig=<"):
                m = re.search(r"[<,]ID=([^,>]+)", line)
                ln = re.search(r"[<,]length=(\d+)", line)
                if m and ln:
                    self.contig_lengths[normalize_chrom(m.group(1))] = int(ln.group(1))
            elif line.startswith(("##reference=", "##assembly=")):
                self.reference = (self.reference or "") + " " + line.split("=", 1)[1]
            elif line.startswith("#CHROM"):
                samples = line.split("\t")[9:]
        self._configure(info, samples)
        self._col = 9 + (self.sample_index or 0)
        self.want_keys = frozenset(k for k in ("CSQ", "ANN", "CLNSIG", "GENEINFO", "MC", *self.af_keys,
                                               *((self.cadd_key,) if self.cadd_key else ())) if k in info)
        self._gt_index: dict[bytes, int] = {}

    # -- one pass over a text VCF -----------------------------------------------------------------
    def run_fast(self) -> bool:
        """Parse a text VCF as the pre-scan passes it; False when the file as a whole was unusable."""
        self._started = False
        self._qual: dict = {}
        self._rows: list[tuple] = []
        self._fast_counts = [0, 0, 0, 0]       # ignored: no carrier, no alt; quarantined annotations; common
        scan = _prescan(self.path, self.ctx, on_good=self._fast_line)
        if scan is not None and not self._started:
            self._header_from_lines(scan.header)
        ic, ia, _, icommon = self._fast_counts
        if icommon:
            self.ctx.ignore("vcf_common_allele", icommon)
        if ic:
            self.ctx.ignore("vcf_site_without_carrier", ic)
        if ia:
            self.ctx.ignore("vcf_site_without_alt", ia)
        if self._rows:
            names = ("chrom", "pos", "ref", "alt", "gene", "gene_raw", "gene_status", "consequence", "impact",
                     "hgvsc", "hgvsp", "clinvar", "af", "revel", "cadd_phred", "spliceai", "zygosity", "qual", "filter")
            cols = dict(zip(names, map(list, zip(*self._rows))))
            n = len(self._rows)
            cols["patient_id"] = cols["source_ref"] = [""] * n
            self.ctx.emit_columns("variants", cols)
        return scan is not None

    def _fast_line(self, n: int, line: bytes, scan) -> None:
        if not self._started:
            self._started = True
            self._header_from_lines(scan.header)
        self.ctx.p.records += 1
        p = line.split(b"\t")
        alt_s = p[4]
        if alt_s == b".":
            self._fast_counts[1] += 1
            return
        alts = alt_s.decode().split(",")
        nalt = len(alts)
        # genotype of the chosen sample → {allele number: zygosity}
        if self.sites_only:
            zyg_of = {k: None for k in range(1, nalt + 1)}
        else:
            fmt = p[8]
            gi = self._gt_index.get(fmt)
            if gi is None:
                keys = fmt.split(b":")
                gi = self._gt_index[fmt] = keys.index(b"GT") if b"GT" in keys else -1
            sv = p[self._col] if self._col < len(p) else b""
            if gi == 0:
                gt = sv.split(b":", 1)[0]
            elif gi > 0:
                parts = sv.split(b":")
                gt = parts[gi] if len(parts) > gi else b""
            else:
                gt = b""
            zyg_of = _GT_SIMPLE.get(gt) if nalt == 1 else None
            if zyg_of is None:
                zyg_of = _zygosities(gt, nalt)
        if nalt == 1:
            carried = [1] if 1 in zyg_of and alts[0] != "*" else ()
        else:
            carried = [k for k in sorted(zyg_of) if alts[k - 1] != "*"]
        if not carried:
            self._fast_counts[0 if not self.sites_only else 1] += 1
            return
        csq = ann = clnsig = geneinfo = mc = afv = cadd = None
        want = self.want_keys
        if want:
            info: dict[str, object] = {}
            fl = self.info_float
            for kv in p[7].decode().split(";"):
                k, eq, v = kv.partition("=")
                if eq and k in want:
                    if k in fl:
                        vals = [None if x in (".", "") else _f32(x) for x in v.split(",")]
                        info[k] = vals[0] if len(vals) == 1 else tuple(vals)
                    else:
                        info[k] = v
            if info:
                csq = info.get("CSQ") if self.csq else None
                ann = info.get("ANN") if (self.ann and not csq) else None
                clnsig = info.get("CLNSIG") if self.has_clnsig else None
                geneinfo = info.get("GENEINFO") if self.has_geneinfo else None
                mc = info.get("MC") if (self.has_mc and not csq and not ann) else None
                for key in self.af_keys:
                    afv = info.get(key)
                    if afv is not None:
                        break
                cadd = info.get(self.cadd_key) if self.cadd_key else None
        if self.max_af is not None and nalt == 1 and self._common(csq, afv):
            self._fast_counts[3] += 1
            return
        ref = p[3].decode()
        try:
            anns = self._annotate_values(ref, alts, csq, ann, clnsig, geneinfo, mc, afv, cadd)
        except _BadAnnotation:
            self._fast_counts[2] += 1
            self.ctx.quarantine(f"line {n}", "vcf_bad_annotation", field="INFO/CSQ")
            return
        chrom_b = p[0]
        chrom = self._chrom.get(chrom_b)
        if chrom is None:
            chrom = self._chrom[chrom_b] = normalize_chrom(chrom_b.decode())
        pos = int(p[1])
        q = p[5]
        qual = self._qual.get(q, _MISS)
        if qual is _MISS:
            qual = self._qual[q] = None if q == b"." else _f32(q.decode())
        filt = None if p[6] == b"." else p[6].decode()
        rows = self._rows
        for k in carried:
            rows.append((chrom, pos, ref, alts[k - 1], *anns[k - 1], zyg_of[k], qual, filt))

    def _common(self, csq: str | None, afv) -> bool:
        """A one-alt record's population AF, as :meth:`_annotate_values` would read it, is ``≥ max_af``: the CSQ
        frequency field of every entry (VEP writes the same on each entry of an allele; False when one is empty
        or the entries have another field count than the header, so the full pick decides), else INFO's."""
        fmt = self.csq
        if csq and fmt is not None:
            iaf = self._csq_af_index
            if iaf is None or iaf[0] is not fmt:
                iaf = self._csq_af_index = (fmt, next((fmt[n] for n in CSQ_AF_FIELDS if n in fmt), None))
            i, nf = iaf[1], len(fmt)
            if i is not None:
                late = 2 * i > nf          # split from the nearer end (VEP writes the frequencies late)
                try:
                    end = csq.find(",")
                    e = csq if end < 0 else csq[:end]
                    x = e.rsplit("|", nf - i)[1] if late else e.split("|", i + 1)[i]
                    try:
                        af = float(x)
                    except ValueError:     # empty, or several values ("0.1&0.2": _num takes the largest)
                        af = _num(x or None)
                    if af is None or not af >= self.max_af:
                        return False       # the first entry decides most records: rare (or unknown, NaN) → pick
                    # entries as wide as the header says (a misaligned entry: the full pick decides, quarantines)
                    if csq.count("|") != (csq.count(",") + 1) * (nf - 1):
                        return False
                    if end < 0:
                        return True
                    vals = ({e.rsplit("|", nf - i)[1] for e in csq.split(",")} if late else
                            {e.split("|", i + 1)[i] for e in csq.split(",")})
                except IndexError:
                    return False
                if len(vals) == 1:         # every entry has the first one's value
                    return True
                afs = [_num(v or None) for v in vals]
                # common only if every entry says so: the picked entry's frequency is then common too
                return None not in afs and min(afs) >= self.max_af
        if afv is None:
            return False
        af = _num(afv[0] if isinstance(afv, (tuple, list)) else afv)
        return af is not None and af >= self.max_af


_MISS = object()
#: one-alt genotypes → {1: zygosity} (no entry: allele not carried); anything else goes through _zygosities
_GT_SIMPLE: dict[bytes, dict] = {
    **{g: {1: "het"} for g in (b"0/1", b"1/0", b"0|1", b"1|0", b"./1", b"1/.", b".|1", b"1|.")},
    **{g: {1: "hom_alt"} for g in (b"1/1", b"1|1")}, b"1": {1: "hemi"},
    **{g: {} for g in (b"0/0", b"0|0", b"./.", b".|.", b"0", b".", b"", b"0/.", b"./0", b"0|.", b".|0")},
}


def _zygosities(gt: bytes, nalt: int) -> dict[int, str]:
    """GT of one sample → {allele number: het | hom_alt | hemi} for the alt alleles it carries (as cyvcf2 +
    :meth:`_Reader._iterate`: ploidy counts missing alleles, one allele → hemi, all alleles this one → hom_alt)."""
    if gt[:1] in (b"/", b"|"):
        gt = gt[1:]
    call = gt.replace(b"|", b"/").split(b"/") if gt else []
    ploidy = len(call)
    cnt: dict[int, int] = {}
    for a in call:
        if a.isdigit() and a != b"0":
            k = int(a)
            if k <= nalt:
                cnt[k] = cnt.get(k, 0) + 1
    return {k: ("hemi" if ploidy == 1 else ("hom_alt" if c >= ploidy else "het")) for k, c in cnt.items()}


def _f32(x: str) -> float | None:
    """A float as htslib stores it (float32), or None when not a number."""
    try:
        return float(np.float32(x))
    except (ValueError, OverflowError):
        return None


def _genes_by_position(cols: dict, reader: _DirectReader, resources, problems: VcfProblems, build) -> dict:
    """Rows without any annotation (no gene, no consequence) get their gene(s) by position from the shipped
    interval table (``gene_status`` ``position``, consequence/impact NULL = unknown); a row in several genes is
    repeated once per gene. Returns the (possibly new) columns."""
    gene, raw, cons = cols["gene"], cols["gene_raw"], cols["consequence"]
    missing = [i for i in range(len(gene)) if gene[i] is None and raw[i] is None and cons[i] is None]
    if not missing:
        return cols
    from .intervals import detect_build, gene_intervals, normalize_build

    b = normalize_build(build) if build else detect_build(reader.reference, reader.contig_lengths)
    if b is None:
        problems.notes["genes_by_position"] = (
            f"{len(missing)} variant(s) without a gene annotation: genome build unknown (no ##reference / contig "
            "lengths), pass build='GRCh37' or 'GRCh38'")
        return cols
    problems.build = b
    iv = gene_intervals(b)
    chrom, pos, ref = cols["chrom"], cols["pos"], cols["ref"]
    hits = iv.lookup([chrom[i] for i in missing], [pos[i] for i in missing], [len(ref[i] or "N") for i in missing])
    norm = resources.genes.normalize
    found = {i: h for i, h in zip(missing, hits) if h}
    n_rows = len(gene)
    out: dict[str, list] = {c: [] for c in cols}
    names = list(cols)
    for i in range(n_rows):
        h = found.get(i)
        if h is None:
            for c in names:
                out[c].append(cols[c][i])
            continue
        for g in h:
            for c in names:
                out[c].append(cols[c][i])
            out["gene"][-1] = norm(g)[0] or g
            out["gene_status"][-1] = "position"
    problems.by_position = len(found)
    problems.notes["genes_by_position"] = (
        f"{len(found)} of {len(missing)} variant(s) without a gene annotation placed in a gene by position ({b}, "
        "VCF POS 1-based; impact unknown)")
    return out
