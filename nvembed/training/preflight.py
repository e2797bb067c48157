"""Driver-side checks of a stage's inputs, run before any worker starts.

Everything knowable on the driver is checked there: a mistake a worker would only meet at its first step (or first
dev evaluation) costs a cluster start-up, a Ray Train failure with its retries, and a traceback buried in a worker
log. Rows are already validated line by line when they are built (``nvembed.data.build``); this module adds what
needs the tokenizer and the run settings:

* every dataset name / task resolves to a registered instruction (``nvembed/data/instructions.py``);
* every distinct instruction, formatted as the embedder formats it (``InputBuilder``: template, BOS/EOS or
  CLS/SEP), leaves room for at least one token of text within ``run.query_max_length`` (queries) or
  ``run.doc_max_length`` (symmetric tasks put the instruction on documents too). Checked once per instruction,
  not per row: the instruction's token count does not depend on the row;
* the ``dev`` section: not an evaluation test split (``check_dev_data``), its files exist and their rows are valid,
  its instructions resolve and fit ``dev.max_length``.

Only the tokenizer and the model's ``config.json`` are read (no weights), so this is cheap even for a 7B backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nvembed.config import ConfigError, TrainConfig
from nvembed.data.instructions import UnknownTaskError, get_instruction, policy_applies
from nvembed.data.schema import TrainingExample
from nvembed.tokenization import InputBuilder

_PROBE = "text"  # a plain word standing in for a text where none is at hand
TEXTS_PER_INSTRUCTION = 256  # training texts checked per (instruction, side): enough to meet boundary merges


def check_matryoshka_dims(cfg: TrainConfig) -> None:
    """``loss.matryoshka_dims`` below the embedding width (the backbone's hidden size: every pooling keeps it), on
    the driver: a worker would find a wrong width at its first step, and Ray Train would retry it."""
    dims = cfg.loss.matryoshka_dims
    if not dims:
        return
    from transformers import AutoConfig

    from nvembed.modeling.builders import resolve_model_path

    try:
        width = int(AutoConfig.from_pretrained(resolve_model_path(cfg.model.name_or_path)).hidden_size)
    except (OSError, AttributeError, ValueError):  # unreadable here: the loss checks at the first step
        return
    bad = [m for m in dims if not 0 < m < width]
    if bad:
        raise ConfigError(
            f"{_stage(cfg)}.loss.matryoshka_dims={dims}: {bad} not below the embedding width {width} "
            f"({cfg.model.name_or_path}); the full width is always trained"
        )


def check_distill_teacher(cfg: TrainConfig) -> None:
    """``loss.distill_from`` names a saved nvembed model whose embedding width is the student's, on the driver."""
    teacher = cfg.loss.distill_from
    if not teacher:
        return
    import json
    from pathlib import Path

    meta_file = Path(teacher) / "nvembed_config.json"
    if not meta_file.is_file():
        raise ConfigError(f"{_stage(cfg)}.loss.distill_from={teacher}: not an nvembed export (no {meta_file.name})")
    width = json.loads(meta_file.read_text()).get("embedding_dim")
    student = Path(cfg.run.init_from or "") / "nvembed_config.json"
    if cfg.run.init_from and student.is_file():
        own = json.loads(student.read_text()).get("embedding_dim")
        if width and own and width != own:
            raise ConfigError(
                f"{_stage(cfg)}.loss.distill_from={teacher}: the teacher's embeddings are {width}-d, the student's "
                f"({cfg.run.init_from}) {own}-d"
            )


def driver_input_builder(cfg: TrainConfig, tokenizer=None) -> InputBuilder:
    """The :class:`InputBuilder` the workers will build for ``cfg.model``, from its tokenizer and ``config.json``."""
    from transformers import AutoConfig

    from nvembed.modeling.bidirectional import is_decoder_only
    from nvembed.modeling.builders import build_tokenizer, resolve_model_path

    name = cfg.model.name_or_path
    try:
        if tokenizer is None:
            tokenizer = build_tokenizer(name)
        is_decoder = is_decoder_only(AutoConfig.from_pretrained(resolve_model_path(name)))
    except OSError as err:
        message = f"model.name_or_path={name!r}: cannot read its tokenizer / config on the driver: {err}"
        raise ConfigError(message) from err
    return InputBuilder(tokenizer, is_decoder, cfg.model.instruction_template)


def instruction_tokens(inputs: InputBuilder, instruction: str, text: str = _PROBE) -> int:
    """How many tokens the formatted instruction takes in front of ``text`` (specials not counted).

    Measured on the joined string, with the same offset rule as :meth:`InputBuilder.tokenize` (a token belongs to
    the text once it covers one of its characters), so a token merged across the boundary counts as text.
    """
    ids, starts = inputs.tokenize([text], inputs.format_instruction(instruction), max_length=1 << 30)
    return starts[0] - len(inputs.prefix_ids)


def check_fits(
    inputs: InputBuilder, instruction: str | None, texts: str | Sequence[str], max_length: int, key: str, what: str
) -> None:
    """Raise :class:`ConfigError` unless ``instruction`` + at least one token of each text fit ``max_length``.

    Several texts, because the instruction's share depends on the text: a token merged across the boundary (the
    space after ``Query:`` joins the text's first word) counts as text, so one text may keep a token where
    another keeps none (a dev STS pair failed on a worker this way although the first pair fitted).

    Args:
        key: the config key of ``max_length`` (named in the message).
        what: who uses the instruction, e.g. ``"dataset 'snli' (queries)"``.
    """
    specials = len(inputs.prefix_ids) + len(inputs.suffix_ids)
    if max_length - specials < 1:
        raise ConfigError(f"{key}={max_length} leaves no room for text next to the {specials} special tokens")
    if not instruction:
        return
    texts = [texts] if isinstance(texts, str) else list(texts)
    prefix = inputs.format_instruction(instruction)
    try:
        inputs.tokenize(texts, prefix, max_length)  # what a worker would run, all texts in one call
        return
    except ValueError:
        text = next(t for t in texts if not _fits(inputs, t, prefix, max_length))
    n = instruction_tokens(inputs, instruction, text)
    raise ConfigError(
        f"{what}: the instruction takes {n} tokens (+{specials} special) of {key}={max_length}, leaving no room "
        f"for the text {text[:60]!r}; raise {key} to at least {n + specials + 1} or shorten the instruction: "
        f"{instruction!r}"
    )


def _fits(inputs: InputBuilder, text: str, prefix: str, max_length: int) -> bool:
    try:
        inputs.tokenize([text], prefix, max_length)
    except ValueError:
        return False
    return True


def _stage(cfg: TrainConfig) -> str:
    return f"stage{cfg.run.stage}" if cfg.run.stage else "stage"


def check_instructions_registered(cfg: TrainConfig) -> None:
    """Every dataset without its own ``instruction:`` has an instruction key (``task``, else ``name``) in the
    registry; the error names the dataset."""
    for i, ds in enumerate(cfg.data.datasets):
        if ds.instruction is not None:  # the config gives this dataset's instruction itself
            continue
        try:
            get_instruction(ds.task or ds.name)
        except UnknownTaskError as err:
            raise UnknownTaskError(f"{_stage(cfg)}.data.datasets[{i}] (name {ds.name!r}): {err}") from None


def check_stage_inputs(
    cfg: TrainConfig, rows: Mapping[str, Sequence[TrainingExample]], tokenizer=None, inputs: InputBuilder | None = None
) -> None:
    """Check a stage's rows and settings on the driver; raise before any worker starts.

    Args:
        cfg: the stage's config.
        rows: ``dataset name -> rows`` as :func:`nvembed.training.job.stage_rows` returns them.
        tokenizer: the backbone's tokenizer (default: loaded with ``build_tokenizer(cfg.model.name_or_path)``).
        inputs: an :class:`InputBuilder` to use instead (tests); built from ``tokenizer`` and the model's config
            otherwise.

    Raises:
        UnknownTaskError: a dataset whose name / task has no instruction.
        ConfigError: an instruction that leaves no room for text within ``run.query_max_length`` /
            ``run.doc_max_length`` / ``dev.max_length`` (naming the dataset, the instruction's token count and the
            limit), or dev data that is an evaluation test split / trained on.
        DataError: a dev file that is missing or has a bad row (``file:line: reason``).
    """
    check_instructions_registered(cfg)
    inputs = inputs or driver_input_builder(cfg, tokenizer)
    stage = _stage(cfg)
    check_matryoshka_dims(cfg)
    check_distill_teacher(cfg)
    policy = cfg.model.instruction_policy
    # one check per distinct (instruction, side); the first row that uses it supplies the text; an instruction the
    # policy drops for the row's task type is never tokenised, so it is not checked either
    seen: dict[tuple[str, str | None], tuple[list[str], list[str]]] = {}
    for name, examples in rows.items():
        for r in examples:
            kept = policy_applies(policy, r.task_type)
            query_instr, doc_instr = (r.instruction, r.doc_instruction) if kept else (None, None)
            for side, instruction, text in (("query", query_instr, r.query), ("doc", doc_instr, r.positive)):
                texts, names = seen.setdefault((side, instruction), ([], []))
                if len(texts) < TEXTS_PER_INSTRUCTION:
                    texts.append(text)
                if name not in names:
                    names.append(name)
    limits = {"query": ("query_max_length", "queries"), "doc": ("doc_max_length", "documents")}
    for key, _ in limits.values():  # the special tokens alone must fit, with or without an instruction
        check_fits(inputs, None, _PROBE, getattr(cfg.run, key), f"{stage}.run.{key}", "")
    for (side, instruction), (text, names) in seen.items():
        key, texts = limits[side]
        who = ", ".join(repr(n) for n in names)
        what = f"{stage}: dataset{'s' if len(names) > 1 else ''} {who} ({texts})"
        check_fits(inputs, instruction, text, getattr(cfg.run, key), f"{stage}.run.{key}", what)
    if cfg.dev is not None:
        check_dev_inputs(cfg, inputs)


def check_dev_inputs(cfg: TrainConfig, inputs: InputBuilder) -> None:
    """The ``dev`` section as the workers will load it: guards, files, rows, instructions, ``dev.max_length``."""
    from nvembed.dev import DevSet, check_dev_data

    dev = cfg.dev
    check_dev_data(dev, [d.path for d in cfg.data.datasets], cfg.data.decontaminate)
    loaded = DevSet(dev, seed=0)  # reads and validates every dev file, resolves the dev instructions
    policy = cfg.model.instruction_policy  # as DevSet.evaluate applies it
    parts = []
    if loaded.retrieval is not None and loaded.retrieval.queries:  # every dev text: a dev slice is small
        instruction = loaded.retrieval.instruction if policy_applies(policy, "Retrieval") else None
        parts.append(("dev.retrieval", instruction, loaded.retrieval.queries))
    if loaded.sts is not None and loaded.sts.left:
        instruction = loaded.sts.instruction if policy_applies(policy, "STS") else None
        parts.append(("dev.sts", instruction, loaded.sts.left + loaded.sts.right))
    check_fits(inputs, None, _PROBE, dev.max_length, "dev.max_length", "")
    for key, instruction, text in parts:
        check_fits(inputs, instruction, text, dev.max_length, "dev.max_length", f"{key} ({getattr(dev, key[4:])})")
