"""The model card (``README.md``) of an nvembed export: what a user of the model needs, hub-ready.

``Embedder.save_pretrained(dir, card=...)`` writes it. The model itself knows its base model, pooling, LoRA
settings, width, token cap and instruction template; what it cannot know (the training stages, their data and
its licences, evaluation scores, the model's own licence) comes from the caller as a :class:`ModelCard` or a
plain dict of its fields, so the training driver can pass it without importing anything else::

    card = ModelCard(
        license="cc-by-sa-4.0",
        stages=[{"stage": 1, "steps": 40, "batch_size": 32,
                 "datasets": [("snli", "nvembed/resources/train/snli_triplets.jsonl", None)]}],
        evaluation={"STSBenchmark": 79.58, "Banking77Classification": 81.14},
    )
    emb.save_pretrained("out/model", card=card)

A dataset given with a path and no licence gets the licence its ``PROVENANCE.md`` states
(:func:`licence_from_provenance`: the bundled ``nvembed/resources/PROVENANCE.md`` and the per-folder files of
the shared data). The card starts with YAML front matter for the Hugging Face hub (``library_name:
sentence-transformers``, tags, ``base_model``, ``license``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROVENANCE = "PROVENANCE.md"
# Names nvembed resolves itself -> the hub repository they are a copy of (for the card's ``base_model``).
HUB_IDS = {"packaged:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
DEFAULT_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "text-embeddings", "nvembed"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A licence named in prose ("... the same sample as train/. CC BY 4.0."), for sections without a Licence line.
_LICENCE_NAME = re.compile(r"\b(CC[ -]BY(?:-(?:SA|NC|ND))*[ -]\d\.\d|CC0(?: 1\.0)?|Apache[ -]2\.0|MIT licen[cs]e)\b")


# --------------------------------------------------------------------------------------------- licences


def _provenance_files(path: Path, levels: int = 6) -> list[Path]:
    """``PROVENANCE.md`` files in ``path``'s folder and its parents, nearest first."""
    folder = path if path.is_dir() else path.parent
    found = []
    for parent in [folder, *folder.parents][:levels]:
        if (parent / PROVENANCE).is_file():
            found.append(parent / PROVENANCE)
    return found


def _cells(line: str) -> list[str]:
    return [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]


def _licence_in(provenance: Path, rel: str) -> str | None:
    """The licence ``provenance`` states for ``rel`` (a path relative to its folder), or ``None``.

    Understood layouts: a table with ``file`` and ``licence`` columns (nvembed/resources), a ``## <path>``
    section with a ``- Licence: ...`` line (or a licence named in its prose, e.g. ``CC BY 4.0``), and a
    top-level ``- Licence ...: ...`` line for the whole folder (the shared data's per-dataset files).
    """
    lines = provenance.read_text(encoding="utf-8").splitlines()
    name = rel.rsplit("/", 1)[-1]
    section = ""  # the path named by the current "## " heading, if any
    header: list[str] | None = None
    folder_licence = None
    prose_licence = None  # a licence named in the prose of the section that covers rel
    for line in lines:
        if line.startswith("## "):
            if prose_licence:
                return prose_licence
            section = line[3:].split(" (")[0].strip().strip("`")
            header = None
            continue
        covers = bool(section) and (rel == section or (section.endswith("/") and rel.startswith(section)))
        named = _LICENCE_NAME.search(line)
        if covers and named and not line.strip().startswith("|"):
            prose_licence = prose_licence or named.group(1)
        licence = re.match(r"^\s*-\s*Licen[cs]e[^:]*:\s*(.+)$", line)
        if licence:
            text = licence.group(1).strip()
            if not section:
                folder_licence = folder_licence or text
            elif covers:
                return text
            continue
        if line.strip().startswith("|"):
            cells = _cells(line)
            if header is None:
                header = [c.lower() for c in cells]
                continue
            if set("".join(cells)) <= set("-: "):
                continue  # the |---|---| separator
            if "file" in header and "licence" in header and len(cells) == len(header):
                file_cell = cells[header.index("file")]
                candidates = {file_cell, f"{section.rstrip('/')}/{file_cell}" if section else file_cell}
                if rel in candidates or (not section and file_cell == name):
                    return cells[header.index("licence")]
        else:
            header = None if line.strip() else header
    return prose_licence or folder_licence


def licence_from_provenance(path: str | Path) -> str | None:
    """The licence a ``PROVENANCE.md`` next to (or above) ``path`` states for it; ``None`` when none says.

    ``path`` is a data file or folder as a training config names it (relative paths resolve against the current
    folder). Best effort: the first PROVENANCE file, nearest first, that names the path or covers its folder wins.
    """
    target = Path(path).expanduser().resolve()
    if not target.exists():
        return None
    for provenance in _provenance_files(target):
        rel = target.relative_to(provenance.parent).as_posix()
        licence = _licence_in(provenance, rel + ("/" if target.is_dir() else ""))
        if licence is None and target.is_dir():
            licence = _licence_in(provenance, rel)
        if licence:
            return licence
    return None


# --------------------------------------------------------------------------------------------- the card


@dataclass
class CardDataset:
    """One training dataset: its name, where it came from, and its licence (looked up when not given)."""

    name: str
    path: str | None = None
    licence: str | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if self.licence is None and self.path:
            self.licence = licence_from_provenance(self.path)

    @classmethod
    def coerce(cls, value: Any) -> CardDataset:
        """A :class:`CardDataset`, a dict of its fields, a ``(name, path, licence)`` tuple or a bare name."""
        if isinstance(value, CardDataset):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            return _from_fields(cls, value, "dataset")
        if isinstance(value, list | tuple) and 1 <= len(value) <= 4:
            return cls(*value)
        raise TypeError(f"a card dataset is a name, (name, path, licence) or a dict, got {value!r}")


@dataclass
class CardStage:
    """One training stage as the card reports it."""

    stage: int
    steps: int | None = None
    batch_size: int | None = None
    datasets: list[CardDataset] = field(default_factory=list)
    learning_rate: float | None = None
    hard_negatives: int | None = None  # per query
    in_batch_negatives: bool | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        self.datasets = [CardDataset.coerce(d) for d in self.datasets]

    @classmethod
    def coerce(cls, value: Any) -> CardStage:
        if isinstance(value, CardStage):
            return value
        if isinstance(value, dict):
            data = dict(value)
            if "batch" in data and "batch_size" not in data:  # the short name the brief of the driver uses
                data["batch_size"] = data.pop("batch")
            return _from_fields(cls, data, "stage")
        raise TypeError(f"a card stage is a CardStage or a dict, got {value!r}")


def _from_fields(cls: type, data: dict[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        kind = f"model-card {what} field(s)" if what else "model-card field(s)"
        raise ValueError(f"unknown {kind} {unknown} (valid: {', '.join(sorted(names))})")
    return cls(**data)


@dataclass
class ModelCard:
    """Everything the README of an export says; ``None`` fields are filled from the model when it is saved.

    Attributes:
        model_id: the name in the loading snippets (a hub repo id once pushed); default: the export folder's name.
        base_model: what training started from (hub id, or a name nvembed resolves such as
            ``packaged:all-MiniLM-L6-v2``).
        license: the model's licence for the hub front matter (e.g. ``apache-2.0``); omitted when unknown.
        pooling: the pooling config (``nvembed.config.PoolingConfig`` fields).
        lora: LoRA settings used in training (``LoraConfig`` fields); kept when the export is merged.
        dim: embedding width. max_length: token cap per text. instruction_template: how instructions are applied.
        query_instruction: the default instruction of the ST ``"query"`` prompt.
        instruction_policy: which task types carry instructions (``model.instruction_policy``).
        prompts: sentence-transformers prompts (raw prefixes) the model carries.
        stages: training stages with their data (:class:`CardStage`).
        instructions: task type (or task) -> instruction; ``None`` lists one example per MTEB task type from
            ``nvembed/data/instructions.py``.
        evaluation: task -> score, or task -> {column: score} for several models (e.g. trained vs base).
        evaluation_note: how the scores were obtained (metric, data, split).
        tags, language: extra hub metadata.
        notes: free markdown appended to the card.
        compression: the weight-compression steps applied after training, in order (``nvembed compress``: each a
            dict with ``step`` and its settings and measurements).
    """

    model_id: str | None = None
    base_model: str | None = None
    license: str | None = None
    pooling: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    dim: int | None = None
    max_length: int | None = None
    instruction_template: str | None = None
    query_instruction: str | None = None
    instruction_policy: str | None = None
    prompts: dict[str, str] | None = None
    stages: list[CardStage] = field(default_factory=list)
    instructions: dict[str, str] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    evaluation_note: str | None = None
    tags: list[str] = field(default_factory=list)
    language: list[str] | None = None
    notes: str | None = None
    compression: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [CardStage.coerce(s) for s in self.stages]
        for task, score in self.evaluation.items():
            values = score.values() if isinstance(score, dict) else [score]
            if not all(isinstance(v, int | float) or v is None for v in values):
                raise TypeError(f"evaluation[{task!r}] must be a number or a dict of numbers, got {score!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """From a dict of fields (what the training driver passes, or what ``to_dict`` stored)."""
        return _from_fields(cls, dict(data), "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ----------------------------------------------------------------------------------------- rendering

    def hub_base_model(self) -> str | None:
        """``base_model`` as a hub repo id for the front matter, or ``None`` (local folder, tiny model)."""
        base = HUB_IDS.get(self.base_model or "", self.base_model)
        if not base or not _HUB_ID.match(base) or Path(base).exists():
            return None
        return base

    def front_matter(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity"}
        meta["tags"] = list(dict.fromkeys(DEFAULT_TAGS + list(self.tags)))
        if self.hub_base_model():
            meta["base_model"] = self.hub_base_model()
        if self.license:
            meta["license"] = self.license
        if self.language:
            meta["language"] = list(self.language)
        return meta

    def render(self) -> str:
        """The README: YAML front matter, then model, usage, instructions, training, evaluation."""
        name = self.model_id or "nvembed-model"
        out = ["---", yaml.safe_dump(self.front_matter(), sort_keys=False).strip(), "---", "", f"# {name}", ""]
        base = self.base_model or "an unknown backbone"
        if self.stages:
            out.append(f"A text-embedding model trained from `{base}` with the NV-Embed recipe (nvembed).")
        else:
            out.append(f"A text-embedding model exported by nvembed from `{base}` (no training recorded).")
        out += ["", "## Model", "", "| | |", "|---|---|", f"| base model | `{base}` |"]
        out.append(f"| pooling | {_describe_pooling(self.pooling, self.dim)} |")
        if self.dim:
            out.append(f"| embedding dimension | {self.dim} |")
        if self.max_length:
            out.append(f"| max tokens per text | {self.max_length} (longer texts are truncated) |")
        out.append(f"| LoRA | {_describe_lora(self.lora)} |")
        unit = "rows are unit length" if _normalised(self.pooling) else "rows are not normalised"
        out.append(f"| similarity | cosine ({unit}) |")
        if self.license:
            out.append(f"| licence | {self.license} |")
        out += ["", *self._usage(name), "", *self._instructions()]
        if self.stages:
            out += ["", *self._training()]
        if self.compression:
            out += ["", *self._compression()]
        if self.evaluation:
            out += ["", *self._evaluation()]
        if not self.license:
            out += [
                "",
                "Licence: not stated; the licences of the base model and of the training data (above) apply.",
            ]
        if self.notes:
            out += ["", self.notes.strip()]
        return "\n".join(out).rstrip() + "\n"

    def _usage(self, name: str) -> list[str]:
        query = self.query_instruction or "Given a question, retrieve passages that answer the question"
        return [
            "## Usage",
            "",
            "With nvembed (`pip install nvembed`):",
            "",
            "```python",
            "from nvembed import Embedder",
            "",
            f'emb = Embedder.from_pretrained("{name}")',
            'queries = emb.encode(["how do I reset my card pin?"])  # trained without instructions'
            if self.instruction_policy == "none"
            else f'queries = emb.encode(["how do I reset my card pin?"], instruction="{query}")',
            'docs = emb.encode(["To reset your PIN, open the app ..."])  # documents: no instruction',
            "scores = queries @ docs.T",
            "```",
            "",
            "With sentence-transformers (nvembed installed; `trust_remote_code=True` is required by "
            "sentence-transformers >= 6 for any module class outside its own package, and no code is read from "
            "the model folder):",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{name}", trust_remote_code=True)',
            'queries = model.encode_query(["how do I reset my card pin?"])  # the "query" prompt',
            'docs = model.encode_document(["To reset your PIN, open the app ..."])',
            "```",
        ]

    def _instructions(self) -> list[str]:
        template = (self.instruction_template or "Instruct: {instruction}\nQuery: ").replace("\n", "\\n")
        policy = self.instruction_policy or "all"
        if policy == "none":
            return ["## Instructions", "", "This model was trained and is evaluated without instructions."]
        rule = {
            "all": "documents of retrieval and reranking tasks carry none, every text of the other task types does.",
            "asymmetric": "only retrieval and reranking queries carry one; documents and every text of the other "
            "task types (STS, classification, clustering, pair classification) are encoded as plain text, as this "
            "model was trained (instruction policy `asymmetric`).",
        }[policy]
        out = [
            "## Instructions",
            "",
            f"Queries carry a task instruction, applied as `{template}` and kept out of the pooled tokens; {rule}",
        ]
        if self.query_instruction:
            out.append(f'The sentence-transformers `"query"` prompt is the instruction `{self.query_instruction}`.')
        if self.prompts and any(self.prompts.values()):
            shown = ", ".join(f"`{k}`: `{v!r}`" for k, v in self.prompts.items())
            out.append(f"Prompts carried from the sentence-transformers folder (raw prefixes): {shown}.")
        out += ["", "| task type | example task | instruction |", "|---|---|---|"]
        if self.instructions is not None:
            out += [f"| {kind} | | {_md(text)} |" for kind, text in self.instructions.items()]
        else:
            examples = _example_instructions()
            if policy == "asymmetric":
                examples = [e for e in examples if e.task_type in ("Retrieval", "Reranking")]
            out += [f"| {e.task_type} | {e.task} | {_md(e.instruction)} |" for e in examples]
            out += ["", "All task instructions: `nvembed/data/instructions.py`."]
        return out

    def _training(self) -> list[str]:
        out = ["## Training", "", "| stage | steps | batch | hard negatives | in-batch negatives | lr |"]
        out.append("|---|---|---|---|---|---|")
        for s in self.stages:
            in_batch = "" if s.in_batch_negatives is None else ("yes" if s.in_batch_negatives else "no")
            out.append(
                f"| {s.stage} | {_v(s.steps)} | {_v(s.batch_size)} | {_v(s.hard_negatives)} | {in_batch} "
                f"| {_v(s.learning_rate)} |"
            )
        out += ["", "Training data:", "", "| stage | dataset | source | rows | licence |", "|---|---|---|---|---|"]
        for s in self.stages:
            for d in s.datasets:
                source = f"`{d.path}`" if d.path else ""
                out.append(f"| {s.stage} | {d.name} | {source} | {_v(d.rows)} | {_md(d.licence or 'not stated')} |")
        out += [f"\nStage {s.stage}: {s.notes}" for s in self.stages if s.notes]
        return out

    def _evaluation(self) -> list[str]:
        columns: list[str] = []
        for score in self.evaluation.values():
            if isinstance(score, dict):
                columns += [c for c in score if c not in columns]
        columns = columns or ["score"]
        out = ["## Evaluation", ""]
        if self.evaluation_note:
            out += [self.evaluation_note, ""]
        out += ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for task, score in self.evaluation.items():
            row = score if isinstance(score, dict) else {"score": score}
            out.append(f"| {task} | " + " | ".join(_score(row.get(c)) for c in columns) + " |")
        return out

    def _compression(self) -> list[str]:
        out = [
            "## Compression",
            "",
            "Applied after training, in this order (`nvembed compress`); the saved weights hold the result in float "
            "(pruned weights are zeros, quantized ones their dequantized values), so any loader reads them.",
            "",
            "| step | settings |",
            "|---|---|",
        ]
        for step in self.compression:
            settings = ", ".join(f"{k}={v}" for k, v in step.items() if k != "step")
            out.append(f"| {step.get('step')} | {_md(settings)} |")
        return out


def as_model_card(card: Any) -> ModelCard | None:
    """``None``, a :class:`ModelCard` (copied) or a dict of its fields -> a :class:`ModelCard` or ``None``."""
    if card is None:
        return None
    if isinstance(card, ModelCard):
        return ModelCard.from_dict(card.to_dict())
    if isinstance(card, dict):
        return ModelCard.from_dict(card)
    raise TypeError(f"card must be a ModelCard or a dict of its fields, got {type(card).__name__}")


def _example_instructions():
    """One registered instruction per MTEB task type (its first task), in the order of MTEB(eng, v1)."""
    from nvembed.data.instructions import MTEB_ENG_V1, get_instruction

    seen: dict[str, Any] = {}
    for task in MTEB_ENG_V1:
        entry = get_instruction(task)
        seen.setdefault(entry.task_type, entry)
    return list(seen.values())


def _describe_pooling(pooling: dict[str, Any] | None, dim: int | None = None) -> str:
    if not pooling:
        return "unknown"
    kind = pooling.get("kind", "latent")
    if kind == "latent":
        head = pooling.get("head_dim") or dim or "the hidden size"
        text = (
            f"latent attention (NV-Embed): {pooling.get('num_latents')} latents, {pooling.get('num_heads')} heads "
            f"of width {head}, GEGLU x{pooling.get('ff_mult')}, then mean over the text's tokens"
        )
    else:
        text = {"mean": "mean of the text's token states", "cls": "first ([CLS]) token state"}.get(
            kind, "last token state (EOS for decoders)"
        )
    return text + (", L2-normalised" if pooling.get("normalize", True) else "")


def _normalised(pooling: dict[str, Any] | None) -> bool:
    return bool((pooling or {}).get("normalize", True))


def _describe_lora(lora: dict[str, Any] | None) -> str:
    if not lora or not lora.get("enabled"):
        return "none" if lora is not None else "unknown"
    targets = lora.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    text = f"rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, targets {targets}"
    return text + (" (merged into the saved weights)" if lora.get("merged") else " (adapter in `adapter/`)")


def _v(value: Any) -> str:
    return "" if value is None else str(value)


def _score(value: Any) -> str:
    return "" if value is None else f"{value:.2f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
