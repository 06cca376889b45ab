"""A plain and a robust snapshot of the same photos, evaluated together: the report names each snapshot's
attacks, and report.html puts each transform's ratio of the robust snapshot beside the plain one's."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from planting_support import record_immunized

from forwardguard.eval.report import attack_descriptions
from forwardguard.eval.run import run_eval
from forwardguard.eval.settings import EvalRequest, EvalSettings, ModelArg
from forwardguard.immunize import AttackSettings
from forwardguard.registry import Registry

PLAIN = AttackSettings(steps=3)
ROBUST = AttackSettings(steps=3, robust=("jpeg_q75", "hflip"), robust_draws=2)
GAUNTLET = ("jpeg_q75", "hflip")


class RobustnessTables(HTMLParser):
    """The page's robustness tables: per table, its rows (the head row first) as lists of cell texts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._inside = False
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._inside = "robustness" in (dict(attrs).get("class") or "").split()
            if self._inside:
                self.tables.append([])
        elif self._inside and tag == "tr":
            self.tables[-1].append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = []
        elif self._cell is not None and tag == "br":
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def plain_and_robust(tmp_path_factory, tiny, photo) -> Path:
    """Two photos immunized against tiny, plain then robust, frozen as snapshots "plain" and "robust"."""
    path = tmp_path_factory.mktemp("robust-registry") / "reg.db"
    photos = [photo("astronaut", (40, 32)), photo("coffee", (40, 32))]
    with Registry.open(path, create=True) as registry:
        plain_ids = record_immunized(registry, tiny, photos, PLAIN)
        registry.create_snapshot("plain")
        for pattern_id in plain_ids:  # the next snapshot freezes the robust patterns only
            registry.retire(pattern_id)
        record_immunized(registry, tiny, photos, ROBUST)
        registry.create_snapshot("robust")
    return path


def test_robust_and_plain_snapshots_side_by_side(plain_and_robust, tmp_path):
    request = EvalRequest(
        registry=str(plain_and_robust), models=(ModelArg("v1", "tiny"),), out=tmp_path / "out",
        snapshots=("plain", "robust"), settings=EvalSettings(transforms=GAUNTLET, edit_steps=1),
    )  # fmt: skip
    path = run_eval(request)
    report = json.loads(path.read_text())

    attacks = {snapshot["name"]: snapshot["attacks"] for snapshot in report["snapshots"]}
    assert attacks["plain"] == [{"method": "encoder", "step_rule": PLAIN.step_rule, "robust": None, "patterns": 2}]
    assert attacks["robust"] == [
        {"method": "encoder", "step_rule": ROBUST.step_rule, "robust": list(ROBUST.robust), "robust_draws": 2, "patterns": 2}
    ]

    [table] = RobustnessTables((path.parent / "report.html").read_text()).tables  # one model, one table
    head, *rows = table
    assert head == [
        "transform", "plain plain backward", "robust robust (jpeg_q75, hflip, 2 draws) backward", "Δ robust − plain",
    ]  # fmt: skip
    assert [row[0] for row in rows] == ["none", *GAUNTLET]
    cells = {(cell["snapshot"], cell["transform"]): cell for cell in report["cells"]}
    ratios = {key: cell["ratio"] for key, cell in cells.items()}
    for transform, plain, robust, delta in rows:
        for text, snapshot in ((plain, "plain"), (robust, "robust")):
            ratio, protection = ratios[snapshot, transform], cells[snapshot, transform]["protection"]
            immunized = ratio["immunized"]
            assert text == (
                f"{immunized['mean']:.3f} noise {ratio['noise']['mean']:.3f} p90 {immunized['p90']:.3f} · max {immunized['max']:.3f}"
                f" · {protection['rate']:.0%} ≤ {protection['threshold']:g}"
            )
        means = [ratios[snapshot, transform]["immunized"]["mean"] for snapshot in ("robust", "plain")]
        assert delta == f"{means[0] - means[1]:+.3f}"


def test_attack_descriptions_group_patterns_by_attack_in_first_seen_order():
    def record(method: str, **params: object) -> SimpleNamespace:
        return SimpleNamespace(method=method, params={"eps": 16 / 255, "steps": 3, **params})

    records = [
        record("encoder", step_rule="momentum", robust=["identity", "jpeg_q50"], robust_draws=1),
        record("encoder", step_rule="momentum"),
        record("encoder", step_rule="momentum", robust=["identity", "jpeg_q50"], robust_draws=1, steps=9),
        record("noise"),
    ]
    assert [attack.model_dump() for attack in attack_descriptions(records)] == [
        {"method": "encoder", "step_rule": "momentum", "robust": ["identity", "jpeg_q50"], "robust_draws": 1, "patterns": 2},
        {"method": "encoder", "step_rule": "momentum", "robust": None, "patterns": 1},
        {"method": "noise", "step_rule": None, "robust": None, "patterns": 1},
    ]


def test_attacks_count_the_evaluated_patterns_only(plain_and_robust, tmp_path):
    request = EvalRequest(
        registry=str(plain_and_robust), models=(ModelArg("v1", "tiny"),), out=tmp_path / "out",
        snapshots=("robust",), settings=EvalSettings(transforms=(), edit_steps=1, max_images=1),
    )  # fmt: skip
    [snapshot] = json.loads(run_eval(request).read_text())["snapshots"]
    assert snapshot["patterns"] == 2 and snapshot["evaluated"] == 1
    assert [attack["patterns"] for attack in snapshot["attacks"]] == [1]
