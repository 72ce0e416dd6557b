"""`viewfinder tags define|list|show` and `viewfinder up|down`."""

from __future__ import annotations

import json
from pathlib import Path

from viewfinder.v1 import labeling_pb2
from viewfinder_cli.errors import ExitCode
from viewfinder_cli.testing import FakeServices, InvokeCli

DEFINITION_YAML = """\
name: road-scenes
guide_prompt: As an experienced driver, look at this road scene.
groups:
  - {name: weather, selection_mode: single}
tags:
  - {name: sunny, description: clear sky, group: weather}
  - {name: lane line, allowed_values: [left, right]}
"""

EXPECTED_DEFINITION = labeling_pb2.CreateTagDefinitionRequest(
    name="road-scenes",
    guide_prompt="As an experienced driver, look at this road scene.",
    groups=[labeling_pb2.TagGroup(name="weather", selection_mode=labeling_pb2.SELECTION_MODE_SINGLE)],
    tags=[
        labeling_pb2.TagSpec(name="sunny", description="clear sky", group="weather"),
        labeling_pb2.TagSpec(name="lane line", allowed_values=["left", "right"]),
    ],
)


async def test_define_creates_the_definition_from_yaml(
    services: FakeServices, cli: InvokeCli, tmp_path: Path
) -> None:
    path = tmp_path / "road.yaml"
    path.write_text(DEFINITION_YAML)
    created = labeling_pb2.TagDefinition(
        id="def-1", name="road-scenes", version=1, tags=EXPECTED_DEFINITION.tags
    )
    services.tagger.on(
        "CreateTagDefinition", labeling_pb2.CreateTagDefinitionResponse(tag_definition=created)
    )

    result = await cli("tags", "define", str(path))

    assert result.exit_code == 0, result.output
    assert services.tagger.requests("CreateTagDefinition") == [EXPECTED_DEFINITION]
    assert "defined road-scenes v1 (def-1) with 2 tag(s)" in result.stdout


async def test_define_from_json_as_a_new_version(
    services: FakeServices, cli: InvokeCli, tmp_path: Path
) -> None:
    path = tmp_path / "road.json"
    path.write_text(json.dumps({"name": "ignored", "guide_prompt": "Look.", "tags": [{"name": "sunny"}]}))
    services.tagger.on(
        "GetTagDefinition",
        labeling_pb2.GetTagDefinitionResponse(
            tag_definition=labeling_pb2.TagDefinition(id="def-1", version=1)
        ),
    )
    services.tagger.on(
        "CreateTagDefinitionVersion",
        labeling_pb2.CreateTagDefinitionVersionResponse(
            tag_definition=labeling_pb2.TagDefinition(id="def-1", name="road-scenes", version=2)
        ),
    )

    result = await cli("tags", "define", str(path), "--name=road-scenes", "--new-version", "--json")

    assert result.exit_code == 0, result.output
    assert services.tagger.requests("GetTagDefinition") == [
        labeling_pb2.GetTagDefinitionRequest(name="road-scenes")
    ]
    assert services.tagger.requests("CreateTagDefinitionVersion") == [
        labeling_pb2.CreateTagDefinitionVersionRequest(
            tag_definition_id="def-1", guide_prompt="Look.", tags=[labeling_pb2.TagSpec(name="sunny")]
        )
    ]
    assert json.loads(result.stdout)["version"] == 2


async def test_a_bad_definition_file_is_refused_before_any_call(
    services: FakeServices, cli: InvokeCli, tmp_path: Path
) -> None:
    path = tmp_path / "road.yaml"
    path.write_text("name: x\ntags:\n  - name: a\n    colour: red\n")

    typo = await cli("tags", "define", str(path))
    missing = await cli("tags", "define", str(tmp_path / "nope.yaml"))

    assert typo.exit_code == ExitCode.USAGE
    assert typo.stderr.startswith(f"error: {path}: ")
    assert "colour" in typo.stderr
    assert missing.exit_code == ExitCode.USAGE
    assert services.tagger.calls == []


async def test_list_and_show_definitions(services: FakeServices, cli: InvokeCli) -> None:
    definition = labeling_pb2.TagDefinition(
        id="def-1",
        name="road-scenes",
        version=3,
        guide_prompt="Look at the road.",
        tags=[
            labeling_pb2.TagSpec(
                name="lane line", description="painted lines", allowed_values=["left", "right"]
            )
        ],
    )
    services.tagger.on(
        "ListTagDefinitions", labeling_pb2.ListTagDefinitionsResponse(tag_definitions=[definition])
    )
    services.tagger.on("GetTagDefinition", labeling_pb2.GetTagDefinitionResponse(tag_definition=definition))

    listed = await cli("tags", "list")
    shown = await cli("tags", "show", "road-scenes", "--version=3")

    assert listed.exit_code == 0, listed.output
    assert "1 tag definition(s)" in listed.stdout
    assert "road-scenes" in listed.stdout
    assert shown.exit_code == 0, shown.output
    assert services.tagger.requests("GetTagDefinition") == [
        labeling_pb2.GetTagDefinitionRequest(name="road-scenes", version=3)
    ]
    assert "tag definition road-scenes v3 (def-1)" in shown.stdout
    assert "left, right" in shown.stdout


FAKE_STACK = """\
import sys
from pathlib import Path

Path(__file__).with_name("calls.txt").open("a").write(" ".join(sys.argv[1:]) + "\\n")
sys.exit(3 if "--purge" in sys.argv else 0)
"""


async def test_up_and_down_run_the_checkouts_stack_script(cli: InvokeCli, tmp_path: Path) -> None:
    script = tmp_path / "deploy" / "local" / "stack.py"
    script.parent.mkdir(parents=True)
    script.write_text(FAKE_STACK)

    up = await cli("up", f"--repo={tmp_path}")
    down = await cli("down", root=[], env={"VIEWFINDER_CLI_REPO": str(tmp_path)})
    purge = await cli("down", "--purge", f"--repo={tmp_path}")

    assert up.exit_code == 0, up.output
    assert down.exit_code == 0, down.output
    # The script's own exit code is passed on.
    assert purge.exit_code == 3
    assert (script.parent / "calls.txt").read_text().splitlines() == ["up", "down", "down --purge"]


async def test_up_outside_a_checkout_explains(cli: InvokeCli, tmp_path: Path) -> None:
    result = await cli("up", f"--repo={tmp_path}")

    assert result.exit_code == ExitCode.FAILURE
    assert result.stderr.startswith(f"error: no deploy/local/stack.py in {tmp_path}.")
    assert "VIEWFINDER_CLI_INGEST_ADDR" in result.stderr
