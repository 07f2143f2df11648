"""A small synthetic study for the canary: a few MR images with names no real scan uses, and the
metadata the dicom_indexer derives from it (its template fields)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

# No scanner produces these: the canary's datasets are recognisable and safe to delete.
PATIENT_NAME = "BIDSFLUX^CANARY"
PATIENT_ID = "BIDSFLUX-CANARY"
REFERRING = "bidsflux-canary"
STUDY_DESCRIPTION = "bidsflux^canary"
# The MR Image Storage SOP class.
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass
class Study:
    datasets: list[Any]  # pydicom Datasets
    metas: dict[str, Any]  # what upstream's extract_session_metas returns for it


def make_study(images: int = 3, size: int = 32) -> Study:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    out = []
    for i in range(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.ReferringPhysicianName, ds.StudyDescription = REFERRING, STUDY_DESCRIPTION
        ds.SeriesDescription, ds.Modality = "bidsflux_canary", "MR"
        ds.StudyDate = ds.SeriesDate = today
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = bytes((i + j) % 256 for j in range(size * size * 2))
        out.append(ds)
    return Study(out, session_metas(out[0]))


def session_metas(ds: Any) -> dict[str, Any]:
    """As upstream's extract_session_metas: str() of each tag with ^ as /, and StudyDescriptionPath
    the StudyDescription split at /."""
    keys = ["StudyInstanceUID", "PatientID", "PatientName", "ReferringPhysicianName", "StudyDate", "StudyDescription"]
    metas: dict[str, Any] = {k: str(getattr(ds, k)).replace("^", "/") for k in keys}
    metas["StudyDescriptionPath"] = metas["StudyDescription"].split("/")
    return metas


__all__ = ["PATIENT_NAME", "Study", "make_study", "session_metas"]
