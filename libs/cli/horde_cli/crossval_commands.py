"""`horde s3 ...` and `horde crossval ...`: the cross-validation buckets and the state of the
prompt pipeline (docs/crossval.md). Registered by `horde_cli.main`; imports only typer, each command
loads what it needs in its body."""

from __future__ import annotations

from typing import Annotated

import typer

from horde_cli.terminal import HELP_STYLE
from horde_cli.terminal import console as _console
from horde_cli.terminal import err as _err
from horde_cli.terminal import settings as _settings

s3_app = typer.Typer(help="The two cross-validation S3 buckets: provision, check.", **HELP_STYLE)
crossval_app = typer.Typer(help="LLM cross-validation: prompt series, workloads, samples.", **HELP_STYLE)


@crossval_app.command("status")
def crossval_status(
    json_output: Annotated[bool, typer.Option("--json", help="JSON on stdout")] = False,
) -> None:
    """Counts of series, workloads and samples (ready, used, taken, unanswered); the last trusted-miner job."""
    from horde_cli.crossval import CrossvalError, print_status

    try:
        print_status(_console(), _settings().database_url, json_output)
    except CrossvalError as exc:
        _err().print(str(exc), style="red", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


@s3_app.command("provision")
def s3_provision(
    prompts_bucket: Annotated[str, typer.Argument(help="bucket of prompt series")],
    answers_bucket: Annotated[str, typer.Argument(help="bucket of workloads and answers")],
    create_user: Annotated[
        bool, typer.Option("--create-user", help="also an IAM user limited to the two buckets, and its key")
    ] = False,
    region: Annotated[str | None, typer.Option(help="default: AWS_DEFAULT_REGION, else us-east-1")] = None,
    user_name: Annotated[str, typer.Option(help="the IAM user of --create-user")] = "horde-validator",
) -> None:
    """Create both buckets (public read) with the AWS_* credentials; print the .env lines."""
    # docs/crossval.md §5
    from horde_cli.s3 import DEFAULT_REGION, ProvisionError, print_provisioned, provision

    settings = _settings()
    where = region or settings.AWS_DEFAULT_REGION or DEFAULT_REGION
    try:
        done = provision(
            settings, prompts_bucket, answers_bucket, where, create_user=create_user, user_name=user_name
        )
    except ProvisionError as exc:
        _err().print(f"[red]provisioning failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    print_provisioned(_console(), done)


@s3_app.command("check")
def s3_check() -> None:
    """Presigned upload, public and presigned download in both buckets; exit 1 if any fails."""
    # docs/crossval.md §6
    import asyncio

    from horde_cli.s3 import check, check_table
    from horde_common.s3 import endpoint_url

    settings = _settings()
    rows = asyncio.run(check(settings))
    _console().print(check_table(rows, endpoint_url(settings)))
    if not all(row.ok for row in rows):
        raise typer.Exit(1)
