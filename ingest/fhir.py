"""FHIR R4 reader: transaction/collection Bundles and Bulk-Data NDJSON (gzip or not).

Fast path: orjson + direct dict access (full pydantic validation of every resource is ~18x slower);
``validate="full"`` (``Engine.ingest(..., fhir_validate="full")``) additionally validates each stored
resource with the fhir.resources R4B models and quarantines what fails.

Stored: Patient, Condition, Observation (components split into rows), DocumentReference (notes from
inline base64 ``attachment.data`` only: an attachment given by ``url`` (file://, relative path, http) is never
opened; a document with no inline text is quarantined ``attachment_url_refused``), DiagnosticReport (plus presentedForm notes), ImagingStudy (one row
per series), MedicationRequest, Procedure. Other valid resource types are counted as ignored.
References: ``urn:uuid:`` (resolved through the Bundle's fullUrls), ``Patient/<id>``, absolute
``.../Patient/<id>[/_history/n]`` and conditional ``Patient?identifier=system|value``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import html
import math
import zlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson

from raretarget.store.pseudo import DateOutOfRange

from .core import FileContext
from .deid import patient_phi_terms, scrub_text

R4_RESOURCE_TYPES = frozenset("""
Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic
Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List Location Measure
MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization
MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition MessageHeader
MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation
Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial
SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport TestScript
ValueSet VerificationResult VisionPrescription
AdministrableProductDefinition ClinicalUseDefinition Citation EvidenceReport Ingredient
ManufacturedItemDefinition MedicinalProductDefinition NutritionProduct PackagedProductDefinition
RegulatedAuthorization SubscriptionStatus SubscriptionTopic
""".split())

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
_TAGS = re.compile(r"<[^>]+>")
_MAX_AGE = 89          # HIPAA safe harbour: ages over 89 are aggregated (birth_year withheld)


class BadRecord(ValueError):
    """A record that can't be stored: a reason ``code`` (:mod:`raretarget.ingest.reasons`) and the ``field``
    path where it was found. Never carries the offending value."""

    def __init__(self, code: str, field: str | None = None):
        super().__init__(code)
        self.code = code
        self.field = field


def read_fhir(path: Path, ctx: FileContext) -> None:
    name = path.name.lower()
    ndjson = name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz"))
    # FHIR Bulk Data export: files under a ``deleted/`` folder list deleted resources ({resourceType, id})
    ctx.deleted_listing = path.parent.name.lower() == "deleted"
    if ndjson:
        _read_ndjson(path, ctx)
        return
    if _large(path) and _read_bundle_streamed(path, ctx):
        return
    raw = _read_bytes(path)
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if _looks_like_ndjson(raw):
            try:
                lines = raw.decode("utf-8", "strict").splitlines()
            except UnicodeDecodeError:
                _read_ndjson_bytes(raw, ctx)
                return
            _read_ndjson_lines(lines, ctx)
            return
        ctx.record()
        ctx.quarantine("file", _json_code(e), raw)
        return
    if not isinstance(doc, dict):
        ctx.record()
        ctx.quarantine("file", "not_json_object", raw)
        return
    if doc.get("resourceType") == "Bundle":
        _read_bundle(doc, ctx)
    else:
        _Reader(ctx, {}).handle(doc, "resource")


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


def _looks_like_ndjson(raw: bytes) -> bool:
    lines = raw.strip().split(b"\n", 2)
    return len(lines) > 1 and lines[0].strip().startswith(b"{") and lines[0].strip().endswith(b"}")


_BOM = b"\xef\xbb\xbf"


def _json_code(e: Exception) -> str:
    msg = str(e).lower()
    if "utf-8" in msg or "unicode" in msg or "surrogate" in msg:
        return "not_utf8"
    return "malformed_json"


#: a single NDJSON line longer than this is quarantined unread (``record_too_large``), never held in memory
MAX_LINE = 64 << 20


def _read_ndjson(path: Path, ctx: FileContext) -> None:
    """Stream the file line by line (gzip or not): memory is bounded by one line, not by the file."""
    r = _Reader(ctx, {})
    n = 0
    try:
        with _open_binary(path) as f:
            while True:
                bline = f.readline(MAX_LINE + 1)
                if not bline:
                    break
                n += 1
                if len(bline) > MAX_LINE and not bline.endswith(b"\n"):
                    while True:                       # skip the rest of the over-long line, chunk by chunk
                        chunk = f.readline(1 << 20)
                        if not chunk or chunk.endswith(b"\n"):
                            break
                    ctx.record()
                    ctx.quarantine(f"line {n}", "record_too_large", bline[:4096])
                    continue
                if n == 1 and bline.startswith(_BOM):
                    bline = bline[len(_BOM):]
                _ndjson_line(r, ctx, bline, n)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        # truncated/unreadable gzip: what was read is kept, the rest is one quarantine entry
        ctx.record()
        ctx.quarantine(f"after line {n}", "unreadable_gzip", detail=e)


def _ndjson_line(r: "_Reader", ctx: FileContext, bline: bytes, n: int) -> None:
    """One NDJSON line (1-based ``n``): blank lines skipped, invalid UTF-8 quarantined, the rest read."""
    if not bline.strip():
        return
    try:
        bline.decode("utf-8")
    except UnicodeDecodeError:
        ctx.record()
        ctx.quarantine(f"line {n}", "not_utf8", bline)
        return
    r.handle_line(bline, n)


def _open_binary(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_ndjson_bytes(raw: bytes, ctx: FileContext) -> None:
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    r = _Reader(ctx, {})
    for n, bline in enumerate(raw.split(b"\n"), 1):
        _ndjson_line(r, ctx, bline, n)


def _read_ndjson_lines(lines, ctx: FileContext) -> None:
    r = _Reader(ctx, {})
    for n, line in enumerate(lines, 1):
        if line.strip():
            r.handle_line(line, n)


def _read_bundle(doc: dict, ctx: FileContext) -> None:
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        ctx.record()
        ctx.quarantine("Bundle.entry", "bundle_entry_not_list", field="Bundle.entry")
        return
    fullurls: dict[str, tuple[str, str]] = {}
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            r = e["resource"]
            fu = e.get("fullUrl")
            if fu and r.get("resourceType"):
                fullurls[fu] = (r["resourceType"], r.get("id") or fu.rsplit(":", 1)[-1])
    reader = _Reader(ctx, fullurls)
    entries = [e for e in entries if not _delete_entry(e, ctx)]
    # Patients first, so notes later in the bundle are scrubbed of the patient's identifiers
    order = sorted(range(len(entries)), key=lambda i: 0 if _rtype(entries[i]) == "Patient" else 1)
    for i in order:
        _bundle_entry(reader, entries[i], i, ctx)


def _bundle_entry(reader: "_Reader", e, i: int, ctx: FileContext) -> None:
    if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
        ctx.record()
        ctx.quarantine(f"entry {i}", "bundle_entry_without_resource", orjson.dumps(e) if e is not None else None,
                       field=f"Bundle.entry[{i}].resource")
        return
    res = e["resource"]
    if not res.get("id") and e.get("fullUrl"):
        res = {**res, "id": e["fullUrl"].rsplit(":", 1)[-1].rsplit("/", 1)[-1]}
    reader.handle(res, f"entry {i}")


def _large(path: Path) -> bool:
    from .core import LARGE_FILE

    return path.stat().st_size >= LARGE_FILE


def _bundle_head(path: Path) -> bool:
    """True when the file is a JSON object whose ``resourceType`` is "Bundle", read before its ``entry`` (as
    FHIR serialisers write it): only then is it streamed. Reads no further than that."""
    import ijson

    try:
        with _open_binary(path) as f:
            if f.read(3) != _BOM:
                f.seek(0)
            events = ijson.parse(f)
            first = next(events, None)
            if first is None or first[1] != "start_map":
                return False
            bundle = False
            for prefix, event, value in events:
                if prefix == "resourceType" and event == "string":
                    if value != "Bundle":
                        return False
                    bundle = True
                elif prefix == "entry" and event != "map_key":
                    return bundle and event == "start_array"      # not a list: the whole-file path says so
                elif prefix == "" and event == "end_map":
                    return bundle
    except Exception:  # noqa: BLE001 - malformed: the whole-file path quarantines it with its reason
        return False
    return False


def _entries(path: Path):
    """The Bundle's entries one by one (numbers as int/float, as orjson gives them)."""
    import ijson

    with _open_binary(path) as f:
        if f.read(3) != _BOM:
            f.seek(0)
        yield from ijson.items(f, "entry.item", use_float=True)


def _read_bundle_streamed(path: Path, ctx: FileContext) -> bool:
    """A large Bundle in three passes over ``entry`` (memory: one entry plus its fullUrl index), in the order
    :func:`_read_bundle` reads a whole one: deletes, then Patients, then the rest. False (nothing read) when
    the file is not plainly a Bundle or not well-formed: the caller then reads it whole, as before."""
    try:
        import ijson  # noqa: F401
    except ImportError:                  # optional speed-up of memory; without it Bundles are read whole
        return False
    if not _bundle_head(path):
        return False
    fullurls: dict[str, tuple[str, str]] = {}
    kinds: list[int] = []                # per entry: 0 delete, 1 Patient, 2 other
    try:
        for e in _entries(path):
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                r = e["resource"]
                fu = e.get("fullUrl")
                if fu and r.get("resourceType"):
                    fullurls[fu] = (r["resourceType"], r.get("id") or fu.rsplit(":", 1)[-1])
            kinds.append(0 if _is_delete(e) else 1 if _rtype(e) == "Patient" else 2)
    except Exception:  # noqa: BLE001 - not well-formed JSON (or entry not a list): read whole, as before
        return False
    reader = _Reader(ctx, fullurls)
    for e, k in zip(_entries(path), kinds):
        if k == 0:
            _delete_entry(e, ctx)
    for want in (1, 2):
        i = 0
        for e, k in zip(_entries(path), kinds):
            if k == 0:
                continue
            if k == want:
                _bundle_entry(reader, e, i, ctx)
            i += 1
    return True


def _is_delete(e) -> bool:
    req = e.get("request") if isinstance(e, dict) else None
    return isinstance(req, dict) and str(req.get("method", "")).upper() == "DELETE"


def _delete_entry(e, ctx: FileContext) -> bool:
    """A Bundle entry ``request: {method: DELETE, url: "Type/id"}``: record the delete, return True."""
    req = e.get("request") if isinstance(e, dict) else None
    if not isinstance(req, dict) or str(req.get("method", "")).upper() != "DELETE":
        return False
    ctx.record()
    url = str(req.get("url") or "").split("?")[0].split("/_history/")[0].rstrip("/").split("/")
    if len(url) < 2 or url[-2] not in R4_RESOURCE_TYPES or not url[-1]:
        ctx.quarantine("entry", "delete_without_target", orjson.dumps(e), field="Bundle.entry.request.url")
        return True
    ctx.delete(url[-2], url[-1])
    return True


def _rtype(e) -> str | None:
    return e.get("resource", {}).get("resourceType") if isinstance(e, dict) and isinstance(e.get("resource"), dict) else None


def _first_coding(cc: dict | None, prefer: str | None = None) -> tuple[str | None, str | None, str | None]:
    if not isinstance(cc, dict):
        return None, None, None
    codings = cc.get("coding") or []
    pick = None
    if prefer:
        for c in codings:
            if c.get("system") == prefer:
                pick = c
                break
    if pick is None and codings:
        pick = codings[0]
    if pick is None:
        return None, None, cc.get("text")
    return pick.get("system"), pick.get("code"), pick.get("display") or cc.get("text")


class _Reader:
    def __init__(self, ctx: FileContext, fullurls: dict[str, tuple[str, str]]):
        self.ctx = ctx
        self.pseudo = ctx.pseudo
        self.fullurls = fullurls
        self.validate = ctx.batch.options.get("fhir_validate", "none")
        self.handlers: dict[str, Callable] = {
            "Patient": self._patient, "Condition": self._condition, "Observation": self._observation,
            "DocumentReference": self._document, "DiagnosticReport": self._report,
            "ImagingStudy": self._imaging, "MedicationRequest": self._medication, "Procedure": self._procedure,
        }
        self.shift = self.pseudo.shift

    # ---- records ---------------------------------------------------------------------------------
    def handle_line(self, line, n: int) -> None:
        try:
            res = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self.ctx.record()
            raw = line if isinstance(line, (bytes, str)) else None
            self.ctx.quarantine(f"line {n}", _json_code(e), raw)
            return
        self.handle(res, f"line {n}", raw=line)

    def handle(self, res, locator: str, raw=None) -> None:
        ctx = self.ctx
        ctx.record()
        if not isinstance(res, dict):
            ctx.quarantine(locator, "not_json_object", raw)
            return
        rt = res.get("resourceType")
        if not isinstance(rt, str) or not rt:
            ctx.quarantine(locator, "missing_resource_type", raw or orjson.dumps(res), field="resourceType")
            return
        if getattr(ctx, "deleted_listing", False):
            rid = res.get("id")
            if rt not in R4_RESOURCE_TYPES or not isinstance(rid, str) or not rid:
                ctx.quarantine(locator, "deleted_entry_invalid", raw or orjson.dumps(res), field="id")
            else:
                ctx.delete(rt, rid)
            return
        if rt == "Bundle" and isinstance(res.get("entry"), list):     # NDJSON line holding a (delete) Bundle
            rest = [e for e in res["entry"] if not _delete_entry(e, ctx)]
            if not rest:
                ctx._output()                 # the line itself: its deletes were applied
                return
        h = self.handlers.get(rt)
        if h is None:
            if rt in R4_RESOURCE_TYPES:
                ctx.ignore(rt)
            else:
                ctx.quarantine(locator, "unknown_resource_type", raw or orjson.dumps(res), field="resourceType")
            return
        sp = ctx.savepoint()
        try:
            if self.validate == "full":
                _validate(res)
            rid = res.get("id")
            if not isinstance(rid, str) or not rid:
                raise BadRecord("missing_id", f"{rt}.id")
            if self._conflicting(rt, rid, res):
                ctx.conflict(locator, raw or orjson.dumps(res), field=f"{rt}.id")
                return
            h(res, self.pseudo.resource(rt, rid))
        except BadRecord as e:
            ctx.rollback(sp)
            ctx.quarantine(locator, e.code, raw or orjson.dumps(res), field=e.field)
        except DateOutOfRange:
            ctx.rollback(sp)
            ctx.quarantine(locator, "date_out_of_range", raw or orjson.dumps(res), field=rt)
        except Exception as e:  # noqa: BLE001 - one bad record never stops the file
            ctx.rollback(sp)
            ctx.quarantine(locator, "malformed_record", raw or orjson.dumps(res), field=rt, detail=e)

    def _conflicting(self, rt: str, rid: str, res: dict) -> bool:
        """True when ``rt/rid`` was met earlier in this ingest with other content (``meta`` aside).
        The same content again is a plain duplicate (stored once, counted as duplicate rows)."""
        batch = self.ctx.batch
        if batch.seen_resources is None:
            return False
        body = {k: v for k, v in res.items() if k != "meta"}
        # kept for every resource of the ingest: small ints, not strings/bytes (memory per record read)
        h = int.from_bytes(hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8).digest())
        return batch.check_resource(int(self.pseudo.resource(rt, rid), 16), h)

    # ---- references ------------------------------------------------------------------------------
    def patient_of(self, res: dict, field: str = "subject") -> str:
        ref = res.get(field) or (res.get("patient") if field == "subject" else None)
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            raise BadRecord("missing_patient_reference", f"{field}.reference")
        r = ref["reference"].strip()
        if r.startswith("urn:uuid:") or r.startswith("urn:oid:"):
            hit = self.fullurls.get(r)
            if hit is None:
                raise BadRecord("broken_reference", f"{field}.reference")
            rtype, rid = hit
        elif r.startswith("Patient?"):
            value = r.split("identifier=", 1)[-1].split("|")[-1]
            pid = self.ctx.batch.patient_for_identifier(value)
            if pid is None:
                raise BadRecord("broken_reference", f"{field}.reference")
            return pid
        else:
            parts = r.split("/_history/")[0].rstrip("/").split("/")
            if len(parts) < 2:
                hit = self.fullurls.get(r)
                if hit is None:
                    raise BadRecord("broken_reference", f"{field}.reference")
                rtype, rid = hit
            else:
                rtype, rid = parts[-2], parts[-1]
        if rtype != "Patient":
            raise BadRecord("reference_not_patient", f"{field}.reference")
        if not rid:
            raise BadRecord("broken_reference", f"{field}.reference")
        return self.pseudo.patient(rid)

    # ---- handlers --------------------------------------------------------------------------------
    def _patient(self, res: dict, prid: str) -> None:
        ctx = self.ctx
        pid = self.pseudo.patient(res["id"])
        batch = ctx.batch
        batch.phi_terms[pid] = patient_phi_terms(res)
        for ident in res.get("identifier") or []:
            v = ident.get("value") if isinstance(ident, dict) else None
            if isinstance(v, str) and v.strip() and v.strip() != res["id"]:
                batch.add_alias(v, pid)
        birth_year = None
        bd = res.get("birthDate")
        if isinstance(bd, str) and len(bd) >= 4 and bd[:4].isdigit():
            y = int(bd[:4])
            end = datetime.now(timezone.utc).year
            dd = res.get("deceasedDateTime")
            if isinstance(dd, str) and dd[:4].isdigit():
                end = int(dd[:4])
            birth_year = y if end - y <= _MAX_AGE else None
        deceased = bool(res.get("deceasedBoolean")) or bool(res.get("deceasedDateTime"))
        ctx.emit("patients", {"record_id": _rid("patients", prid), "patient_id": pid, "sex": res.get("gender"),
                              "birth_year": birth_year, "deceased": deceased,
                              "source_ref": ctx.ref(f"Patient/{prid}")})

    def _condition(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        code = res.get("code")
        system, c, display = _first_coding(code)
        hpo, how = None, None
        mapper = self.ctx.res.phenotypes
        for cd in (code or {}).get("coding") or []:
            hpo, how = mapper.map(cd.get("system"), cd.get("code"), cd.get("display"))
            if hpo:
                break
        if hpo is None and code:
            hpo, how = mapper.map(None, None, code.get("text"))
        onset = res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start")
        abate = res.get("abatementDateTime") or (res.get("abatementPeriod") or {}).get("start")
        _, status, _ = _first_coding(res.get("clinicalStatus"))
        self.ctx.emit("conditions", {
            "record_id": _rid("conditions", prid), "patient_id": pid, "system": system, "code": c,
            "display": display, "hpo_id": hpo, "hpo_match": how, "clinical_status": status,
            "onset": self.shift(onset, pid), "abatement": self.shift(abate, pid),
            "source_ref": self.ctx.ref(f"Condition/{prid}")})

    def _observation(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        eff = res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start") \
            or res.get("effectiveInstant") or res.get("issued")
        eff = self.shift(eff, pid)
        cat = None
        cats = res.get("category") or []
        if cats:
            _, cat, _ = _first_coding(cats[0])
        comps = res.get("component") or []
        emitted = False
        if "valueQuantity" in res or "valueString" in res or "valueCodeableConcept" in res or not comps:
            self._obs_row(res, res.get("code"), pid, eff, cat, f"Observation/{prid}")
            emitted = True
        for i, comp in enumerate(comps):
            self._obs_row(comp, comp.get("code"), pid, eff, cat, f"Observation/{prid}#{i}")
            emitted = True
        if not emitted:
            raise BadRecord("no_value", "Observation.value[x]")

    def _obs_row(self, holder: dict, code: dict | None, pid: str, eff, cat, loc: str) -> None:
        system, c, display = _first_coding(code, prefer=LOINC)
        loinc = c if system == LOINC else None
        vq = holder.get("valueQuantity")
        value = unit = ov = ou = None
        status = None
        text = None
        if isinstance(vq, dict):
            ov = _plausible(vq.get("value"), f"{loc.split('/')[0]}.valueQuantity.value")
            ou = vq.get("code") or vq.get("unit")
            if ou is not None and not isinstance(ou, str):
                raise BadRecord("malformed_record", f"{loc.split('/')[0]}.valueQuantity.unit")
            value, unit, status = self.ctx.res.units.normalize(loinc or c, ov, ou)
            if value is not None:
                value = _plausible(value, f"{loc.split('/')[0]}.valueQuantity.value")
        elif "valueString" in holder:
            text = str(holder["valueString"])
            text = scrub_text(text, self.ctx.batch.phi_for(pid))
        elif "valueCodeableConcept" in holder:
            _, _, text = _first_coding(holder["valueCodeableConcept"])
        self.ctx.emit("observations", {
            "record_id": _rid("observations", loc), "patient_id": pid, "loinc": loinc or c, "display": display,
            "category": cat, "value": value, "unit": unit, "original_value": ov, "original_unit": ou,
            "unit_status": status, "value_text": text, "effective": eff, "source_ref": self.ctx.ref(loc)})

    def _attachment_text(self, att, field: str) -> str | None:
        """Text of an inline (base64 ``data``) attachment. An attachment given only by ``url`` is never opened
        (a local file, a relative path or a remote url alike): None."""
        if not isinstance(att, dict):
            raise BadRecord("malformed_record", field)
        ctype = att.get("contentType") or "text/plain"
        if not isinstance(ctype, str):
            raise BadRecord("malformed_record", f"{field}.contentType")
        ctype = ctype.split(";")[0].strip().lower()
        data = att.get("data")
        if data is None:
            return None
        if not isinstance(data, str):
            raise BadRecord("attachment_bad_base64", f"{field}.data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRecord("attachment_bad_base64", f"{field}.data") from None
        if not ctype.startswith("text/") and ctype not in ("application/xhtml+xml",):
            raise BadRecord("attachment_not_text", f"{field}.contentType")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("attachment_not_utf8", f"{field}.data") from None
        if text.startswith("\ufeff"):
            text = text[1:]
        if "html" in ctype:
            text = html.unescape(_TAGS.sub(" ", text))
        return text

    def _note(self, text: str, pid: str, kind, date, loc: str) -> None:
        text = scrub_text(text, self.ctx.batch.phi_for(pid))
        self.ctx.emit("notes", {"record_id": _rid("notes", loc), "patient_id": pid, "kind": kind, "text": text,
                                "date": self.shift(date, pid), "source_ref": self.ctx.ref(loc)})

    def _document(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        _, _, kind = _first_coding(res.get("type"))
        date = res.get("date") or ((res.get("context") or {}).get("period") or {}).get("start")
        n = 0
        for i, content in enumerate(res.get("content") or []):
            att = content.get("attachment") or {}
            text = self._attachment_text(att, f"DocumentReference.content[{i}].attachment")
            if text:
                self._note(text, pid, kind, date, f"DocumentReference/{prid}#{i}")
                n += 1
        if n == 0:
            refused = any(isinstance(c, dict) and isinstance(c.get("attachment"), dict)
                          and c["attachment"].get("url") and c["attachment"].get("data") is None
                          for c in res.get("content") or [])
            raise BadRecord("attachment_url_refused" if refused else "no_text_attachment",
                            "DocumentReference.content.attachment")

    def _report(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        system, c, display = _first_coding(res.get("code"), prefer=LOINC)
        eff = res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start") or res.get("issued")
        concl = res.get("conclusion")
        if concl:
            concl = scrub_text(concl, self.ctx.batch.phi_for(pid))
        self.ctx.emit("reports", {"record_id": _rid("reports", prid), "patient_id": pid, "system": system, "code": c,
                                  "display": display, "conclusion": concl, "n_results": len(res.get("result") or []),
                                  "effective": self.shift(eff, pid), "source_ref": self.ctx.ref(f"DiagnosticReport/{prid}")})
        for i, att in enumerate(res.get("presentedForm") or []):
            text = self._attachment_text(att, f"DiagnosticReport.presentedForm[{i}]")
            if text:
                self._note(text, pid, display, eff, f"DiagnosticReport/{prid}#{i}")

    def _imaging(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        study = None
        for ident in res.get("identifier") or []:
            v = ident.get("value") or ""
            if v.startswith("urn:oid:"):
                study = v[8:]
                break
        if study is None:
            raise BadRecord("no_study_uid", "ImagingStudy.identifier")
        uid = self.pseudo.uid
        study_p = uid(study)
        self.ctx.batch.study_patient[study_p] = pid
        started = self.shift(res.get("started"), pid)
        series = res.get("series") or [{}]
        for i, s in enumerate(series):
            mod = (s.get("modality") or {}).get("code")
            body = (s.get("bodySite") or {}).get("display") or (s.get("bodySite") or {}).get("code")
            loc = f"ImagingStudy/{prid}#{i}"
            self.ctx.emit("imaging_studies", {
                "record_id": _rid("imaging_studies", loc), "patient_id": pid, "study_uid": study_p,
                "series_uid": uid(s["uid"]) if s.get("uid") else None, "modality": mod, "body_part": body,
                "instance_uids": [uid(x["uid"]) for x in s.get("instance") or [] if x.get("uid")],
                "started": self.shift(s.get("started"), pid) or started, "source_ref": self.ctx.ref(loc)})

    def _medication(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        system, c, display = _first_coding(res.get("medicationCodeableConcept"))
        if c is None and isinstance(res.get("medicationReference"), dict):
            display = res["medicationReference"].get("display")
        self.ctx.emit("medications", {"record_id": _rid("medications", prid), "patient_id": pid, "system": system,
                                      "code": c, "display": display, "status": res.get("status"),
                                      "authored": self.shift(res.get("authoredOn"), pid),
                                      "source_ref": self.ctx.ref(f"MedicationRequest/{prid}")})

    def _procedure(self, res: dict, prid: str) -> None:
        pid = self.patient_of(res)
        system, c, display = _first_coding(res.get("code"))
        when = res.get("performedDateTime") or (res.get("performedPeriod") or {}).get("start")
        self.ctx.emit("procedures", {"record_id": _rid("procedures", prid), "patient_id": pid, "system": system,
                                     "code": c, "display": display, "performed": self.shift(when, pid),
                                     "source_ref": self.ctx.ref(f"Procedure/{prid}")})


#: no lab value in any unit comes near this magnitude; beyond it a number is garbage, not a measurement
MAX_ABS_VALUE = 1e15


def _plausible(v, field: str) -> float | None:
    """A numeric value as float, or BadRecord: booleans and strings are never numbers, non-finite and
    absurd magnitudes are quarantined (``value_not_number`` / ``value_not_finite`` / ``value_implausible``)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRecord("value_not_number", field)
    try:
        f = float(v)
    except OverflowError:
        raise BadRecord("value_implausible", field) from None
    if not math.isfinite(f):
        raise BadRecord("value_not_finite", field)
    if abs(f) > MAX_ABS_VALUE:
        raise BadRecord("value_implausible", field)
    return f


def _rid(table: str, key: str) -> int:
    """record_id from the pseudonymous resource identity (not the file), so a resource re-exported in
    another file is the same record."""
    from raretarget.store.schema import record_ids

    return int(record_ids(table, ["fhir:" + key])[0])


def _validate(res: dict) -> None:
    """Full fhir.resources R4B model validation (slow path)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls = get_fhir_model_class(res["resourceType"])
        cls.model_validate(res)
    except Exception as e:
        first = str(e).splitlines()
        loc = first[1].strip() if len(first) > 1 else None
        raise BadRecord("fhir_validation_failed", loc if loc and " " not in loc else None) from None
