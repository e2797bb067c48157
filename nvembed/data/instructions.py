"""Per-task instruction registry (spec §3).

``source`` says where each string comes from, because NVIDIA's own ``instructions.json`` and Table 12/13 were not
retrieved (spec §7): ``nv`` = the NV-Embed retrieval dict (spec §3, [S]); ``e5`` = E5-Mistral's per-task set, which
NV-Embed's table follows in style but was not verified word for word; ``nvembed`` = written by us for a training
dataset NV-Embed does not list.

``documents`` says whether document-side texts get the instruction too: retrieval and reranking put it on queries
only (documents: none), except QuoraRetrieval (symmetric); every other task type encodes every text with it
(mteb passes ``prompt_type=None`` there), and STS training rows carry it on both sides (spec §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInstruction:
    task: str
    task_type: str
    instruction: str
    documents: bool  # instruction also on the document side
    source: str  # nv | e5 | nvembed


def _r(task: str, text: str, source: str = "nv", documents: bool = False) -> TaskInstruction:
    return TaskInstruction(task, "Retrieval", text, documents, source)


_CQA = (
    "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given "
    "question"
)
_STS = "Retrieve semantically similar text."

_ENTRIES: list[TaskInstruction] = [
    # Retrieval (15): NV-Embed dict, spec §3
    _r("ArguAna", "Given a claim, retrieve documents that support or refute the claim"),
    _r("ClimateFEVER", "Given a claim about climate change, retrieve documents that support or refute the claim"),
    _r("CQADupstackRetrieval", _CQA, source="e5"),
    _r("DBPedia", "Given a query, retrieve relevant entity descriptions from DBPedia"),
    _r("FEVER", "Given a claim, retrieve documents that support or refute the claim"),
    _r("FiQA2018", "Given a financial question, retrieve relevant passages that answer the query"),
    _r("HotpotQA", "Given a multi-hop question, retrieve documents that can help answer the question"),
    _r("MSMARCO", "Given a web search query, retrieve relevant passages that answer the query"),
    _r("NFCorpus", "Given a question, retrieve relevant documents that answer the question"),
    _r("NQ", "Given a question, retrieve passages that answer the question"),
    _r(
        "QuoraRetrieval",
        "Given a question, retrieve questions that are semantically equivalent to the given question",
        documents=True,
    ),
    _r("SCIDOCS", "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper"),
    _r("SciFact", "Given a scientific claim, retrieve documents that support or refute the claim"),
    _r("Touche2020", "Given a question, retrieve passages that answer the question"),
    _r("TRECCOVID", "Given a query on COVID-19, retrieve documents that answer the query"),
    # Reranking (4): query side only
    TaskInstruction(
        "AskUbuntuDupQuestions", "Reranking", "Retrieve duplicate questions from AskUbuntu forum", False, "e5"
    ),
    TaskInstruction(
        "MindSmallReranking", "Reranking", "Retrieve relevant news articles based on user browsing history", False, "e5"
    ),
    TaskInstruction(
        "SciDocsRR",
        "Reranking",
        "Given a title of a scientific paper, retrieve the titles of other relevant papers",
        False,
        "e5",
    ),
    TaskInstruction(
        "StackOverflowDupQuestions", "Reranking", "Retrieve duplicate questions from StackOverflow forum", False, "e5"
    ),
    # Pair classification (3)
    TaskInstruction(
        "SprintDuplicateQuestions", "PairClassification", "Retrieve duplicate questions from Sprint forum", True, "e5"
    ),
    TaskInstruction(
        "TwitterSemEval2015",
        "PairClassification",
        "Retrieve tweets that are semantically similar to the given tweet",
        True,
        "e5",
    ),
    TaskInstruction(
        "TwitterURLCorpus",
        "PairClassification",
        "Retrieve tweets that are semantically similar to the given tweet",
        True,
        "e5",
    ),
    # Summarization (1)
    TaskInstruction(
        "SummEval", "Summarization", "Given a news summary, retrieve other semantically similar summaries", True, "e5"
    ),
]

_CLASSIFICATION = {
    "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or "
    "not-counterfactual",
    "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
    "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating category",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six "
    "emotions: anger, fear, joy, love, sadness, and surprise",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented conversation",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, "
    "or neutral",
}
_CLUSTERING = {
    "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
    "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
    "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
    "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
}
_STS_TASKS = ("BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "STSBenchmark")

_ENTRIES += [TaskInstruction(k, "Classification", v, True, "e5") for k, v in _CLASSIFICATION.items()]
_ENTRIES += [TaskInstruction(k, "Clustering", v, True, "e5") for k, v in _CLUSTERING.items()]
_ENTRIES += [TaskInstruction(k, "STS", _STS, True, "e5") for k in _STS_TASKS]

#: The 56 tasks of MTEB(eng, v1).
MTEB_ENG_V1: tuple[str, ...] = tuple(e.task for e in _ENTRIES)

# Training datasets shipped with configs (names are our dataset keys, not MTEB tasks).
_TRAINING: list[TaskInstruction] = [
    _r("scifact", "Given a scientific claim, retrieve documents that support or refute the claim"),
    _r("snli", "Given a premise, retrieve a hypothesis that is entailed by the premise", source="e5"),
    _r("wordnet", "Given a definition, retrieve the word or phrase that it defines", source="nvembed"),
    _r("wikiqa", "Given a question, retrieve Wikipedia passages that answer the question", source="e5"),
    _r("cranfield", "Given a question on aerodynamics, retrieve abstracts that answer it", source="nvembed"),
    TaskInstruction("stsbenchmark", "STS", _STS, True, "e5"),
    TaskInstruction("sts12", "STS", _STS, True, "e5"),
    TaskInstruction("banking77", "Classification", _CLASSIFICATION["Banking77Classification"], True, "e5"),
    TaskInstruction(
        "trec-qc", "Classification", "Given a question, find the type of answer it asks for", True, "nvembed"
    ),
    TaskInstruction(
        "banking77-clustering", "Clustering", "Identify the intent of online banking queries", True, "nvembed"
    ),
    TaskInstruction(
        "mrpc", "PairClassification", "Retrieve sentences that are paraphrases of the given sentence", True, "nvembed"
    ),
    TaskInstruction(
        "mr-sentence-polarity", "Classification", "Classify the sentiment of a movie review sentence", True, "nvembed"
    ),
]

# The local tasks of the generalisation suite (evaluation/suite.py): public sets mteb does not ship.
_LOCAL_SUITE: list[TaskInstruction] = [
    _r("Cranfield", "Given a question on aerodynamics, retrieve abstracts that answer it", source="nvembed"),
    _r("SNLIRetrieval", "Given a premise, retrieve a hypothesis that is entailed by the premise", source="e5"),
    TaskInstruction(
        "WikiQAReranking",
        "Reranking",
        "Given a question, retrieve Wikipedia sentences that answer it",
        False,
        "nvembed",
    ),
    TaskInstruction(
        "MRPC", "PairClassification", "Retrieve sentences that are paraphrases of the given sentence", True, "nvembed"
    ),
    TaskInstruction("MR", "Classification", "Classify the sentiment of a movie review sentence", True, "nvembed"),
    TaskInstruction(
        "SUBJ",
        "Classification",
        "Classify a movie sentence as a subjective opinion or an objective plot description",
        True,
        "nvembed",
    ),
]

REGISTRY: dict[str, TaskInstruction] = {e.task: e for e in _ENTRIES + _TRAINING + _LOCAL_SUITE}
_LOWER = {k.lower(): k for k in REGISTRY}

assert len(MTEB_ENG_V1) == 56, len(MTEB_ENG_V1)


class UnknownTaskError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_instruction(task: str) -> TaskInstruction:
    """The registered instruction of ``task`` (exact name, or case-insensitive match).

    Raises:
        UnknownTaskError: the task is not registered; the message lists close names.
    """
    if task in REGISTRY:
        return REGISTRY[task]
    if task.lower() in _LOWER:
        return REGISTRY[_LOWER[task.lower()]]
    import difflib

    close = difflib.get_close_matches(task, list(REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(f"no instruction registered for task {task!r}{hint} (see nvembed/data/instructions.py)")


def instruction_for(task: str, side: str) -> str | None:
    """Instruction for ``side`` in ``("query", "document")``; None where that side gets no instruction."""
    entry = get_instruction(task)
    if side == "query":
        return entry.instruction
    if side == "document":
        return entry.instruction if entry.documents else None
    raise ValueError(f"side must be 'query' or 'document', got {side!r}")


#: Which task types get their instruction (``model.instruction_policy``). ``all`` is NV-Embed's setting (every task
#: type instructed; retrieval and reranking on the query side only). ``asymmetric`` instructs only retrieval and
#: reranking tasks (as under ``all``: queries, both sides for QuoraRetrieval) and leaves symmetric tasks (STS,
#: classification, clustering, pair classification, summarization) as plain text: the setting for a backbone that
#: was pretrained without instructions, which starts below itself on every symmetric task when they are prefixed
#: (docs/recipe.md). ``none`` never instructs.
INSTRUCTION_POLICIES = ("all", "asymmetric", "none")
ASYMMETRIC_TYPES = ("Retrieval", "Reranking")


def policy_applies(policy: str, task_type: str) -> bool:
    """Whether a task of ``task_type`` gets its instruction under ``policy`` (see :data:`INSTRUCTION_POLICIES`)."""
    if policy == "all":
        return True
    if policy == "asymmetric":
        return task_type in ASYMMETRIC_TYPES
    if policy == "none":
        return False
    raise ValueError(f"instruction policy must be one of {INSTRUCTION_POLICIES}, got {policy!r}")
