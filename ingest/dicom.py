"""DICOM reader: one ``images`` row per SOP instance (header whitelist + pixel features + thumbnail).

* Only whitelisted header fields reach the store (modality, body part, pseudonymised UIDs, geometry,
  transfer syntax, shifted acquisition date). Patient names, birth dates, institutions, operators,
  accession numbers and unshifted dates are never copied.
* Pixels are decoded once (``pydicom`` + the ``pylibjpeg`` plugins), the modality LUT / rescale
  slope+intercept is applied (per frame for enhanced multi-frame objects), colour data is reduced to
  luminance, then first-order features (:data:`raretarget.schema.IMAGE_FEATURES`) are computed over
  all frames and a ``THUMB_SIZE``² uint8 thumbnail is made from the middle frame.
* A DICOMDIR is an index: it counts as one ignored record (kind ``DICOMDIR``) and every file it
  references is read as an image record with that file's own ``file_ref``, so the same instance met
  through the folder and through the DICOMDIR gets the same ``source_ref`` (and the same
  ``record_id``: the engine keeps one).
* Not-DICOM, truncated or unreadable files are quarantined with a reason; decode problems of an
  otherwise valid file give a row with ``decode_status`` ``unsupported_compression:<ts>`` or
  ``error:<reason>`` and null features.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from raretarget.store.pseudo import DateOutOfRange
from raretarget.store.schema import THUMB_SIZE

#: Media Storage Directory Storage (DICOMDIR)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
#: elements larger than this are read lazily (only when the pixels are decoded)
DEFER_SIZE = "512 KB"
_REASON_MAX = 160


class _Truncated(Exception):
    """The file ends before a data element it declares."""


class _NotDicom(Exception):
    pass


# ---- reader entry point --------------------------------------------------------------------------

def read_dicom(path: Path, ctx) -> None:
    """Read one DICOM file (or a DICOMDIR and the files it references) into ``images`` rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # pydicom value warnings on odd headers: not our concern
        _read(Path(path), ctx)


def _read(path: Path, ctx) -> None:
    hit = _cache(ctx).get(ctx.file_ref)
    if hit is not None:              # same content already read through a DICOMDIR
        ctx.record()
        _emit(hit, ctx, ctx.file_ref)
        return
    try:
        ds = _open(path)
    except _NotDicom as e:
        ctx.record()
        ctx.quarantine("file", "not_dicom")
        return
    except _Truncated as e:
        ctx.record()
        ctx.quarantine("file", "truncated_dicom")
        return
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file, never fatal
        ctx.record()
        ctx.quarantine("file", "unreadable_dicom", detail=e)
        return

    if _is_dicomdir(ds):
        _read_dicomdir(path, ds, ctx)
        return
    ctx.record()
    _emit_image(ds, ctx, ctx.file_ref, "file")


# ---- opening / validation ------------------------------------------------------------------------

def _open(path: Path):
    """dcmread with truncation detection; a file without the DICM preamble gets one forced try."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    forced = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(path, defer_size=DEFER_SIZE)
        except InvalidDicomError:
            forced = True
            try:
                ds = dcmread(path, defer_size=DEFER_SIZE, force=True)
            except Exception as e:  # noqa: BLE001
                raise _NotDicom(f"no DICM preamble and no parseable data set ({type(e).__name__})") from None
        except EOFError as e:
            raise _Truncated(_short(e)) from None
    for w in caught:
        msg = str(w.message)
        if "End of file" in msg or "EOF" in msg or "bytes, expected" in msg:
            if forced:
                raise _NotDicom("no DICM preamble and the forced parse ran past the end of the file")
            raise _Truncated("the file ends inside a data element")
    if not forced:
        _check_complete(ds, path)
    if forced:
        try:
            ok = bool(ds.get("SOPInstanceUID") or ds.get("SOPClassUID") or ds.get("DirectoryRecordSequence"))
        except Exception:  # noqa: BLE001 - garbage elements fail to convert
            ok = False
        if not ok:
            raise _NotDicom("no DICM preamble and no SOP Class/Instance UID")
    _guess_transfer_syntax(ds)
    return ds


def _guess_transfer_syntax(ds) -> None:
    """A data set without file meta (no preamble) is native: name its syntax from how it was parsed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _check_complete(ds, path: Path) -> None:
    """Raise _Truncated when the data set is empty or its last element runs past the end of the file."""
    keys = list(ds.keys())
    if not keys:
        raise _Truncated("no data set after the file meta information")
    try:
        elem = ds.get_item(max(keys))            # raw element: no value conversion
    except Exception:  # noqa: BLE001
        return
    length = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    if length is None or tell is None or length == 0xFFFFFFFF:
        return
    value = elem.value
    if value is None:                            # deferred (large) element: compare with the file size
        if tell + length > path.stat().st_size:
            raise _Truncated(f"the last element declares {length} bytes, the file ends before")
    elif isinstance(value, (bytes, bytearray)) and len(value) < length:
        raise _Truncated(f"the last element has {len(value)} of {length} bytes")


def _is_dicomdir(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds


def _read_dicomdir(path: Path, ds, ctx) -> None:
    """Every record of the directory with a ReferencedFileID is one image record."""
    from raretarget.ingest.core import sha256_file

    ctx.record()
    ctx.ignore("DICOMDIR")          # the index itself: valid, not stored as a row
    root = path.parent
    seen: set[Path] = set()
    n = 0
    for rec in ds.get("DirectoryRecordSequence", []) or []:
        fid = rec.get("ReferencedFileID")
        if fid is None:
            continue
        n += 1
        loc = f"record {n}"
        ctx.record()
        parts = [str(fid)] if isinstance(fid, str) else [str(p) for p in fid]
        raw = "/".join(parts)
        if not parts or any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts):
            ctx.quarantine(loc, "dicomdir_invalid_reference", raw, field="ReferencedFileID")
            continue
        target = _resolve(root, parts)
        if target is None:
            ctx.quarantine(loc, "dicomdir_missing_file", raw, field="ReferencedFileID")
            continue
        if target in seen:          # listed twice in the same directory
            ctx.ignore("DICOMDIR duplicate reference")
            continue
        seen.add(target)
        try:
            digest = sha256_file(target)
            fref = ctx.pseudo.file(digest)
            if not any(f[0] == fref for f in ctx.batch.files):
                ctx.batch.files.append((fref, str(target), digest, "dicom"))
            hit = _cache(ctx).get(fref)
            if hit is not None:
                _emit(hit, ctx, fref)
                continue
            sub = _open(target)
        except _NotDicom as e:
            ctx.quarantine(loc, "dicomdir_non_dicom", raw, field="ReferencedFileID")
            continue
        except _Truncated as e:
            ctx.quarantine(loc, "dicomdir_truncated", raw, field="ReferencedFileID")
            continue
        except Exception as e:  # noqa: BLE001
            ctx.quarantine(loc, "dicomdir_unreadable", raw, field="ReferencedFileID", detail=e)
            continue
        if _is_dicomdir(sub):
            ctx.ignore("DICOMDIR nested")
            continue
        _emit_image(sub, ctx, fref, loc)


def _resolve(root: Path, parts: list[str]) -> Path | None:
    p = root.joinpath(*parts)
    if p.is_file():
        return p
    cur = root                       # media written in upper case, files on disk maybe not
    for part in parts:
        if not cur.is_dir():
            return None
        match = next((c for c in cur.iterdir() if c.name.upper() == part.upper()), None)
        if match is None:
            return None
        cur = match
    return cur if cur.is_file() else None


# ---- one instance -> one row ---------------------------------------------------------------------

def _extract(ds, pseudo) -> dict:
    """Everything a row needs from one instance that depends only on the file's content.

    Raises _Truncated (pixel data cut off) and _NoSop (no SOP Instance UID).
    """
    sop = _str(ds, "SOPInstanceUID")
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip() if meta is not None else ""
    if not sop:
        raise _NoSop()
    study = _str(ds, "StudyInstanceUID")
    series = _str(ds, "SeriesInstanceUID")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames") or 1
    status, feats, thumb = decode_pixels(ds)
    return {
        # in memory only (never emitted): the patient link is resolved per batch in _emit
        "_patient_raw": _str(ds, "PatientID") or None,
        "_acquired_raw": _acquired(ds),
        "_thumb": bytes(thumb) if thumb is not None else None,
        "modality": _str(ds, "Modality") or None,
        "body_part": (_str(ds, "BodyPartExamined").upper() or None),
        "study_uid": pseudo.uid(study) if study else None,
        "series_uid": pseudo.uid(series) if series else None,
        "instance_uid": pseudo.uid(sop),
        "rows": rows,
        "columns": cols,
        "frames": frames if rows else None,
        "pixel_spacing": _spacing(ds),
        "transfer_syntax": _tsyntax_name(ds),
        "decode_status": status,
        "features": feats,
    }


class _NoSop(Exception):
    pass


def _emit(ex: dict, ctx, file_ref: str) -> None:
    """Link the patient (ImagingStudy first, then PatientID), shift the date, emit the row."""
    study_p = ex["study_uid"]
    patient_id = ctx.batch.study_of(study_p) if study_p else None
    link = "imaging_study" if patient_id is not None else None
    if patient_id is None:
        patient_id = ctx.batch.patient_for_identifier(ex["_patient_raw"])
        link = "patient_id" if patient_id is not None else "none"     # flagged, never a silent NULL patient
    row: dict[str, Any] = {k: v for k, v in ex.items() if not k.startswith("_")}
    row["patient_id"] = patient_id
    row["patient_link"] = link
    try:
        row["acquired"] = ctx.pseudo.shift(ex["_acquired_raw"], patient_id)
    except DateOutOfRange:
        ctx.quarantine("file" if file_ref == ctx.file_ref else f"referenced file {file_ref}", "date_out_of_range",
                       field="AcquisitionDateTime")
        return
    row["thumbnail"] = list(ex["_thumb"]) if ex["_thumb"] is not None else None
    row["source_ref"] = f"{ctx.kind}:{file_ref}/{ex['instance_uid']}"
    ctx.emit("images", row)


def _emit_image(ds, ctx, file_ref: str, loc: str) -> None:
    try:
        ex = _extract(ds, ctx.pseudo)
    except _NoSop:
        ctx.quarantine(loc, "no_sop_instance_uid", field="SOPInstanceUID")
        return
    except _Truncated as e:
        ctx.quarantine(loc, "truncated_dicom")
        return
    _cache_put(ctx, file_ref, ex)
    _emit(ex, ctx, file_ref)


# Same content met again in one Engine (a file listed by several DICOMDIRs, or via folder and
# DICOMDIR): reuse the parsed/decoded result instead of decoding twice. Keyed by file_ref, which is
# a keyed hash of the content, so a hit is the same bytes. Bounded FIFO (thumbnails kept as bytes).
CACHE_MAX = 4096


def _cache(ctx) -> dict:
    return ctx.res.dicom_cache


def _cache_put(ctx, file_ref: str, ex: dict) -> None:
    c = _cache(ctx)
    if len(c) >= CACHE_MAX:
        c.pop(next(iter(c)))
    c[file_ref] = ex


def _str(ds, keyword: str) -> str:
    try:
        v = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return ""
    if v is None:
        return ""
    if not isinstance(v, str) and hasattr(v, "__iter__"):   # multi-valued: first value
        v = next(iter(v), "")
    return str(v).strip().rstrip("\x00")


def _int(ds, keyword: str) -> int | None:
    try:
        v = ds.get(keyword)
        return int(v) if v not in (None, "") else None
    except Exception:  # noqa: BLE001
        return None


def _spacing(ds) -> list[float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            v = ds.get(kw)
            if v is not None and len(v) >= 2:
                return [float(v[0]), float(v[1])]
        except Exception:  # noqa: BLE001
            continue
    try:     # enhanced multi-frame: Shared Functional Groups > Pixel Measures
        v = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return [float(v[0]), float(v[1])]
    except Exception:  # noqa: BLE001
        return None


def _tsyntax_name(ds) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts:
        return None
    name = ts.name
    return name if name else str(ts)


def _acquired(ds) -> str | None:
    """Study (else series/acquisition/content) date with its time as ISO text, for shifting."""
    for dk, tk in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                   ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
        d = _str(ds, dk).replace("-", "").replace(".", "")
        if len(d) != 8 or not d.isdigit():
            continue
        iso = f"{d[:4]}-{d[4:6]}-{d[6:8]}"
        t = _str(ds, tk).replace(":", "").split(".")[0]
        if t.isdigit() and len(t) in (2, 4, 6):
            t = (t + "0000")[:6]
            hh, mm, ss = int(t[:2]), int(t[2:4]), int(t[4:6])
            if hh < 24 and mm < 60 and ss < 60:
                iso += f"T{hh:02d}:{mm:02d}:{ss:02d}"
        return iso
    return None


# ---- pixels --------------------------------------------------------------------------------------

def decode_pixels(ds) -> tuple[str, list[float] | None, list[int] | None]:
    """A pydicom dataset's pixels → ``(decode_status, features, thumbnail)``: the status as stored in
    ``images.decode_status``, the intensity features, and the THUMB_SIZE x THUMB_SIZE uint8 thumbnail (row-major
    list) that ingest stores and the image tower reads (None when not decodable)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return "no_pixels", None, None
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            dec = get_decoder(ts)
            available = dec.is_available
        except NotImplementedError:
            available = False
        if not available:
            return f"unsupported_compression:{ts.name or ts}", None, None
    _check_native_length(ds, ts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array                   # YBR is converted to RGB by pydicom 3's default
    except _Truncated:
        raise
    except (NotImplementedError, RuntimeError) as e:
        if "missing dependencies" in str(e) or "no pixel data decoders" in str(e).lower():
            return f"unsupported_compression:{(ts.name if ts else '') or ts}", None, None
        return f"error:{_short(e)}", None, None
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "doesn't match the expected length" in msg and "pixel data in the dataset" in msg:
            raise _Truncated("pixel data is shorter than Rows x Columns x Frames") from None
        return f"error:{_short(e)}", None, None
    try:
        vol = _to_volume(ds, arr)
        feats = _features(vol)
        thumb = _thumbnail(ds, vol[vol.shape[0] // 2])
    except Exception as e:  # noqa: BLE001
        return f"error:{_short(e)}", None, None
    return "ok", feats, thumb


_pixels = decode_pixels          # the old private name


def _check_native_length(ds, ts) -> None:
    """Native (uncompressed) pixel data shorter than its geometry means a cut-off file."""
    if ts is not None and ts.is_compressed:
        return
    try:
        elem = ds["PixelData"] if "PixelData" in ds else None
        if elem is None:
            return
        nbytes = len(elem.value) if elem.value is not None else 0
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1) * int(ds.get("SamplesPerPixel") or 1)
    except Exception:  # noqa: BLE001 - let the decoder report it
        return
    expected = (n * bits + 7) // 8
    if nbytes < expected:
        raise _Truncated(f"pixel data has {nbytes} of {expected} bytes")


def _to_volume(ds, arr: np.ndarray) -> np.ndarray:
    """(frames, rows, cols) float array: rescaled (modality LUT), colour reduced to luminance."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    spp = int(ds.get("SamplesPerPixel") or 1)
    frames = int(ds.get("NumberOfFrames") or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    pi = _str(ds, "PhotometricInterpretation").upper()
    if pi == "PALETTE COLOR" and spp == 1:
        arr = apply_color_lut(arr, ds)
        spp = 3
    if spp == 3:
        arr = arr.reshape(frames, rows, cols, 3).astype(np.float32)
        return arr[..., 0] * np.float32(0.299) + arr[..., 1] * np.float32(0.587) + arr[..., 2] * np.float32(0.114)
    arr = arr.reshape(frames, rows, cols)
    per_frame = _per_frame_rescale(ds, frames)
    if per_frame is not None:
        slope, inter = per_frame
        out = arr.astype(np.float64) * slope[:, None, None] + inter[:, None, None]
        return out
    out = apply_modality_lut(arr, ds)
    return out


def _per_frame_rescale(ds, frames: int):
    """Rescale from enhanced multi-frame functional groups when the top-level tags are absent."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return None

    def pvt(item):
        try:
            s = item.PixelValueTransformationSequence[0]
            return float(s.RescaleSlope), float(s.RescaleIntercept)
        except Exception:  # noqa: BLE001
            return None

    shared = None
    try:
        shared = pvt(ds.SharedFunctionalGroupsSequence[0])
    except Exception:  # noqa: BLE001
        pass
    per = ds.get("PerFrameFunctionalGroupsSequence")
    vals = []
    for i in range(frames):
        v = pvt(per[i]) if per is not None and i < len(per) else None
        v = v or shared
        if v is None:
            return None
        vals.append(v)
    a = np.asarray(vals, dtype=np.float64)
    return a[:, 0], a[:, 1]


def _features(vol: np.ndarray) -> list[float]:
    """IMAGE_FEATURES over all frames: mean, std, min, max, p05, p50, p95, entropy (bits, 256 bins)."""
    x = vol.reshape(-1)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no finite pixel values")
    x64 = x.astype(np.float64, copy=False)
    lo, hi = float(x64.min()), float(x64.max())
    p05, p50, p95 = np.percentile(x64, [5, 50, 95])
    return [float(x64.mean()), float(x64.std()), lo, hi, float(p05), float(p50), float(p95), entropy(x64, lo, hi)]


def entropy(x: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 256) -> float:
    """Shannon entropy (bits) of a ``bins``-bin histogram over [min, max]; 0 for a constant image."""
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    if hi <= lo:
        return 0.0
    h, _ = np.histogram(x, bins=bins, range=(lo, hi))
    p = h[h > 0] / x.size
    return float(-(p * np.log2(p)).sum())


def _thumbnail(ds, frame: np.ndarray) -> list[int]:
    """Middle frame windowed (VOI window when given, else [p01, p99]) → THUMB_SIZE² uint8, row-major."""
    from PIL import Image

    f = frame.astype(np.float32, copy=False)
    if not np.isfinite(f).all():
        f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
    win = _voi_window(ds)
    if win is not None:
        lo, hi = win
    else:
        lo, hi = (float(v) for v in np.percentile(f, [1, 99]))
        if hi <= lo:
            lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        hi = lo + 1.0
    h, w = f.shape
    if (h, w) != (THUMB_SIZE, THUMB_SIZE):
        resample = Image.BOX if (h >= THUMB_SIZE and w >= THUMB_SIZE) else Image.BILINEAR
        f = np.asarray(Image.fromarray(np.ascontiguousarray(f), mode="F").resize((THUMB_SIZE, THUMB_SIZE), resample))
    t = np.rint(np.clip((f - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    if _str(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        t = 255 - t                      # display inversion only; features keep the stored values
    return t.reshape(-1).tolist()


def _voi_window(ds) -> tuple[float, float] | None:
    try:
        c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
        if c is None or w is None:
            return None
        c = float(c[0]) if not isinstance(c, (int, float)) and hasattr(c, "__getitem__") else float(c)
        w = float(w[0]) if not isinstance(w, (int, float)) and hasattr(w, "__getitem__") else float(w)
    except Exception:  # noqa: BLE001
        return None
    if not np.isfinite(c) or not np.isfinite(w) or w <= 0:
        return None
    return c - w / 2.0, c + w / 2.0


def _short(e: BaseException) -> str:
    msg = str(e).splitlines()[0].strip() if str(e) else ""
    out = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return out[:_REASON_MAX]
