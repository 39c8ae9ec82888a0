"""template.yaml as Python data: CloudFormation's short forms (`!Ref X`, `!Sub s`, `!GetAtt A.B` …) read as their
long forms, for the tests that render the stack (the edge stand-in, the IAM check)."""

from __future__ import annotations

from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (`!Ref X` -> {"Ref": X}, `!Sub s` -> {"Fn::Sub": s}, ...)."""


def _cfn_tag(loader: _CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {("Condition" if suffix == "Condition" else f"Fn::{suffix}"): value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
