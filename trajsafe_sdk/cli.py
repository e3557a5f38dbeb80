"""The `trajsafe` command line (docs/contracts.md §5): demo, score, eval, bench, info."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO, Any

from . import __version__
from .errors import PackageError, ProviderError, TrajSafeError
from .labels import CATEGORIES, EXPECTATIONS

EXIT_OK, EXIT_FAILED_LINES, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away

DESCRIPTION = """\
TrajSafe: a trajectory-aware guardrail. A small monitor model reads the whole conversation and decides, before
every assistant reply, among allow, probe, steer, refuse and terminate. `trajsafe COMMAND --help` explains each
command.

Every command takes --model DIR (a monitor package folder; default: the embedded monitor, or $TRAJSAFE_MODEL)
and --provider auto|cpu|cuda. Exit codes: 0 ok, 1 some input lines failed, 2 usage, package or provider error,
3 internal error (a bug: please report it), 141 the output reader went away.
The formats and metrics are specified in docs/contracts.md of the TrajSafe SDK repository.
"""


# ---------------------------------------------------------------------------------------------------- helpers
def _wrapped(words: list[str], indent: int, width: int = 100) -> str:
    """`words` joined with commas, wrapped for a --help text (continuation lines indented)."""
    import textwrap

    return textwrap.fill(", ".join(words), width, subsequent_indent=" " * indent)


class CliError(Exception):
    """A user-facing error: printed as `trajsafe: error: ...`, exit code 2."""


def _parallelism(p: argparse.ArgumentParser, ray: bool) -> None:
    """The --batch-size / --workers options shared by `score` and `eval`."""
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="conversations per batched ONNX run (default: 1 on CPU, where batching does not pay, "
                        "16 on CUDA)")
    workers = ("conversations scored in parallel: threads of this process (default on CPU: one per core, "
               "each run on one thread unless --threads says otherwise; on CUDA: 1)")
    if ray:
        workers += (", or with --engine ray scoring actors, one monitor each (default: one per CPU of the "
                    "cluster)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help=workers)
    p.add_argument("--policy", action="append", default=[], metavar="KEY=VALUE",
                   help="lay a policy setting over the package's (repeatable): a threshold (probe, steer, refuse, "
                        "terminate) or a rule (probe_risk, deescalate_risk, flagged_refuse, floor_risk, "
                        "ceiling_risk, sticky_terminate=true|false); e.g. --policy ceiling_risk=0.9")


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and runtime")
    group.add_argument("--model", metavar="DIR", default=None,
                       help="monitor package folder (monitor.json, tokenizer.json, ONNX files); default: the "
                            "embedded default monitor, or $TRAJSAFE_MODEL when set")
    group.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                       help="ONNX Runtime execution provider: auto uses CUDA when it really works here, else CPU; "
                            "cuda fails where CUDA cannot run (default: auto)")
    group.add_argument("--variant", metavar="NAME", default=None,
                       help="ONNX variant of the package (e.g. fp32, int8, fp16); default: the package's choice for "
                            "the provider")
    group.add_argument("--threads", type=int, metavar="N", default=None,
                       help="CPU threads per ONNX Runtime run (default: all cores, or $TRAJSAFE_THREADS; for "
                            "score and eval on CPU: 1 per worker)")


def _quiet_onnxruntime() -> None:
    """Silence ONNX Runtime's own stderr logging, unless `$TRAJSAFE_ORT_LOG` is set."""
    if os.environ.get("TRAJSAFE_ORT_LOG"):
        return
    from .runtime import set_ort_log_severity

    set_ort_log_severity(4)


def _load_monitor(args: argparse.Namespace, threads: int | None = None) -> Any:
    from .core import Monitor

    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1")
    threads = args.threads if args.threads is not None else threads
    return Monitor.load(args.model, provider=args.provider, variant=args.variant, threads=threads)


def _scorer(args: argparse.Namespace) -> Any:
    """A Scorer for score/eval: on CPU, parallel single-threaded runs (one per core) unless told otherwise."""
    from .evaluation import Scorer
    from .policy import Policy

    workers = args.workers
    settings = policy_settings(args)
    monitor = _load_monitor(args, threads=1 if workers is None or workers > 1 else None)
    return Scorer(monitor, policy=Policy.from_package({**monitor.package.policy_defaults, **settings}),
                  batch_size=args.batch_size, workers=workers)


def policy_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`--policy KEY=VALUE` settings, checked before any model loads (a usage error otherwise)."""
    from .policy import DEFAULT_THRESHOLDS, Policy, parse_settings

    try:
        settings = parse_settings(getattr(args, "policy", None) or [])
        Policy.from_package({**DEFAULT_THRESHOLDS, **settings})  # ranges
    except ValueError as exc:
        raise CliError(f"--policy: {exc}") from exc
    return settings


@contextlib.contextmanager
def _open_in(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    with f:
        yield f


@contextlib.contextmanager
def _open_out(path: str | None) -> Iterator[IO[str]]:
    if path in (None, "-"):
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc
    with f:
        yield f


def _input_size(path: str) -> int | None:
    if path == "-":
        return None
    with contextlib.suppress(OSError):
        return os.path.getsize(path)
    return None


def _model_line(monitor: Any) -> str:
    pkg = monitor.package
    return f"{pkg.name} {pkg.version} ({monitor.variant} on {monitor.provider}) from {pkg.path}"


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


# ---------------------------------------------------------------------------------------------------- demo
def demo_conversations() -> list[dict[str, Any]]:
    """The bundled example conversations (`trajsafe_sdk/examples/demo.jsonl`)."""
    text = resources.files("trajsafe_sdk").joinpath("examples/demo.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _demo_runner(monitor: Any) -> Any:
    """A function (conversation id, history ending with a user message) -> Decision, through the guard."""
    from .guard import Guard

    guard = Guard(monitor=monitor)

    def decide(conv_id: str, history: list[dict[str, str]]) -> Any:
        return guard.check_input(history, conversation_id=conv_id).decision

    return decide


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the bundled conversations turn by turn; print one row per user turn and a summary line."""
    monitor = _load_monitor(args)
    conversations = demo_conversations()
    decide = _demo_runner(monitor)
    decide("warm-up", [{"role": "user", "content": "hello"}])  # first-run allocations out of the timings
    out = sys.stdout
    print(f"TrajSafe demo: monitor {_model_line(monitor)}", file=out)
    actions: Counter[str] = Counter()
    latencies: list[float] = []
    benign_ok = benign_n = harmful_caught = harmful_n = as_expected = 0
    header = (f"  {'turn':>4}  {'user message':<58}  {'action':<9}  {'category':<20}  {'risk':>5}  {'latency':>9}  "
              "should")
    for n, conv in enumerate(conversations, start=1):
        expected = "should be allowed" if conv["label"] == "benign" else "should be stopped"
        print(f"\n[{n}/{len(conversations)}] {conv['kind']}: {conv['title']} ({expected})", file=out)
        print(header, file=out)
        history: list[dict[str, str]] = []
        conv_actions = []
        for message in conv["messages"]:
            history.append(message)
            if message["role"] != "user":
                continue
            decision = decide(f"demo-{conv['id']}", list(history))
            should = conv["expect"][len(conv_actions)]
            met = decision.action in EXPECTATIONS[should]
            as_expected += met
            conv_actions.append(decision.action)
            actions[decision.action] += 1
            latencies.append(decision.latency_ms)
            print(f"  {len(conv_actions):>4}  {_clip(message['content'], 58):<58}  {decision.action:<9}  "
                  f"{decision.category:<20}  {decision.risk:>5.2f}  {decision.latency_ms:>6.1f} ms  "
                  f"{should if should != 'any' else '-'}{'' if met else '  (missed)'}", file=out)
        if conv["label"] == "benign":
            benign_n += 1
            benign_ok += all(a == "allow" for a in conv_actions)
        else:
            harmful_n += 1
            harmful_caught += any(a != "allow" for a in conv_actions)
    counts = ", ".join(f"{a} {actions[a]}" for a in ("allow", "probe", "steer", "refuse", "terminate"))
    median = statistics.median(latencies) if latencies else 0.0
    print(f"\nsummary: {len(conversations)} conversations, {sum(actions.values())} user turns ({counts}); "
          f"benign allowed {benign_ok}/{benign_n}, escalations caught {harmful_caught}/{harmful_n}, "
          f"turns as they should be {as_expected}/{len(latencies)}; "
          f"median latency {median:.1f} ms per turn ({monitor.provider}, {monitor.variant})", file=out)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- score
def cmd_score(args: argparse.Namespace) -> int:
    """JSONL conversations in, one JSONL result line per input line out."""
    # --- engine ray (trajsafe_sdk.distributed.ray_batch) -----------------------------------------------------------
    if getattr(args, "engine", "local") == "ray":
        try:
            from .distributed.ray_batch import cli_score
        except ImportError as exc:
            raise CliError(f"--engine ray needs Ray ({exc}); pip install 'trajsafe-sdk[ray]'") from exc
        return cli_score(args)
    # --- end engine ray --------------------------------------------------------------------------------------------
    from .evaluation import LineError, Progress, read_lines, result_json, score_lines

    scorer = _scorer(args)
    monitor = scorer.monitor
    progress = Progress(_input_size(args.input), enabled=not args.quiet)
    n = failed = 0
    with _open_in(args.input) as fin, _open_out(args.output) as fout:
        try:
            for result in score_lines(read_lines(fin), scorer, chunk_lines=args.chunk):
                line, error = result_json(result)
                fout.write(line + "\n")
                n += 1
                failed += error is not None
                progress.update(1, result.size if isinstance(result, LineError) else result.conversation.size,
                                int(error is not None))
                if error is not None and not args.quiet:
                    progress.close()
                    print(f"trajsafe: line {error.line}: {error.error}", file=sys.stderr)
            fout.flush()
        finally:
            progress.close()
            scorer.close()
    if not args.quiet:
        seconds = progress.elapsed
        print(f"scored {n - failed} conversations ({failed} failed lines) in {seconds:.2f}s: "
              f"{_fmt_rate((n - failed) / max(seconds, 1e-9))} conversations/s, "
              f"{_fmt_rate(scorer.tokens / max(seconds, 1e-9))} tokens/s; {_model_line(monitor)}", file=sys.stderr)
    return EXIT_FAILED_LINES if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    """Labelled JSONL in, docs/contracts.md §6 metrics out (tables, or JSON with --json)."""
    from .evaluation import Progress, eval_summary, evaluate, format_report, read_lines

    scorer = _scorer(args)
    monitor = scorer.monitor
    progress = Progress(_input_size(args.input), enabled=not args.quiet)
    by = ["category", "source", *[b for b in args.by if b not in ("category", "source")]]
    with _open_in(args.input) as fin:
        try:
            result = evaluate(read_lines(fin), scorer, baseline=args.baseline, progress=progress,
                              fields=[b for b in by if b not in ("category", "source")])
        finally:
            progress.close()
            scorer.close()
    pkg = monitor.package
    summary = {"input": args.input,
               "model": {"name": pkg.name, "version": pkg.version, "path": str(pkg.path), "variant": monitor.variant,
                         "provider": monitor.provider},
               "policy": scorer.policy.to_dict(), **eval_summary(result, by),
               "package_leave_source_out": package_evaluation(pkg)}
    for err in result.errors[:20] if not args.quiet else []:
        print(f"trajsafe: line {err.line}: {err.error}", file=sys.stderr)
    if len(result.errors) > 20 and not args.quiet:
        print(f"trajsafe: ... {len(result.errors) - 20} more failed lines", file=sys.stderr)
    if args.output:
        with _open_out(args.output) as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['conversations']} conversations from {args.input} ({summary['errors']} failed lines), "
              f"monitor {_model_line(monitor)}\n")
        print(format_report(summary))
        quoted = summary["package_leave_source_out"]
        if quoted:
            print(f"\nFor comparison, this package's own leave-source-out figures ({quoted['protocol']}):\n"
                  f"{quoted['text']}\nFigures on conversations from sources the package was trained on are "
                  "in-distribution and overstate quality on new conversations; see the package's CARD.md.")
    if not args.quiet:
        rate = len(result.items) / max(result.seconds, 1e-9)
        print(f"evaluated {len(result.items)} conversations in {result.seconds:.2f}s ({_fmt_rate(rate)}/s)",
              file=sys.stderr)
    return EXIT_FAILED_LINES if result.errors else EXIT_OK


# ---------------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """Hand over to `trajsafe_sdk.bench.main(argv)` (the benchmark module), if it is installed."""
    try:
        bench = importlib.import_module("trajsafe_sdk.bench")
    except ImportError as exc:
        if exc.name not in ("trajsafe_sdk.bench",):
            raise CliError(f"the benchmark needs a module that is not installed ({exc}); "
                           "install the extra: pip install 'trajsafe-sdk[bench]'") from exc
        raise CliError("the benchmark module (trajsafe_sdk.bench) is not part of this installation") from exc
    if not hasattr(bench, "main"):
        raise CliError("trajsafe_sdk.bench has no main(argv) entry point")
    return int(bench.main(list(args.bench_args)) or 0)


# ---------------------------------------------------------------------------------------------------- info
def collect_info(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Everything `trajsafe info` reports, and the model error if the package could not be loaded."""
    import numpy
    import onnxruntime as ort
    import tokenizers

    from .package import default_package_path
    from .runtime import available_providers, cuda_usable, onnxruntime_distributions

    info: dict[str, Any] = {
        "sdk": {"name": "trajsafe-sdk", "version": __version__, "path": str(Path(__file__).resolve().parent)},
        "model": {"path": str(Path(args.model) if args.model else default_package_path())},
        "onnxruntime": {"version": ort.__version__, "distributions": onnxruntime_distributions(),
                        "providers_available": available_providers(), "provider_requested": args.provider},
        "versions": {"python": platform.python_version(), "onnxruntime": ort.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": numpy.__version__,
                     "platform": platform.platform()},
    }
    error = None
    try:
        monitor = _load_monitor(args)
    except (PackageError, ProviderError) as exc:
        error = str(exc)
        info["model"]["error"] = error
        monitor = None
    if monitor is not None:
        pkg = monitor.package
        info["model"].update({
            "path": str(pkg.path), "name": pkg.name, "version": pkg.version,
            "variants": {v: {k: pkg.variant_file(v).get(k) for k in ("path", "dtype", "kv_dtype", "providers")}
                         for v in pkg.variants()},
            "default_variant": pkg.manifest.get("default_variant", {}), "context_limit": pkg.context_limit,
            "policy": pkg.policy_defaults,
            "leave_source_out": (package_evaluation(pkg) or {}).get("text")})
        info["onnxruntime"].update({"provider_chosen": monitor.provider, "variant": monitor.variant,
                                     "activations": monitor.activations})
    if monitor is not None and monitor.provider == "cuda":
        cuda: dict[str, Any] = {"usable": True, "reason": "chosen"}
    elif args.provider == "cpu":
        cuda = {"usable": None, "reason": "not tried (--provider cpu)"}
    else:  # the package's CUDA variant on CUDA (the probe model needs no package), with onnxruntime's own causes
        usable, why = cuda_usable() if monitor is None else cuda_usable(
            monitor.package.onnx_path(monitor.package.default_variant("cuda")))
        if not usable and args.provider == "auto":
            why = f"--provider auto tried CUDA, then chose CPU: {why}"
        cuda = {"usable": usable, "reason": why}
    info["onnxruntime"]["cuda"] = cuda
    return info, error


def package_evaluation(package: Any) -> dict[str, Any] | None:
    """The package's recorded leave-source-out figures (monitor.json `evaluation`), pooled, with a one-line text."""
    from .package import spread_ranges

    ev = package.manifest.get("evaluation")
    if not isinstance(ev, dict) or not isinstance(ev.get("monitor"), dict):
        return None
    pooled = ev["monitor"].get("pooled", {})

    def rate(group: str, key: str) -> str:
        value = pooled.get(group, {}).get(key)
        return "n/a" if value is None else f"{value:.3f}"

    text = (f"catch {rate('harmful_multi_turn', 'catch_rate')} (multi-turn harmful), "
            f"{rate('harmful_single_turn', 'catch_rate')} (single-turn harmful); over-refusal "
            f"{rate('benign', 'over_refusal')}, friction {rate('benign', 'friction')} (benign)")
    spread = ev.get("seed_spread")
    if isinstance(spread, dict) and len(spread.get("seeds") or []) >= 2:
        text += f"; min-max over seeds {', '.join(map(str, spread['seeds']))}: {', '.join(spread_ranges(spread))}"
    return {"protocol": ev.get("protocol", "leave-source-out"), "pooled": pooled, "text": text,
            "seed_spread": spread if isinstance(spread, dict) else None}


def cmd_info(args: argparse.Namespace) -> int:
    """Print package, model, providers and versions (text, or JSON with --json)."""
    info, error = collect_info(args)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        sdk, model, rt, ver = info["sdk"], info["model"], info["onnxruntime"], info["versions"]
        rows = [("sdk", f"{sdk['name']} {sdk['version']} ({sdk['path']})"),
                ("model path", model["path"])]
        if error:
            rows.append(("model", f"NOT LOADED: {error}"))
        else:
            rows += [("model", f"{model['name']} {model['version']}, context {model['context_limit']} tokens"),
                     ("variants", ", ".join(f"{v} ({spec['dtype']}, checked on {'/'.join(spec['providers'] or [])})"
                                            for v, spec in model["variants"].items())),
                     ("policy", ", ".join(f"{k} {v}" for k, v in model["policy"].items()))]
            if model.get("leave_source_out"):
                rows.append(("quality", f"leave-source-out: {model['leave_source_out']}"))
        dists = rt["distributions"]
        rows.append(("onnxruntime", f"{rt['version']} ({', '.join(f'{n} {v}' for n, v in dists.items())})"))
        if len(dists) > 1:
            rows.append(("WARNING", "onnxruntime and onnxruntime-gpu are both installed and overwrite each other's "
                                    "files; keep one: pip uninstall -y onnxruntime onnxruntime-gpu, then pip install "
                                    "onnxruntime-gpu (or onnxruntime for CPU only)"))
        rows += [("providers", ", ".join(rt["providers_available"])), ("requested", rt["provider_requested"])]
        if not error:
            rows.append(("chosen", f"{rt['provider_chosen']} (variant {rt['variant']}, "
                                   f"{rt['activations']} activations)"))
        cuda = rt["cuda"]
        rows.append(("cuda", "usable" if cuda["usable"] else f"not used: {cuda['reason']}"))
        rows += [("tokenizers", ver["tokenizers"]), ("numpy", ver["numpy"]),
                 ("python", f"{ver['python']} ({ver['platform']})")]
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return EXIT_USAGE if error else EXIT_OK


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trajsafe", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"trajsafe-sdk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    p = add("demo", "run the bundled example conversations through the guard, a decision per user turn",
            "Run the bundled example conversations (benign, scary-but-benign, gradual escalations, a probe answered "
            "credibly) through the guard on the monitor, deciding after every user message, and print per user "
            "turn the action, category, risk, latency and what a correct guard should do there (allow: allowed; "
            "block: refused or terminated; -: no expectation), then a one-line summary. Works offline.")
    _common(p)
    p.set_defaults(func=cmd_demo)

    p = add("score", "JSONL conversations in, JSONL decisions out (one line per input line, in order)",
            "Score conversations, one JSON object per line:\n"
            '  {"id": "...", "messages": [{"role": "system|developer|user|assistant|tool", "content": "..."}]}\n'
            "Output, one line per input line and in the same order:\n"
            '  {"id": ..., "decisions": [<Decision>, ...], "tokens": N, "latency_ms": X}\n'
            "with one Decision (action, category, risk, action_scores, category_scores, message_index, tokens,\n"
            "latency_ms, reason) per user message, taken with the package's default policy. A bad line yields\n"
            '  {"id": <id or null>, "line": N, "error": "what is wrong"}\n'
            "and scoring goes on; the exit code is 1 if any line failed. Conversations are read as given (no reply\n"
            "is invented). Lines are read, scored and written --chunk at a time (constant memory), in parallel and\n"
            "batched runs; conversations/s are reported on stderr at the end.")
    p.add_argument("input", metavar="IN.jsonl", help="input file, or - for stdin")
    p.add_argument("-o", "--output", metavar="OUT.jsonl", default="-", help="output file, or - for stdout (default)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, per-line error messages or summary on stderr")
    _parallelism(p, ray=True)
    p.add_argument("--chunk", type=int, default=64, metavar="N",
                   help="lines read, scored and written at a time (memory is constant in the input size; "
                        "default: 64)")
    # --- engine ray (trajsafe_sdk.distributed.ray_batch) -----------------------------------------------------------
    group = p.add_argument_group("distributed scoring (needs the ray extra)")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: a Ray Data actor pool, locally or on a cluster. "
                            "IN may then also be a folder of *.jsonl shards; an OUT that does not end in .jsonl "
                            "(nor is -) is a folder of output shards")
    group.add_argument("--address", metavar="ADDR", default=None,
                       help="Ray cluster to use with --engine ray (default: $RAY_ADDRESS, else a local Ray)")
    # --- end engine ray --------------------------------------------------------------------------------------------
    _common(p)
    p.set_defaults(func=cmd_score)

    p = add("eval", "labelled JSONL in, quality metrics out (catch, block, over-refusal, friction, earliness)",
            "Evaluate the monitor on labelled conversations: the score input plus\n"
            '  "label": "harmful"|"benign", optional "category" and "source" (strings). A category is benign or\n'
            "  one of the twelve harm categories:\n"
            f"    {_wrapped(CATEGORIES[1:], 4)}.\n"
            "  A bad line (as for score, or an unknown label or category) yields an error record and the exit\n"
            "  code is 1; the other lines are still evaluated.\n"
            "Prints, overall, per category and per source (when given), these metrics:\n"
            "  catch rate    harmful: share with a non-allow decision at or before the last user message\n"
            "  block rate    harmful: share whose last user message gets steer, refuse or terminate\n"
            "  over-refusal  benign: share with refuse or terminate anywhere\n"
            "  friction      benign: share with any non-allow decision\n"
            "  earliness     harmful multi-turn: first intervening user turn counted from the end (median)\n"
            "--baseline last-message also scores every user message alone (no trajectory), to show what reading\n"
            "the trajectory adds on your data. Tables are Markdown.")
    p.add_argument("input", metavar="IN.jsonl", help="labelled input file, or - for stdin")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    p.add_argument("-o", "--output", metavar="OUT.json", default=None, help="also write the metrics JSON to a file")
    p.add_argument("--baseline", choices=("last-message",), default=None,
                   help="also evaluate a stateless baseline: every user message scored alone")
    p.add_argument("--by", action="append", default=[], metavar="FIELD",
                   help="extra breakdown by an input field (e.g. pattern); repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages on stderr")
    _parallelism(p, ray=False)
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = add("bench", "latency/throughput benchmark of the inference core (trajsafe bench --help)",
            "Latency/throughput benchmark of the inference core; arguments go to the benchmark module "
            "(trajsafe_sdk.bench): run `trajsafe bench --help` for its options (--model, --provider, --json ...).")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(func=cmd_bench)

    p = add("info", "package, model, providers (available and chosen) and versions",
            "Show the SDK package, the monitor package (name, version, variants, policy), the ONNX Runtime\n"
            "providers available and the one chosen (and why CUDA was not), and the versions of onnxruntime,\n"
            "tokenizers, numpy and Python. Exit code 2 when the monitor package cannot be loaded.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(p)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trajsafe` console script: exit codes 0, 1 (some lines failed), 2 (usage, package or
    provider error), 3 (internal error: never 1, so a crash is never mistaken for failed lines), 141 (broken pipe)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # the reader went away (e.g. `| head`): exit quietly
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("trajsafe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (a bug: reported as one, with its own exit code)
        import traceback

        traceback.print_exc()
        print(f"trajsafe: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal gets escapes, not a UnicodeEncodeError
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark, --help included
        args = argparse.Namespace(func=cmd_bench, bench_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    for name in ("batch_size", "chunk", "workers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            print(f"trajsafe: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    _quiet_onnxruntime()
    try:
        return args.func(args)
    except PackageError as exc:  # the error names its cause (a bad --model, $TRAJSAFE_MODEL, a missing variant...)
        print(f"trajsafe: error: cannot load the monitor package: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ProviderError, CliError) as exc:
        print(f"trajsafe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrajSafeError as exc:
        print(f"trajsafe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
