"""Render the Hera definitions into the manifests checked in under argo/.

The manifests are built through Hera's models (so they are what Hera would submit), then
dumped as YAML with a stable, readable key order: the UI and code review both read them.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import Workflow, WorkflowTemplate

from . import dag, yamltext

HEADER = (
    "# Rendered by `shardflow render --write` from workflows/dag.py: do not edit by hand.\n"
    "# A test keeps this file in sync with the code and valid against Argo's schema.\n"
)
FILES = {"workflowtemplate.yaml": WorkflowTemplate, "workflow.yaml": Workflow}

# Keys shown first, in this order, wherever they appear; the rest follow alphabetically, with
# the long lists last (templates, tasks) so a reader meets the parameters before the plumbing.
_FIRST = (
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "generateName",
    "template",
    "depends",
    "value",
    "enum",
    "description",
    "entrypoint",
    "arguments",
    "annotations",
    "inputs",
    "outputs",
    "image",
    "command",
    "args",
)
_LAST = ("spec", "dag", "container", "templates", "tasks")


def model(kind: type[Workflow], settings: dag.RenderSettings | None = None) -> Any:
    """Hera's model of one manifest (what WorkflowsService submits)."""
    return with_display_names(
        dag.build(kind, settings or dag.RenderSettings()).build(), dag.DISPLAY_NAMES
    )


def with_display_names(built: Any, names: dict[str, str]) -> Any:
    """Template-level display names (Argo >= 3.7), by template name, on a built model: Hera
    7.1's Container sets only pod annotations (dag.DISPLAY_NAMES says what lint checks)."""
    for template in built.spec.templates or []:
        display_name = names.get(template.name or "")
        if display_name:
            template.annotations = {"workflows.argoproj.io/display-name": display_name}
    return built


def to_dict(built: Any) -> dict:
    """A Hera model as the plain dict written to argo/, keys in reading order."""
    return _ordered(built.model_dump(by_alias=True, exclude_none=True))


def manifest(kind: type[Workflow], settings: dag.RenderSettings | None = None) -> dict:
    """One manifest as a plain dict, exactly as it is written to argo/."""
    return to_dict(model(kind, settings))


def workflow_manifest(settings: dag.RenderSettings | None = None) -> dict:
    return manifest(Workflow, settings)


def to_yaml(document: dict) -> str:
    return yamltext.dump(document)


def render_all(settings: dag.RenderSettings | None = None) -> dict[str, str]:
    """File name -> YAML text, for every manifest `shardflow render` writes in argo/: the
    augment WorkflowTemplate and Workflow, and the index and reshard WorkflowTemplates (they
    share the augment DAG's pod settings, so they go stale with them)."""
    from . import index_dag, reshard_dag  # they build on this module

    texts = {name: HEADER + to_yaml(manifest(kind, settings)) for name, kind in FILES.items()}
    texts[index_dag.FILE] = index_dag.render_index(settings)
    texts[reshard_dag.FILE] = reshard_dag.HEADER + to_yaml(reshard_dag.manifest(settings))
    return texts


def _key(item: tuple[str, Any]) -> tuple[int, int, str]:
    key = item[0]
    if key in _FIRST:
        return (0, _FIRST.index(key), key)
    if key in _LAST:
        return (2, _LAST.index(key), key)
    return (1, 0, key)


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _ordered(inner) for key, inner in sorted(value.items(), key=_key)}
    if isinstance(value, list):
        return [_ordered(inner) for inner in value]
    return value
