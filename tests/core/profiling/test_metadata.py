"""CPJUMP1's own metadata files, hand-written in their exact layouts (profiling reference §2.2–2.4), read by
``profiling.metadata``: barcode_platemap.csv, the three tab-separated platemaps and the compound / CRISPR / ORF
perturbation .tsv files, in the folders of jump-cellpainting/2024_Chandrasekaran_NatureMethods ``metadata/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dinocell_core.profiling.metadata import annotate, well_annotations
from dinocell_core.profiling.table import ProfileError

BATCH = "2020_11_04_CPJUMP1"
COMPOUND, CRISPR, ORF = "BR00116991", "BR00118041", "BR00117006"

FILES = {
    f"platemaps/{BATCH}/barcode_platemap.csv": """\
Assay_Plate_Barcode,Plate_Map_Name
BR00117006,JUMP-Target-1_orf_platemap
BR00116991,JUMP-Target-1_compound_platemap
BR00118041,JUMP-Target-1_crispr_platemap
""",
    f"platemaps/{BATCH}/platemap/JUMP-Target-1_compound_platemap.txt": """\
well_position\tbroad_sample\tsolvent
A01\tBRD-A86665761-001-01-1\tDMSO
A02\t\tDMSO
A03\tBRD-K12345678-001-01-1\tDMSO
A04\t\tDMSO
""",
    f"platemaps/{BATCH}/platemap/JUMP-Target-1_crispr_platemap.txt": """\
well_position\tbroad_sample
A01\tBRDN0001480888
A02\tBRDN0001145303
E01\t
A04\tBRDN0001487618
""",
    f"platemaps/{BATCH}/platemap/JUMP-Target-1_orf_platemap.txt": """\
well_position\tbroad_sample
A01\tccsbBroad304_00900
A02\tccsbBroad304_06464
E01\t
A04\tccsbBroad304_16164
""",
    # the 1b954473 version (5th column `gene`; the older 391d9056 one calls it `target`)
    "external_metadata/JUMP-Target-1_compound_metadata.tsv": """\
broad_sample\tInChIKey\tpert_iname\tpubchem_cid\tgene\tpert_type\tcontrol_type\tsmiles
BRD-A86665761-001-01-1\tTZDUHAJSIBHXDL-UHFFFAOYSA-N\tgabapentin-enacarbil\t9883933\tCACNB4\ttrt\t\tCC(C)C(=O)OC(C)OC(=O)N
BRD-K12345678-001-01-1\tAAAAAAAAAAAAAA-UHFFFAOYSA-N\tbrinzolamide\t68844\tCA2\ttrt\tposcon_diverse\tCCNC1CC(C)S
\tIAZDPXIOMUYVGZ-UHFFFAOYSA-N\tDMSO\t679\t\tcontrol\tnegcon\tCS(=O)C
""",
    "external_metadata/JUMP-Target-1_compound_metadata_targets.tsv": """\
broad_sample\tInChIKey\tpert_iname\tpubchem_cid\ttarget\ttarget_list\tpert_type\tcontrol_type\tsmiles
BRD-A86665761-001-01-1\tTZDUHAJSIBHXDL-UHFFFAOYSA-N\tgabapentin-enacarbil\t9883933\tCACNB4\tCACNB4\ttrt\t\tCC(C)C
BRD-K12345678-001-01-1\tAAAAAAAAAAAAAA-UHFFFAOYSA-N\tbrinzolamide\t68844\tCA2\tCA1|CA12|CA14|CA2|CA4|CA5A|CA7\ttrt\tposcon_diverse\tCCNC
\tIAZDPXIOMUYVGZ-UHFFFAOYSA-N\tDMSO\t679\t\t\tcontrol\tnegcon\tCS(=O)C
""",
    "moa/JUMP-Target-1_crispr_metadata.tsv": """\
broad_sample\tgene\tpert_type\tcontrol_type\ttarget_sequence\tnegcon_control_type
BRDN0001480888\tHIF1A\ttrt\t\tTATGTGTGAATTACGTTGTG\t
BRDN0001145303\t\tcontrol\tnegcon\tACCCGCGCGCATTGCGCCGC\tNO_SITE (5 zeros)
BRDN0001487618\tCA2\ttrt\t\tGACTGCTGCAGGGTGCGCTG\t
""",
    "external_metadata/JUMP-Target-1_orf_metadata.tsv": """\
broad_sample\tgene\tpert_type\tcontrol_type
ccsbBroad304_00900\tCACNB4\ttrt\t
ccsbBroad304_06464\tSGK3\tcontrol\tnegcon
ccsbBroad304_16164\tCA2\ttrt\t
\t\t\t
""",
    "external_metadata/JUMP-Target-1_orf_metadata_with_sequence.tsv": """\
broad_sample\tgene\tpert_type\tcontrol_type\t5'_flank_seq\ttarget_matching_region_seq\t3'_flank_seq
ccsbBroad304_00900\tCACNB4\ttrt\t\tACGT\tATGGTCCA\tTTGA
ccsbBroad304_06464\tSGK3\tcontrol\tnegcon\tACGT\tATGCAGAA\tTTGA
ccsbBroad304_16164\tCA2\ttrt\t\tACGT\tATGTCCCA\tTTGA
""",
    # not a perturbation table (no broad_sample column): read past, not mistaken for one
    "experiment-metadata.tsv": """\
Batch\tPlate_Map_Name\tAssay_Plate_Barcode\tPerturbation\tCell_type\tTime\tDensity\tAntibiotics\tCell_line\t\
Time_delay\tTimes_imaged\tAnomaly\tNumber_of_images
2020_11_04_CPJUMP1\tJUMP-Target-1_compound_platemap\tBR00116991\tcompound\tA549\t24\t100\tabsent\tParental\tDay0\t1\tWGA\t27648
""",
}


@pytest.fixture
def meta(tmp_path: Path) -> Path:
    root = tmp_path / "metadata"
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _by_well(ann: pd.DataFrame, plate: str) -> pd.DataFrame:
    return ann[ann["Metadata_Plate"] == plate].set_index("Metadata_Well")


def test_compound_plate(meta: Path):
    ann = well_annotations(meta, [COMPOUND])
    c = _by_well(ann, COMPOUND)
    assert list(c.index) == ["A01", "A02", "A03", "A04"]
    assert set(c["Metadata_Plate_Map_Name"]) == {"JUMP-Target-1_compound_platemap"}
    assert set(c["Metadata_modality"]) == {"compound"} and set(c["Metadata_solvent"]) == {"DMSO"}
    # DMSO: empty broad_sample, negcon, named DMSO (the CPJUMP1 profiles' Metadata_pert_iname)
    for w in ("A02", "A04"):
        assert c.loc[w, "Metadata_broad_sample"] == "" and c.loc[w, "Metadata_control_type"] == "negcon"
        assert c.loc[w, "Metadata_pert_iname"] == "DMSO" and c.loc[w, "Metadata_pert_type"] == "control"
    assert c.loc["A01", "Metadata_gene"] == "CACNB4" and c.loc["A01", "Metadata_pubchem_cid"] == "9883933"
    assert c.loc["A01", "Metadata_control_type"] == "" and c.loc["A01", "Metadata_InChIKey"].startswith("TZDUHA")
    # the targets file adds target and the pipe-separated target_list
    assert c.loc["A03", "Metadata_target_list"] == "CA1|CA12|CA14|CA2|CA4|CA5A|CA7"
    assert c.loc["A03", "Metadata_target"] == "CA2" and c.loc["A03", "Metadata_control_type"] == "poscon_diverse"
    assert "Metadata_target_sequence" not in ann.columns  # CRISPR columns stay off compound plates
    assert "Metadata_Perturbation" not in ann.columns  # experiment-metadata.tsv is not a perturbation table


def test_crispr_and_orf_plates(meta: Path):
    ann = well_annotations(meta, [CRISPR, ORF])
    cr, orf = _by_well(ann, CRISPR), _by_well(ann, ORF)
    assert set(cr["Metadata_modality"]) == {"crispr"} and set(orf["Metadata_modality"]) == {"orf"}
    assert cr.loc["A01", "Metadata_gene"] == "HIF1A" and cr.loc["A01", "Metadata_target_sequence"].startswith("TAT")
    # CRISPR negcon: a real guide (broad_sample set), no gene, control/negcon, its negcon kind
    assert cr.loc["A02", "Metadata_broad_sample"] == "BRDN0001145303" and cr.loc["A02", "Metadata_gene"] == ""
    assert (cr.loc["A02", "Metadata_control_type"], cr.loc["A02", "Metadata_negcon_control_type"]) == (
        "negcon", "NO_SITE (5 zeros)")
    # ORF negcon: a real ORF with a gene; the _with_sequence file adds its sequence columns
    assert (orf.loc["A02", "Metadata_gene"], orf.loc["A02", "Metadata_control_type"]) == ("SGK3", "negcon")
    assert orf.loc["A01", "Metadata_target_matching_region_seq"] == "ATGGTCCA"
    assert "Metadata_5'_flank_seq" in ann.columns
    # an empty broad_sample on a genetic plate is an empty well, not DMSO
    for t in (cr, orf):
        assert t.loc["E01", "Metadata_broad_sample"] == "" and t.loc["E01", "Metadata_control_type"] == ""
        assert t.loc["E01", "Metadata_gene"] == "" and t.loc["E01", "Metadata_pert_type"] == ""
    assert "Metadata_smiles" not in ann.columns or set(ann["Metadata_smiles"]) == {""}
    bc = meta / f"platemaps/{BATCH}/barcode_platemap.csv"  # a spreadsheet-saved copy starts with a BOM
    bc.write_text("\ufeff" + bc.read_text(), encoding="utf-8")
    pd.testing.assert_frame_equal(well_annotations(meta, [CRISPR, ORF]), ann)


def test_annotated_profiles_go_through_the_benchmark_preparation(meta: Path):
    pytest.importorskip("copairs")
    from dinocell_core.profiling.evaluate import EvalSettings, prepare

    wells = [(p, w) for p in (COMPOUND, CRISPR, ORF) for w in ("A01", "A02", "A04", "A03" if p == COMPOUND
                                                               else "E01")]
    rng = np.random.default_rng(0)
    profiles = pd.DataFrame({"Metadata_Plate": [p for p, _ in wells], "Metadata_Well": [w for _, w in wells],
                             "f0": rng.normal(size=len(wells)), "f1": rng.normal(size=len(wells))})
    ann = annotate(profiles, meta)
    kept, feats, notes = prepare(ann, EvalSettings())
    assert feats == ["f0", "f1"]
    assert any("2 well(s) excluded: no perturbation and not negcon" in n for n in notes)  # E01 on crispr, orf
    neg = kept[kept["Metadata_negcon"] == 1].set_index(["Metadata_Plate", "Metadata_Well"])["Metadata_broad_sample"]
    assert neg.to_dict() == {(COMPOUND, "A02"): "DMSO", (COMPOUND, "A04"): "DMSO",
                             (CRISPR, "A02"): "BRDN0001145303", (ORF, "A02"): "ccsbBroad304_06464"}
    with pytest.raises(ProfileError, match="not in their plate's platemap"):
        annotate(pd.DataFrame({"Metadata_Plate": [ORF], "Metadata_Well": ["P24"], "f0": [0.0]}), meta)


def test_older_compound_metadata_names_the_gene_column_target(meta: Path):
    path = meta / "external_metadata/JUMP-Target-1_compound_metadata.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("\tgene\t", "\ttarget\t"), *lines[1:]]) + "\n")
    (meta / "external_metadata/JUMP-Target-1_compound_metadata_targets.tsv").unlink()
    c = _by_well(well_annotations(meta, [COMPOUND]), COMPOUND)
    assert c.loc["A01", "Metadata_target"] == "CACNB4" and "Metadata_target_list" not in c.columns
    assert c.loc["A02", "Metadata_control_type"] == "negcon"


def test_bad_metadata_files_are_named(meta: Path):
    (meta / f"platemaps/{BATCH}/platemap/JUMP-Target-1_orf_platemap.txt").write_text("well\tsample\nA01\tx\n")
    with pytest.raises(ProfileError, match=r"JUMP-Target-1_orf_platemap\.txt: needs columns well_position"):
        well_annotations(meta, [ORF])
    (meta / f"platemaps/{BATCH}/platemap/JUMP-Target-1_crispr_platemap.txt").unlink()
    with pytest.raises(ProfileError, match=r"JUMP-Target-1_crispr_platemap\.txt .*of plate BR00118041\) not found"):
        well_annotations(meta, [CRISPR])
    (meta / f"platemaps/{BATCH}/barcode_platemap.csv").write_text("Barcode,Plate_Map_Name\nBR1,x\n")
    with pytest.raises(ProfileError, match=r"barcode_platemap\.csv: missing column\(s\) \['Assay_Plate_Barcode'\]"):
        well_annotations(meta, [COMPOUND])
