"""The `dcpipe` command: parses flags, layers them over the workspace config, calls a stage.

Exit codes: 0 done, 1 a bug (with its traceback), 2 something the user must act on (a
DcpipeError: bad config, flags or sources, missing round, a store made otherwise, a refused
file, no room on the disk, ...), 75 workspace busy (another dcpipe command holds its lock;
cron: try again later), 130 interrupted (Ctrl-C). A command that holds the lock first removes
the temp files of killed or failed writers (shards/atomic.py).
"""

import json
import sys
from contextlib import ExitStack, contextmanager
from functools import wraps

import click

from dcpipe.errors import DcpipeError
from dcpipe.pipeline import config as configuration
from dcpipe.pipeline import rounds, status
from dcpipe.pipeline.interrupts import keep_lost_interrupts, quiet_handover_hangups
from dcpipe.pipeline.lock import EXIT_BUSY, WorkspaceBusy, shard_lock, workspace_lock
from dcpipe.pipeline.methods import DEFAULT_METHOD, METHOD_CHANGES
from dcpipe.pipeline.workspace import Workspace, WorkspaceError
from dcpipe.shards.atomic import no_room, remove_stale_temps
from dcpipe.stages.cluster.settings import RANGES as CLUSTER_RANGES
from dcpipe.stages.common.distributed import ProcessGroup, is_rank_zero
from dcpipe.stages.common.zarrio import finish_pending_writes
from dcpipe.stages.common.modelspec import RANGES as MODEL_RANGES
from dcpipe.stages.evaluate.settings import RANGES as EVAL_RANGES
from dcpipe.stages.evaluate.settings import EvalSettings
from dcpipe.stages.extract.settings import RANGES as EXTRACT_RANGES
from dcpipe.stages.shard.settings import RANGES as SHARD_RANGES
from dcpipe.stages.sources.tables import FORMATS
from dcpipe.stages.train.settings import RANGES as TRAIN_RANGES

EXIT_INTERRUPTED = 130  # what a shell reports for a command SIGINT ended
SETTING_RANGES = {"shard": SHARD_RANGES, "model": MODEL_RANGES, "extract": EXTRACT_RANGES,
                  "cluster": CLUSTER_RANGES, "train": TRAIN_RANGES}
WORKSPACE_HELP = "Workspace directory (default: the current directory; env DCPIPE_WORKSPACE)."
QUIET_HELP = "For cron: no progress bars, warnings or summaries; errors still print."


def fail(message: str, code: int = 2):
    click.echo(f"dcpipe: error: {message}", err=True)
    sys.exit(code)


@contextmanager
def locked_workspace(ws: Workspace):
    """Hold the workspace lock for a command, swept of killed writers' temp files.

    Under torchrun the ranks are one command: rank 0 takes the lock for all of them (they all
    exit 75 if it is busy) and lets go only once every rank is through; the others start once
    it is held and swept. The stages join the command's process group, which lives until exit."""
    group = ProcessGroup.start()
    with ExitStack() as held:
        def take():
            held.enter_context(workspace_lock(ws.lock_path))
            remove_stale_temps(ws.root)

        group.from_rank_zero(take)
        yield
        group.barrier()


def handled(locked: bool):
    """Turn known errors into clear messages and exit codes; hold the workspace lock if asked."""
    def decorate(command):
        @wraps(command)
        def wrapper(ctx, *args, **kwargs):
            ws = ctx.obj["ws"]
            try:
                if locked:
                    with locked_workspace(ws):
                        return command(ctx, *args, **kwargs)
                return command(ctx, *args, **kwargs)
            except WorkspaceBusy as exc:
                fail(str(exc), EXIT_BUSY)
            except DcpipeError as exc:
                fail(str(exc))
            except OSError as exc:  # no room where no atomic write could name the file
                full = no_room(exc, exc.filename or "a file")
                if full is None:
                    raise
                fail(str(full))
        return click.pass_context(wrapper)
    return decorate


def layered(ctx, section: str, **flags) -> configuration.Config:
    return configuration.override(ctx.obj["ws"].config(), section, flags)


def echo_json(obj) -> None:
    """Print a stage's result once: under torchrun every rank returns it, rank 0 prints it."""
    if is_rank_zero():
        click.echo(json.dumps(obj, indent=1, default=str))


def echo_result(ctx, record: dict, as_json: bool, keys: tuple) -> None:
    """A step's record: all of it as JSON when asked (--json, also under -q), else a line of
    its main figures, none under -q."""
    if as_json:
        echo_json(record)
    elif ctx.obj["progress"] and is_rank_zero():
        click.echo(", ".join(f"{key} {record[key]}" for key in keys if key in record))


def json_option(command):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the step's whole record as JSON (also under -q).")(command)


def _workspace_after_name(ctx, param, value):
    if value is not None:
        ctx.obj["ws"] = Workspace.at(value)


def _quiet_after_name(ctx, param, value):
    if value:
        ctx.obj["progress"] = False


class Commands(click.Group):
    """dcpipe's commands: each also takes -w / -q after its name (`dcpipe status -w DIR`), and
    Ctrl-C ends any of them with 130, as a shell reports SIGINT, not click's "Aborted!" and 1."""

    def add_command(self, cmd, name=None):
        cmd.params += [
            click.Option(["-w", "--workspace"], type=click.Path(file_okay=False),
                         expose_value=False, callback=_workspace_after_name, help=WORKSPACE_HELP),
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                         callback=_quiet_after_name, help=QUIET_HELP)]
        super().add_command(cmd, name)

    def invoke(self, ctx):
        keep_lost_interrupts()
        quiet_handover_hangups()
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            finish_pending_writes()
            click.echo("dcpipe: interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _default_text(section: str, key: str) -> str:
    """A setting's default, per method where the methods differ."""
    by_method = {m: configuration.defaults(m)[section][key] for m in METHOD_CHANGES}
    shown = {m: json.dumps(v) for m, v in by_method.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return ", ".join(f"{v} for {m}" for m, v in shown.items())


def settings_flags(*sections):
    """For the flags that override [section] keys of dcpipe.toml: click checks each value
    against the key's range (its error names the flag) and --help shows the default."""
    def decorate(command):
        for section in sections:
            keys = configuration.defaults()[section]
            for param in command.__click_params__:
                if param.name in keys:
                    param.show_default = f"dcpipe.toml, else {_default_text(section, param.name)}"
            bounded(SETTING_RANGES[section])(command)
        return command
    return decorate


def bounded(ranges: dict):
    """Click checks the flags named like a key of `ranges` against its range."""
    def decorate(command):
        for param in command.__click_params__:
            if param.name in ranges:
                param.type = ranged(param.type, ranges[param.name])
        return command
    return decorate


def ranged(kind, limits):
    """An int or float click type bounded like the setting (other types as they are)."""
    bounds = {"min": limits.low, "max": limits.high, "min_open": limits.low_open}
    if kind is click.INT:
        return click.IntRange(**bounds)
    return click.FloatRange(**bounds) if kind is click.FLOAT else kind


@click.group(cls=Commands, context_settings={"show_default": True})
@click.version_option(status.VERSION, prog_name="dcpipe")
@click.option("-w", "--workspace", envvar="DCPIPE_WORKSPACE", type=click.Path(file_okay=False),
              help=WORKSPACE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def main(ctx, workspace, quiet):
    """DeepCluster as a restartable pipeline: shard -> extract -> cluster -> train, round after round."""
    ctx.obj = {"ws": Workspace.at(workspace), "progress": not quiet}


@main.command()
@click.option("--method", type=click.Choice(list(METHOD_CHANGES)), default=DEFAULT_METHOD,
              show_default=True, help="The training method the file names.")
@handled(locked=False)
def init(ctx, method):
    """Write a dcpipe.toml with every default, commented, into the workspace."""
    ws = ctx.obj["ws"]
    written = ws.init_config(method)
    click.echo(f"{'wrote' if written else 'kept existing'} {ws.config_path} (every setting, "
               "commented; edit it, flags override it)\nnext: dcpipe shard --src IMAGES "
               "(a folder, CSV/TSV/JSONL/Parquet/text list or YFCC100M file), then dcpipe run "
               "--rounds N")


@main.command()
@settings_flags("shard")
@click.option("--src", required=True, help="Image folder, CSV/TSV/JSONL/Parquet/text list, YFCC100M file, "
              "or a folder of WebDataset tars (img2dataset's output: adopted whole).")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Override the format taken from the file's name (e.g. yfcc100m).")
@click.option("--url-col", help="Column holding the source (default: a column named url or path).")
@click.option("--key-col", help="Column holding a key for each sample.")
@click.option("--meta-cols", help="Comma list of columns carried into each sample's JSON (default: all).")
@click.option("--image-size", type=int)
@click.option("--shard-size", type=int)
@click.option("--workers", type=int, help="Processes.")
@click.option("--shards-per-worker", type=int, help="Shards each process works at once.")
@click.option("--threads", type=int, help="Downloads in flight per process.")
@click.option("--dedup/--no-dedup", default=None)
@click.option("--timeout", type=float)
@click.option("--max-bytes", type=int)
@click.option("--retries", type=int, help="More attempts after a 5xx, 429, timeout or dropped connection.")
@click.option("--public-only/--no-public-only", default=None,
              help="Refuse local paths, file:// URLs and private/loopback/link-local addresses.")
@click.option("--label-field", help="Adopted tars: the true label's JSON key, or a member extension "
              "such as cls (evaluation only; default: label).")
@click.option("--node-rank", type=int, default=None, help="This node (default: torchrun's RANK or 0).")
@click.option("--num-nodes", type=int, default=None, help="Nodes in all (default: WORLD_SIZE or 1).")
@json_option
@handled(locked=False)
def shard(ctx, src, fmt, url_col, key_col, meta_cols, node_rank, num_nodes, as_json, **flags):
    """Turn an image source into WebDataset shards in WS/shards (only rows not yet sharded)."""
    from dcpipe.stages.shard.stage import resolve_nodes, shard as run_shard

    ws = ctx.obj["ws"]
    settings = layered(ctx, "shard", **flags).shard
    rank, world = resolve_nodes(node_rank, num_nodes)
    with shard_lock(ws.lock_path, rank, world):
        if world == 1:  # a node cannot tell another machine's live pids from dead ones
            remove_stale_temps(ws.root)
        stats = run_shard(src, ws.shards_dir, settings, format=fmt, url_col=url_col,
                          key_col=key_col, meta_cols=meta_cols.split(",") if meta_cols else None,
                          node_rank=rank, num_nodes=world, progress=ctx.obj["progress"])
    echo_result(ctx, stats, as_json, ("rows", "written", "rejected", "shards_written", "duration_s"))


def round_options(command):
    command = click.option("--round", "r", type=click.IntRange(min=0), required=True,
                           help="Round number (0 = random init).")(command)
    command = click.option("--arch", help="small, small-gap, alexnet or vgg16.")(command)
    command = click.option("--input-size", type=int)(command)
    command = click.option("--sobel/--no-sobel", default=None)(command)
    return json_option(command)


def round_config(ctx, arch, input_size, sobel, section, **flags):
    config = layered(ctx, "model", arch=arch, input_size=input_size, sobel=sobel)
    return configuration.override(config, section, flags)


@main.command()
@settings_flags("model", "extract")
@round_options
@click.option("--batch-size", type=int)
@click.option("--workers", type=int)
@click.option("--dtype", type=click.Choice(["float16", "float32"]))
@handled(locked=True)
def extract(ctx, r, arch, input_size, sobel, as_json, **flags):
    """Stream the round's shards through model r-1 into rounds/R/features.zarr."""
    config = round_config(ctx, arch, input_size, sobel, "extract", **flags)
    echo_result(ctx, rounds.extract_round(ctx.obj["ws"], r, config, ctx.obj["progress"]),
                as_json, ("rows", "dim", "shards", "seconds", "images_per_s"))


@main.command()
@settings_flags("model", "cluster")
@round_options
@click.option("--k", type=int, help="Number of clusters.")
@click.option("--pca-dim", type=int)
@click.option("--method", type=click.Choice(["kmeans", "pic"]))
@click.option("--niter", type=int)
@click.option("--sample-size", type=int, help="Rows the k-means is fitted on.")
@click.option("--refine-passes", type=int, help="Lloyd passes over every row after fitting on a sample.")
@click.option("--force", is_flag=True, help="Re-cluster a trained round: discards its model, "
              "training record and checkpoint.")
@handled(locked=True)
def cluster(ctx, r, arch, input_size, sobel, force, as_json, **flags):
    """Extract if needed, then cluster round R's features into labels."""
    config = round_config(ctx, arch, input_size, sobel, "cluster", **flags)
    record = rounds.cluster_round(ctx.obj["ws"], r, config, ctx.obj["progress"], force=force)
    echo_result(ctx, record, as_json, ("k", "n_samples", "nmi_true", "nmi_prev", "seconds"))


@main.command()
@settings_flags("model", "train")
@round_options
@click.option("--lr", type=float)
@click.option("--batch-size", type=int)
@click.option("--reassign", type=float, help="Epochs per round.")
@click.option("--crop-min", type=float, help="Smallest random crop, as a share of the image area.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips.")
@click.option("--workers", type=int)
@click.option("--checkpoint-every", type=int)
@handled(locked=True)
def train(ctx, r, arch, input_size, sobel, as_json, **flags):
    """Train model R from model R-1 on round R's labels."""
    config = round_config(ctx, arch, input_size, sobel, "train", **flags)
    echo_result(ctx, rounds.train_round(ctx.obj["ws"], r, config, ctx.obj["progress"]),
                as_json, ("steps", "samples", "final_loss"))


@main.command()
@click.option("--rounds", "n_rounds", type=click.IntRange(min=0), required=True,
              help="Rounds 0..N-1 are made complete (0: only sweep a killed writer's temp files).")
@handled(locked=True)
def run(ctx, n_rounds):
    """Do whatever is missing up to round N-1, then exit (call it from cron)."""
    ws = ctx.obj["ws"]
    log = click.echo if ctx.obj["progress"] and is_rank_zero() else (lambda *_: None)
    done = rounds.run(ws, n_rounds, ws.config(), ctx.obj["progress"], log)
    log(f"{len(done)} step(s) done" if done else f"rounds 0..{n_rounds - 1} were already complete")
    if ctx.obj["progress"] and is_rank_zero():
        click.echo(status.format_text(status.collect(ws)))


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable (keys documented in the README).")
@handled(locked=False)
def show_status(ctx, as_json):
    """Summarise the collection and every round."""
    status.check_workspace(ctx.obj["ws"])
    result = status.collect(ctx.obj["ws"])
    echo_json(result) if as_json else click.echo(status.format_text(result))


@main.command("verify")
@handled(locked=False)
def verify_command(ctx):
    """Check every shard, feature store, label index and model file against its recorded digest."""
    from dcpipe.pipeline.verify import verify

    result = verify(ctx.obj["ws"], ctx.obj["progress"])
    for problem in result.problems:
        click.echo(problem)
    if result.problems:
        fail(f"{len(result.problems)} damaged or missing file(s) (listed above); "
             f"checked {result.summary()}")
    click.echo(f"all good: checked {result.summary()}")


@main.command()
@click.option("--rounds", "n_rounds", type=click.IntRange(min=1), default=6)
@handled(locked=True)
def demo(ctx, n_rounds):
    """The whole pipeline on scikit-learn's digits: data, shards, N rounds, status."""
    from dcpipe.pipeline.demo import prepare_demo
    from dcpipe.stages.shard import shard as run_shard

    ws = ctx.obj["ws"]
    src = prepare_demo(ws)
    config = ws.config()
    run_shard(str(src), ws.shards_dir, config.shard, progress=ctx.obj["progress"])
    rounds.run(ws, n_rounds, config, ctx.obj["progress"], click.echo)
    click.echo(status.format_text(status.collect(ws)))


def _round_model(ws: Workspace, r: int | None):
    """Round r's trained model, or None (the random init) when no round is given."""
    if r is None:
        return None
    path = ws.round(r).model
    if not ws.step_done(r, "train"):
        raise WorkspaceError(f"round {r} has no trained model ({path}): run `dcpipe train --round {r}`")
    return path


@main.command("eval")
@bounded(EVAL_RANGES)
@click.option("--round", "r", type=click.IntRange(min=0),
              help="Round whose model is evaluated (default: random init).")
@click.option("--train", "train_src", required=True, help="Labelled images the probes are fitted on.")
@click.option("--test", "test_src", required=True, help="Held-out labelled images.")
@click.option("--protocols", default=",".join(EvalSettings.protocols), show_default=True,
              help="Comma list of linear, knn, kmeans, retrieval.")
@click.option("--compare-random", is_flag=True, help="Also evaluate the random init, side by side.")
@click.option("--knn-k", type=int, default=EvalSettings.knn_k, show_default=True)
@click.option("--layers", default=EvalSettings.layers, show_default=True,
              help="Linear-probe layers, e.g. conv3,penultimate.")
@click.option("--probe-dims", type=int, default=EvalSettings.probe_dims, show_default=True,
              help="Pooled dims of each conv layer's linear probe (0: the architecture's budget).")
@click.option("--kmeans-pca", type=int, default=EvalSettings.kmeans_pca, show_default=True,
              help="PCA-whiten to this many dims before the k-means (0: plain features).")
@click.option("--kmeans-l2/--no-kmeans-l2", default=EvalSettings.kmeans_l2, show_default=True,
              help="L2-normalise the features before the k-means.")
@click.option("--kmeans-runs", type=int, default=EvalSettings.kmeans_runs, show_default=True,
              help="k-means seeds; the table shows their mean and spread.")
@click.option("--max-train", type=int, default=EvalSettings.max_train, show_default=True)
@click.option("--max-test", type=int, default=EvalSettings.max_test, show_default=True)
@click.option("--sample-seed", type=int, default=EvalSettings.sample_seed, show_default=True,
              help="Seeds subsets and k-means.")
@click.option("--queries", help="Retrieval queries (labelled by instance).")
@click.option("--database", help="Retrieval database (labelled by instance).")
@handled(locked=False)
def evaluate_command(ctx, r, train_src, test_src, compare_random, queries, database, **options):
    """Evaluate a round's features with labels (linear probes, k-NN, k-means, retrieval)."""
    from dcpipe.shards.atomic import atomic_write_json
    from dcpipe.stages.evaluate import stage
    from dcpipe.stages.evaluate.table import format_comparison, format_table

    ws = ctx.obj["ws"]
    config = ws.config()
    settings = EvalSettings(**options, workers=config.extract.workers)
    sets = {"query_src": queries, "database_src": database}
    if compare_random and r is not None:
        saved = stage.compare_random(train_src, test_src, settings, model_path=_round_model(ws, r),
                                     seed=config.seed, progress=ctx.obj["progress"], **sets)
        click.echo(format_comparison(*saved.values()))
    else:
        saved = stage.evaluate(train_src, test_src, config.model, settings,
                               model_path=_round_model(ws, r), seed=config.seed,
                               progress=ctx.obj["progress"], **sets)
        click.echo(format_table(saved))
    if r is not None:
        atomic_write_json(ws.round(r).eval_record, saved)


@main.command("embed")
@click.argument("src")
@click.option("--round", "r", type=click.IntRange(min=0),
              help="Round whose model embeds (default: random init).")
@click.option("-o", "--output", required=True, help="OUT.npy, or a zarr store path.")
@json_option
@handled(locked=False)
def embed_command(ctx, src, r, output, as_json):
    """Write the clustering features of any image set with a round's model."""
    from dcpipe.stages.evaluate.embed import embed

    ws = ctx.obj["ws"]
    config = ws.config()
    record = embed(src, output, config.model, model_path=_round_model(ws, r), seed=config.seed,
                   workers=config.extract.workers, progress=ctx.obj["progress"])
    echo_result(ctx, record, as_json, ("path", "rows", "dim", "failed"))


@main.command("report")
@click.option("-o", "--output", default=None, help="Folder for index.html and PNGs (default WS/report).")
@click.option("--rounds", "round_list", help="Comma list of rounds (default: all).")
@handled(locked=False)
def report_command(ctx, output, round_list):
    """One self-contained HTML page of the rounds, with its PNG plots."""
    from dcpipe.pipeline.report.page import report

    ws = ctx.obj["ws"]
    chosen = [int(x) for x in round_list.split(",")] if round_list else None
    path = report(ws, output or ws.report_dir, rounds=chosen, random_seed=ws.config().seed,
                  progress=ctx.obj["progress"])
    if ctx.obj["progress"]:
        click.echo(f"wrote {path}")
