"""The tasks `bertcli finetune` knows, as plain data.

GLUE's layouts are those of the TSVs `download_glue_data.py` writes, read as transformers'
GLUE processors read them (`transformers/data/processors/glue.py`, v4): columns by 0-based
index, since CoLA has no header and the others' headers are not uniform. Label lists are
GLUE's, in the processors' order (it fixes the label ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """One task: where its text and label are, what it predicts, how it is scored."""

    name: str
    kind: str  # "classification", "regression" or "ner"
    text: int | str | None = None  # column (index or header name); None: --text-column
    text_pair: int | str | None = None
    label: int | str | None = None
    header: bool = True
    labels: tuple[str, ...] | None = None  # None: the training file's distinct values, sorted
    metrics: tuple[str, ...] = ("accuracy",)
    train_file: str = "train.tsv"
    eval_files: tuple[str, ...] = ("dev.tsv",)
    eval_names: tuple[str, ...] = ("",)  # suffix of each eval file's metric names
    extra: dict = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The headline metric: it picks the median seed."""
        return self.metrics[0]

    @property
    def is_glue(self) -> bool:
        return self.name in GLUE


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE: dict[str, Task] = {
    # in_domain_train.tsv renamed train.tsv: source, label, original judgement, sentence
    "cola": Task(
        "cola",
        "classification",
        text=3,
        label=1,
        header=False,
        labels=_BINARY,
        metrics=("matthews_correlation",),
    ),
    "sst2": Task("sst2", "classification", text=0, label=1, labels=_BINARY),
    # Quality, #1 ID, #2 ID, #1 String, #2 String
    "mrpc": Task(
        "mrpc",
        "classification",
        text=3,
        text_pair=4,
        label=0,
        labels=_BINARY,
        metrics=("f1", "accuracy"),
    ),
    # index genre filename year old_index source1 source2 sentence1 sentence2 score
    "stsb": Task(
        "stsb", "regression", text=7, text_pair=8, label=-1, metrics=("pearson", "spearmanr")
    ),
    # id qid1 qid2 question1 question2 is_duplicate
    "qqp": Task(
        "qqp",
        "classification",
        text=3,
        text_pair=4,
        label=5,
        labels=_BINARY,
        metrics=("f1", "accuracy"),
    ),
    # index promptID pairID genre sentence1/2_binary_parse sentence1/2_parse sentence1 sentence2
    # label1 (… label5 in dev) gold_label
    "mnli": Task(
        "mnli",
        "classification",
        text=8,
        text_pair=9,
        label=-1,
        labels=("contradiction", "entailment", "neutral"),
        eval_files=("dev_matched.tsv", "dev_mismatched.tsv"),
        eval_names=("", "_mm"),
    ),
    # index question sentence label
    "qnli": Task("qnli", "classification", text=1, text_pair=2, label=-1, labels=_NLI2),
    # index sentence1 sentence2 label
    "rte": Task("rte", "classification", text=1, text_pair=2, label=-1, labels=_NLI2),
    "wnli": Task("wnli", "classification", text=1, text_pair=2, label=-1, labels=_BINARY),
}

GENERIC: dict[str, Task] = {
    "classification": Task("classification", "classification"),
    "regression": Task("regression", "regression", metrics=("pearson", "spearmanr")),
    "ner": Task("ner", "ner", metrics=("f1", "precision", "recall")),
}

TASK_NAMES = (*GLUE, *GENERIC)


def get_task(name: str) -> Task:
    """The task called `name` (the CLI restricts the choice)."""
    return GLUE.get(name) or GENERIC[name]
