"""Quarantine reason codes: the one vocabulary of why a record was not stored.

A quarantine entry is ``code`` + ``field`` (where in the record, e.g. ``Observation.valueQuantity.value``)
+ the fixed, safe message of the code. Nothing of the offending *value* is ever put in a reason: the raw
record goes to the link folder (``<store>.links/quarantine/``) only. The optional detail is an exception
*type* name or a number, never text from the input.
"""

from __future__ import annotations

REASONS: dict[str, str] = {
    # files
    "unrecognised_file_type": "not FHIR JSON/NDJSON, DICOM or VCF",
    "not_utf8": "not valid UTF-8 text",
    "unreadable_gzip": "unreadable gzip stream (truncated or corrupt); earlier records kept",
    "record_too_large": "record longer than the reader's limit; not read",
    "reader_error": "the reader failed on this record; the rest of the file was read",
    "unaccounted": "the reader neither stored, ignored nor quarantined this record",
    # JSON / FHIR structure
    "malformed_json": "malformed JSON",
    "not_json_object": "not a JSON object",
    "missing_resource_type": "missing resourceType",
    "unknown_resource_type": "resourceType is not a FHIR R4/R4B resource",
    "missing_id": "resource without id",
    "bundle_entry_not_list": "Bundle.entry is not a list",
    "bundle_entry_without_resource": "Bundle entry has no resource",
    "delete_without_target": "DELETE request without a Type/id url",
    "deleted_entry_invalid": "deleted-resource entry without a known resourceType and id",
    "malformed_record": "malformed record (a field has the wrong type or shape)",
    "fhir_validation_failed": "fails FHIR R4B validation",
    # references
    "missing_patient_reference": "no reference to a Patient",
    "broken_reference": "reference not resolvable",
    "reference_not_patient": "reference does not point to a Patient",
    # values
    "no_value": "no value",
    "value_not_number": "value is not a number",
    "value_not_finite": "value is not a finite number",
    "value_implausible": "value outside any physically possible range",
    "date_out_of_range": "date outside the representable range after the date shift",
    # attachments
    "attachment_url_refused": "attachment given by url: only inline (base64) data is read, never a file or a url",
    "attachment_not_text": "attachment content type is not text",
    "attachment_not_utf8": "attachment text is not valid UTF-8",
    "attachment_bad_base64": "attachment data is not valid base64",
    "no_text_attachment": "no text attachment",
    "no_study_uid": "no DICOM Study Instance UID identifier (urn:oid:)",
    # duplicates
    "conflicting_duplicate": "same resource id as an earlier record of this batch with different content",
    # DICOM
    "not_dicom": "not a DICOM file",
    "truncated_dicom": "truncated DICOM file",
    "unreadable_dicom": "unreadable DICOM file",
    "no_sop_instance_uid": "DICOM object has no SOP Instance UID",
    "no_patient_id": "DICOM object has no PatientID and no ImagingStudy links it to a patient",
    "dicomdir_invalid_reference": "DICOMDIR record has an invalid ReferencedFileID",
    "dicomdir_missing_file": "DICOMDIR references a file that does not exist in its folder",
    "dicomdir_non_dicom": "DICOMDIR references a non-DICOM file",
    "dicomdir_truncated": "DICOMDIR references a truncated DICOM file",
    "dicomdir_unreadable": "DICOMDIR references an unreadable file",
    # VCF
    "not_vcf": "not a VCF (no valid #CHROM header before the data)",
    "vcf_column_count": "wrong number of tab-separated columns",
    "vcf_unknown_contig": "unknown contig: not in the header's ##contig lines and not a standard human contig",
    "vcf_bad_pos": "POS is not a positive integer",
    "vcf_bad_ref": "REF is not a DNA sequence",
    "vcf_bad_alt": "ALT is not a valid allele list",
    "vcf_bad_qual": "QUAL is not a number",
    "vcf_bad_gt": "bad genotype (GT) in a sample column",
    "vcf_bad_annotation": "annotation (CSQ/ANN) entry does not match the header's field list",
    "vcf_htslib_header": "htslib could not read the VCF/BCF header",
    "vcf_htslib_record": "htslib could not parse the record",
    "vcf_too_many_errors": "not read: too many htslib errors in this file",
}


def reason_text(code: str, field: str | None = None, detail=None) -> str:
    """``code: message [field] (detail)`` for printing; ``detail`` is an exception type or a number only."""
    if code not in REASONS:
        raise KeyError(f"unknown quarantine reason code {code!r} (add it to raretarget.ingest.reasons)")
    out = f"{code}: {REASONS[code]}"
    if field:
        out += f" [{field}]"
    d = safe_detail(detail)
    if d:
        out += f" ({d})"
    return out


def safe_detail(detail) -> str | None:
    if detail is None:
        return None
    if isinstance(detail, BaseException):
        return type(detail).__name__
    if isinstance(detail, type) and issubclass(detail, BaseException):
        return detail.__name__
    if isinstance(detail, (int,)) and not isinstance(detail, bool):
        return str(detail)
    raise TypeError("a quarantine detail is an exception (its type is shown) or an int, never input text")
