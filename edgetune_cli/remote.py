"""The commands that talk to a server through `edgetune.Client`: recommend, jobs, plots.

The server is --url or EDGETUNE_URL when given; else the local default when one answers there;
else an embedded one (API + worker on the SQLite default) started for this one command.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgetune.client import (
    DEFAULT_URL,
    Client,
    EdgetuneError,
    JobCancelled,
    JobFailed,
    Unreachable,
)
from edgetune.schemas import (
    PLOT_NAMES,
    TERMINAL_STATUSES,
    Estimate,
    Hyperparameters,
    JobOut,
    OrderParameter,
    Recommendation,
    ScheduleOut,
)
from edgetune_cli.local import embedded
from edgetune_cli.output import CliError, err, out

# A live progress bar: poll every second rather than backing off like a pipeline would.
POLL_SECONDS = 1.0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Reached:
    client: Client
    # An embedded server lives only as long as this command: nothing runs its jobs afterwards.
    embedded: bool


@contextmanager
def reach(args: argparse.Namespace) -> Iterator[Reached]:
    """A client for the server this command talks to (see the module docstring)."""
    given = args.url or os.environ.get("EDGETUNE_URL")
    if given or _answers(DEFAULT_URL):
        with Client(given or DEFAULT_URL, api_key=args.api_key) as client:
            yield Reached(client, embedded=False)
        return
    err.print(
        f"no server at {DEFAULT_URL}: running embedded (API + worker on the SQLite default "
        "in the data dir) for this command"
    )
    with embedded() as local, Client(local, api_key=args.api_key) as client:
        yield Reached(client, embedded=True)


@contextmanager
def errors_explained() -> Iterator[None]:
    """The client's errors as messages a person can act on."""
    try:
        yield
    except Unreachable as exc:
        raise CliError(f"{exc}; start it with `edgetune serve` or pass --url", code=2) from exc
    except (JobFailed, JobCancelled) as exc:
        job = exc.job
        raise CliError(f"job {job.id} {job.status}: {job.error or 'no error'}") from exc
    except EdgetuneError as exc:
        raise CliError(str(exc)) from exc


def load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise CliError(f"{path} is not valid {kind}: {exc}") from exc
    if not isinstance(spec, dict):
        raise CliError(f"{path} must hold a mapping (model, dataset, optimizer, budget, ...)")
    return spec


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def follow(client: Client, job: JobOut) -> JobOut:
    """Wait for the job, showing phase, probes done/total and ETA on stderr."""
    columns = (
        TextColumn("[bold]{task.fields[status]:<9}[/] {task.fields[phase]:<12}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("probes {task.fields[probes]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    last_line = ""
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(job.id, total=1.0, status="", phase="", probes="–", eta="–")

        def show(job: JobOut) -> None:
            nonlocal last_line
            p = job.progress
            probes = f"{p.probes_done}/{p.probes_total or '?'}"
            if not err.is_terminal:
                # No live bar in a log file: one line whenever the state moves on.
                line = f"{job.status} {p.phase} probes {probes}"
                if line != last_line:
                    err.print(f"{line} ({p.fraction:.0%})")
                    last_line = line
            bar.update(
                task,
                completed=p.fraction,
                status=job.status,
                phase=p.phase,
                probes=probes,
                eta=_eta(p.eta_seconds),
            )

        show(job)
        return client.wait(job.id, poll=POLL_SECONDS, max_poll=POLL_SECONDS, on_progress=show)


def _cell(value: object) -> str | None:
    """A table cell for a scalar or an estimate; None for bulkier data (see --json)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, Estimate) and value.value is not None:
        text = f"{value.value:.4g}"
        if value.low is not None and value.high is not None:
            text += f" [{value.low:.4g}, {value.high:.4g}]"
        return text
    if isinstance(value, OrderParameter):
        return value.name
    return None


def _facts(title: str, model: BaseModel, skip: frozenset[str] = frozenset()) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    for name in type(model).model_fields:
        if name in skip:
            continue
        cell = _cell(getattr(model, name))
        if cell is not None:  # trajectories, fits, per-probe growth: see --json
            table.add_row(name, cell)
    return table


VERDICT_STYLES = {"use": "bold green", "care": "bold yellow", "dont": "bold red"}
# The paper's λ and η/((1−α)B) are for the physics-minded: in --details and --json.
TECHNICAL = frozenset({"paper_lambda", "effective_rate"})


def _schedule_cell(schedule: ScheduleOut | None) -> str:
    if schedule is None or schedule.name == "constant":
        return "constant"
    warmup = f", {schedule.warmup_epochs:.3g}-epoch warm-up" if schedule.warmup_epochs else ""
    return f"{schedule.name}{warmup} (learning_rate is its peak; stepped every optimizer step)"


def _hyper_table(hyper: Hyperparameters, details: bool) -> Table:
    """The numbers to use: the optimizer's constructor arguments are the snippet below it."""
    skip = {"torch_sgd_kwargs", "torch_adamw_kwargs", "schedule", "optimizer"}
    if not details:
        skip |= TECHNICAL
    if hyper.optimizer == "adamw":
        skip.add("momentum")  # AdamW has none; its betas are in the snippet
    table = _facts("Recommended hyperparameters", hyper, frozenset(skip))
    table.add_row("optimizer", "AdamW" if hyper.optimizer == "adamw" else "SGD")
    table.add_row("schedule", _schedule_cell(hyper.schedule))
    return table


def print_recommendation(result: Recommendation, *, details: bool = False) -> None:
    """The verdict first, then the numbers to use; the evidence behind them with details."""
    if result.verdict is not None:
        out.print(Text(result.verdict.message, style=VERDICT_STYLES[result.verdict.action]))
    hyper = result.hyperparameters
    if hyper is None:
        # A finished job can still conclude that no configuration reaches the edge; it says why.
        out.print(Text("No recommendation could be made.", style="bold"))
    else:
        out.print(_hyper_table(hyper, details))
        name, kwargs = (
            ("AdamW", hyper.torch_adamw_kwargs)
            if hyper.torch_adamw_kwargs is not None
            else ("SGD", hyper.torch_sgd_kwargs)
        )
        if kwargs is not None:
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.model_dump().items())
            out.print(f"torch.optim.{name}(model.parameters(), {args})", highlight=False)
    if result.verification is not None:
        out.print(_facts("Verification run", result.verification))
    if not details:
        count = len(result.validity.warnings)
        out.print(f"the evidence (edge of chaos, fits, {count} warnings): --details; all: --json")
        return
    _print_evidence(result)


def _print_evidence(result: Recommendation) -> None:
    out.print(_facts("Edge of chaos (predicted)", result.edge))
    validity = result.validity
    reasons = result.verdict.reasons if result.verdict is not None else []
    if reasons:
        out.print("why use with care:")
        for reason in reasons:
            out.print(f"  - {reason}")
    flags = [name for name, on in validity.flags.items() if on]
    verdict = "ok" if validity.ok else "check the warnings"
    out.print(f"validity: {verdict}" + (f" (flags: {', '.join(flags)})" if flags else ""))
    if validity.warnings:
        out.print(Text("the fits' own words (technical detail):", style="dim"))
    for warning in validity.warnings:
        out.print(Text.assemble(("warning: ", "yellow"), warning))
    if result.cost is not None:
        cost = result.cost.model_dump()
        out.print("cost: " + ", ".join(f"{k}={_cell(v)}" for k, v in cost.items()))
    out.print("full result (fits, trajectories, per-probe growth): --json")


def cmd_recommend(args: argparse.Namespace) -> int:
    spec = load_spec(Path(args.spec))
    with reach(args) as reached, errors_explained():
        client = reached.client
        # The server validates (it may be newer than this client); a bad spec is its 422.
        job = client.submit(spec, idempotency_key=args.idempotency_key, check=False)
        if reached.embedded and not args.wait:
            # Nothing would run the job once this command ends: run it to its end here.
            err.print(
                f"job {job.id} {job.status}: no server runs it in the background, so this command "
                "follows it to the end (start `edgetune serve` to queue jobs and return at once)"
            )
        elif not args.wait:
            if args.json:
                out.print_json(job.model_dump_json())
            else:
                follow_up = f"follow it with `edgetune jobs show {job.id}`"
                out.print(f"job {job.id} {job.status}: {follow_up}")
            return 0
        err.print(f"job {job.id} submitted to {client.url}")
        try:
            follow(client, job)
        except KeyboardInterrupt:
            if reached.embedded:
                err.print(f"stopped; job {job.id} goes back to the queue of the embedded database")
            else:
                err.print(f"stopped following; the job goes on (`edgetune jobs cancel {job.id}`)")
            return 130
        result = client.recommendation(job.id)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print_recommendation(result, details=args.details)
    return 0


def print_job(job: JobOut) -> None:
    p = job.progress
    table = Table(title=f"job {job.id}", show_header=False)
    for name in ("status", "attempts", "created_at", "started_at", "finished_at", "error"):
        table.add_row(name, str(getattr(job, name)))
    if job.cancel_requested and job.status not in TERMINAL_STATUSES:
        table.add_row("cancel", "requested: it stops at its next measurement")
    table.add_row("phase", p.phase)
    table.add_row("probes", f"{p.probes_done}/{p.probes_total}")
    if job.status not in TERMINAL_STATUSES:  # an ended job has no progress left to show
        table.add_row("done", f"{p.fraction:.0%}")
        table.add_row("eta", _eta(p.eta_seconds))
    elif job.status == "succeeded":
        table.add_row("result", f"edgetune jobs result {job.id}")
    out.print(table)


def _list(client: Client, args: argparse.Namespace) -> None:
    page = client.page(args.status, args.page_size, args.page_token)
    if args.json:
        out.print_json(page.model_dump_json())
        return
    table = Table("id", "status", "phase", "done", "created")
    for job in page.jobs:
        p = job.progress
        table.add_row(job.id, job.status, p.phase, f"{p.fraction:.0%}", str(job.created_at))
    out.print(table)
    if page.next_page_token:
        out.print(f"more: --page-token {page.next_page_token}")


def _one(client: Client, args: argparse.Namespace) -> None:
    if args.jobs_command == "result":
        result = client.recommendation(args.id)
        if args.json:
            print(result.model_dump_json(indent=2))
        else:
            print_recommendation(result, details=args.details)
        return
    job = client.cancel(args.id) if args.jobs_command == "cancel" else client.job(args.id)
    if args.json:
        out.print_json(job.model_dump_json())
    else:
        print_job(job)


EXPORT_COLUMNS = (
    "job_id",
    "status",
    "created_at",
    "finished_at",
    "model",
    "dataset",
    "epochs_budget",
    "learning_rate",
    "momentum",
    "batch_size",
    "weight_decay",
    "epochs",
    "validity_ok",
    "order_parameter",
    "probe_seconds",
    "error",
)


def _export_row(job: JobOut, result: Recommendation | None) -> dict[str, object]:
    spec = job.spec
    hyper = result.hyperparameters if result is not None else None
    row: dict[str, object] = {
        "job_id": job.id,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else "",
        "model": (spec.get("model") or {}).get("type", ""),
        "dataset": (spec.get("dataset") or {}).get("name", ""),
        "epochs_budget": (spec.get("budget") or {}).get("epochs", ""),
        "error": job.error or "",
    }
    if hyper is not None:
        row |= hyper.model_dump(include=set(EXPORT_COLUMNS))
    if result is not None:
        row["validity_ok"] = result.validity.ok
        row["order_parameter"] = result.edge.order_parameter.name
        row["probe_seconds"] = result.cost.probe_seconds if result.cost else ""
    return row


def _export(client: Client, args: argparse.Namespace) -> None:
    """Every job of a status with its result, newest first: CSV rows or JSON lines."""
    writer = csv.DictWriter(sys.stdout, EXPORT_COLUMNS, restval="", lineterminator="\n")
    if args.format == "csv":
        writer.writeheader()
    for job in client.jobs(status=args.status):
        result = client.recommendation(job.id) if job.status == "succeeded" else None
        if args.format == "csv":
            writer.writerow(_export_row(job, result))
        else:
            line = {
                "job": job.model_dump(mode="json"),
                "recommendation": result.model_dump(mode="json") if result else None,
            }
            print(json.dumps(line))


def cmd_jobs(args: argparse.Namespace) -> int:
    with reach(args) as reached, errors_explained():
        if args.jobs_command == "list":
            _list(reached.client, args)
        elif args.jobs_command == "export":
            _export(reached.client, args)
        else:
            _one(reached.client, args)
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    """Download the job's plots (PNG and SVG) into --out."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with reach(args) as reached:
        client = reached.client
        for name in PLOT_NAMES:
            for fmt in ("png", "svg"):
                try:
                    body = client.plot(args.job, name, fmt)
                except EdgetuneError as exc:
                    code = 2 if isinstance(exc, Unreachable) else 1
                    raise CliError(f"plot {name}: {exc}", code=code) from exc
                path = out_dir / f"{name}.{fmt}"
                path.write_bytes(body)
                written.append(path)
    for path in written:
        out.print(f"{path}  ({path.stat().st_size // 1024} KiB)", highlight=False)
    return 0
