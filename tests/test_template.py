"""Checks of the deployment template `layer/template.yaml` and of the layer zips
it deploys:

* cfn-lint (informational findings included) and checkov find nothing; every
  checkov skip in the template carries a written reason;
* the SAM resources transform (aws-sam-translator, as CloudFormation does at
  deploy time) into valid CloudFormation;
* the IAM managed policy allows exactly the Kinesis actions the extension calls
  (the X-Amz-Target values in src/), on the stream's ARN only, plus
  kms:GenerateDataKey on a customer key only when one is used;
* the demo function is wired (policy attached, stream variable, log group);
  every taggable resource is tagged; outputs and SSM parameters name everything;
* each layer zip holds exactly one static executable for its architecture.

The linters live in .deps/lint-venv (tests/install_deps.sh; see
tests/requirements-lint.txt). Without it the linter tests are skipped, under
CI (CI=true) they fail.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

TEMPLATE = ROOT / "layer" / "template.yaml"
LINT_VENV = ROOT / ".deps" / "lint-venv"
NAME = "kinesis-telemetry-extension"
LAYERS = {  # architecture -> (zip, staged binary, ELF e_machine)
    "x86_64": (ROOT / "layer" / f"{NAME}-x86_64.zip", ROOT / "layer" / "extensions" / NAME, 62),
    "arm64": (ROOT / "layer" / f"{NAME}-arm64.zip", ROOT / "layer" / "arm64" / "extensions" / NAME, 183),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    if in_ci():
        pytest.fail(reason + " (CI=true: this must not be skipped)")
    pytest.skip(reason)


def lint_tool(name: str) -> str:
    path = LINT_VENV / "bin" / name
    if not os.access(path, os.X_OK):
        missing(f"{path} not installed: run tests/install_deps.sh (or ./build.sh test)")
    return str(path)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


# ---------------------------------------------------------------- template as data
class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (!Ref, !GetAtt, !If, ...) turned
    into their long form ({"Ref": ...}, {"Fn::GetAtt": [...]}, ...)."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def tpl() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resources_of(tpl: dict, rtype: str) -> dict:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == rtype}


def one(tpl: dict, rtype: str) -> tuple[str, dict]:
    found = resources_of(tpl, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
    return next(iter(found.items()))


NO_VALUE = {"Ref": "AWS::NoValue"}


def statements(doc: dict) -> list[tuple[str | None, dict]]:
    """(CloudFormation condition or None, statement) for every statement, both
    branches of an Fn::If (negated condition written as '!Cond')."""
    out = []
    for st in doc["Statement"]:
        if "Fn::If" in st:
            cond, yes, no = st["Fn::If"]
            for c, branch in ((cond, yes), ("!" + cond, no)):
                if branch != NO_VALUE:
                    out.append((c, branch))
        else:
            out.append((None, st))
    return out


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def extension_actions() -> set[str]:
    """IAM actions of the Kinesis API calls the extension makes: the X-Amz-Target
    values in its source (Kinesis_20131202.PutRecords -> kinesis:PutRecords)."""
    found = set()
    for path in sorted((ROOT / "src").glob("**/*.rs")):
        found |= set(re.findall(r"Kinesis_20131202\.(\w+)", path.read_text(encoding="utf-8")))
    assert found, "no Kinesis_20131202.* target found in src/*.rs"
    return {f"kinesis:{op}" for op in found}


# ---------------------------------------------------------------- linters
def test_cfn_lint_finds_nothing():
    cfn_lint = lint_tool("cfn-lint")
    # Regions come from the template's Metadata (cfn-lint: config: regions).
    r = run([cfn_lint, "--include-checks", "I", "--format", "parseable", "--", str(TEMPLATE)])
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_checkov_finds_nothing_and_every_skip_has_a_reason():
    checkov = lint_tool("checkov")
    r = run([checkov, "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download",
             "--output", "json"])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads(r.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary
    # Every resource parsed; the checks that matter for this template ran and passed.
    assert summary["resource_count"] == len(yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)["Resources"])
    passed = {c["check_id"] for c in report["results"]["passed_checks"]}
    assert {"CKV_AWS_43", "CKV_AWS_111", "CKV_AWS_63", "CKV_AWS_66"} <= passed, sorted(passed)
    for c in report["results"]["skipped_checks"]:
        reason = (c["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 20, f"{c['check_id']} on {c['resource']} is skipped without a reason"


TRANSFORM = r"""
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:  # the template names no SAM policy templates
    def load(self):
        return {}

tpl = yaml_parse(open(sys.argv[1]).read())
# What `aws cloudformation package` does: upload the zips, point ContentUri at S3.
for res in tpl["Resources"].values():
    if res["Type"] == "AWS::Serverless::LayerVersion":
        res["Properties"]["ContentUri"] = "s3://example-bucket/" + res["Properties"]["ContentUri"]
json.dump(transform(tpl, {}, NoManagedPolicies()), sys.stdout, indent=1)
"""


@pytest.fixture(scope="module")
def transformed(tmp_path_factory) -> Path:
    python = lint_tool("python")
    out = tmp_path_factory.mktemp("sam") / "transformed.json"
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    r = run([python, "-c", TRANSFORM, str(TEMPLATE)], env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    out.write_text(r.stdout)
    return out


def test_sam_transform_gives_valid_cloudformation_layers(transformed):
    cfn = json.loads(transformed.read_text())
    assert "Transform" not in cfn
    layers = resources_of(cfn, "AWS::Lambda::LayerVersion")
    archs = {}
    for res in layers.values():
        p = res["Properties"]
        assert "CompatibleRuntimes" not in p  # every runtime, OS-only ones included
        assert set(p["Content"]) == {"S3Bucket", "S3Key"}
        assert res.get("DeletionPolicy") == "Delete"
        (arch,) = p["CompatibleArchitectures"]
        archs[arch] = p["Content"]["S3Key"]
    assert archs == {"x86_64": f"{NAME}-x86_64.zip", "arm64": f"{NAME}-arm64.zip"}
    # The transformed template is plain CloudFormation that cfn-lint accepts. (SAM
    # resolves the layer names at transform time, which leaves LayerName unused
    # (W2001) and a Fn::Sub without variables (W1020): artefacts of the transform.)
    cfn_lint = lint_tool("cfn-lint")
    r = run([cfn_lint, "--format", "parseable", "--ignore-checks", "W2001", "W1020", "--",
             str(transformed)])
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def test_every_taggable_resource_is_tagged(transformed):
    """Taggable per the CloudFormation resource schemas that cfn-lint ships."""
    cfn = json.loads(transformed.read_text())
    types = sorted({r["Type"] for r in cfn["Resources"].values()})
    probe = (
        "import json, sys\n"
        "from cfnlint.schema import PROVIDER_SCHEMA_MANAGER as m\n"
        "out = {t: bool(m.get_resource_schema('us-east-1', t).schema.get('tagging', {}).get('taggable'))\n"
        "       for t in sys.argv[1:]}\n"
        "print(json.dumps(out))\n"
    )
    r = run([lint_tool("python"), "-c", probe, *types])
    assert r.returncode == 0, r.stderr[-4000:]
    taggable = json.loads(r.stdout)
    assert taggable["AWS::Kinesis::Stream"] and taggable["AWS::Lambda::Function"]
    for name, res in cfn["Resources"].items():
        if not taggable[res["Type"]]:
            continue
        tags = res["Properties"].get("Tags")
        as_dict = tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags or []}
        assert as_dict.get("Project") == NAME, f"{name} ({res['Type']}) is not tagged: {tags!r}"


# ---------------------------------------------------------------- policy
def test_policy_allows_exactly_the_actions_the_extension_performs(tpl):
    stream_id, _ = one(tpl, "AWS::Kinesis::Stream")
    _, policy = one(tpl, "AWS::IAM::ManagedPolicy")
    stream_arn = {"Fn::GetAtt": [stream_id, "Arn"]}
    kinesis_actions = set()
    kms = []
    for cond, st in statements(policy["Properties"]["PolicyDocument"]):
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st, st
        actions = as_list(st["Action"])
        assert all("*" not in a for a in actions), st
        assert {a.split(":")[0] for a in actions} <= {"kinesis", "kms"}, st
        if any(a.startswith("kinesis:") for a in actions):
            assert all(a.startswith("kinesis:") for a in actions), st
            assert cond is None, "the Kinesis permission must not depend on a condition"
            kinesis_actions |= set(actions)
            # the one stream's ARN, nothing wider
            assert as_list(st["Resource"]) == [stream_arn], st["Resource"]
        else:
            kms.append((cond, st))
    assert kinesis_actions == extension_actions()

    # kms:GenerateDataKey on the customer key only, and only when one is used.
    assert len(kms) == 1, kms
    cond, st = kms[0]
    assert as_list(st["Action"]) == ["kms:GenerateDataKey"]
    assert as_list(st["Resource"]) == [{"Ref": "KmsKeyArn"}]
    assert tpl["Conditions"][cond] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]}
    assert st["Condition"]["StringEquals"]["kms:EncryptionContext:aws:kinesis:arn"] == stream_arn
    # ...and the stream really is encrypted with that key then, with alias/aws/kinesis otherwise.
    enc = tpl["Resources"][stream_id]["Properties"]["StreamEncryption"]
    assert enc["EncryptionType"] == "KMS"
    assert enc["KeyId"] == {"Fn::If": [cond, {"Ref": "KmsKeyArn"}, "alias/aws/kinesis"]}


def test_the_optional_writer_role_trusts_only_the_named_principal_and_writes_as_the_policy(tpl):
    """docs/cross-account.md: a role another account's functions assume
    (KINESIS_TELEMETRY_ROLE_ARN), made only when WriterPrincipalArn is set, trusting
    that principal (with the external id when one is set) and allowed exactly what
    the extension's policy allows."""
    policy_id, _ = one(tpl, "AWS::IAM::ManagedPolicy")
    roles = {k: v for k, v in resources_of(tpl, "AWS::IAM::Role").items()
             if v.get("Condition") == "HasWriter"}
    assert list(roles) == ["WriterRole"], roles
    p = roles["WriterRole"]["Properties"]
    assert tpl["Conditions"]["HasWriter"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "WriterPrincipalArn"}, ""]}]}
    (trust,) = p["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Ref": "WriterPrincipalArn"}}
    assert trust["Action"] == "sts:AssumeRole" and trust["Effect"] == "Allow"
    cond, with_id, without = trust["Condition"]["Fn::If"]
    assert cond == "HasWriterExternalId" and without == NO_VALUE
    assert with_id == {"StringEquals": {"sts:ExternalId": {"Ref": "WriterExternalId"}}}
    assert p["ManagedPolicyArns"] == [{"Ref": policy_id}] and "Policies" not in p
    # The extension asks for 1 hour: the role must allow at least that.
    assert p.get("MaxSessionDuration", 3600) >= 3600
    assert tpl["Outputs"]["WriterRoleArn"]["Value"] == {"Fn::GetAtt": ["WriterRole", "Arn"]}


def test_stream_defaults_on_demand_with_provisioned_option(tpl):
    _, stream = one(tpl, "AWS::Kinesis::Stream")
    p, params = stream["Properties"], tpl["Parameters"]
    assert params["StreamMode"]["Default"] == "ON_DEMAND"
    assert set(params["StreamMode"]["AllowedValues"]) == {"ON_DEMAND", "PROVISIONED"}
    assert p["StreamModeDetails"]["StreamMode"] == {"Ref": "StreamMode"}
    (cond, shards, novalue) = p["ShardCount"]["Fn::If"]
    assert shards == {"Ref": "ShardCount"} and novalue == NO_VALUE
    assert tpl["Conditions"][cond] == {"Fn::Equals": [{"Ref": "StreamMode"}, "PROVISIONED"]}
    assert p["RetentionPeriodHours"] == {"Ref": "RetentionHours"}
    assert params["KmsKeyArn"]["Default"] == ""


def test_demo_function_is_wired(tpl):
    stream_id, _ = one(tpl, "AWS::Kinesis::Stream")
    policy_id, _ = one(tpl, "AWS::IAM::ManagedPolicy")
    _, fn = one(tpl, "AWS::Lambda::Function")
    p = fn["Properties"]
    role_id = p["Role"]["Fn::GetAtt"][0]
    role = tpl["Resources"][role_id]
    # The policy is attached to the function's role (the original system forgot this).
    assert {"Ref": policy_id} in role["Properties"]["ManagedPolicyArns"]
    env = p["Environment"]["Variables"]
    assert env["KINESIS_TELEMETRY_STREAM"] == {"Ref": stream_id}
    assert all(k.startswith("KINESIS_TELEMETRY_") for k in env)
    # layer of the function's architecture
    layers = {k for k, v in tpl["Resources"].items() if v["Type"] == "AWS::Serverless::LayerVersion"}
    (cond, arm, x86) = p["Layers"][0]["Fn::If"]
    assert p["Architectures"] == [{"Ref": "DemoArchitecture"}]
    assert tpl["Conditions"][cond] == {"Fn::Equals": [{"Ref": "DemoArchitecture"}, "arm64"]}
    assert {arm["Ref"], x86["Ref"]} == layers
    assert tpl["Resources"][arm["Ref"]]["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert tpl["Resources"][x86["Ref"]]["Properties"]["CompatibleArchitectures"] == ["x86_64"]
    # JSON or text logs into a log group of its own, kept one day
    log_id, log_group = one(tpl, "AWS::Logs::LogGroup")
    assert log_group["Properties"]["RetentionInDays"] == 1
    assert p["LoggingConfig"]["LogGroup"] == {"Ref": log_id}
    assert set(tpl["Parameters"]["DemoLogFormat"]["AllowedValues"]) == {"JSON", "Text"}
    assert p["LoggingConfig"]["LogFormat"] == {"Ref": "DemoLogFormat"}


def readme_variables() -> dict[str, tuple[str, str]]:
    """The configuration table (docs/configuration.md): variable -> (default column, range column)."""
    rows = {}
    for line in (ROOT / "docs/configuration.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(KINESIS_TELEMETRY_\w+)`\s*\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return rows


def test_demo_settings_match_the_readme(tpl):
    """Each extension setting the template exposes as a parameter has the
    extension's default and, where the configuration table lists the choices, exactly those."""
    _, fn = one(tpl, "AWS::Lambda::Function")
    readme = readme_variables()
    exposed = 0
    for var, value in fn["Properties"]["Environment"]["Variables"].items():
        assert var in readme, f"{var} is not in the configuration table (docs/configuration.md)"
        if not (isinstance(value, dict) and value.get("Ref") in tpl["Parameters"]):
            continue
        param = tpl["Parameters"][value["Ref"]]
        exposed += 1
        default_col, range_col = readme[var]
        assert f"`{param['Default']}`" == default_col, (var, param["Default"], default_col)
        if "AllowedValues" in param:
            assert set(re.findall(r"`([^`]+)`", range_col)) == set(param["AllowedValues"]), (var, range_col)
    assert exposed >= 3


def test_layers_fit_every_runtime_and_name_the_built_zips(tpl):
    layers = resources_of(tpl, "AWS::Serverless::LayerVersion")
    uris = {}
    for res in layers.values():
        p = res["Properties"]
        assert "CompatibleRuntimes" not in p
        (arch,) = p["CompatibleArchitectures"]
        uris[arch] = p["ContentUri"]
    assert uris == {arch: zip_.name for arch, (zip_, _, _) in LAYERS.items()}


def test_outputs_and_ssm_parameters_name_everything(tpl):
    outputs = tpl["Outputs"]
    stream_id, _ = one(tpl, "AWS::Kinesis::Stream")
    policy_id, _ = one(tpl, "AWS::IAM::ManagedPolicy")
    layer_ids = set(resources_of(tpl, "AWS::Serverless::LayerVersion"))
    values = [o["Value"] for o in outputs.values()]
    for needed in [{"Ref": stream_id}, {"Fn::GetAtt": [stream_id, "Arn"]}, {"Ref": policy_id},
                   *({"Ref": lid} for lid in layer_ids)]:
        assert needed in values, f"no output gives {needed}"
    params = resources_of(tpl, "AWS::SSM::Parameter")
    assert {json.dumps(p["Properties"]["Value"], sort_keys=True) for p in params.values()} == {
        json.dumps(v, sort_keys=True)
        for v in [{"Ref": stream_id}, {"Fn::GetAtt": [stream_id, "Arn"]}, {"Ref": policy_id},
                  *({"Ref": lid} for lid in layer_ids)]
    }
    for pid, p in params.items():
        assert p["Properties"]["Name"]["Fn::Sub"].startswith("${SsmPrefix}/"), pid
        assert {"Ref": pid} in values, f"no output names SSM parameter {pid}"


# ---------------------------------------------------------------- layer zips
def elf_facts(data: bytes) -> tuple[int, set[int]]:
    """(e_machine, program header types) of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit LE ELF file"
    (machine,) = struct.unpack_from("<H", data, 18)
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    kinds = {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    return machine, kinds


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_layer_zip_holds_one_static_executable(arch):
    zip_path, staged, machine = LAYERS[arch]
    if not zip_path.exists():
        missing(f"{zip_path} not built: run ./build.sh")
    with zipfile.ZipFile(zip_path) as z:
        infos = z.infolist()
        assert [i.filename for i in infos] == [f"extensions/{NAME}"]
        mode = infos[0].external_attr >> 16
        assert mode & 0o170000 == 0o100000 and mode & 0o777 == 0o755, oct(mode)
        data = z.read(infos[0])
    e_machine, kinds = elf_facts(data)
    assert e_machine == machine
    assert not kinds & {2, 3}, "PT_DYNAMIC / PT_INTERP: not a static executable"
    assert staged.read_bytes() == data  # the zip holds the staged binary
