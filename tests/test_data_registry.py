"""The dataset registry (book:protocol-datasets): names, aliases, classes, domains, prompt names, expected sizes."""

import json
from pathlib import Path

import pytest

from aaclip.data.registry import (
    DATASETS,
    custom_info,
    dataset_names,
    dataset_root,
    get_dataset,
    metadata_path,
    write_custom_info,
)
from aaclip.errors import AAClipError

REFERENCE = Path(__file__).resolve().parent / "reference-metadata"  # a copy of ../shared/reference-metadata (Apache-2.0, see its LICENSE)

# book:protocol-datasets: test split sizes (normal, anomalous) of the eleven datasets.
PROTOCOL_SIZES = {
    "MVTec": (467, 1258), "VisA": (962, 1200), "BTAD": (451, 290), "MPDD": (176, 282),
    "Brain": (640, 3075), "Liver": (833, 660), "Retina": (1041, 764), "ClinicDB": (0, 612),
    "ColonDB": (0, 380), "Kvasir": (0, 1000), "CVC-300": (0, 60),
}  # fmt: skip


def test_eleven_datasets_with_spec_domains_and_totals():
    assert list(DATASETS) == list(PROTOCOL_SIZES)
    for name, (normal, anomalous) in PROTOCOL_SIZES.items():
        info = DATASETS[name]
        assert sum(n for n, _ in info.expected.values()) == normal, name
        assert sum(a for _, a in info.expected.values()) == anomalous, name
        assert info.domain == ("industrial" if name in ("MVTec", "VisA", "BTAD", "MPDD") else "medical")
        assert set(info.prompt_names) == set(info.classes) == set(info.expected)
        assert all(isinstance(p, str) and p for p in info.prompt_names.values())


def test_spec_classes_and_prompt_names():
    assert len(DATASETS["MVTec"].classes) == 15
    assert DATASETS["VisA"].classes == (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
        "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    )  # fmt: skip
    assert DATASETS["BTAD"].classes == ("01", "02", "03")
    assert set(DATASETS["MPDD"].classes) == {
        "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"
    }  # fmt: skip
    assert DATASETS["MVTec"].prompt_names["metal_nut"] == "metal nut which has four notched edges"
    assert DATASETS["VisA"].prompt_names["pcb4"] == "battery charging pcb module"
    assert DATASETS["VisA"].prompt_names["candle"] == "candle"
    assert DATASETS["Retina"].prompt_names == {"Retina": "scan"}
    assert DATASETS["Kvasir"].prompt_names == {"Kvasir": "colon endoscopy image"}
    # MPDD and BTAD get descriptive phrases, not their folder names.
    for name in ("MPDD", "BTAD"):
        assert all(phrase != cls for cls, phrase in DATASETS[name].prompt_names.items())


def test_expected_per_class_sizes_match_the_reference_lists():
    for info in DATASETS.values():
        rows = [json.loads(line) for line in (REFERENCE / info.folder / "full-shot.jsonl").read_text().splitlines()]
        counts = {}
        for row in rows:
            counts.setdefault(row["class_name"], [0, 0])[int(row["label"])] += 1
        if len(info.classes) == 1:  # one-class sets: the reference names the class its own way
            assert list(counts.values()) == [list(info.expected[info.classes[0]])]
        else:
            assert {c: tuple(v) for c, v in counts.items()} == info.expected


@pytest.mark.parametrize(
    "alias, name",
    [("mvtec", "MVTec"), ("MVTec-AD", "MVTec"), ("mvtec_ad", "MVTec"), ("VISA", "VisA"), ("btad", "BTAD"),
     ("colon_clinicdb", "ClinicDB"), ("CVC-ClinicDB", "ClinicDB"), ("Colon_colonDB", "ColonDB"),
     ("kvasir", "Kvasir"), ("cvc300", "CVC-300"), ("Colon_cvc300", "CVC-300"), ("brainmri", "Brain"),
     ("LiverCT", "Liver"), ("resc", "Retina"), ("mpdd", "MPDD")],
)  # fmt: skip
def test_names_are_case_insensitive_with_aliases(alias, name):
    assert get_dataset(alias).name == name


def test_unknown_name_lists_the_choices():
    with pytest.raises(AAClipError) as err:
        get_dataset("mvtec-3d")
    for name in dataset_names():
        assert name in str(err.value)


def test_paths_use_the_dataset_folder(tmp_path):
    assert dataset_root(tmp_path, "clinicdb") == tmp_path / "Colon_clinicDB"
    assert metadata_path(tmp_path, "visa") == tmp_path / "VisA" / "full-shot.jsonl"
    assert metadata_path(tmp_path, "visa", shot=16) == tmp_path / "VisA" / "16-shot.jsonl"
    for bad in (0, 3, -2):
        with pytest.raises(AAClipError, match="even k"):
            metadata_path(tmp_path, "visa", shot=bad)


def test_a_prepared_folder_is_found_by_its_dataset_json_whoever_wrote_it(tmp_path):
    """The registry knows the eleven datasets; anything else (a user's data, a generated world) describes itself."""
    info = custom_info("gears", {"gear": "toothed gear", "washer": "flat metal washer"}, "medical",
                       made_by="my-generator --seed 3")
    write_custom_info(tmp_path / "gears", info)
    found = get_dataset("gears", data_root=tmp_path)
    assert (found.name, found.folder, found.domain, found.expected) == ("gears", "gears", "medical", None)
    assert found.prompt_names == {"gear": "toothed gear", "washer": "flat metal washer"}
    assert found.made_by == "my-generator --seed 3"
    with pytest.raises(AAClipError, match=r"unknown dataset 'gears' \(nor a prepared folder .*other/gears\)"):
        get_dataset("gears", data_root=tmp_path / "other")
    assert "gears" not in dataset_names() and len(dataset_names()) == 11


def test_a_damaged_dataset_json_names_the_file(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset.json").write_text('{"name": "broken"}')
    with pytest.raises(AAClipError, match=r"broken/dataset.json: not a dataset description"):
        get_dataset("broken", data_root=tmp_path)
    assert get_dataset("MVTec").name == "MVTec"


def test_mpdd_and_btad_prompt_with_the_reference_codes_own_phrases():
    """The published MPDD and BTAD numbers were produced with these names (book:protocol-prompt-names)."""
    mpdd, btad = get_dataset("MPDD").prompt_names, get_dataset("BTAD").prompt_names
    assert mpdd["connector"] == "metal clamps with black adjustment knobs"
    assert mpdd["bracket_black"] == "black ornamental metal bracket with spiral design attached to a rectangular frame"
    assert btad["02"] == "vertical fabric lines in warm, dusty pink and beige tones"
    assert btad["03"] == "oval concentric circular rings in gradient shades of blue and white"
    assert set(mpdd) == set(get_dataset("MPDD").classes) and set(btad) == {"01", "02", "03"}
