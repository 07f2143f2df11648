"""Helpers for the DICOM endpoint tests (imported as `mercure_testlib`; tests/mercure is on sys.path)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

# A complete mercure.json known to load in Mercure 0.4.1 (copied from the team's shared reference).
REFERENCE = Path(__file__).with_name("mercure.example.json")

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def synthetic_study(series: dict[str, int]) -> list[Dataset]:
    """One MR study: {series description: number of images}; tiny 4x4 images."""
    study_uid = generate_uid()
    out = []
    for number, (description, count) in enumerate(series.items(), start=1):
        series_uid = generate_uid()
        for i in range(count):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.Modality, ds.PatientName, ds.PatientID = "MR", "Test^Subject", "SUBJ01"
            ds.ReferringPhysicianName, ds.StudyDescription = "Lab^Study", "Project^Pilot"
            ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, number, i + 1
            ds.StudyDate = "20240101"
            ds.Rows = ds.Columns = 4
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = bytes(32)
            out.append(ds)
    return out
