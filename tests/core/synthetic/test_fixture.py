"""The synthetic CPJUMP1 fixture matches the real layout, encoding, intensities and metadata schemas."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinocell_core.io.images import normalize_percentile
from dinocell_core.jump.index import FILE_RE, index_fields
from dinocell_core.labels.store import (
    GROUND_TRUTH_DIR,
    LabelStore,
    field_key,
    field_prefix,
)
from dinocell_core.synthetic.fixture import (
    PHENOTYPES,
    Nuisance,
    field_position,
    field_seed,
    find_source_root,
    make_field,
    make_jump_fixture,
    nuisance_of,
    phenotype_of,
    phenotype_table,
)

LAYOUT = re.compile(r"^cpg0000-jump-pilot/source_4/images/(?P<batch>[^/]+)/images/(?P<folder>BR\d{8}[A-Z]?__"
                    r"\d{4}-\d{2}-\d{2}T\d{2}_\d{2}_\d{2}-Measurement\d)/Images/(?P<name>[^/]+)$")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture")
    return make_jump_fixture(out, plates=3, wells=4, sites=2, size=160, seed=1)


def test_layout_names_and_encoding(fx):
    tiffs = sorted(p.relative_to(fx.root).as_posix() for p in fx.root.rglob("*.tiff") if "/Images/" in p.as_posix())
    assert len(tiffs) == 3 * 4 * 2 * 8 - 1  # one channel file left out on purpose
    folders = set()
    for rel in tiffs:
        m = LAYOUT.match(rel)
        assert m, rel
        assert FILE_RE.match(m["name"]), rel
        folders.add(m["folder"])
    assert any(not f.endswith("Measurement1") for f in folders)
    assert any(f.startswith("BR00116992E__") for f in folders)
    bleach = [t for t in tiffs if "BR00116992E__" in t]
    assert bleach and all("sk5fk1fl1.tiff" in t for t in bleach)
    with tifffile.TiffFile(fx.root / tiffs[0]) as tif:
        page = tif.pages[0]
        assert page.compression == 5 and page.predictor == 1  # LZW, no predictor
        assert len(page.dataoffsets) == 1 and tif.byteorder == "<"
        assert page.dtype == np.uint16 and page.shape == (160, 160)


def test_intensities_are_realistic(fx):
    field = index_fields(fx.root).fields[0]
    for ch in range(1, 9):
        img = tifffile.imread(fx.root / field.paths[ch])
        if ch <= 5:
            assert 60 <= img.min() <= 450, (ch, img.min())
            assert np.percentile(img, 99) > 600, ch
        else:
            assert abs(float(np.median(img)) - 20000) < 2000, ch
    assert (tifffile.imread(fx.root / field.paths[5]) == 65535).sum() >= 1
    bf = [tifffile.imread(fx.root / field.paths[c]).astype(np.int64) for c in (6, 7, 8)]
    assert not np.array_equal(bf[0], bf[1]) and not np.array_equal(bf[1], bf[2])


def test_load_data_illum_ground_truth_and_phenotypes(fx):
    src = fx.source_root
    ld = sorted(src.glob("workspace/load_data_csv/*/*/load_data.csv"))
    assert len(ld) == 3
    with open(ld[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = list(rows[0])
    assert header[:8] == ["URL_OrigDNA", "URL_OrigLowZBF", "URL_OrigHighZBF", "URL_OrigBrightfield",
                          "URL_OrigMito", "URL_OrigAGP", "URL_OrigER", "URL_OrigRNA"]
    assert len([h for h in header if h.startswith("Metadata_")]) == 26
    assert rows[0]["URL_OrigDNA"].startswith("s3://cellpainting-gallery/cpg0000-jump-pilot/source_4/images/")
    assert rows[0]["URL_OrigDNA"].endswith("-ch5sk1fk1fl1.tiff")
    assert rows[0]["Metadata_ImageResolutionX"] == "5.979760809567617e-07"
    with open(ld[0].with_name("load_data_with_illum.csv"), newline="") as fh:
        illum_row = next(csv.DictReader(fh))
    barcode = rows[0]["Metadata_Plate"]
    assert illum_row["FileName_IllumDNA"] == f"{barcode}_IllumDNA.npy"
    illum_files = sorted(src.glob("images/*/illum/*/*.npy"))
    assert len(illum_files) == 3 * 8
    illum = np.load(illum_files[0])
    assert illum.dtype == np.float32 and illum.shape == (160, 160) and abs(float(illum.min()) - 1.0) < 1e-4

    fields = index_fields(fx.root).fields
    assert len(fields) == fx.n_fields == 23
    truth = LabelStore.open(src / GROUND_TRUTH_DIR)
    assert truth.counts()["imported"] == 24 and truth.manifest["method"] == "fixture"  # the incomplete one too
    for f in fields[:4]:
        row = truth.best(field_key(f))
        assert row.source == "imported" and row.nuclei == f"{f.plate_folder}/{field_prefix(f.well, f.site)}_nuclei.tiff"
        nuc_p, cell_p = truth.root / row.nuclei, truth.root / row.cells
        assert tifffile.TiffFile(nuc_p).pages[0].compression == 5  # LZW
        nuc, cells = tifffile.imread(nuc_p), tifffile.imread(cell_p)
        assert nuc.shape == cells.shape == (160, 160) and nuc.max() > 0
        inside = nuc > 0
        assert np.array_equal(nuc[inside], cells[inside])  # every nucleus lies in its own cell
        assert set(np.unique(nuc)) == set(np.unique(cells))
    table = phenotype_table(find_source_root(fx.root))
    assert len(table) == 12 and set(table.values()) == set(PHENOTYPES)
    for plate in {p for p, _ in table}:
        assert {v for (p, _), v in table.items() if p == plate} == set(PHENOTYPES)


def _mito_elongation(ch1: np.ndarray) -> float:
    """Median major/minor axis ratio of the bright Mito objects (puncta ≈ 1–2, filaments ≫ 2)."""
    from skimage.measure import label, regionprops

    img = normalize_percentile(ch1)
    props = [r for r in regionprops(label(img > 0.45)) if r.area >= 6]
    return float(np.median([r.axis_major_length / max(r.axis_minor_length, 1.0) for r in props]))


def test_make_field_deterministic_and_phenotypes_differ_in_pattern_not_size_or_brightness():
    a = make_field(128, seed=5, phenotype="tubular")
    b = make_field(128, seed=5, phenotype="tubular")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (8, 128, 128) and a[0].dtype == np.uint16
    stats = {}
    for ph in PHENOTYPES:
        means, areas, counts, elong = [], [], [], []
        for seed in range(6):
            ch, nuc, cells = make_field(192, seed, ph)
            fmean = np.mean([normalize_percentile(ch[c]) for c in range(5)], axis=0)
            means.append(float(fmean.mean()))
            areas.append(float((nuc > 0).sum() / max(nuc.max(), 1)))
            counts.append(int(cells.max()))
            elong.append(_mito_elongation(ch[0]))
        stats[ph] = [np.array(v) for v in (means, areas, counts, elong)]
    p, t = stats["punctate"], stats["tubular"]
    # Same seeds → the same cell layout: cell count and nucleus size are identical, brightness overlaps ...
    assert np.array_equal(p[2], t[2]) and np.allclose(p[1], t[1])
    assert max(p[0].min(), t[0].min()) < min(p[0].max(), t[0].max())
    # ... and the organelle pattern tells them apart: filaments are elongated, puncta round.
    assert t[3].min() > p[3].max()


def test_nuisance_changes_the_imaging_not_the_cells():
    """Per-field gamma/blur/noise (the learning test's option): same labels, same field without the option,
    a different image with it; the ranges are drawn per field."""
    plain = make_field(96, seed=3, phenotype="tubular")
    assert all(np.array_equal(x, y) for x, y in zip(plain, make_field(96, seed=3, phenotype="tubular",
                                                                      nuisance=Nuisance())))
    nu = Nuisance(blur_sigma=(0.5, 1.6), gamma=(0.6, 1.6), noise=(0.5, 3.0))
    a, b = make_field(96, seed=3, phenotype="tubular", nuisance=nu), make_field(96, seed=4, phenotype="tubular",
                                                                                nuisance=nu)
    assert np.array_equal(a[1], plain[1]) and np.array_equal(a[2], plain[2])
    assert not np.array_equal(a[0][:5], plain[0][:5]) and np.array_equal(a[0][5:], plain[0][5:])  # fluorescence only
    fm = [np.mean([normalize_percentile(x[0][c]) for c in range(5)], axis=0) for x in (plain, a, b)]
    assert len({round(float(f.mean()), 3) for f in fm}) == 3


def test_field_seed_and_nuisance_of_are_the_fixtures_ground_truth(tmp_path: Path):
    """What the learning test reads back: field_seed is the seed each written field was made with (its ground-truth
    labels regenerate), and nuisance_of the imaging it got (fixing the ranges at the drawn values gives the same
    image)."""
    nu = Nuisance(blur_sigma=(0.5, 1.6), gamma=(0.6, 1.6), noise=(0.5, 3.0))
    info = make_jump_fixture(tmp_path, plates=2, wells=3, sites=2, size=64, seed=5, edge_cases=False, nuisance=nu)
    truth = LabelStore.open(info.source_root / GROUND_TRUTH_DIR)
    gammas = set()
    for f in index_fields(info.root).fields:
        p, w = field_position(f, plates=2)
        fseed = field_seed(5, p, w, f.site)
        _, nuclei, cells = make_field(64, fseed, phenotype_of(w, f.site))
        best = truth.best(field_key(f))
        assert np.array_equal(tifffile.imread(truth.root / best.nuclei), nuclei)
        assert np.array_equal(tifffile.imread(truth.root / best.cells), cells)
        psf, gamma, noise = nuisance_of(fseed, nu)
        assert 0.5 <= psf <= 1.6 and 0.6 <= gamma <= 1.6 and 0.5 <= noise <= 3.0
        fixed = Nuisance(blur_sigma=(psf, psf), gamma=(gamma, gamma), noise=(noise, noise))
        assert np.array_equal(make_field(64, fseed, "punctate", nuisance=nu)[0],
                              make_field(64, fseed, "punctate", nuisance=fixed)[0])
        gammas.add(round(gamma, 6))
    assert len(gammas) == 12  # one draw per field


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="sites"):
        make_jump_fixture(tmp_path, sites=17)
    with pytest.raises(ValueError, match="phenotype"):
        make_field(64, 0, "round")


def test_gap_and_plate_metadata(tmp_path: Path):
    info = make_jump_fixture(tmp_path, plates=1, wells=2, sites=3, size=48, seed=0)
    assert info.gaps == ["BR00116991__2020-11-05T19_51_35-Measurement1/A02/2"]
    fields = index_fields(tmp_path).fields
    assert [(f.well, f.site) for f in fields] == [("A01", 1), ("A01", 2), ("A01", 3), ("A02", 1)]
    assert info.n_fields == 4 and len(info.incomplete) == 1  # A02 site 3 lacks ch3
    meta = info.source_root / "workspace" / "metadata"
    header = (meta / "experiment-metadata.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["Batch", "Plate_Map_Name", "Assay_Plate_Barcode"] and header[-1] == "Number_of_images"
    bp = (meta / "platemaps" / "2020_11_04_CPJUMP1" / "barcode_platemap.csv").read_text().splitlines()
    assert bp == ["Assay_Plate_Barcode,Plate_Map_Name", "BR00116991,JUMP-Target-1_compound_platemap"]
    pm = meta / "platemaps" / "2020_11_04_CPJUMP1" / "platemap" / "JUMP-Target-1_compound_platemap.txt"
    assert pm.read_text().splitlines()[0] == "well_position\tbroad_sample\tsolvent"
