"""Every project exception survives pickling, so that an error raised in a Ray task, actor or Train worker reaches
the driver with its message (and attributes) intact.

Ray ships a task's exception to the driver with pickle; an exception whose ``__init__`` takes other arguments than
its ``args`` cannot be rebuilt (``cls(*self.args)``), and the driver then only sees Ray's
``UnserializableException`` (docs/bugs.md, 2026-12-01). The classes are discovered by walking the project packages,
so a new exception class is covered without editing this file; give its constructor's parameters a representative
value in ``SAMPLES`` if the test asks for one.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle
import pkgutil

import pytest

PACKAGES = ("nvembed", "evaluation", "tune")

#: A representative value per constructor parameter name (positional parameters without a default must be here).
SAMPLES = {
    "path": "data/train.jsonl",
    "line": 7,
    "reason": "missing field: 'positive'",
    "message": "something specific went wrong",
    "msg": "something specific went wrong",
    "label": "SciFact::corpus[0:1000]",
}

#: Known today; the walk must find at least these (it finding nothing would make every test below vacuous).
KNOWN = {"ConfigError", "DataError", "UnknownTaskError", "UnsupportedBackboneError", "LocalDataError", "ItemFailed"}


def _project_modules():
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it would run the CLI
                continue
            yield importlib.import_module(info.name)


def _exception_classes() -> list[type[BaseException]]:
    found = {}
    for module in _project_modules():
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


EXCEPTIONS = _exception_classes()


def _representative(cls: type[BaseException]) -> BaseException:
    """An instance built the way project code builds it: every named parameter filled from ``SAMPLES``."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a builtin __init__ without a signature
        params = []
    args = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in SAMPLES:
            assert p.default is not p.empty, (
                f"{cls.__module__}.{cls.__qualname__}: add a representative value for parameter {p.name!r} to "
                "SAMPLES in tests/unit/test_errors.py"
            )
            break  # keep positional order: stop at the first optional parameter we cannot fill
        args.append(SAMPLES[p.name])
    if not args:  # plain Exception-style constructor: one message
        args = [f"{cls.__name__}: something specific went wrong"]
    return cls(*args)


def _ids(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def test_discovery_finds_the_project_exceptions():
    assert KNOWN <= {c.__name__ for c in EXCEPTIONS}, [c.__name__ for c in EXCEPTIONS]


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=_ids)
def test_exception_survives_pickle_and_deepcopy(cls):
    err = _representative(cls)
    err.__notes__ = ["raised while reading stage 1"]  # added by add_note(); must travel too
    for again in (pickle.loads(pickle.dumps(err)), copy.deepcopy(err)):
        assert type(again) is cls
        assert str(again) == str(err)
        assert again.args == err.args
        assert vars(again) == vars(err)  # attributes (err.path, err.line, ...) and notes


def test_data_error_keeps_its_fields():
    from nvembed.data.readers import DataError

    for line in (12, None):
        err = pickle.loads(pickle.dumps(DataError("x/train.jsonl", line, "empty text: field 'query'")))
        assert (err.path, err.line, err.reason) == ("x/train.jsonl", line, "empty text: field 'query'")
    assert str(err) == "x/train.jsonl: empty text: field 'query'"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_exceptions_raised_in_ray_tasks_reach_the_driver(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0.25, max_retries=0)
    def fail(exc):
        raise exc  # the exception object travels to the task and back: pickled twice

    errors = [_representative(cls) for cls in EXCEPTIONS]
    refs = [fail.remote(err) for err in errors]
    for err, ref in zip(errors, refs, strict=True):
        with pytest.raises(type(err)) as caught:  # RayTaskError(<cls>) subclasses the original class
            ray.get(ref, timeout=120)
        got = caught.value
        assert isinstance(got, ray.exceptions.RayTaskError), type(got)
        assert type(got.cause) is type(err)
        assert str(got.cause) == str(err)
        assert vars(got.cause) == vars(err)
        assert str(err) in str(got)  # what a traceback on the driver prints
