import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.evaluate.report import (
    QCCase,
    orthogonal_views,
    ras_spacing,
    select_qc_cases,
    slice_centre,
    to_ras,
    write_report,
)

# --- select_qc_cases -------------------------------------------------------------------------------


def test_best_median_worst_by_score():
    scores = {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.7, "e": 0.3}  # ranking b, d, a, e, c
    assert select_qc_cases(scores) == [("best", "b"), ("median", "a"), ("worst", "c")]


def test_tied_scores_rank_by_case_name():
    assert select_qc_cases({"c": 0.5, "a": 0.5, "b": 0.5}) == [("best", "a"), ("median", "b"), ("worst", "c")]


def test_even_count_takes_the_better_middle_case():
    scores = {"w": 0.1, "x": 0.2, "y": 0.3, "z": 0.4}  # ranking z, y, x, w
    assert select_qc_cases(scores) == [("best", "z"), ("median", "y"), ("worst", "w")]


def test_unscored_cases_are_left_out():
    scores = {"a": None, "b": 0.2, "c": 0.8, "d": 0.5}
    assert select_qc_cases(scores) == [("best", "c"), ("median", "d"), ("worst", "b")]


def test_few_cases_appear_once():
    assert select_qc_cases({"x": 0.1, "y": 0.2}) == [("best", "y"), ("worst", "x")]
    assert select_qc_cases({"only": 0.0, "unscored": None}) == [("best", "only")]
    assert select_qc_cases({"a": None}) == []
    assert select_qc_cases({}) == []


# --- slice_centre ----------------------------------------------------------------------------------


def cube(volume: np.ndarray, centre: tuple[int, int, int], half: int, value: int) -> None:
    volume[tuple(slice(c - half, c + half + 1) for c in centre)] = value


def test_centre_of_the_largest_focus_lesion():
    reference = np.zeros((16, 16, 12), np.uint8)
    cube(reference, (3, 3, 3), 1, 2)  # 27 voxels
    cube(reference, (10, 9, 7), 2, 2)  # 125 voxels: the largest lesion
    prediction = np.zeros_like(reference)
    cube(prediction, (3, 12, 3), 3, 2)  # larger still, but the reference comes first
    assert slice_centre(reference, prediction, focus_label=2) == (10, 9, 7)


def test_focus_label_outweighs_larger_other_labels():
    reference = np.zeros((16, 16, 12), np.uint8)
    reference[:, :, :4] = 1  # a large organ
    cube(reference, (8, 8, 8), 1, 2)
    assert slice_centre(reference, np.zeros_like(reference), focus_label=2) == (8, 8, 8)


def test_components_are_26_connected():
    reference = np.zeros((12, 12, 12), np.uint8)
    reference[1:3, 1:3, 1:3] = 2  # two 8-voxel cubes meeting at a corner: one 16-voxel lesion
    reference[3:5, 3:5, 3:5] = 2
    reference[8:11, 8:10, 8:10] = 2  # 12 voxels, larger only under 6-connectivity
    centre = slice_centre(reference, np.zeros_like(reference), focus_label=2)
    assert all(c < 5 for c in centre)


def test_centre_lies_on_a_ring_shaped_lesion():
    reference = np.zeros((15, 15, 5), np.uint8)
    reference[3:12, 3:12, 2] = 2
    reference[5:10, 5:10, 2] = 0  # the centre of mass, (7, 7, 2), is in the hole
    centre = slice_centre(reference, np.zeros_like(reference), focus_label=2)
    assert reference[centre] == 2
    assert centre[2] == 2


def test_falls_back_to_the_prediction_then_any_foreground_then_the_volume_centre():
    reference = np.zeros((10, 12, 8), np.uint8)
    prediction = np.zeros_like(reference)
    cube(prediction, (3, 4, 5), 1, 2)
    assert slice_centre(reference, prediction, focus_label=2) == (3, 4, 5)

    prediction[:] = 0
    cube(reference, (6, 7, 2), 1, 1)
    assert slice_centre(reference, prediction, focus_label=2) == (6, 7, 2)

    reference[:] = 0
    cube(prediction, (2, 2, 2), 1, 3)
    assert slice_centre(reference, prediction, focus_label=2) == (2, 2, 2)

    prediction[:] = 0
    centre = slice_centre(reference, prediction, focus_label=2)
    assert centre == (5, 6, 4)
    assert all(type(i) is int for i in centre)


# --- reorientation and views ------------------------------------------------------------------------

LAS = np.diag([-1.0, 1.0, 2.5, 1.0])
LPS = np.diag([-2.0, -2.0, 3.0, 1.0])
# i runs superior (1 mm), j anterior (3 mm), k to the patient's left (2 mm): a sagittal acquisition.
PERMUTED = np.array([[0.0, 0.0, -2.0, 10.0], [0.0, 3.0, 0.0, -5.0], [1.0, 0.0, 0.0, 2.0], [0, 0, 0, 1]])


def world_coordinates(shape, affine) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape)


@pytest.mark.parametrize("affine", [LAS, LPS, PERMUTED], ids=["LAS", "LPS", "permuted"])
def test_to_ras_makes_index_increase_right_anterior_superior(affine):
    world = world_coordinates((4, 5, 6), affine)
    for axis in range(3):
        ras = to_ras(world[axis], affine)
        assert (np.diff(ras, axis=axis) > 0).all()  # world axis `axis` grows along array axis `axis`


def test_to_ras_moves_a_left_sided_lesion_to_low_x():
    volume = np.zeros((4, 5, 6), np.uint8)
    volume[3, 0, 5] = 1  # LPS: high i is the patient's left, low j anterior, high k superior
    ras = to_ras(volume, LPS)
    assert np.argwhere(ras == 1).tolist() == [[0, 4, 5]]  # left, anterior, superior in RAS


def test_ras_spacing_follows_the_reoriented_axes():
    assert to_ras(np.zeros((4, 5, 6)), PERMUTED).shape == (6, 5, 4)
    assert ras_spacing(PERMUTED, (4, 5, 6)) == pytest.approx((2.0, 3.0, 1.0))
    assert ras_spacing(LPS, (4, 5, 6)) == pytest.approx((2.0, 2.0, 3.0))


def test_views_are_radiological_with_anterior_and_superior_up():
    volume = np.zeros((4, 5, 6), np.uint8)  # RAS-ordered
    volume[3, 4, 5] = 1  # the patient's right, anterior, superior corner
    volume[0, 0, 0] = 2  # left, posterior, inferior
    for centre, value, corner in (((3, 4, 5), 1, (0, 0)), ((0, 0, 0), 2, (-1, -1))):
        views = orthogonal_views(volume, centre)
        assert views["axial"].shape == (5, 4)  # rows anterior -> posterior, columns right -> left
        assert views["coronal"].shape == (6, 4)  # rows superior -> inferior, columns right -> left
        assert views["sagittal"].shape == (6, 5)  # rows superior -> inferior, columns anterior -> posterior
        for name, picture in views.items():
            assert picture[corner] == value, name


# --- write_report ----------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collects the <img> sources, every URL-bearing attribute and the text inside tables."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []
        self.table_text: list[str] = []
        self.text: list[str] = []
        self._table_depth = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes["src"])
        self.urls += [v for k, v in attributes.items() if k in ("src", "href") and v]
        self._table_depth += tag == "table"

    def handle_endtag(self, tag):
        self._table_depth -= tag == "table"

    def handle_data(self, data):
        self.text.append(data)
        if self._table_depth:
            self.table_text.append(data)


def summary(mean, n=2, n_excluded=0):
    counts = {"n": n, "n_excluded": n_excluded}
    if mean is None:
        return dict.fromkeys(("mean", "median", "std", "ci95_low", "ci95_high")) | counts | {"n": 0}
    return {
        "mean": mean,
        "median": mean,
        "std": 0.01,
        "ci95_low": mean - 0.05,
        "ci95_high": mean + 0.05,
    } | counts


def estimate(value, reason=None, interval=False):
    out = {"value": value, "reason": reason}
    if interval:
        low, high = (None, None) if value is None else (value - 0.1, value + 0.1)
        out |= {"ci95_low": low, "ci95_high": high, "n_resamples": 100, "n_resamples_undefined": 0}
    return out


DETECTION = {
    "n_cases": 2,
    "n_positive_cases": 2,
    "n_reference_lesions": 3,
    "n_candidates": 4,
    "operating_threshold": 0.5,
    "lesion": {
        "tp": 2,
        "fp": 2,
        "fn": 1,
        "fp_per_scan": 1.0,
        "sensitivity": estimate(2 / 3),
        "precision": estimate(0.5),
        "f1": estimate(4 / 7),
        "cpm": estimate(0.6, interval=True),
        "sensitivity_at_fp_per_scan": {
            "0.125": 0.0,
            "0.25": 0.333,
            "0.5": 0.333,
            "1.0": 0.667,
            "2.0": 0.667,
            "4.0": 0.667,
            "8.0": 0.667,
        },
        "ap": estimate(0.55, interval=True),
    },
    "case": {
        "score": "max_candidate",
        "sensitivity": estimate(1.0),
        "specificity": estimate(None, "no negative case"),
        "auroc": estimate(None, "no negative case", interval=True),
        "ap": estimate(1.0),
    },
}
CURVES = {
    "lesion": {
        "froc": {
            "fps_per_scan": [0.0, 0.5, 1.0],
            "sensitivity": [0.333, 0.333, 0.667],
            "threshold": [0.9, 0.7, 0.5],
        },
        "lesion_pr": {
            "recall": [0.333, 0.333, 0.667],
            "precision": [1.0, 0.5, 0.5],
            "threshold": [0.9, 0.7, 0.5],
        },
        "roc": {"fpr": [], "tpr": [], "threshold": []},
        "case_pr": {"recall": [1.0, 0.5, 0.0], "precision": [1.0, 1.0, 1.0], "threshold": [0.5, 0.9, None]},
    },
    # A lesion label with curves but no detection metrics: every plot says "no data".
    "cyst": {
        "froc": {"fps_per_scan": [], "sensitivity": [], "threshold": []},
        "lesion_pr": {"recall": [], "precision": [], "threshold": []},
        "roc": {"fpr": [], "tpr": [], "threshold": []},
        "case_pr": {"recall": [], "precision": [], "threshold": []},
    },
}


def qc_case(case: str, rank: str, seed: int) -> QCCase:
    rng = np.random.default_rng(seed)
    reference = np.zeros((16, 16, 8), np.uint8)
    reference[4:12, 4:12, 2:6] = 1
    reference[9:12, 5:8, 3:5] = 2
    prediction = np.roll(reference, 1, axis=0)
    return QCCase(
        case=case,
        rank=rank,
        score_text="mean Dice 0.812",
        image=rng.normal(size=reference.shape) + reference,
        reference=reference,
        prediction=prediction,
        affine=np.diag([-0.8, -0.8, 3.0, 1.0]),  # LPS, anisotropic
        focus_label=2,
    )


def report_inputs(**overrides) -> dict:
    inputs = {
        "title": "Test <cohort> & report",
        "metrics": {
            "n_cases": 2,
            "segmentation": {
                # cyst: absent from both masks of both cases, never scored.
                "dice": {"organ": summary(0.91), "lesion": summary(0.6), "cyst": summary(None, n_excluded=2)},
                "nsd": {"organ": summary(0.95), "lesion": summary(0.7), "cyst": summary(None, n_excluded=2)},
                "hd95_mm": {
                    "organ": summary(2.0),
                    "lesion": summary(21.5) | {"n_worst_case": 1},
                    "cyst": summary(None, n_excluded=2),
                },
                "cases": {
                    "organ": {"both_present": 2},
                    "lesion": {"both_present": 1, "prediction_empty": 1},
                    "cyst": {"both_empty": 2},
                },
            },
            "detection": {"lesion": DETECTION},
        },
        "label_names": {1: "organ", 2: "lesion"},
        "per_case_columns": ["case", "status_lesion", "dice_lesion", "hd95_mm_lesion"],
        "per_case_rows": [
            ["case_alpha", "both_present", "0.8120", "1.50"],
            ["case_beta", "prediction_empty", "0.0000", ""],
        ],
        "curves": CURVES,
        "qc_cases": [qc_case("case_alpha", "best", 0), qc_case("case_beta", "worst", 1)],
    }
    return inputs | overrides


def parse(path) -> tuple[str, PageParser]:
    page = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return page, parser


def test_report_is_a_self_contained_page(tmp_path):
    path = tmp_path / "report.html"
    write_report(path, **report_inputs())
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind
    page, parsed = parse(path)

    assert len(parsed.images) == 4 * len(CURVES) + 2
    for source in parsed.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    assert all(url.startswith("data:") for url in parsed.urls)
    assert "http://" not in page and "https://" not in page

    text = "".join(parsed.text)
    assert "Test <cohort> & report" in text  # escaped in the file, itself once parsed
    assert "best: case_alpha — mean Dice 0.812" in text
    assert "worst: case_beta — mean Dice 0.812" in text


def test_the_same_inputs_give_the_same_page(tmp_path):
    """DVC hashes report.html: a page that changed with the clock would never be up to date."""
    write_report(tmp_path / "first.html", **report_inputs())
    write_report(tmp_path / "second.html", **report_inputs())
    assert (tmp_path / "first.html").read_bytes() == (tmp_path / "second.html").read_bytes()


def test_report_tables_show_values_and_reasons(tmp_path):
    path = tmp_path / "report.html"
    write_report(path, **report_inputs())
    table_text = "".join(parse(path)[1].table_text)

    assert "0.910 [0.860, 0.960]" in table_text  # Dice of organ
    assert "2.00 [1.95, 2.05]" in table_text  # HD95 of organ, in mm
    assert "21.50 [21.45, 21.55]" in table_text  # HD95 of lesion, one case at the worst case
    assert "— (not scored: both masks empty in all 2 cases)" in table_text  # cyst
    assert "prediction empty (missed: worst-case HD95)" in table_text
    assert "both empty (not scored)" in table_text
    assert "— (no negative case)" in table_text  # case AUROC and specificity
    assert "0.600 [0.500, 0.700]" in table_text  # CPM
    assert "1/8: 0.000, 1/4: 0.333" in table_text
    assert "case_alpha" in table_text and "case_beta" in table_text
    assert not re.search(r"\b(nan|None|inf)\b", table_text, re.IGNORECASE)


def test_report_without_detection_or_qc(tmp_path):
    inputs = report_inputs(curves={}, qc_cases=[])
    inputs["metrics"] = {k: v for k, v in inputs["metrics"].items() if k != "detection"}
    path = tmp_path / "report.html"
    write_report(path, **inputs)
    _, parsed = parse(path)
    text = "".join(parsed.text)
    assert parsed.images == []
    assert "No detection metrics in this evaluation." in text
    assert "No QC case" in text
