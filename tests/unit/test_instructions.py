from __future__ import annotations

import pytest

from nvembed.data.instructions import MTEB_ENG_V1, UnknownTaskError, get_instruction, instruction_for


def test_all_56_english_tasks_have_instructions():
    """The task list and types come from the installed mteb's own benchmark definition (no download: benchmarks
    are code in the package), so the registry is checked against the authority rather than a copied list."""
    import mteb

    expected = {t.metadata.name: t.metadata.type for t in mteb.get_benchmark("MTEB(eng, v1)").tasks}
    assert len(expected) == 56
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
