import pytest

from pipeline import split
from pipeline.config import SplitParams
from pipeline.errors import InputDataError


def test_folds_partition_cases_and_stratify(tmp_path):
    import json

    cases = [
        {"name": f"c{i:02d}", "label_voxels": {"0": 9, "1": 5, **({} if i % 4 == 3 else {"2": 1})}}
        for i in range(20)
    ]
    (tmp_path / "plans.json").write_text(json.dumps({"cases": cases}))
    folds = split.run(SplitParams(n_folds=5, seed=3), tmp_path / "plans.json", tmp_path / "splits.json")
    assert json.loads((tmp_path / "splits.json").read_text()) == folds
    names = {c["name"] for c in cases}
    lesion_free = {c["name"] for c in cases if "2" not in c["label_voxels"]}
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == names and sum(map(len, vals)) == len(names)  # a partition
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == names and not set(fold["train"]) & set(fold["val"])
        assert len(set(fold["val"]) & lesion_free) == 1  # 5 lesion-free cases, one per fold
    again = split.run(SplitParams(n_folds=5, seed=3), tmp_path / "plans.json", tmp_path / "again.json")
    assert again == folds


def test_too_few_cases_is_named(tmp_path):
    import json

    (tmp_path / "plans.json").write_text(json.dumps({"cases": [{"name": "a", "label_voxels": {"0": 1}}]}))
    with pytest.raises(InputDataError, match="split.n_folds: 5 folds need at least as many training cases"):
        split.run(SplitParams(), tmp_path / "plans.json", tmp_path / "splits.json")


def test_cases_of_one_patient_stay_in_one_fold_and_folds_stay_stratified(tmp_path):
    import json

    # 12 patients with two scans each; a third of the patients have no lesion.
    cases = [
        {
            "name": f"p{p:02d}_scan{s}",
            "patient": f"p{p:02d}",
            "label_voxels": {"0": 9, "1": 5, **({} if p % 3 == 0 else {"2": 1})},
        }
        for p in range(12)
        for s in range(2)
    ]
    (tmp_path / "plans.json").write_text(json.dumps({"cases": cases}))
    folds = split.run(SplitParams(n_folds=4, seed=0), tmp_path / "plans.json", tmp_path / "splits.json")
    for fold in folds:
        val_patients = {name.split("_")[0] for name in fold["val"]}
        train_patients = {name.split("_")[0] for name in fold["train"]}
        assert not val_patients & train_patients
        assert len(fold["val"]) == 6
        assert sum(name.startswith(("p00", "p03", "p06", "p09")) for name in fold["val"]) == 2

    (tmp_path / "few.json").write_text(json.dumps({"cases": cases[:6]}))  # 3 patients
    with pytest.raises(InputDataError, match="4 folds need at least as many patients, .* has 3"):
        split.run(SplitParams(n_folds=4), tmp_path / "few.json", tmp_path / "s.json")
