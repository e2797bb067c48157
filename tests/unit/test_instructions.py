from __future__ import annotations

import csv
import os

import pytest

from nvembed.data.instructions import MTEB_ENG_V1, UnknownTaskError, get_instruction, instruction_for


def test_all_56_english_tasks_have_instructions(shared_data):
    with open(os.path.join(shared_data, "..", "mteb", "mteb_eng_v1_tasks.csv")) as fh:
        expected = {row["task"]: row["type"] for row in csv.DictReader(fh)}
    assert set(MTEB_ENG_V1) == set(expected)
    for task, task_type in expected.items():
        assert get_instruction(task).task_type == task_type


def test_sides():
    assert instruction_for("SciFact", "document") is None
    assert instruction_for("QuoraRetrieval", "document") == instruction_for("QuoraRetrieval", "query")
    assert instruction_for("STSBenchmark", "document") == "Retrieve semantically similar text."
    assert get_instruction("scifact").instruction.startswith("Given a scientific claim")


def test_unknown_task_is_a_clear_error():
    with pytest.raises(UnknownTaskError, match="did you mean SciFact"):
        get_instruction("SciFacts")
