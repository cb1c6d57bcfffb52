"""`shardflow submit INPUTS OUTPUTS`: submit the DAG to an Argo server through Hera.

Connection settings follow the argo CLI's environment variables, so a shell already set up for
`argo submit` works unchanged: ARGO_SERVER (host:port), ARGO_TOKEN, ARGO_NAMESPACE,
ARGO_SECURE, ARGO_INSECURE_SKIP_VERIFY, ARGO_BASE_HREF.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from shardflow.steps import storage
from shardflow.steps.cli_common import add_command, positive_int
from shardflow.steps.errors import EXIT_OK, ShardflowError, UsageError
from shardflow.steps.output_names import OutputNames
from shardflow.steps.recipe import portable_recipe

from .dag_arguments import (
    add_dag_arguments,
    given_parameters,
    patterns_named_for,
    resolve_parameters,
)
from .plan import plan_tasks

DESCRIPTION = """\
Submit the shardflow DAG to Argo Workflows: the whole Workflow (as argo/workflow.yaml), or with
--from-template a Workflow that references the installed WorkflowTemplate (--from-template
shardflow-reshard: the reshard template, its options as -p NAME=VALUE). The patterns are
planned here first, so a typo fails before anything reaches the cluster; a recipe given as a
local file is sent inline, since pods cannot read this machine's disk.

Connection (as the argo CLI): ARGO_SERVER=host:port, ARGO_TOKEN (with or without "Bearer "),
ARGO_NAMESPACE (default: default), ARGO_SECURE=false for plain HTTP,
ARGO_INSECURE_SKIP_VERIFY=true to accept any TLS certificate, ARGO_BASE_HREF.

exit status: 0 submitted (or printed), 1 the server refused or could not be reached, 2 usage
error."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "submit",
        DESCRIPTION,
        "submit the DAG to an Argo server (ARGO_SERVER, ARGO_TOKEN, ...)",
    )
    add_dag_arguments(parser, recipe_note=" A local file is sent inline.")
    parser.add_argument(
        "--from-template",
        nargs="?",
        const="shardflow-augment",
        metavar="NAME",
        help="reference the installed WorkflowTemplate (default name: shardflow-augment)",
    )
    parser.add_argument(
        "--parallelism",
        type=positive_int,
        help="pods running at once (not with --from-template: the installed template's applies)",
    )
    parser.add_argument("--namespace", "-n", help="namespace (default: $ARGO_NAMESPACE)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the Workflow as YAML instead of submitting"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hera.workflows import Workflow

    from . import dag, render, reshard_dag

    if args.from_template and args.parallelism:
        # Argo refuses to override parallelism over a workflowTemplateRef under the
        # controller's templateReferencing: Strict/Secure (merge.go allowedUserOverrideFields).
        raise UsageError(
            "--parallelism cannot change an installed template's: render it with "
            "`shardflow render --parallelism N` and install that, or submit without "
            "--from-template"
        )
    given = _given_parameters(args)
    if args.from_template == reshard_dag.NAME:
        return _submit_reshard(args, given)
    template = render.manifest(Workflow)
    values = resolve_parameters(template, given)
    plan = plan_tasks(
        values["input"], values["output"], values["shards-per-task"], check_urls=False
    )
    print(f"plan: {plan.describe()}", file=sys.stderr)
    if args.from_template:
        model = _template_reference(args.from_template, given)
    else:
        settings = dag.RenderSettings(parallelism=args.parallelism or dag.DEFAULT_PARALLELISM)
        model = render.model(Workflow, settings)
        for parameter in model.spec.arguments.parameters:
            parameter.value = values[parameter.name]
    if args.dry_run:
        sys.stdout.write(render.to_yaml(render.to_dict(model)))
        return EXIT_OK
    return _submit(model, args.namespace)


def _submit_reshard(args: argparse.Namespace, given: dict[str, str]) -> int:
    """A Workflow referencing the installed shardflow-reshard template: its parameters checked
    against the template (names, enums), the patterns expanded here first."""
    from . import render, reshard_dag

    template = reshard_dag.manifest()
    given = patterns_named_for(template, given)
    values = resolve_parameters(template, given)
    inputs = storage.expand(values["inputs"])
    OutputNames(values["outputs"])  # a malformed pattern is refused here, not in a pod
    print(f"reshard: {len(inputs)} input shard(s)", file=sys.stderr)
    model = _template_reference(reshard_dag.NAME, given, prefix=reshard_dag.NAME)
    if args.dry_run:
        sys.stdout.write(render.to_yaml(render.to_dict(model)))
        return EXIT_OK
    return _submit(model, args.namespace)


def _given_parameters(args: argparse.Namespace) -> dict[str, str]:
    given = given_parameters(args)
    if "recipe" in given:
        given["recipe"] = portable_recipe(given["recipe"])
    return given


def _template_reference(name: str, given: dict[str, str], prefix: str | None = None) -> Any:
    from hera.workflows import models

    from .dag import NAME

    return models.Workflow(
        api_version="argoproj.io/v1alpha1",
        kind="Workflow",
        metadata=models.ObjectMeta(generate_name=f"{prefix or NAME}-"),
        spec=models.WorkflowSpec(
            workflow_template_ref=models.WorkflowTemplateRef(name=name),
            arguments=models.Arguments(
                parameters=[models.Parameter(name=k, value=v) for k, v in given.items()]
            ),
        ),
    )


def _submit(model: Any, namespace: str | None) -> int:
    from hera.exceptions import HeraException
    from hera.workflows import WorkflowsService
    from hera.workflows.models import WorkflowCreateRequest
    from requests import RequestException

    host, verify_ssl = _server()
    namespace = namespace or os.environ.get("ARGO_NAMESPACE") or "default"
    service = WorkflowsService(
        host=host,
        token=os.environ.get("ARGO_TOKEN") or None,
        namespace=namespace,
        verify_ssl=verify_ssl,
    )
    try:
        created = service.create_workflow(WorkflowCreateRequest(workflow=model), namespace)
    except HeraException as exc:
        raise ShardflowError(f"the Argo server at {host} refused the workflow: {exc}") from None
    except RequestException as exc:
        raise ShardflowError(f"cannot reach the Argo server at {host}: {exc}") from None
    name = created.metadata.name or ""  # the server always names what it creates
    print(f"submitted {name} to namespace {namespace}")
    print(service.get_workflow_link(name))
    return EXIT_OK


def _server() -> tuple[str, bool]:
    """The server's base URL and whether to verify TLS, from the argo CLI's variables."""
    server = os.environ.get("ARGO_SERVER", "").strip()
    if not server:
        raise UsageError(
            "set ARGO_SERVER to the Argo server's host:port (and ARGO_TOKEN, ARGO_NAMESPACE), "
            "or use --dry-run"
        )
    if "://" not in server:
        secure = os.environ.get("ARGO_SECURE", "true").lower() != "false"
        server = ("https://" if secure else "http://") + server
    base = os.environ.get("ARGO_BASE_HREF", "").strip("/")
    host = server.rstrip("/") + "/" + (base + "/" if base else "")
    insecure = os.environ.get("ARGO_INSECURE_SKIP_VERIFY", "false").lower() == "true"
    return host, not insecure
