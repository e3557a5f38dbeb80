"""Batch scoring on Ray Data: JSONL files (or folders of shards) in, JSONL out, the lines of `trajsafe score`.

The pipeline has three stages, all Ray Data operators:

1. read: one task per input file streams its lines as ``(source, line, raw)`` rows
   (`trajsafe_sdk.evaluation.read_lines`, so line numbers are the local command's);
2. score: an actor pool (`ActorPoolStrategy`); each actor loads the monitor once and keeps a
   `trajsafe_sdk.evaluation.Scorer` (the local command's batched scorer) for its lifetime, and turns each batch of
   rows into output lines with `trajsafe_sdk.evaluation.score_lines` — the very functions `trajsafe score` uses,
   so a line scored here is the line `trajsafe score` writes (same id, decisions, tokens; only latency differs);
3. write: JSONL shards ``OUT/<input name>.<first line, 9 digits>.jsonl``: for each input file, its shards in name
   order hold its output lines in input order, one per input line (bad lines become error records, the job goes
   on). ``OUT/_SUCCESS.json`` summarises the run. An output ending in ``.jsonl`` (or ``-``) is written instead as
   one ordered file by the driver.

`score_ray()` calls `ray.init()` when Ray is not initialised yet: a local instance on a laptop, or the cluster at
``address`` / ``$RAY_ADDRESS`` unchanged. Input and output paths must be readable/writable from every node
(a shared filesystem, or a URI pyarrow understands such as ``s3://bucket/prefix``). A ``model`` folder given here
is shipped to the workers through the object store when they cannot see it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from ..errors import PackageError
from ..evaluation import CHUNK_LINES, Scorer, chunked, read_lines, result_json, score_lines

MANIFEST = "_SUCCESS.json"
ROWS_PER_BLOCK = 256  # lines per block read (the unit of work handed to an actor)
MAX_SHIPPED_PACKAGE = 2 << 30  # bytes; bigger model folders must be on every node
SHARD_RE = re.compile(r"\.\d{9}\.jsonl$")


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class RayScoreResult:
    """What a Ray scoring job did."""

    lines: int
    errors: int
    seconds: float
    workers: int
    output: str
    inputs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # shards written (directory output)

    @property
    def conversations(self) -> int:
        return self.lines - self.errors

    @property
    def conversations_per_s(self) -> float:
        return self.conversations / max(self.seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "errors": self.errors, "conversations": self.conversations,
                "seconds": round(self.seconds, 3), "conversations_per_s": round(self.conversations_per_s, 2),
                "workers": self.workers, "output": self.output, "inputs": self.inputs, "files": self.files}


# ---------------------------------------------------------------------------------------------------- files
def _is_uri(path: str) -> bool:
    return "://" in path


def _fs(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if _is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def list_inputs(inputs: str | Sequence[str]) -> list[str]:
    """Input files: each file as given, each folder's ``*.jsonl`` files in name order (not recursive)."""
    import pyarrow.fs as pafs

    items = [inputs] if isinstance(inputs, str) else list(inputs)
    files: list[str] = []
    for item in items:
        fs, path = _fs(item)
        info = fs.get_file_info(path)
        prefix = item.split("://", 1)[0] + "://" if _is_uri(item) else ""
        if info.type == pafs.FileType.Directory:
            found = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path))
                           if i.type == pafs.FileType.File and i.path.endswith(".jsonl") and
                           not os.path.basename(i.path).startswith(("_", ".")))
            if not found:
                raise FileNotFoundError(f"{item}: no *.jsonl files in this folder")
            files += [prefix + f for f in found]
        elif info.type == pafs.FileType.File:
            files.append(item if prefix else path)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def shard_names(files: Sequence[str]) -> list[str]:
    """A distinct output name per input file: its name without ``.jsonl`` (parent folders added on clashes)."""
    def name(path: str, depth: int) -> str:
        parts = path.split("://", 1)[-1].rstrip("/").split("/")
        base = "__".join(parts[-depth:])
        return base[: -len(".jsonl")] if base.endswith(".jsonl") else base

    depths = [1] * len(files)
    for _ in range(64):
        names = [name(f, d) for f, d in zip(files, depths, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        depths = [d + 1 if n in clashes else d for n, d in zip(names, depths, strict=True)]
    return names


@contextlib.contextmanager
def _open_read(path: str) -> Iterator[IO[bytes]]:
    if _is_uri(path):
        fs, inner = _fs(path)
        with fs.open_input_stream(inner) as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def _write_bytes(path: str, data: bytes) -> None:
    if _is_uri(path):
        fs, inner = _fs(path)
        with fs.open_output_stream(inner) as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _read_files(batch: dict[str, Any], rows_per_block: int) -> Iterator[pa.Table]:
    """Read stage: stream each file's numbered lines as ``(source, line, raw)`` blocks."""
    for source, path in zip(batch["source"], batch["path"], strict=True):
        with _open_read(str(path)) as f:
            for chunk in chunked(read_lines(f), rows_per_block):
                yield _rows(int(source), chunk)


def _rows(source: int, numbered: list[tuple[int, bytes]]) -> pa.Table:
    return pa.table({"source": pa.array([source] * len(numbered), pa.int32()),
                     "line": pa.array([n for n, _ in numbered], pa.int64()),
                     "raw": pa.array([bytes(raw) for _, raw in numbered], pa.binary())})


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class PackageSource:
    """Where workers find the monitor package: the driver's path, or its files through the object store."""

    path: str | None  # None: the worker's embedded default (or its $TRAJSAFE_MODEL)
    files: Any = None  # [ObjectRef of {name: bytes}] when shipped

    @classmethod
    def from_driver(cls, path: str | os.PathLike[str] | None, ship: bool = True) -> PackageSource:
        if path is None:
            return cls(None)
        folder = Path(path)
        if not (folder / "monitor.json").is_file():
            raise PackageError(f"{folder}: not a monitor package folder (no monitor.json)")
        if not ship:
            return cls(str(folder.resolve()))
        entries = [p for p in folder.iterdir() if p.is_file()]
        if sum(p.stat().st_size for p in entries) > MAX_SHIPPED_PACKAGE:
            return cls(str(folder.resolve()))
        return cls(str(folder.resolve()), [ray.put({p.name: p.read_bytes() for p in entries})])

    def local_path(self) -> str | None:
        """A package folder readable here (materialised from the object store if needed)."""
        if self.path is None or Path(self.path, "monitor.json").is_file() or not self.files:
            return self.path
        folder = Path(tempfile.mkdtemp(prefix="trajsafe-pkg-"))
        for name, data in ray.get(self.files[0]).items():
            (folder / name).write_bytes(data)
        return str(folder)


class ScoreWorker:
    """Score stage: one monitor per actor, loaded once; batches of rows in, output lines out."""

    def __init__(self, package: PackageSource, provider: str = "cpu", variant: str | None = None,
                 threads: int | None = None, batch_size: int | None = None, chunk_lines: int = CHUNK_LINES,
                 parallel: int = 1, policy: Mapping[str, Any] | None = None) -> None:
        from ..core import Monitor
        from ..policy import Policy

        monitor = Monitor.load(package.local_path(), provider=provider, variant=variant, threads=threads)
        rules = Policy.from_package({**monitor.package.policy_defaults, **(policy or {})})
        self.scorer = Scorer(monitor, policy=rules, batch_size=batch_size, workers=parallel)  # `parallel` runs
        self.chunk_lines = chunk_lines

    def __call__(self, batch: pa.Table) -> pa.Table:
        numbered = zip(batch.column("line").to_pylist(), batch.column("raw").to_pylist(), strict=True)
        lines = [result_json(r) for r in score_lines(numbered, self.scorer, chunk_lines=self.chunk_lines)]
        return pa.table({"source": batch.column("source"), "line": batch.column("line"),
                         "out": pa.array([text for text, _ in lines], pa.string()),
                         "failed": pa.array([error is not None for _, error in lines], pa.bool_())})


# ---------------------------------------------------------------------------------------------------- writing
class ShardDatasink(Datasink[dict[str, Any]]):
    """Write stage: ``OUT/<name>.<first line:09d>.jsonl`` per run of consecutive lines of one input file."""

    def __init__(self, output: str, names: Sequence[str], inputs: Sequence[str]) -> None:
        self.output = output.rstrip("/")
        self.names = list(names)
        self.inputs = list(inputs)
        self.result: dict[str, Any] = {}

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        if not _is_uri(self.output):
            os.makedirs(self.output, exist_ok=True)

    def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"lines": 0, "errors": 0, "files": []}
        table = pa.concat_tables(tables).sort_by([("source", "ascending"), ("line", "ascending")])
        sources = table.column("source").to_pylist()
        lines = table.column("line").to_pylist()
        outs = table.column("out").to_pylist()
        files = []
        start = 0
        for i in range(1, len(lines) + 1):
            if i == len(lines) or sources[i] != sources[start] or lines[i] != lines[i - 1] + 1:
                path = f"{self.output}/{self.names[sources[start]]}.{lines[start]:09d}.jsonl"
                _write_bytes(path, ("\n".join(outs[start:i]) + "\n").encode("utf-8"))
                files.append((sources[start], lines[start], path))
                start = i
        return {"lines": len(lines), "errors": sum(table.column("failed").to_pylist()), "files": files}

    def on_write_complete(self, write_result: WriteResult[dict[str, Any]]) -> None:
        returns = [r for r in write_result.write_returns if r]
        self.result = {"lines": sum(r["lines"] for r in returns), "errors": sum(r["errors"] for r in returns),
                       "files": [f for *_, f in sorted(tuple(f) for r in returns for f in r["files"])],
                       "inputs": self.inputs}  # files: input by input, in line order
        _write_bytes(f"{self.output}/{MANIFEST}", (json.dumps(self.result, indent=2) + "\n").encode("utf-8"))


def _clear_old_shards(output: str, names: Sequence[str]) -> None:
    """Remove the shards and manifest a previous run wrote for these inputs (nothing else)."""
    if _is_uri(output) or not os.path.isdir(output):
        return
    wanted = set(names)
    for entry in os.scandir(output):
        base = SHARD_RE.sub("", entry.name)
        if entry.is_file() and (entry.name == MANIFEST or (base != entry.name and base in wanted)):
            os.remove(entry.path)


# ---------------------------------------------------------------------------------------------------- driver
def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """`ray.init(address)` unless Ray is already initialised (no address: local, or ``$RAY_ADDRESS``)."""
    if not ray.is_initialized():
        ray.init(address=address, **init_kwargs)


@contextlib.contextmanager
def _data_context(preserve_order: bool, progress: bool) -> Iterator[None]:
    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = preserve_order
    ctx.enable_progress_bars = progress
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def default_workers(cpus_per_worker: float = 1.0) -> int:
    """As many actors as the cluster's CPUs allow."""
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_worker, 1e-3)))


def build_dataset(inputs: Sequence[str] | None, *, package: PackageSource, provider: str = "cpu",
                  variant: str | None = None, threads: int | None = None, workers: int = 1,
                  cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, batch_size: int | None = None,
                  chunk_lines: int = CHUNK_LINES, rows_per_block: int = ROWS_PER_BLOCK,
                  stdin_lines: Sequence[tuple[int, bytes]] | None = None,
                  policy: Mapping[str, Any] | None = None) -> ray.data.Dataset:
    """The read -> score pipeline (rows: source, line, out, failed); lazy until consumed."""
    if stdin_lines is not None:
        ds = ray.data.from_arrow([_rows(0, chunk) for chunk in chunked(stdin_lines, rows_per_block)] or
                                 [_rows(0, [])])
    else:
        files = list(inputs or [])
        ds = ray.data.from_items([{"source": i, "path": p} for i, p in enumerate(files)],
                                 override_num_blocks=max(1, len(files)))
        ds = ds.map_batches(_read_files, batch_size=1, batch_format="numpy", num_cpus=0,
                            fn_kwargs={"rows_per_block": rows_per_block})
    # like the local command: on CPU, parallel single-threaded runs (one per CPU of the actor) unless `threads`
    parallel = max(1, int(cpus_per_worker)) if threads is None and provider != "cuda" else 1
    ort_threads = threads if threads is not None else (None if provider == "cuda" else 1)
    return ds.map_batches(
        ScoreWorker, batch_size=rows_per_block, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs={"package": package, "provider": provider, "variant": variant,
                               "threads": ort_threads, "batch_size": batch_size, "chunk_lines": chunk_lines,
                               "parallel": parallel, "policy": dict(policy or {})})


def is_single_file(output: str) -> bool:
    """``-`` and ``*.jsonl`` outputs are one ordered file; anything else is a folder of shards."""
    return output == "-" or output.endswith(".jsonl")


def score_ray(inputs: str | Sequence[str], output: str, *, model: str | os.PathLike[str] | None = None,
              provider: str = "cpu", variant: str | None = None, threads: int | None = None,
              workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
              batch_size: int | None = None, chunk_lines: int = CHUNK_LINES, rows_per_block: int = ROWS_PER_BLOCK,
              address: str | None = None, ship_model: bool = True, progress: bool = False,
              init_kwargs: dict[str, Any] | None = None, policy: Mapping[str, Any] | None = None) -> RayScoreResult:
    """Score JSONL conversations on Ray; `inputs`: files and/or folders of ``*.jsonl`` shards (``-``: stdin).

    `output`: a folder of shards, or one ordered file when it ends in ``.jsonl`` (``-``: stdout). Each input line
    yields exactly the output line of `trajsafe score` (error records included). `workers` actors (default: one
    per `cpus_per_worker` CPUs of the cluster) each hold one monitor loaded once. `policy`: settings laid over the
    package's policy (`trajsafe_sdk.policy.parse_settings`), as `trajsafe score --policy`.
    """
    connect(address, **(init_kwargs or {}))
    stdin_lines = None
    if inputs == "-" or (not isinstance(inputs, str) and list(inputs) == ["-"]):
        stdin_lines, files = list(read_lines(sys.stdin.buffer)), ["stdin"]
    else:
        files = list_inputs(inputs)
    workers = workers or default_workers(cpus_per_worker)
    package = PackageSource.from_driver(model, ship=ship_model)
    single = is_single_file(output)
    started = time.perf_counter()
    with _data_context(preserve_order=single, progress=progress):
        ds = build_dataset(None if stdin_lines is not None else files, package=package, provider=provider,
                           variant=variant, threads=threads, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, batch_size=batch_size, chunk_lines=chunk_lines,
                           rows_per_block=rows_per_block, stdin_lines=stdin_lines, policy=policy)
        if single:
            lines, errors = _write_ordered(ds, output)
            return RayScoreResult(lines, errors, time.perf_counter() - started, workers, output, files)
        names = shard_names(files)
        _clear_old_shards(output, names)
        sink = ShardDatasink(output, names, files)
        ds.select_columns(["source", "line", "out", "failed"]).write_datasink(sink, ray_remote_args={"num_cpus": 0})
        seconds = time.perf_counter() - started
    if not sink.result:  # no input line at all
        sink.on_write_complete(WriteResult(0, 0, []))
    return RayScoreResult(sink.result["lines"], sink.result["errors"], seconds, workers, output, files,
                          sink.result["files"])


def _write_ordered(ds: ray.data.Dataset, output: str) -> tuple[int, int]:
    """Stream the scored lines to one file (or stdout) in input order."""
    lines = errors = 0
    f: IO[str] = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            outs = batch.column("out").to_pylist()
            if outs:
                f.write("\n".join(outs) + "\n")
            lines += len(outs)
            errors += sum(batch.column("failed").to_pylist())
        f.flush()
    finally:
        if f is not sys.stdout:
            f.close()
    return lines, errors


def read_shards(output: str) -> list[dict[str, Any]]:
    """All output records of a folder of shards, input file by input file, in input order."""
    manifest = json.loads(Path(output, MANIFEST).read_text(encoding="utf-8"))
    records = []
    for path in manifest["files"]:  # input file by input file, by first line
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


# ---------------------------------------------------------------------------------------------------- command line
def cli_score(args: Any) -> int:
    """`trajsafe score --engine ray`: the arguments of the local command plus ``--address``/``--workers``."""
    from ..cli import policy_settings

    settings = policy_settings(args)
    quiet = getattr(args, "quiet", False)
    init_kwargs: dict[str, Any] = {"log_to_driver": not quiet, "include_dashboard": False}
    if quiet:  # Ray's own INFO lines too
        init_kwargs["logging_level"] = logging.ERROR
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        result = score_ray(args.input, args.output or "-", model=args.model, provider=args.provider,
                           variant=args.variant, threads=args.threads, workers=getattr(args, "workers", None),
                           batch_size=args.batch_size, chunk_lines=args.chunk, address=getattr(args, "address", None),
                           progress=not quiet and sys.stderr.isatty(), init_kwargs=init_kwargs,
                           policy=settings)
    except FileNotFoundError as exc:
        from ..cli import CliError

        raise CliError(str(exc)) from exc
    if not quiet:
        where = f"{len(result.files)} shards in {result.output}" if result.files else result.output
        print(f"scored {result.conversations} conversations ({result.errors} failed lines) on Ray with "
              f"{result.workers} workers in {result.seconds:.2f}s: {result.conversations_per_s:,.1f} "
              f"conversations/s -> {where}", file=sys.stderr)
    return 1 if result.errors else 0


# ---------------------------------------------------------------------------------------------------- benchmark
def benchmark(package: str | os.PathLike[str] | None, conversations: int = 2000, worker_counts: Sequence[int] = (1, 2),
              turns: int = 3, shards: int = 4, batch_size: int | None = None, provider: str = "cpu",
              variant: str | None = None, workdir: str | None = None, repeats: int = 1) -> list[dict[str, Any]]:
    """Batch throughput (conversations/s) for each worker count on synthetic conversations, one thread per actor.

    Each figure excludes Ray start-up but includes actor start (model load) and the whole read/score/write job,
    so it is what a job of this size sees; the best of `repeats` runs is kept.
    """
    connect()
    folder = Path(workdir or tempfile.mkdtemp(prefix="trajsafe-bench-"))
    inputs = folder / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    words = ("how do I", "configure", "the network", "firewall", "for my", "small office", "please explain",
             "step by step", "with examples", "thanks")
    per_shard = -(-conversations // shards)
    n = 0
    for s in range(shards):
        with open(inputs / f"part-{s:05d}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(min(per_shard, conversations - n)):
                messages = []
                for t in range(turns):
                    text = " ".join(words[(n + t + k) % len(words)] for k in range(6 + (n % 7)))
                    messages.append({"role": "user", "content": f"{text} ({n}.{t})"})
                    if t + 1 < turns:
                        messages.append({"role": "assistant", "content": f"Sure: {text}."})
                f.write(json.dumps({"id": f"c{n}", "messages": messages}) + "\n")
                n += 1
    rows = []
    for w in worker_counts:
        best = None
        for r in range(repeats):
            out = folder / f"out-{w}-{r}"
            result = score_ray(str(inputs), str(out), model=package, provider=provider, variant=variant, threads=1,
                               workers=w, batch_size=batch_size)
            if best is None or result.seconds < best.seconds:
                best = result
        assert best is not None
        rows.append({"workers": w, "conversations": best.conversations, "seconds": round(best.seconds, 2),
                     "conversations_per_s": round(best.conversations_per_s, 1)})
    return rows
