"""DICOM reader: header whitelist, pseudonymisation, pixel features, thumbnails, DICOMDIR, bad files."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit, MPEG2MPML,
                         SecondaryCaptureImageStorage, generate_uid)

from raretarget import Engine
from raretarget.schema import IMAGE_FEATURES, THUMB_SIZE

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "data" / "dicom"
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
F = {name: i for i, name in enumerate(IMAGE_FEATURES)}
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS")   # lower-case body parts on purpose


# ---- helpers -------------------------------------------------------------------------------------

def make_dicom(path: Path, pixels: np.ndarray | None = None, *, patient_id="MRN-4711", patient_name="Doe^Jane",
               study_uid=None, series_uid=None, sop_uid=None, study_date="20200101", study_time="101500",
               slope=None, intercept=None, modality="CT", body_part="chest", photometric=None,
               window=None, sop_class=CTImageStorage, tsyntax=ExplicitVRLittleEndian, pixel_bytes=None,
               spacing=(0.7, 0.8)) -> dict:
    """Write a small DICOM file; returns the identifying values written (to check they never leak)."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = tsyntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700203"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.AccessionNumber = "ACC99887766"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.Modality = modality
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, int(sop_uid.rsplit(".", 1)[-1][-6:])
    if body_part:
        ds.BodyPartExamined = body_part
    if pixels is not None or pixel_bytes is not None:
        arr = np.asarray(pixels) if pixels is not None else None
        rgb = arr is not None and arr.ndim >= 3 and arr.shape[-1] == 3
        if arr is not None and (arr.ndim == 3 and not rgb or arr.ndim == 4):
            ds.NumberOfFrames = arr.shape[0]
        shape = arr.shape if arr is not None else (16, 16)
        ds.Rows, ds.Columns = (shape[-3], shape[-2]) if rgb else (shape[-2], shape[-1])
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
        if rgb:
            ds.PlanarConfiguration = 0
        bits = 8 if (arr is not None and arr.dtype.itemsize == 1) or pixel_bytes is not None else 16
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = int(arr is not None and arr.dtype.kind == "i")
        ds.PixelSpacing = list(spacing)
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = pixel_bytes if pixel_bytes is not None else arr.tobytes()
        if pixel_bytes is not None:
            ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return {"patient_id": patient_id, "patient_name": patient_name, "study_uid": study_uid,
            "series_uid": series_uid, "sop_uid": sop_uid}


def ingest(tmp_path: Path, *paths) -> tuple[Engine, object]:
    eng = Engine.open(tmp_path / "store", create=True)
    rep = eng.ingest(list(paths))
    return eng, rep


def rows(eng: Engine, where: str = "") -> list[dict]:
    return eng.sql(f"select * from images {where} order by source_ref").to_pylist()


def expected_features(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64).ravel()
    h, _ = np.histogram(x, bins=256, range=(x.min(), x.max()))
    p = h[h > 0] / x.size
    return np.array([x.mean(), x.std(), x.min(), x.max(), *np.percentile(x, [5, 50, 95]),
                     -(p * np.log2(p)).sum()])


# ---- synthetic files -----------------------------------------------------------------------------

def test_features_header_and_dates(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    a = rng.integers(-500, 1500, size=(30, 40), dtype=np.int16)
    vol = rng.integers(0, 4000, size=(3, 20, 24), dtype=np.int16)
    ia = make_dicom(src / "a.dcm", a, slope=2.0, intercept=-1024.0, study_date="20200101", body_part="chest")
    ib = make_dicom(src / "b.dcm", vol, slope=0.5, intercept=10.0, study_date="20200315", study_time="",
                    modality="MR", body_part="Head")
    eng, rep = ingest(tmp_path, src)
    assert rep.quarantined == 0 and rep.accepted["images"] == 2
    got = {r["modality"]: r for r in rows(eng)}
    ct, mr = got["CT"], got["MR"]

    # features after rescale, all frames; computed independently with numpy
    np.testing.assert_allclose(ct["features"], expected_features(a * 2.0 - 1024.0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(mr["features"], expected_features(vol * 0.5 + 10.0), rtol=1e-5, atol=1e-3)
    assert ct["features"][F["min"]] == pytest.approx(a.min() * 2.0 - 1024.0)    # rescale really applied

    # header whitelist
    assert (ct["rows"], ct["columns"], ct["frames"]) == (30, 40, 1)
    assert (mr["rows"], mr["columns"], mr["frames"]) == (20, 24, 3)
    assert ct["body_part"] == "CHEST" and mr["body_part"] == "HEAD"
    assert ct["pixel_spacing"] == pytest.approx([0.7, 0.8])
    assert ct["transfer_syntax"] == "Explicit VR Little Endian"
    assert ct["decode_status"] == mr["decode_status"] == "ok"
    for r, ident in ((ct, ia), (mr, ib)):
        assert r["instance_uid"].startswith("2.25.") and r["instance_uid"] != ident["sop_uid"]
        assert r["study_uid"].startswith("2.25.") and r["study_uid"] != ident["study_uid"]
        assert r["source_ref"].startswith("dicom:f") and r["source_ref"].endswith("/" + r["instance_uid"])
        assert len(r["thumbnail"]) == THUMB_SIZE * THUMB_SIZE and len(set(r["thumbnail"])) > 10

    # same PatientID -> same pseudonymous patient; dates shifted, intervals kept
    assert ct["patient_id"] == mr["patient_id"] and ct["patient_id"].startswith("pt-")
    d_ct, d_mr = ct["acquired"], mr["acquired"]
    assert d_ct.strftime("%Y%m%d") != "20200101" and d_mr.strftime("%Y%m%d") != "20200315"
    assert (d_mr.date() - d_ct.date()).days == 74        # 2020-01-01 -> 2020-03-15
    assert (d_ct.hour, d_ct.minute) == (10, 15)          # StudyTime kept (only whole days shift)


def test_no_identifiers_in_store(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    idents = [make_dicom(src / f"x{i}.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8) + i,
                         patient_id=f"HOSP-MRN-00{i}42", patient_name=f"Smithereens^Alexandra{i}")
              for i in range(3)]
    make_dicom(src / "sr.dcm", None, patient_id="HOSP-MRN-00042", patient_name="Nopixels^Norbert",
               sop_class="1.2.840.10008.5.1.4.1.1.88.11")
    eng, rep = ingest(tmp_path, src)
    assert rep.accepted["images"] == 4
    secrets = {v for d in idents for v in d.values()} | {
        "Smithereens", "Nopixels", "19700203", "St Elsewhere", "ACC99887766", "20200101", "in/x0.dcm"}
    store = tmp_path / "store"
    files = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    blobs = b"".join(p.read_bytes() for p in files)
    # decoded values too (Parquet pages may be compressed)
    for p in files:
        if p.suffix == ".parquet":
            blobs += str(pq.read_table(p).to_pylist()).encode()
    for s in secrets:
        assert s.encode() not in blobs, f"{s!r} leaked into the store folder"
    # ... while the secure link folder can map them back
    links = tmp_path / "store.links"
    link_ids = b"".join(str(pq.read_table(p).to_pylist()).encode() for p in links.rglob("*.parquet"))
    assert idents[0]["sop_uid"].encode() in link_ids


def test_bad_files_quarantined_others_kept(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "good.dcm", np.ones((32, 32), dtype=np.uint16))
    make_dicom(tmp_path / "full.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = (tmp_path / "full.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) // 2])
    make_dicom(tmp_path / "sr.dcm", None, sop_class="1.2.840.10008.5.1.4.1.1.88.11")
    sr = (tmp_path / "sr.dcm").read_bytes()
    (src / "truncated_header.dcm").write_bytes(sr[: len(sr) - 3])      # cut inside the last element
    (src / "random.dcm").write_bytes(np.random.default_rng(1).bytes(3000))
    (src / "notes.dcm").write_text("this is a text file, not DICOM\n")
    (src / "zz_good2.dcm").write_bytes((src / "good.dcm").read_bytes().replace(b"MRN-4711", b"MRN-4712"))
    eng, rep = ingest(tmp_path, src)
    reasons = sorted(q.reason for q in rep.quarantine)
    assert len(reasons) == 4, reasons
    assert sum("truncated" in r for r in reasons) == 2
    assert sum("not a DICOM file" in r for r in reasons) == 2
    assert all(q.record == "file" for q in rep.quarantine)
    n_images = eng.sql("select count(*) n from images").column("n")[0].as_py()
    assert n_images == 2                                       # the files after the bad ones still read
    assert rep.records == n_images + rep.quarantined + sum(rep.ignored.values())
    assert eng.sql("select count(*) n from quarantine where kind = 'dicom'").column("n")[0].as_py() == 4


def test_file_without_preamble_is_read(tmp_path):
    from pydicom import dcmread

    src = tmp_path / "in"
    src.mkdir()
    pix = np.arange(100, dtype=np.uint16).reshape(10, 10)
    make_dicom(tmp_path / "full.dcm", pix)
    ds = dcmread(tmp_path / "full.dcm")
    del ds.file_meta
    ds.save_as(src / "raw.dcm", implicit_vr=True, little_endian=True)     # no preamble, no file meta
    eng, rep = ingest(tmp_path, src)
    assert rep.quarantined == 0
    (r,) = rows(eng)
    assert r["decode_status"] == "ok" and r["transfer_syntax"] == "Implicit VR Little Endian"
    np.testing.assert_allclose(r["features"], expected_features(pix), rtol=1e-5, atol=1e-3)


def test_decode_status_variants(tmp_path):
    from pydicom.encaps import encapsulate

    src = tmp_path / "in"
    src.mkdir()
    make_dicom(src / "sr.dcm", None, sop_class="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    make_dicom(src / "mpeg.dcm", pixel_bytes=encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60]),
               tsyntax=MPEG2MPML, modality="XC")
    make_dicom(src / "badjpeg.dcm", pixel_bytes=encapsulate([b"\xff\xd8not really a jpeg\xff\xd9" + b"\x00"]),
               tsyntax=JPEGBaseline8Bit, modality="OT", sop_class=SecondaryCaptureImageStorage)
    eng, rep = ingest(tmp_path, src)
    assert rep.quarantined == 0
    got = {r["modality"]: r for r in rows(eng)}
    assert got["SR"]["decode_status"] == "no_pixels" and got["SR"]["features"] is None
    assert got["SR"]["thumbnail"] is None and got["SR"]["patient_id"].startswith("pt-")
    assert got["XC"]["decode_status"] == f"unsupported_compression:{MPEG2MPML.name}"
    assert got["OT"]["decode_status"].startswith("error:") and got["OT"]["features"] is None


def test_thumbnail_window_monochrome1_and_rgb(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = (np.add.outer(np.arange(THUMB_SIZE), np.arange(THUMB_SIZE)) * 8).astype(np.uint16)   # 0..1008
    make_dicom(src / "m2.dcm", img, modality="CR", window=(400, 200))
    make_dicom(src / "m1.dcm", img, modality="DX", window=(400, 200), photometric="MONOCHROME1")
    rgb = np.random.default_rng(2).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    make_dicom(src / "rgb.dcm", rgb, modality="XC", sop_class=SecondaryCaptureImageStorage)
    eng, _ = ingest(tmp_path, src)
    got = {r["modality"]: r for r in rows(eng)}
    t2 = np.array(got["CR"]["thumbnail"]).reshape(THUMB_SIZE, THUMB_SIZE)
    want = np.rint(np.clip((img - 300.0) * 255.0 / 200.0, 0, 255))        # VOI window [300, 500]
    np.testing.assert_array_equal(t2, want)
    t1 = np.array(got["DX"]["thumbnail"]).reshape(THUMB_SIZE, THUMB_SIZE)
    np.testing.assert_array_equal(t1, 255 - t2)                            # MONOCHROME1: inverted display
    assert got["DX"]["features"] == got["CR"]["features"]                   # ... features are not
    lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(got["XC"]["features"], expected_features(lum), rtol=1e-4, atol=1e-3)


def test_study_linked_by_imaging_study_patient(tmp_path):
    """A study already given to a patient (FHIR ImagingStudy) wins over the DICOM PatientID."""
    from raretarget.ingest.core import BatchState, FileContext, Resources
    from raretarget.ingest.dicom import read_dicom
    from raretarget.pseudo import Pseudonymizer

    f = tmp_path / "a.dcm"
    ident = make_dicom(f, np.ones((4, 4), dtype=np.uint16), patient_id="OTHER-ID")
    pseudo = Pseudonymizer(b"k" * 32)
    batch = BatchState(pseudo, Resources(), lambda p: None)
    batch.study_patient[pseudo.uid(ident["study_uid"])] = "pt-fromfhir000001"
    ctx = FileContext(batch, f, "fabc", "dicom")
    read_dicom(f, ctx)
    assert ctx.records == 1 and ctx.quarantined == 0
    assert batch.rows["images"]["patient_id"] == ["pt-fromfhir000001"]
    assert batch.rows["images"]["acquired"][0] is not None      # shifted with that patient's offset


def _write_fileset(src: Path, out: Path) -> list[Path]:
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fs = FileSet()
    for p in sorted(src.glob("*.dcm")):
        fs.add(dcmread(p))
    fs.write(out)
    return sorted(p for p in out.rglob("*") if p.is_file() and p.name != "DICOMDIR")


def test_dicomdir_same_image_stored_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        make_dicom(src / f"s{i}.dcm", rng.integers(0, 100, size=(8, 8), dtype=np.uint16),
                   patient_id="P1", study_uid="1.2.3.4", series_uid="1.2.3.4.5")
    media = tmp_path / "media"
    images = _write_fileset(src, media)
    assert len(images) == 3

    # the DICOMDIR alone reaches every image through its records
    eng, rep = ingest(tmp_path, media / "DICOMDIR")
    assert rep.files == 1 and rep.records == 4 and rep.ignored == {"DICOMDIR": 1}
    first = {r["source_ref"]: r for r in rows(eng)}
    assert len(first) == 3 and all(r["decode_status"] == "ok" for r in first.values())

    # then the whole folder: same source_refs, so nothing new is stored
    rep2 = eng.ingest([media])
    assert rep2.files == 3 and rep2.files_already_ingested == 1
    assert rep2.accepted.get("images", 0) == 0 and rep2.duplicates == 3
    assert {r["source_ref"] for r in rows(eng)} == set(first)

    # folder + DICOMDIR in one fresh store: each image once
    eng3 = Engine.open(tmp_path / "store3", create=True)
    rep3 = eng3.ingest([media])
    assert rep3.accepted["images"] == 3 and rep3.duplicates == 3
    refs3 = eng3.sql("select source_ref, instance_uid from images").to_pylist()
    assert len({r["source_ref"] for r in refs3}) == len({r["instance_uid"] for r in refs3}) == 3


def test_dicomdir_missing_referenced_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        make_dicom(src / f"s{i}.dcm", np.full((4, 4), i, dtype=np.uint16))
    media = tmp_path / "media"
    images = _write_fileset(src, media)
    images[0].unlink()
    eng, rep = ingest(tmp_path, media / "DICOMDIR")
    assert rep.records == 3                                 # DICOMDIR + two references
    assert rep.accepted["images"] == 1
    assert [q.code for q in rep.quarantine] == ["dicomdir_missing_file"]
    assert rep.quarantine[0].record.startswith("record ")


# ---- real sample files (tests/data/dicom, from pydicom's test files) ------------------------------

def test_real_fixtures(tmp_path):
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut

    eng, rep = ingest(tmp_path, FIXTURES)
    assert rep.quarantined == 0 and rep.files == 4            # LICENSE/SOURCES are skipped
    got = {r["transfer_syntax"]: r for r in rows(eng)}
    assert all(r["decode_status"] == "ok" for r in got.values()), [r["decode_status"] for r in got.values()]
    ct = got["Explicit VR Little Endian"]
    ds = dcmread(FIXTURES / "CT_small.dcm")
    hu = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_allclose(ct["features"], expected_features(hu), rtol=1e-5, atol=1e-3)
    assert ct["modality"] == "CT" and (ct["rows"], ct["columns"]) == (128, 128)
    assert -1100 < ct["features"][F["min"]] < ct["features"][F["p50"]] < ct["features"][F["max"]] < 4000
    assert got["RLE Lossless"]["modality"] == "MR" and got["RLE Lossless"]["features"][F["std"]] > 0
    j2k = got["JPEG 2000 Image Compression"]
    assert (j2k["rows"], j2k["columns"]) == (1024, 256) and j2k["features"][F["entropy"]] > 1
    rgb = got["JPEG Baseline (Process 1)"]
    assert 0 <= rgb["features"][F["min"]] <= rgb["features"][F["max"]] <= 255
    for r in got.values():
        assert len(r["thumbnail"]) == THUMB_SIZE ** 2 and max(r["thumbnail"]) > min(r["thumbnail"])


@pytest.mark.realdata
def test_real_dicom_folder(tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"shared DICOM samples not found at {REAL}")
    eng, rep = ingest(tmp_path, REAL)
    n_images = eng.sql("select count(*) n from images").column("n")[0].as_py()
    ignored = sum(rep.ignored.values())
    # every record accounted for: stored rows + rows deduplicated (same image via DICOMDIR) + ignored + quarantined
    assert rep.records == n_images + rep.duplicates + ignored + rep.quarantined
    assert rep.ignored.get("DICOMDIR", 0) >= 1 and rep.duplicates > 0
    n_files = sum(1 for p in REAL.rglob("*") if p.is_file())
    assert rep.files + len(rep.skipped_files) == n_files
    status = Counter({r["decode_status"]: r["n"] for r in eng.sql(
        "select decode_status, count(*) n from images group by 1").to_pylist()})
    print("\ndecode_status counts:", dict(status), "| quarantined:", [str(q) for q in rep.quarantine])
    assert status["ok"] >= 40 and status["no_pixels"] >= 3
    ok = eng.sql("select count(*) n from images where decode_status = 'ok' and features is not null "
                 "and thumbnail is not null").column("n")[0].as_py()
    assert ok == status["ok"]
    mods = {r["modality"] for r in eng.sql("select distinct modality from images").to_pylist()}
    assert {"CT", "MR", "CR", "US", "NM"} <= mods
