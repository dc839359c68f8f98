"""Declarative evaluation tasks: where the recordings come from, what the label is, who the patient is, how to split.

- [`specs`]: what a task is ([`TaskSpec`]) and the recordings it yields ([`TaskData`]);
- [`registry`]: the task registry (`TASKS`) and [`load_task`];
- [`split_policy`]: how a task's recordings are split ([`SplitPolicy`]), which a task declares;
- [`splits`]: the patient-grouped splits a policy gives ([`make_splits`]);
- the task families, registered in this order when the package is imported:
  - [`dev_pack`]: tasks over the development pack (`--dev_pack`, else `$ACULA_DEV_PACK`, else
    `../shared/data/auscultation-dev`), built from its `metadata.csv`;
  - [`transfer`]: cross-dataset abnormal-heart-sound transfer over the dev pack;
  - [`kauh_heldout`]: KAUH diagnoses tested on the dev pack's held-out patients only;
  - [`circor`]: CirCor DigiScope murmur tasks (per recording, per patient, systolic descriptors) on held-out
    patients, and normal-vs-abnormal heart sound across CirCor, PASCAL and Yaseen (`--circor`, else
    `$ACULA_CIRCOR`);
  - [`opera`]: the OPERA benchmark tasks (T1-T19 of `../shared/ACULA.md`) over the public datasets under
    `--data_root`.
"""

from .registry import TASKS, get_task, list_tasks, load_task, register_task
from .specs import LoadContext, TaskData, TaskSpec
from .split_policy import SPLIT_KINDS, SplitPolicy
from .splits import DEFAULT_SEEDS, Split, make_splits, restrict_to_splits

# Importing a family registers its tasks; this order is the registry's (that of --list_tasks and of the tables).
# isort: split
from . import dev_pack  # noqa: F401

# isort: split
from . import transfer  # noqa: F401

# isort: split
from . import kauh_heldout  # noqa: F401
# isort: split
from . import circor  # noqa: F401

# isort: split
from . import opera  # noqa: F401
from .opera import OPERA_TASK_IDS

__all__ = [
    "DEFAULT_SEEDS",
    "OPERA_TASK_IDS",
    "SPLIT_KINDS",
    "TASKS",
    "LoadContext",
    "Split",
    "SplitPolicy",
    "TaskData",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_task",
    "make_splits",
    "register_task",
    "restrict_to_splits",
]
